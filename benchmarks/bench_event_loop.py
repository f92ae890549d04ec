"""QGIS's event loop during a whole dock run, first run of a session included: the longest gap
between ticks of a 10-ms QTimer (a stall the user feels as a frozen window), printed.

    QT_QPA_PLATFORM=offscreen PYTHONPATH=.. .venv/bin/python benchmarks/bench_event_loop.py \\
        [--raster PATH] [--clip-model ViT-B-16|CONFIG.json] [--clip-weights random|openai|FILE]

Default: a synthetic 512×512 scene and a tiny CLIP of the real architecture with random weights
(the imports and the task machinery are real; the model is small). Run it in a fresh process:
the first Run imports torch and open_clip. The machine's load average is printed with the
numbers: on a loaded machine the process waits for a CPU too, which no code of ours can avoid.
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
    args = parser.parse_args()
    sys.path.insert(0, TESTS)  # the tests' bare QGIS and tiny models
    folder = tempfile.mkdtemp(prefix="drseg-bench-loop-")
    os.environ.setdefault("DRSEG_CONFIG", os.path.join(folder, "settings.json"))

    raster = args.raster or _synthetic_scene(folder)
    clip_model = args.clip_model or _tiny_clip_config(folder)

    from support.bare_qgis import start_bare_qgis

    app, iface = start_bare_qgis()
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer

    from drseg.ui.dock import DrSegDock

    dock = DrSegDock(iface)
    layer = QgsRasterLayer(raster, "scene")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText("building; road; tree; water")
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(clip_model)
    dock.clip_weights_widget.setFilePath(args.clip_weights)

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
        print(json.dumps({"run": run + 1, "cold": run == 0, "ok": task.succeeded,
                          "seconds": round(ticks[-1] - started, 2),
                          "longest_stall_ms": round(1000 * max(gaps), 1),
                          "stalls_over_250ms": sum(g > 0.25 for g in gaps),
                          "load_average": round(os.getloadavg()[0], 1)}))
    dock.shutdown()
    app.exitQgis()


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
