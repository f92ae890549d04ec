"""The command line's progress bar (tqdm on stderr), fed by the engine or by the downloader."""
from __future__ import annotations

import sys
from typing import Optional


class ProgressBar:
    """Created on the first update, so an early error prints no empty bar.

    Two feeds: the instance itself is the engine's ``progress(fraction, message)`` callable
    (percent bar, the message as its description); `transfer` is the downloader's
    ``progress(bytes_done, bytes_total)`` callable (byte bar named ``label``). `write` prints a
    line without breaking the bar. Use as a context manager, or call `close()`.
    """

    def __init__(self, quiet: bool = False, leave: bool = True, stream=None,
                 label: Optional[str] = None):
        self._quiet = quiet
        self._leave = leave
        self._stream = stream
        self._label = label
        self._bar = None

    def __enter__(self):
        return self

    def _new_bar(self, **options):
        from tqdm import tqdm

        return tqdm(file=self._stream or sys.stderr, leave=self._leave, **options)

    def __call__(self, fraction: float, message: str) -> None:
        if self._quiet:
            return
        if self._bar is None:
            self._bar = self._new_bar(total=100, unit="%",
                                      bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self._bar.set_description_str(message[:40])
        self._bar.n = round(fraction * 100, 1)
        self._bar.refresh()

    update = __call__

    def transfer(self, done: int, total: Optional[int]) -> None:
        if self._quiet:
            return
        if self._bar is None or (total is not None and self._bar.total != total):
            self.close()
            self._bar = self._new_bar(total=total, initial=done, unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=self._label, dynamic_ncols=True)
            return
        if done < self._bar.n:  # the server sent the whole file again
            self._bar.reset(total=total)
        self._bar.update(done - self._bar.n)

    def write(self, text: str) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._stream or sys.stderr)
        else:
            print(text, file=self._stream or sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __exit__(self, *exc):
        self.close()
