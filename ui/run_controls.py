"""Run and Cancel buttons, a progress bar, a status line and message-bar messages for a form that
runs one task at a time (the dock's Classes form and its Referring panel)."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence, Tuple

from qgis.core import Qgis
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy

from ..core.advice import QGIS, speaking_to
from ..qgis_bridge import tasks as bridge_tasks
from ..qgis_bridge.engine import MissingDependencies


def push_message(iface, title: str, level, text: str) -> None:
    """`text` in QGIS's message bar at `level` (no bar, e.g. without an iface: nothing)."""
    bar = iface.messageBar() if iface is not None else None
    if bar is None:
        return
    if level == Qgis.MessageLevel.Critical:
        bar.pushCritical(title, text)
    elif level == Qgis.MessageLevel.Success:
        bar.pushSuccess(title, text)
    elif level == Qgis.MessageLevel.Warning:
        bar.pushWarning(title, text)
    else:
        bar.pushInfo(title, text)


STATUS_LINES = 3          # the status line's height in lines of text (longer: the tooltip)
CANCEL_WATCH_MS = 200     # how often running tasks are looked at for a cancel QGIS made
CANCELLING = "Cancelling…"


class RunControls:
    """The widgets (children of `parent`) and the bookkeeping of the form's running task.

    `run` is what the Run button calls. Tasks are started through qgis_bridge.tasks, which keeps
    them alive; this object only knows which ones belong to its form."""

    def __init__(self, iface, title: str, parent, run: Callable):
        self.iface = iface
        self.title = title
        self.run_button = QPushButton("Run", parent)
        self.run_button.clicked.connect(run)
        self.cancel_button = QPushButton("Cancel", parent)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar(parent)
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.status_label = QLabel("", parent)
        self.status_label.setWordWrap(True)
        # A fixed height, so Run and Cancel do not move when the text changes length.
        self.status_label.setFixedHeight(self.status_label.fontMetrics().lineSpacing()
                                         * STATUS_LINES + 4)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        # QGIS may cancel a task itself (its task manager, "tasks are running, cancel?" on
        # closing): a cancel does not signal, so running tasks are looked at while they run.
        self._watch = QTimer(parent)
        self._watch.setInterval(CANCEL_WATCH_MS)
        self._watch.timeout.connect(self._show_cancelling)
        self.tasks: List = []
        self._started_at: Dict[int, float] = {}
        self.update_buttons()

    def add_to(self, layout, extra_buttons: Sequence = ()) -> None:
        """Run, Cancel and `extra_buttons` in a row, the progress bar and the status line below."""
        buttons = QHBoxLayout()
        for button in (self.run_button, self.cancel_button, *extra_buttons):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)

    # -- messages ---------------------------------------------------------------------------------
    def message(self, level, text: str) -> None:
        push_message(self.iface, self.title, level, text)

    def checked_request(self, build: Callable, busy_text: str, errors: Tuple[type, ...]):
        """`build()`'s request, or None when a task of the form still runs (`busy_text` as a
        warning) or the form is not valid (one of `errors`: its message, in the bar and the
        status line)."""
        if self.tasks:
            self.message(Qgis.MessageLevel.Warning, busy_text)
            return None
        try:
            with speaking_to(QGIS):  # the engine's advice names QGIS's dialogs and fields
                return build()
        except MissingDependencies as exc:
            from .integration import check_dependencies_on_start

            self.message(Qgis.MessageLevel.Critical, str(exc))
            self.status_label.setText(str(exc))
            try:  # the start-up warning with its Install… button, shown again if closed
                check_dependencies_on_start(self.iface)
            except Exception:  # noqa: BLE001 (the message above has been given either way)
                pass
            return None
        except errors as exc:
            self.message(Qgis.MessageLevel.Critical, str(exc))
            self.status_label.setText(str(exc))
            return None

    def set_progress(self, value: float) -> None:
        self.progress_bar.setValue(int(round(value)))

    # -- tasks ------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return bool(self.tasks)

    def update_buttons(self) -> None:
        self.run_button.setEnabled(not self.tasks)
        self.cancel_button.setEnabled(bool(self.tasks))

    def start(self, task) -> None:
        """Show the task's progress and steps, and start it."""
        task.progressChanged.connect(self.set_progress)
        task.stepMessage.connect(self.set_status)
        self.tasks.append(task)
        self._started_at[id(task)] = time.monotonic()
        self.progress_bar.setValue(0)
        self.set_status("Starting…")
        self.update_buttons()
        self._watch.start()
        bridge_tasks.start(task)

    def finish(self, task) -> float:
        """The task's callback began: forget it; -> seconds since it was started."""
        if task in self.tasks:
            self.tasks.remove(task)
        if not self.tasks:
            self._watch.stop()
        self.update_buttons()
        return time.monotonic() - self._started_at.pop(id(task), time.monotonic())

    def set_status(self, text: str) -> None:
        """The status line (a step of a cancelled task no longer replaces "Cancelling…")."""
        if any(task.isCanceled() for task in self.tasks) and text != CANCELLING:
            return
        self.status_label.setText(text)
        self.status_label.setToolTip(text)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        self._show_cancelling()

    def _show_cancelling(self) -> None:
        if any(task.isCanceled() for task in self.tasks) and \
                self.status_label.text() != CANCELLING:
            self.set_status(CANCELLING)

    def show_unsuccessful(self, task, cancelled_text: str) -> None:
        """A cancelled or failed task: reset the bar, say what happened."""
        self.progress_bar.setValue(0)
        if task.was_cancelled:
            self.status_label.setText("Cancelled; nothing was written")
            self.message(Qgis.MessageLevel.Info, cancelled_text)
        else:
            self.status_label.setText(task.error or "Failed")
            detail = " (details in the log, tab DR-Seg)" if task.error_detail else ""
            self.message(Qgis.MessageLevel.Critical, f"{task.error}{detail}")

    def shutdown(self) -> None:
        """The form goes away: cancel its tasks; they call it back no more (plugin unload)."""
        for task in self.tasks:
            bridge_tasks.detach(task)
        self.tasks = []
