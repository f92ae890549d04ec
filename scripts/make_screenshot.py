"""Makes resources/screenshot.png for the README: real QGIS desktop (under Xvfb) with the DR-Seg
dock beside a map of resources/sample_scene.tif and the result layer of a run from the dock.

CLIP weights cannot be downloaded where this is made, so the run uses a colour oracle: a window
scorer that knows the sample scene's colours (scripts/make_sample.py) and is injected into the
dock's task, like the colour oracles of the test suite. The image carries a caption saying so.

    .venv/bin/python scripts/make_screenshot.py [OUTPUT.png]

Needs qgis.bin and xvfb-run. The script runs twice: here it prepares a fresh QGIS profile and
starts QGIS with `--code` on itself; inside QGIS it drives the dock, grabs the window and quits.
Back here the PNG is reduced to a 256-colour palette (Pillow) to keep it small.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "resources", "sample_scene.tif")
DEFAULT_OUTPUT = os.path.join(REPO, "resources", "screenshot.png")
SIZE = (1200, 700)
CLASSES = "building,roof; road,street; tree,forest; water,pond; grass; field"
CAPTION = ("Result from a colour oracle (as in the test suite) on the synthetic sample scene; "
           "real runs use CLIP (and DINO for DR-Seg).")
STAGE_ENV = "DRSEG_SCREENSHOT_STAGE"

# Colours of the sample scene (scripts/make_sample.py): a few prototypes per query word.
PROTOTYPES = {
    "building": [(172, 74, 60), (182, 84, 66), (160, 60, 50), (176, 80, 62), (150, 150, 156),
                 (166, 166, 170)],
    "road": [(128, 126, 122)],
    "tree": [(40, 78, 36)],
    "water": [(38, 70, 92)],
    "grass": [(118, 150, 72)],
    "field": [(176, 160, 104), (162, 147, 96)],
}
ALIASES = {"roof": "building", "street": "road", "forest": "tree", "pond": "water"}


class SampleColourOracle:
    """Window scorer (core/sliding.py's protocol): per 4×4-pixel token, a query's logit is
    1 − (distance of the token's mean colour to the nearest prototype of the query) / 100."""

    logit_scale = 50.0
    patch = 4

    def __init__(self):
        self.queries = []

    def set_queries(self, queries):
        self.queries = [ALIASES.get(q, q) for q in queries]

    def score_windows(self, images):
        import numpy as np

        b, _, h, w = images.shape
        p = self.patch
        pooled = images.reshape(b, 3, h // p, p, w // p, p).astype(np.float32).mean(axis=(3, 5))
        logits = []
        for query in self.queries:
            best = None
            for colour in PROTOTYPES.get(query, [(255, 0, 255)]):
                target = np.asarray(colour, np.float32)[None, :, None, None]
                distance = np.sqrt(((pooled - target) ** 2).sum(axis=1))
                best = distance if best is None else np.minimum(best, distance)
            logits.append(1.0 - best / 100.0)
        return np.stack(logits, axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- inside QGIS

def inside_qgis(output: str, scene: str) -> None:
    import time
    import traceback

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QRect, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QPainter
    from qgis.PyQt.QtWidgets import QDockWidget
    from qgis.utils import iface

    try:
        import drseg

        window = iface.mainWindow()
        window.showNormal()
        window.resize(*SIZE)
        plugin = drseg.classFactory(iface)
        plugin.initGui()
        layer = QgsRasterLayer(scene, "sample_scene")
        QgsProject.instance().addMapLayer(layer)
        plugin.action.trigger()
        dock = plugin.dock
        dock.layer_combo.setLayer(layer)
        dock.classes_edit.setPlainText(CLASSES)
        dock.output_folder = tempfile.mkdtemp  # the automatic name, in a folder of its own
        dock.scorer = SampleColourOracle()
        finished = []
        dock.runFinished.connect(finished.append)
        if dock.run() is None:
            raise RuntimeError(f"the run did not start: {dock.status_label.text()}")
        started = time.time()
        while not finished and time.time() - started < 120:
            QgsApplication.processEvents()
            time.sleep(0.02)
        if not finished or not finished[0].succeeded:
            raise RuntimeError(f"the run failed: {finished[0].error if finished else 'timeout'} "
                               f"({dock.status_label.text()})")
        vector, _raster = dock.last_layers
        vector.setOpacity(0.75)  # the scene shows through a little
        for panel in ("Browser", "Browser2", "LayerStyling"):
            widget = window.findChild(QDockWidget, panel)
            if widget is not None:
                widget.hide()
        iface.layerTreeView().expandAll()  # the result's classes shown, the scene's bands folded
        QgsApplication.processEvents()
        QgsProject.instance().layerTreeRoot().findLayer(layer.id()).setExpanded(False)
        layers_panel = window.findChild(QDockWidget, "Layers")
        if layers_panel is not None:
            window.resizeDocks([layers_panel, dock], [215, 520], Qt.Orientation.Horizontal)
        iface.messageBar().clearWidgets()  # the report is in the dock's status line too
        canvas = iface.mapCanvas()
        canvas.setExtent(layer.extent())
        canvas.refreshAllLayers()
        for _ in range(50):
            QgsApplication.processEvents()
            time.sleep(0.02)
        canvas.waitWhileRendering()
        QgsApplication.processEvents()
        image = window.grab().toImage()
        painter = QPainter(image)
        band = QRect(0, image.height() - 26, image.width(), 26)
        painter.fillRect(band, QColor(255, 255, 225))
        font = QFont()
        font.setPointSize(10)
        font.setItalic(True)
        painter.setFont(font)
        painter.setPen(QColor(60, 60, 60))
        painter.drawText(band.adjusted(10, 0, -10, 0),
                         int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft), CAPTION)
        painter.end()
        if not image.save(output, "PNG"):
            raise RuntimeError(f"cannot write {output}")
        QgsProject.instance().setDirty(False)
    except Exception:
        with open(output + ".error", "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
    os._exit(0)


# ----------------------------------------------------------------------------- launcher

def launch(output: str) -> int:
    qgis_bin, xvfb = shutil.which("qgis.bin"), shutil.which("xvfb-run")
    if not qgis_bin or not xvfb:
        print("qgis.bin and xvfb-run are needed", file=sys.stderr)
        return 2
    import site

    work = tempfile.mkdtemp(prefix="drseg-screenshot-")
    raw = os.path.join(work, "raw.png")
    scene = os.path.join(work, "sample_scene.tif")  # QGIS leaves an .aux.xml beside what it opens
    shutil.copy(SAMPLE, scene)
    config = os.path.join(work, "config")
    os.makedirs(os.path.join(config, "profiles", "default", "QGIS"))
    with open(os.path.join(config, "profiles", "default", "QGIS", "QGIS3.ini"), "w") as handle:
        handle.write("[qgis]\nshowTips=false\ncheckVersion=false\n"
                     "[app]\nnewsfeed\\enabled=false\n")
    site_dirs = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    bootstrap = os.path.join(work, "bootstrap.py")
    with open(bootstrap, "w", encoding="utf-8") as handle:
        # QGIS runs its own Python: make the venv's packages (and drseg's editable install,
        # a .pth file) importable, then run this file's QGIS stage.
        handle.write("import site, runpy, sys\n"
                     + "".join(f"sys.path.insert(0, {d!r}); site.addsitedir({d!r})\n"
                               for d in site_dirs)
                     + f"sys.argv = [{__file__!r}, {raw!r}, {scene!r}]\n"
                     + f"runpy.run_path({__file__!r}, run_name='__main__')\n")
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=config, **{STAGE_ENV: "qgis"},
               DRSEG_CACHE_DIR=os.path.join(work, "models"), DRSEG_CONFIG=os.path.join(work, "s.json"))
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x800x24", qgis_bin, "--nologo",
                           "--noversioncheck", "--code", bootstrap],
                          env=env, cwd=work, capture_output=True, text=True, timeout=300)
    if os.path.exists(raw + ".error"):
        print(open(raw + ".error").read(), file=sys.stderr)
        return 1
    if not os.path.exists(raw):
        print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
        return 1
    try:
        from PIL import Image

        Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE).save(output, optimize=True)
    except ImportError:
        shutil.copy(raw, output)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{output}: {os.path.getsize(output) // 1024} KB")
    return 0


if __name__ == "__main__":
    if os.environ.get(STAGE_ENV) == "qgis":
        inside_qgis(sys.argv[1], sys.argv[2])
    else:
        sys.exit(launch(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
