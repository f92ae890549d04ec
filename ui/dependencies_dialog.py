"""Installing DR-Seg's Python packages from inside QGIS, without a terminal.

The dialog shows the plan (core/dependencies.py: which packages, into which folder, with which
Python and torch build, the exact command and the constraints), then runs pip in a QProcess: the
GUI never waits for it, pip's output streams into the dialog, Cancel stops it. pip installs with
`--target` into a temporary folder and moves the result into place at the end, so a cancelled or
failed run leaves QGIS's own Python untouched.
"""
from __future__ import annotations

import os
from typing import List, Optional

from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, Qt, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (QDialog, QGroupBox, QHBoxLayout, QLabel, QPlainTextEdit,
                                 QPushButton, QVBoxLayout)

from ..core import dependencies

READY, RUNNING, SUCCEEDED, FAILED, CANCELLED = "ready", "running", "succeeded", "failed", "cancelled"


class DependenciesDialog(QDialog):
    """plan: a `core.dependencies.InstallPlan` (default: install what is missing)."""

    installFinished = pyqtSignal(bool)   # True when pip succeeded

    def __init__(self, plan: Optional[dependencies.InstallPlan] = None, parent=None):
        super().__init__(parent)
        self.setObjectName("DrSegDependenciesDialog")
        self.setWindowTitle("DR-Seg: install Python packages")
        self.plan = plan if plan is not None else dependencies.plan_install()
        self.state = READY
        self.still_missing: List[dependencies.Requirement] = []
        self.process: Optional[QProcess] = None
        self._pending = ""
        self._cancel_requested = False
        self._build()

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.summary_label = QLabel(self.plan.summary(), self)
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(
            self.summary_label.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.summary_label)

        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        command_box = QGroupBox("Command that will run", self)
        command_layout = QVBoxLayout(command_box)
        self.command_edit = QPlainTextEdit(self.plan.command_text(), command_box)
        self.command_edit.setReadOnly(True)
        self.command_edit.setFont(mono)
        self.command_edit.setMaximumHeight(90)
        command_layout.addWidget(self.command_edit)
        self.constraints_edit = QPlainTextEdit(self.plan.constraints_text(), command_box)
        self.constraints_edit.setReadOnly(True)
        self.constraints_edit.setFont(mono)
        self.constraints_edit.setMaximumHeight(110)
        self.constraints_edit.setToolTip(f"Written to {self.plan.constraints_path}")
        command_layout.addWidget(QLabel(f"Constraints file ({self.plan.constraints_path}):", command_box))
        command_layout.addWidget(self.constraints_edit)
        layout.addWidget(command_box)

        self.output_edit = QPlainTextEdit(self)
        self.output_edit.setReadOnly(True)
        self.output_edit.setFont(mono)
        self.output_edit.setMaximumBlockCount(20000)
        self.output_edit.setPlaceholderText("pip's output appears here")
        layout.addWidget(self.output_edit, 1)

        self.status_label = QLabel(self)
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.install_button = QPushButton("Install", self)
        self.install_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel installation", self)
        self.close_button = QPushButton("Close", self)
        for button in (self.install_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        self.resize(760, 620)
        if not self.plan.requirements:
            self._set_status("Nothing to install: every package DR-Seg needs is importable.")
        elif not self.plan.can_run:
            self._set_status("Cannot install from here: the Python that QGIS runs was not found.")
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = self.state == RUNNING
        self.install_button.setEnabled(not running and self.state != SUCCEEDED and self.plan.can_run)
        self.install_button.setText("Install again" if self.state in (FAILED, CANCELLED) else "Install")
        self.cancel_button.setEnabled(running and not self._cancel_requested)
        self.close_button.setEnabled(not running)

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def append_output(self, text: str) -> None:
        self.output_edit.appendPlainText(text)

    # -- running pip ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.state == RUNNING

    def start(self) -> bool:
        """Write the constraints file and start pip; False when it could not start."""
        if self.state == RUNNING or not self.plan.can_run:
            return False
        try:
            os.makedirs(self.plan.target, exist_ok=True)
            self.plan.write_constraints()
        except OSError as exc:
            self._finish(FAILED, f"Cannot write to '{self.plan.target}' ({exc.strerror or exc}); set "
                                 f"{dependencies.PACKAGES_ENV} to a folder you can write to.")
            return False
        command = self.plan.command
        self.output_edit.clear()
        self.append_output("$ " + self.plan.command_text())
        self._pending = ""
        self._cancel_requested = False
        process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        for key, value in self.plan.environment().items():
            environment.insert(key, value)
        process.setProcessEnvironment(environment)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(self._read_output)
        process.finished.connect(self._process_finished)
        process.errorOccurred.connect(self._process_error)
        self.process = process
        self.state = RUNNING
        self._set_status("Installing… this can take several minutes (torch is large).")
        self._update_buttons()
        process.start(command[0], command[1:])
        return True

    def cancel(self) -> None:
        """Stop pip. Its temporary folder is discarded; the target folder is not half-written."""
        if self.state != RUNNING or self.process is None:
            return
        self._cancel_requested = True
        self._set_status("Stopping pip…")
        self._update_buttons()
        self.process.kill()

    def _read_output(self) -> None:
        if self.process is None:
            return
        data = bytes(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        text = (self._pending + data).replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self._pending = lines.pop()  # an unfinished line waits for its end
        for line in lines:
            self.append_output(line)

    def _flush_output(self) -> None:
        self._read_output()
        if self._pending:
            self.append_output(self._pending)
            self._pending = ""

    def _process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.state == RUNNING:
            program = self.plan.command[0]
            self._finish(FAILED, f"Could not start '{program}' ({self.process.errorString()}). "
                                 "Install the packages from a terminal with QGIS's Python.")

    def _process_finished(self, exit_code: int, exit_status=None) -> None:
        if self.state != RUNNING:
            return
        self._flush_output()
        if self._cancel_requested:
            self._finish(CANCELLED, "Cancelled: pip was stopped before it finished. Nothing was "
                                    "added to QGIS's own Python; Install again to start over "
                                    "(pip reuses what it already downloaded).")
            return
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        if exit_code == 0 and not crashed:
            self.still_missing = dependencies.refresh_after_install(self.plan.target)
            if self.still_missing:
                names = ", ".join(r.package for r in self.still_missing)
                self._finish(SUCCEEDED, f"pip finished, but {names} still cannot be found; restart "
                                        "QGIS and check the output above.")
            else:
                self._finish(SUCCEEDED, "Installed. DR-Seg can be used now (restart QGIS if a "
                                        "panel still reports missing packages).")
            return
        reason = "pip crashed" if crashed else f"pip failed (exit code {exit_code})"
        self._finish(FAILED, f"{reason}; see its output above. Nothing was changed in QGIS's own "
                             "Python.")

    def _finish(self, state: str, message: str) -> None:
        self.state = state
        self._set_status(message)
        if state != READY:
            self.append_output(f"--- {message}")
        self._update_buttons()
        self.installFinished.emit(state == SUCCEEDED)

    # -- closing ------------------------------------------------------------------------------
    def reject(self) -> None:
        """Closing while pip runs stops pip first (no orphan process)."""
        if self.state == RUNNING and self.process is not None:
            self.cancel()
            self.process.waitForFinished(5000)
        super().reject()

    def closeEvent(self, event):  # noqa: N802 (Qt's name)
        if self.state == RUNNING and self.process is not None:
            self.cancel()
            self.process.waitForFinished(5000)
        super().closeEvent(event)

