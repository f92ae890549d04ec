"""The first Run must not freeze QGIS: torch, open_clip and segment_anything are imported in the
task's worker thread, never on the main (GUI) thread. A fresh process (nothing imported yet)
records which thread first imports each heavy module while the dock runs from a click.

(The event loop's longest stall is measured by benchmarks/bench_event_loop.py, which prints it.)
"""
from __future__ import annotations

import textwrap

from support.bare_qgis import run_script, script_env
from support.rasters import write_halves_raster as write_raster
from support.tiny_models import write_tiny_clip_config

HEAVY = ("torch", "open_clip", "segment_anything")

SCRIPT = """
import json, sys, threading, time
HEAVY = {heavy!r}
first = {{}}

class Recorder:
    # Finds a heavy module through the other finders and notes which thread executes it (a real
    # import; a presence check with importlib.util.find_spec executes nothing).
    def find_spec(self, name, path=None, target=None):
        if name not in HEAVY or name in first:
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
            first.setdefault(name, threading.current_thread() is threading.main_thread())
            return original(module)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Recorder())
from support.bare_qgis import print_report, start_bare_qgis
app, iface = start_bare_qgis()
from qgis.core import QgsProject, QgsRasterLayer
from drseg.ui.dock import DrSegDock
dock = DrSegDock(iface)
layer = QgsRasterLayer({raster!r}, "scene")
QgsProject.instance().addMapLayer(layer)
dock.layer_combo.setLayer(layer)
dock.classes_edit.setPlainText("building; water")
dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
dock.clip_model_combo.setCurrentText({config!r})
dock.clip_weights_widget.setFilePath("random")
dock.output_widget.setFilePath({output!r})
before = sorted(m for m in HEAVY if m in sys.modules)
finished = []
dock.runFinished.connect(finished.append)
dock.run_button.click()
deadline = time.monotonic() + 240
while not finished and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
task = finished[0] if finished else None
print_report(dict(before=before, first=first, ok=bool(task and task.succeeded),
                  error=getattr(task, "error", "no task")))
dock.shutdown()
app.exitQgis()
"""


def test_a_dock_run_imports_no_heavy_module_on_the_main_thread(tmp_path, monkeypatch):
    raster = write_raster(tmp_path / "scene.tif")
    config = write_tiny_clip_config(tmp_path)
    script = SCRIPT.format(heavy=HEAVY, raster=raster, config=config,
                           output=str(tmp_path / "result.gpkg"))
    env = script_env(DRSEG_CONFIG=str(tmp_path / "s.json"), DRSEG_CACHE_DIR=str(tmp_path / "cache"))
    report = run_script(textwrap.dedent(script), tmp_path, env)
    assert report["ok"], report["error"]
    assert report["before"] == []          # a fresh process: the first Run of a session
    # torch and open_clip were imported by the run, each first in a worker thread.
    assert {"torch", "open_clip"} <= set(report["first"])
    assert not any(report["first"].values()), report["first"]
