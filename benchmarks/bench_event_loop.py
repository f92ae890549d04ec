"""QGIS's event loop during a whole dock run, first run of a session included: the longest gap
between ticks of a 10-ms QTimer (a stall the user feels as a frozen window), printed.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=.. .venv/bin/python benchmarks/bench_event_loop.py \\
        [--raster PATH] [--clip-model ViT-B-16|CONFIG.json] [--clip-weights random|openai|FILE]
        [--engine clip|drseg|sam3] [--dino-weights FILE] [--sam3-model sam3|CONFIG.json]
        [--settings-dialog]

Default: a synthetic 512×512 scene and a tiny CLIP of the real architecture with random weights
(the imports and the task machinery are real; the model is small). `--engine drseg` adds DINO
ViT-S/8 (random weights written by a separate process unless --dino-weights is given), `--engine
sam3` a tiny SAM 3 of the real architecture (random weights). `--settings-dialog` measures
opening the Settings dialog instead, until its device description is shown. Run it in a fresh
process: the first Run imports torch and the engine's libraries. The machine's load average is
printed with the numbers: on a loaded machine the process waits for a CPU too, which no code of
ours can avoid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raster")
    parser.add_argument("--clip-model")
    parser.add_argument("--clip-weights", default="random")
    parser.add_argument("--runs", type=int, default=2, help="runs in a row (the first is cold)")
    parser.add_argument("--engine", choices=("clip", "drseg", "sam3"), default="clip")
    parser.add_argument("--dino-weights", help="a DINO ViT-S/8 checkpoint (--engine drseg)")
    parser.add_argument("--sam3-model", help="SAM 3 architecture or config.json (--engine sam3)")
    parser.add_argument("--settings-dialog", action="store_true",
                        help="open the Settings dialog (cold) instead of running")
    args = parser.parse_args()
    sys.path.insert(0, TESTS)  # the tests' bare QGIS and tiny models
    folder = tempfile.mkdtemp(prefix="drseg-bench-loop-")
    os.environ.setdefault("DRSEG_CONFIG", os.path.join(folder, "settings.json"))

    raster = args.raster or _synthetic_scene(folder)
    clip_model = args.clip_model or _tiny_clip_config(folder)
    dino_weights = sam3_model = None
    if args.engine == "drseg":
        dino_weights = args.dino_weights or _in_another_process(folder, _WRITE_DINO)
    if args.engine == "sam3":
        sam3_model = args.sam3_model or _in_another_process(folder, _WRITE_TINY_SAM3)

    from support.bare_qgis import start_bare_qgis

    app, iface = start_bare_qgis()
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer

    if args.settings_dialog:
        _open_settings(app, iface, QTimer)
        app.exitQgis()
        return

    from drseg.ui.dock import DrSegDock

    dock = DrSegDock(iface)
    layer = QgsRasterLayer(raster, "scene")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText("building; road; tree; water")
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(clip_model)
    dock.clip_weights_widget.setFilePath(args.clip_weights)
    if dino_weights:
        dock.dino_model_combo.setCurrentText("dino_vits8")
        dock.dino_weights_widget.setFilePath(dino_weights)
        dock.set_method("drseg")
    if sam3_model:
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData("sam3"))
        dock.sam3_model = sam3_model
        dock.sam3_weights_widget.setFilePath("random")

    for run in range(args.runs):
        dock.output_widget.setFilePath(os.path.join(folder, f"result{run}.gpkg"))
        ticks = []
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        finished = []
        dock.runFinished.connect(finished.append)
        timer.start()
        QgsApplication.processEvents()
        started = time.perf_counter()
        ticks.append(started)
        dock.run_button.click()
        while not finished:
            QgsApplication.processEvents()
            time.sleep(0.002)
        ticks.append(time.perf_counter())
        timer.stop()
        dock.runFinished.disconnect()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        task = finished[0]
        print(json.dumps({"run": run + 1, "cold": run == 0, "engine": args.engine,
                          "method": getattr(task.result, "method", None), "ok": task.succeeded,
                          "seconds": round(ticks[-1] - started, 2),
                          "longest_stall_ms": round(1000 * max(gaps), 1),
                          "stalls_over_250ms": sum(g > 0.25 for g in gaps),
                          "load_average": round(os.getloadavg()[0], 1)}))
    dock.shutdown()
    app.exitQgis()


def _open_settings(app, iface, timer_type) -> None:
    """The Settings dialog opened before any run: the longest gap until the device is described."""
    from drseg.ui import integration

    ticks, described = [], []
    timer = timer_type()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    app.processEvents()
    started = time.perf_counter()
    ticks.append(started)
    dialog = integration.open_settings(iface)
    dialog.deviceDescribed.connect(described.append)
    while not described:
        app.processEvents()
        time.sleep(0.002)
    ticks.append(time.perf_counter())
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(json.dumps({"settings_dialog": described[0], "seconds": round(ticks[-1] - started, 2),
                      "longest_stall_ms": round(1000 * max(gaps), 1),
                      "stalls_over_250ms": sum(g > 0.25 for g in gaps),
                      "load_average": round(os.getloadavg()[0], 1)}))
    integration.close_dialogs()


# Written by another Python process, so this one stays cold (nothing of torch imported).
_WRITE_DINO = """
import os, sys, torch
from drseg.core.drseg.dino import make_dino
path = os.path.join(sys.argv[1], "dino_vits8_random.pth")
torch.save(make_dino("dino_vits8").model.state_dict(), path)
print(path)
"""
_WRITE_TINY_SAM3 = """
import os, sys
from support.tiny_models import tiny_sam3_config
path = os.path.join(sys.argv[1], "tiny_sam3.json")
tiny_sam3_config().to_json_file(path)
print(path)
"""


def _in_another_process(folder: str, source: str) -> str:
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), TESTS) if p)
    done = subprocess.run([sys.executable, "-c", source, folder], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def _synthetic_scene(folder: str) -> str:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path = os.path.join(folder, "scene.tif")
    data = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 6000000, 1, 1)) as dst:
        dst.write(data)
    return path


def _tiny_clip_config(folder: str) -> str:
    from support.tiny_models import write_tiny_clip_config

    return write_tiny_clip_config(folder)


if __name__ == "__main__":
    main()
