"""Argument types shared by the commands."""
from __future__ import annotations

import argparse
from typing import Optional


def add_actions(parser, dest: str, metavar: str, actions, description: Optional[str] = None):
    """A required sub-command of `parser` (its name stored as args.<dest>): one subparser per
    (name, help text) in `actions`, with `description` ('{}' = the help text) when given.
    Returns the (name, subparser) pairs."""
    group = parser.add_subparsers(dest=dest, metavar=metavar)
    group.required = True
    made = []
    for name, text in actions:
        extra = {"description": description.format(text)} if description else {}
        made.append((name, group.add_parser(name, help=text, **extra)))
    return made


def extent_argument(text: str):
    """argparse type for 'xmin,ymin,xmax,ymax'."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError("extent must be xmin,ymin,xmax,ymax")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


# Options whose default comes from the saved settings (core.settings.resolve_all).
SETTINGS_HELP = " (default: the saved DR-Seg settings, else {})"


def resolve_settings(args, names):
    """Resolve the settings behind the options `names` once (parameter > environment > saved
    settings > default) and print where each value came from, as every front end logs it."""
    import sys

    from ..core.settings import resolve_all

    resolved = resolve_all({name: getattr(args, name, None) for name in names})
    if not getattr(args, "quiet", False):
        for line in resolved.describe():
            print(f"setting {line}", file=sys.stderr)
    return resolved
