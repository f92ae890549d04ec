"""The first Run must not freeze QGIS: torch, open_clip and segment_anything are imported in the
task's worker thread, never on the main (GUI) thread. A fresh process (nothing imported yet)
records which thread first imports each heavy module while the dock runs from a click, or while
the Settings dialog describes the device.

(The event loop's longest stall is measured by benchmarks/bench_event_loop.py, which prints it.)
"""
from __future__ import annotations

import textwrap

from support.bare_qgis import run_script, script_env
from support.rasters import write_halves_raster as write_raster
from support.tiny_models import write_tiny_clip_config

HEAVY = ("torch", "open_clip", "segment_anything")

SCRIPT = """
import sys, time
from support.bare_qgis import print_report, record_first_imports, start_bare_qgis
HEAVY = {heavy!r}
first = record_first_imports(HEAVY)
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
    # torch and open_clip were imported by the run, each first in a worker thread, inside its
    # background_imports block (what keeps the event loop running meanwhile).
    assert {"torch", "open_clip"} <= set(report["first"])
    assert not any(where["main"] for where in report["first"].values()), report["first"]
    assert all(where["protected"] for where in report["first"].values()), report["first"]


SETTINGS_SCRIPT = """
import time
from support.bare_qgis import print_report, record_first_imports, start_bare_qgis
first = record_first_imports(["torch"])
app, iface = start_bare_qgis()
from drseg.ui import integration
dialog = integration.open_settings(iface, {path!r})
opened = dict(visible=dialog.isVisible(), label=dialog.device_info_label.text(),
              torch=dict(first))
described = []
dialog.deviceDescribed.connect(described.append)
deadline = time.monotonic() + 240
while not described and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
print_report(dict(opened=opened, first=first, described=described,
                  label=dialog.device_info_label.text()))
integration.close_dialogs()
app.exitQgis()
"""


def test_opening_the_settings_dialog_imports_torch_in_the_background(tmp_path):
    """The device description needs torch: the dialog opens at once, says it is checking, and
    shows the description when a worker thread has imported torch (GC paused, GIL-free)."""
    from drseg.core.device import describe_device_choice
    from drseg.ui.settings_dialog import CHECKING_DEVICE

    script = SETTINGS_SCRIPT.format(path=str(tmp_path / "s.json"))
    env = script_env(DRSEG_CONFIG=str(tmp_path / "s.json"), DRSEG_CACHE_DIR=str(tmp_path / "cache"))
    report = run_script(textwrap.dedent(script), tmp_path, env)
    assert report["opened"] == dict(visible=True, label=CHECKING_DEVICE, torch={})
    assert report["first"] == {"torch": dict(main=False, protected=True)}
    expected = describe_device_choice("auto")[1]      # this machine's answer, torch imported here
    assert report["described"] == [expected] and report["label"] == expected
