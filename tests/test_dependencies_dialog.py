"""The install dialog driven offscreen with a fake 'pip' (a small Python script): output streams in,
the GUI is never blocked, success / failure / cancel are reported. No network."""
from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest
from conftest_qgis import wait_for
from qgis.PyQt.QtCore import QProcess

from drseg.core.dependencies import CPU_INDEX_URL, InstallPlan, Requirement, TorchBuild
from drseg.ui.dependencies_dialog import CANCELLED, FAILED, RUNNING, SUCCEEDED, DependenciesDialog

FAKE_PIP = textwrap.dedent("""
    import json, os, sys, time
    mode, record = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    constraints = args[args.index("--constraint") + 1]
    with open(record, "w") as handle:
        json.dump({"args": args, "constraints": open(constraints).read(),
                   "pip_user": os.environ.get("PIP_USER")}, handle)
    print("Collecting drseg-fake-module", flush=True)
    sys.stderr.write("WARNING: a line on stderr\\n"); sys.stderr.flush()
    if mode == "hang":
        print("Downloading something big", flush=True)
        time.sleep(60)
    if mode == "fail":
        print("ERROR: No matching distribution found for drseg-fake-module", flush=True)
        sys.exit(1)
    target = args[args.index("--target") + 1]
    os.makedirs(os.path.join(target, "drseg_fake_module"), exist_ok=True)
    open(os.path.join(target, "drseg_fake_module", "__init__.py"), "w").close()
    sys.stdout.write("Successfully installed drseg-fake-module-1.0")   # no newline at the end
""")

REQUIREMENT = Requirement("drseg_fake_module", "drseg-fake-module", "a module that does not exist")


@pytest.fixture
def make_dialog(qgis_app, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    dialogs = []

    def make(mode="ok", launcher=None):
        plan = InstallPlan(python=sys.executable, target=str(tmp_path / "pkgs"),
                           requirements=[REQUIREMENT], constraints=["numpy==1.26.4", "affine<3"],
                           constraints_path=str(tmp_path / "pkgs-constraints.txt"),
                           torch_build=TorchBuild("cpu", CPU_INDEX_URL, "test machine"),
                           launcher=launcher or [sys.executable, str(script), mode,
                                                 str(tmp_path / "record.json")])
        dialog = DependenciesDialog(plan)
        results = []
        dialog.installFinished.connect(results.append)
        dialog.results = results
        dialogs.append(dialog)
        return dialog

    yield make
    for dialog in dialogs:
        if dialog.process is not None and dialog.process.state() != QProcess.ProcessState.NotRunning:
            dialog.process.kill()
            dialog.process.waitForFinished(3000)
        dialog.deleteLater()


def output(dialog):
    return dialog.output_edit.toPlainText()


def test_dialog_shows_what_where_and_the_exact_command(make_dialog, tmp_path):
    dialog = make_dialog()
    summary = dialog.summary_label.text()
    assert "drseg-fake-module" in summary and str(tmp_path / "pkgs") in summary
    assert dialog.command_edit.toPlainText() == dialog.plan.command_text()
    assert "numpy==1.26.4" in dialog.constraints_edit.toPlainText()
    assert dialog.install_button.isEnabled() and not dialog.cancel_button.isEnabled()


def test_successful_install_streams_output_and_makes_the_module_importable(make_dialog, tmp_path):
    dialog = make_dialog("ok")
    dialog.install_button.click()
    assert dialog.state == RUNNING and not dialog.close_button.isEnabled()
    assert wait_for(lambda: dialog.state != RUNNING, 30)
    assert dialog.state == SUCCEEDED, output(dialog)
    assert dialog.results == [True]
    text = output(dialog)
    assert "Collecting drseg-fake-module" in text
    assert "WARNING: a line on stderr" in text                      # stderr is merged in
    assert "Successfully installed drseg-fake-module-1.0" in text  # the unfinished last line too
    assert dialog.still_missing == []
    assert "Installed" in dialog.status_label.text()
    assert str(tmp_path / "pkgs") in sys.path
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["args"] == dialog.plan.command[4:]                 # exactly the plan's command
    assert "numpy==1.26.4" in record["constraints"]                 # written before pip ran
    assert record["pip_user"] == "0"
    assert not dialog.install_button.isEnabled() and dialog.close_button.isEnabled()


def test_failed_install_is_reported_and_can_be_retried(make_dialog):
    dialog = make_dialog("fail")
    dialog.start()
    assert wait_for(lambda: dialog.state != RUNNING, 30)
    assert dialog.state == FAILED and dialog.results == [False]
    assert "exit code 1" in dialog.status_label.text()
    assert "No matching distribution" in output(dialog)
    assert dialog.install_button.isEnabled() and dialog.install_button.text() == "Install again"


def test_gui_is_not_blocked_and_cancel_stops_pip(make_dialog):
    dialog = make_dialog("hang")
    started = time.monotonic()
    dialog.install_button.click()
    assert time.monotonic() - started < 2.0            # start() returns while pip runs
    assert wait_for(lambda: "Downloading something big" in output(dialog), 30)
    assert dialog.cancel_button.isEnabled()
    dialog.cancel_button.click()
    assert wait_for(lambda: dialog.state != RUNNING, 10)
    assert time.monotonic() - started < 30             # did not wait for the 60 s sleep
    assert dialog.state == CANCELLED and dialog.results == [False]
    assert dialog.process.state() == QProcess.ProcessState.NotRunning
    assert "Cancelled" in dialog.status_label.text()
    assert dialog.install_button.text() == "Install again"


def test_closing_while_running_stops_pip(make_dialog):
    dialog = make_dialog("hang")
    dialog.start()
    assert wait_for(lambda: "Downloading" in output(dialog), 30)
    dialog.reject()
    assert dialog.process.state() == QProcess.ProcessState.NotRunning


def test_program_that_cannot_start_is_a_clear_failure(make_dialog, tmp_path):
    dialog = make_dialog(launcher=[str(tmp_path / "no" / "python3"), "-m", "pip"])
    dialog.start()
    assert wait_for(lambda: dialog.state != RUNNING, 10)
    assert dialog.state == FAILED
    assert "Could not start" in dialog.status_label.text()


def test_unwritable_target_fails_before_starting(make_dialog, tmp_path):
    dialog = make_dialog()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    dialog.plan.target = str(blocker / "pkgs")
    assert dialog.start() is False
    assert dialog.state == FAILED and dialog.process is None
    assert "Cannot write" in dialog.status_label.text()
