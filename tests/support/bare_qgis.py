"""A bare QGIS in a fresh Python process, for scripts that must start from nothing imported (the
first Run of a session, a QGIS without torch): an initialised QgsApplication and a mocked iface
whose main window and map canvas are real widgets, which is what the plugin and its dock use.

In a subprocess script (run with `script_env()`, which puts tests/ on its path):

    from support.bare_qgis import start_bare_qgis, print_report
    app, iface = start_bare_qgis()
    ...
    print_report({...})

and in the test: `report = run_script(source, cwd, env)`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_PREFIX = "REPORT"


def start_bare_qgis():
    """-> (QgsApplication initialised with its GUI, a MagicMock iface): iface.mainWindow() is a
    real QMainWindow, iface.mapCanvas() a real QgsMapCanvas in it."""
    from unittest import mock

    from qgis.core import QgsApplication

    app = QgsApplication([], True)
    app.initQgis()
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow

    window = QMainWindow()
    iface = mock.MagicMock()
    iface.mainWindow.return_value = window
    iface.mapCanvas.return_value = QgsMapCanvas(window)
    return app, iface


def print_report(report: dict) -> None:
    """Subprocess side: hand `report` (JSON-able) to `run_script`."""
    print(REPORT_PREFIX + json.dumps(report), flush=True)


def script_env(**overrides: str) -> dict:
    """The environment of a bare-QGIS subprocess: offscreen Qt, tests/ on the path (for
    `support.*`) after the caller's PYTHONPATH (which names the drseg under test)."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), TESTS_DIR) if p)
    env.update(overrides)
    return env


def run_script(source: str, cwd, env: Optional[dict] = None, timeout: float = 300) -> dict:
    """Run `source` in a fresh Python; -> the dict it gave `print_report` (the last one). An
    AssertionError carries its output when it gave none."""
    done = subprocess.run([sys.executable, "-c", source], cwd=str(cwd), env=env or script_env(),
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(REPORT_PREFIX)]
    assert lines, (done.stdout + done.stderr)[-4000:]
    return json.loads(lines[-1][len(REPORT_PREFIX):])
