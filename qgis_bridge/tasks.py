"""Every QgsTask of the plugin, and the one list that keeps running tasks alive.

A task's `run()` executes in a worker thread and touches no GUI, layer or project: it calls the
engine (or a download) and keeps the result or the error. `finished()` runs on the main thread and
hands the task once to the callback given at construction, which adds layers or reports the error.

Start tasks with `start(task)`: QGIS keeps only the C++ object, so the Python half of each running
task stays referenced in this module's list until its `finished()` has run. An owner that goes
away before (dock closed, plugin unloaded, dialog closed) calls `detach(task)`: the task is
cancelled and calls nobody back, and the list still holds it until QGIS is done with it.
"""
from __future__ import annotations

import time
import traceback
from typing import Callable, List, Optional, Sequence

from qgis.core import QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.advice import QGIS, speaking_to
from ..core.errors import DrSegError, RunCancelled
from .engine import MissingDependencies, import_model_libraries, load_engine

LOG_TAG = "DR-Seg"

_RUNNING: List[QgsTask] = []


def start(task: "DrSegTask") -> "DrSegTask":
    """Keep `task` alive until it has finished and hand it to QGIS's task manager."""
    _RUNNING.append(task)
    QgsApplication.taskManager().addTask(task)
    return task


def running() -> List[QgsTask]:
    """The tasks started here whose `finished()` has not run yet."""
    return list(_RUNNING)


def detach(task: "DrSegTask") -> None:
    """The task's owner goes away: cancel the task, call nobody back; it stays kept until done."""
    task.on_finished = None
    task.cancel()


def _release(task: QgsTask) -> None:
    if task in _RUNNING:
        _RUNNING.remove(task)


class DrSegTask(QgsTask):
    """A cancellable task whose `finished()` hands it once to `on_finished` (main thread) and then
    leaves the keep-alive list. After the callback: `error` (for the user) or `was_cancelled`.
    A run that stops on a cancel returns True (QGIS shows failed tasks with a notification)."""

    task_flags = QgsTask.Flag.CanCancel

    def __init__(self, description: str, on_finished: Optional[Callable] = None):
        super().__init__(description, self.task_flags)
        self.on_finished = on_finished
        self.error: Optional[str] = None
        self.was_cancelled = False
        self._finished_called = False

    def _settle(self, ok: bool) -> None:
        """Main thread, before the callback: note a cancellation QGIS saw but run() did not."""
        if not ok and (self.isCanceled() or self.was_cancelled) and self.error is None:
            self.was_cancelled = True

    def finished(self, ok: bool) -> None:  # noqa: D401 (QGIS's name); main thread
        if self._finished_called:
            return
        self._finished_called = True
        try:
            self._settle(ok)
            if self.on_finished is not None:
                self.on_finished(self)
        finally:
            _release(self)


class EngineTask(DrSegTask):
    """A cancellable engine call in a worker thread: `_work()` runs there and sets the result;
    errors are captured for the user (DrSegError) or the log (anything else)."""

    stepMessage = pyqtSignal(str)   # the engine's progress messages, delivered queued
    failure_prefix = "DR-Seg failed"

    def __init__(self, description: str, on_finished: Optional[Callable] = None):
        super().__init__(description, on_finished)
        self.error_detail: Optional[str] = None
        self.seconds = 0.0
        self._last_message = ""
        self._done = False

    def _work(self) -> None:            # worker thread; sets the result attributes
        raise NotImplementedError

    def run(self) -> bool:  # noqa: D401 (QGIS's name)
        started = time.perf_counter()
        try:
            with speaking_to(QGIS):  # the engine's advice names QGIS's dialogs and fields
                self._work()
            self._done = True
            return True
        except RunCancelled:
            # A cancel the user asked for is no failure: returning True keeps QGIS from showing
            # its "Task failed" notification; the callback reads was_cancelled.
            self.was_cancelled = True
            return True
        except (DrSegError, MissingDependencies) as exc:
            self.error = str(exc)
            return False
        except Exception as exc:  # a bug or an environment problem: details go to the log
            if self.isCanceled():
                self.was_cancelled = True
                return True
            self.error = f"{self.failure_prefix}: {type(exc).__name__}: {exc}"
            self.error_detail = traceback.format_exc()
            return False
        finally:
            self.seconds = time.perf_counter() - started

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(100.0 * fraction)
        if message and message != self._last_message:
            self._last_message = message
            self.stepMessage.emit(message)

    def _settle(self, ok: bool) -> None:
        super()._settle(ok)
        if self.error_detail:
            QgsMessageLog.logMessage(f"{self.error}\n{self.error_detail}", LOG_TAG)

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
        import_model_libraries(segment.model_libraries(self.request))  # seconds on a first run
        self.result = segment.run_segmentation(self.request, scorer=self.scorer,
                                               progress=self._progress, cancelled=self.isCanceled)


class ReferringTask(EngineTask):
    """Runs `core.refer.run.run_referring(request)` in the background.

    After the callback: `result` (ReferringRunResult) and `session` (the area's session, None for
    a tiled area) on success; `error` (user-facing) on failure, `error_detail` a traceback for
    unexpected failures; `was_cancelled` when cancelled. A cancelled or failed run leaves no file
    (the engine writes under a temporary name and renames last). Call engine.load_refer_engine()
    on the main thread first.

    sam / clip: models (or stand-ins) to use instead of loading the request's through the cache.
    """

    failure_prefix = "Referring segmentation failed"

    def __init__(self, request, on_finished: Optional[Callable[["ReferringTask"], None]] = None,
                 sam=None, clip=None, description: Optional[str] = None):
        super().__init__(description or "DR-Seg: referring segmentation", on_finished)
        self.request = request
        self.sam = sam
        self.clip = clip
        self.result = None
        self.session = None
        self.layer_name: Optional[str] = None   # legend name of the layer the callback adds

    def _work(self) -> None:
        from ..core.refer.run import model_libraries, run_referring

        import_model_libraries(model_libraries(self.request))  # here, in the worker thread
        self.result = run_referring(self.request, progress=self._progress,
                                    cancelled=self.isCanceled, sam=self.sam, clip=self.clip)
        self.session = self.result.session


class RefineTask(EngineTask):
    """Re-runs SAM's decoder on a session's cached embedding with clicks (area pixel (x, y)).

    After the callback: `refined` (ReferringResult carrying every click so far), `geometry`
    (shapely, the session's CRS, None when the mask became empty) and `area_m2`."""

    failure_prefix = "Refinement failed"

    def __init__(self, session, result, positive: Sequence = (), negative: Sequence = (),
                 on_finished: Optional[Callable[["RefineTask"], None]] = None):
        super().__init__("DR-Seg: refining with clicks", on_finished)
        self.session = session
        self.source = result
        self.positive = [tuple(map(float, p)) for p in positive]
        self.negative = [tuple(map(float, p)) for p in negative]
        self.refined = None
        self.geometry = None
        self.area_m2 = 0.0

    def _work(self) -> None:
        from ..core.vectorize import AreaMeter

        self.refined = self.session.refine(self.source, self.positive, self.negative)
        self.geometry = self.session.to_geometry(self.refined)
        if self.geometry is not None:
            self.area_m2 = float(AreaMeter(self.session.crs, self.geometry.bounds)
                                 .area([self.geometry])[0])


class ModelTransferTask(DrSegTask):
    """Runs `work(progress, cancelled, status) -> path` (a model download or import) in the
    background. After the callback: `path` on success, else `error` or `was_cancelled`."""

    statusMessage = pyqtSignal(str)

    def __init__(self, description: str, work: Callable, on_finished: Optional[Callable] = None,
                 label: str = ""):
        super().__init__(description, on_finished)
        self.label = label or description
        self.work = work
        self.path: Optional[str] = None

    def run(self) -> bool:  # noqa: D401 (QGIS's name)
        try:
            with speaking_to(QGIS):
                self.path = self.work(self._progress, self.isCanceled, self.statusMessage.emit)
            return True
        except RunCancelled:
            self.was_cancelled = True
            return True  # no "Task failed" notification for a cancel
        except DrSegError as exc:
            self.error = str(exc)
        except Exception as exc:  # an unexpected failure is still shown, not raised in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        return False

    def _progress(self, done: int, total: Optional[int]) -> None:
        if total:
            self.setProgress(100.0 * done / total)
        self.statusMessage.emit(f"{done / 1e6:.0f}" + (f" of {total / 1e6:.0f} MB" if total else " MB"))

    def _settle(self, ok: bool) -> None:
        if not ok and self.isCanceled():
            self.was_cancelled = True


class DeviceCheckTask(DrSegTask):
    """Runs `describe(name) -> text` (which may import torch: seconds the first time) in the
    background. After the callback: `name`, and `text`, or `error` for a describer that raised."""

    # Not listed in QGIS's task manager where QGIS can hide a task (3.26+): a check of a few seconds.
    task_flags = QgsTask.Flag.CanCancel | getattr(QgsTask.Flag, "Hidden", QgsTask.Flag(0))

    def __init__(self, name: str, describe: Callable[[str], str],
                 on_finished: Optional[Callable[["DeviceCheckTask"], None]] = None):
        super().__init__("DR-Seg: checking the device", on_finished)
        self.name = name
        self.describe = describe
        self.text: Optional[str] = None

    def run(self) -> bool:  # noqa: D401 (QGIS's name)
        try:
            self.text = self.describe(self.name)
            return True
        except Exception as exc:  # shown in the dialog, not raised in a thread
            self.error = f"{type(exc).__name__}: {exc}"
            return False
