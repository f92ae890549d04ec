"""Progress and cancellation as plain callables, so any front end can drive the engine."""
from __future__ import annotations

from typing import Callable, Optional

from .errors import RunCancelled

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class RunMonitor:
    """Reports progress as a fraction in [0, 1] and raises `RunCancelled` when asked to stop.

    Stages of a run get sub-ranges of [0, 1] with `stage(start, end)`, so a step only reports its
    own fraction and the monitor maps it onto the whole run.
    """

    def __init__(self, progress: Optional[ProgressFn] = None, cancelled: Optional[CancelFn] = None,
                 start: float = 0.0, end: float = 1.0):
        self._progress = progress
        self._cancelled = cancelled
        self._start = start
        self._end = end
        self.last_fraction = start

    def stage(self, start: float, end: float) -> "RunMonitor":
        span = self._end - self._start
        return RunMonitor(self._progress, self._cancelled,
                          self._start + span * start, self._start + span * end)

    def report(self, fraction: float, message: str = "", check: bool = True) -> None:
        if check:
            self.check()
        fraction = min(max(fraction, 0.0), 1.0)
        self.last_fraction = self._start + (self._end - self._start) * fraction
        if self._progress is not None:
            self._progress(self.last_fraction, message)

    def say(self, message: str) -> None:
        """A message without moving the progress bar."""
        if self._progress is not None:
            self._progress(self.last_fraction, message)

    def check(self) -> None:
        if self._cancelled is not None and self._cancelled():
            raise RunCancelled("Run cancelled by the user")
