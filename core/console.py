"""A terminal progress bar for the command lines, fed by the engine's (fraction, message) calls."""
from __future__ import annotations

import sys


class ProgressBar:
    """tqdm on stderr, created on the first update (so an early error prints no empty bar).

    Use as a context manager, or call `close()`; the instance itself is the progress callable.
    """

    def __init__(self, quiet: bool = False, leave: bool = True):
        self._quiet = quiet
        self._leave = leave
        self._bar = None

    def __enter__(self):
        return self

    def __call__(self, fraction: float, message: str) -> None:
        if self._quiet:
            return
        if self._bar is None:
            from tqdm import tqdm
            self._bar = tqdm(total=100, unit="%", file=sys.stderr, leave=self._leave,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self._bar.set_description_str(message[:40])
        self._bar.n = round(fraction * 100, 1)
        self._bar.refresh()

    update = __call__

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc):
        self.close()


def extent_argument(text: str):
    """argparse type for 'xmin,ymin,xmax,ymax'."""
    import argparse

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError("extent must be xmin,ymin,xmax,ymax")
    return values
