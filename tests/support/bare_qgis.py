"""A bare QGIS in a fresh Python process, for scripts that must start from nothing imported (the
first Run of a session, a QGIS without torch): an initialised QgsApplication and a mocked iface
whose main window and map canvas are real widgets, which is what the plugin and its dock use.

In a subprocess script (run with `script_env()`, which puts tests/ on its path):

    from support.bare_qgis import print_report, record_first_imports, start_bare_qgis
    first = record_first_imports(["torch"])      # optional: which thread imports what
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


def record_first_imports(names) -> dict:
    """Subprocess side, first thing: -> a dict that gets, when each module of `names` is first
    executed (a real import; a presence check with importlib.util.find_spec executes nothing),
    name -> {"main": on the main thread, "protected": inside a `background_imports()` block of
    the importing thread}."""
    import sys
    import threading

    names, first = set(names), {}

    def protected() -> bool:
        module = sys.modules.get("drseg.core.background_imports")
        return bool(module) and threading.get_ident() in module._patch_owners

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name not in names or name in first:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            original = spec.loader.exec_module

            def exec_module(module):
                first.setdefault(name, dict(
                    main=threading.current_thread() is threading.main_thread(),
                    protected=protected()))
                return original(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Recorder())
    return first


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
