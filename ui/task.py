"""The segmentation run as a QgsTask, so QGIS stays responsive.

`run()` executes in a worker thread and touches no GUI, layer or project: it calls the engine and
keeps the result or the error. `finished()` runs on the main thread and hands the task to the
callback given at construction, which adds layers (successful run) or reports the error. The
creator must keep a Python reference to the task until the callback has run.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable, Optional

from qgis.core import QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.errors import DrSegError, RunCancelled
from .engine import MissingDependencies, load_engine

LOG_TAG = "DR-Seg"


class EngineTask(QgsTask):
    """A cancellable engine call in a worker thread: `_work()` runs there and sets the result;
    errors are captured for the user (DrSegError) or the log (anything else); `finished()` hands
    the task once to `on_finished` on the main thread."""

    stepMessage = pyqtSignal(str)   # the engine's progress messages, delivered queued

    def __init__(self, description: str, on_finished: Optional[Callable] = None):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.on_finished = on_finished
        self.error: Optional[str] = None
        self.error_detail: Optional[str] = None
        self.was_cancelled = False
        self.seconds = 0.0
        self._last_message = ""
        self._finished_called = False
        self._done = False

    def _work(self) -> None:            # worker thread; sets the result attributes
        raise NotImplementedError

    def run(self) -> bool:  # noqa: D401 (QGIS's name)
        started = time.perf_counter()
        try:
            self._work()
            self._done = True
            return True
        except RunCancelled:
            self.was_cancelled = True
            return False
        except (DrSegError, MissingDependencies) as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # a bug or an environment problem: details go to the log
            if self.isCanceled():
                self.was_cancelled = True
                return False
            self.error = f"{self.failure_prefix}: {type(exc).__name__}: {exc}"
            self.error_detail = traceback.format_exc()
            return False
        finally:
            self.seconds = time.perf_counter() - started

    failure_prefix = "DR-Seg failed"

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(100.0 * fraction)
        if message and message != self._last_message:
            self._last_message = message
            self.stepMessage.emit(message)

    def finished(self, ok: bool) -> None:  # noqa: D401 (QGIS's name); main thread
        if self._finished_called:
            return
        self._finished_called = True
        if not ok and (self.isCanceled() or self.was_cancelled) and self.error is None:
            self.was_cancelled = True
        if self.error_detail:
            QgsMessageLog.logMessage(f"{self.error}\n{self.error_detail}", LOG_TAG)
        if self.on_finished is not None:
            self.on_finished(self)

    @property
    def succeeded(self) -> bool:
        return self._done and not self.was_cancelled and self.error is None


class SegmentationTask(EngineTask):
    """Runs `core.segment.run_segmentation(request)` in the background.

    After the callback: `result` (SegmentationResult) on success; `error` (a user-facing message)
    on failure, with `error_detail` a traceback for unexpected failures; `was_cancelled` when the
    user cancelled. A cancelled or failed run leaves no output file (the engine guarantees it).

    scorer: an engine window scorer to use instead of loading CLIP (tests, or a preloaded model).
    """

    failure_prefix = "Segmentation failed"

    def __init__(self, request, on_finished: Optional[Callable[["SegmentationTask"], None]] = None,
                 scorer=None, description: Optional[str] = None):
        super().__init__(description or f"DR-Seg: {request.layer_name}", on_finished)
        self.request = request
        self.scorer = scorer
        self.result = None

    def _work(self) -> None:
        segment = load_engine()
        self.result = segment.run_segmentation(self.request, scorer=self.scorer,
                                               progress=self._progress, cancelled=self.isCanceled)
