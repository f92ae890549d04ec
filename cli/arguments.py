"""Argument types shared by the commands."""
from __future__ import annotations

import argparse


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
