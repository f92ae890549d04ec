"""Shared helpers and fixtures of the QGIS-side tests (plugin, dock, task, Processing).

Test modules import what they use from here (`from conftest_qgis import ...`); fixtures imported
into a test module are found by pytest like local ones.
"""
from __future__ import annotations

import contextlib
import os
import time

import pytest
from qgis.core import QgsApplication, QgsRasterLayer

from conftest import REPO_ROOT, put_in_cache, unshadow_qgis_processing  # noqa: F401 (re-exported)
# Re-exported for compatibility: test modules (also on branches not yet merged) import these
# names from conftest_qgis; new code imports them from support.*.
from support.oracles import ColourScorer, FakeModels  # noqa: F401
from support.rasters import ORIGIN, UTM, write_halves_raster as write_raster  # noqa: F401
from support.tiny_models import TINY_CLIP_CONFIG, write_tiny_clip_config  # noqa: F401


unshadow_qgis_processing()


def raster_layer(path, name="scene") -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name, "gdal")
    assert layer.isValid(), path
    return layer


def run_algorithm(algorithm, parameters, load_results: bool = False, **kwargs):
    """processing.run (or runAndLoadResults, as the toolbox does) from QGIS's Processing plugin."""
    import processing

    if load_results:
        with desktop_layer_tree_view():
            return processing.runAndLoadResults(algorithm, parameters, **kwargs)
    return processing.run(algorithm, parameters, **kwargs)


@contextlib.contextmanager
def desktop_layer_tree_view():
    """A real layer tree view of the project behind `iface.layerTreeView()`, as QGIS desktop has:
    from QGIS 3.44 on, Processing adds result layers through it (C++, refusing pytest-qgis's mock)."""
    from qgis.core import QgsLayerTreeModel, QgsProject
    from qgis.gui import QgsLayerTreeView
    from qgis.utils import iface

    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), view))
    iface.layerTreeView = lambda: view
    try:
        yield view
    finally:
        del iface.layerTreeView


@contextlib.contextmanager
def canvas_showing(iface, layer):
    """The map canvas on `layer` (its CRS and extent) for clicks; its map tool unset afterwards."""
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(layer.extent())
    canvas.refresh()
    try:
        yield canvas
    finally:
        if canvas.mapTool() is not None:
            canvas.unsetMapTool(canvas.mapTool())


def wait_for(predicate, timeout: float = 60.0, step: float = 0.01) -> bool:
    """Process Qt events until predicate() is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QgsApplication.processEvents()
        if predicate():
            return True
        time.sleep(step)
    QgsApplication.processEvents()
    return bool(predicate())


def files_under(folder) -> list:
    """Every file and folder below `folder`, hidden ones included, as sorted relative paths."""
    found = []
    for root, dirs, files in os.walk(str(folder)):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), str(folder)))
    return sorted(found)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Path of the tiny open_clip config (one per session, so the model cache is reused)."""
    return write_tiny_clip_config(tmp_path_factory.mktemp("model"))


@pytest.fixture
def drseg_provider(qgis_processing, isolated_settings):
    """The DR-Seg Processing provider, registered for the test (with an empty model cache)."""
    from drseg.processing.provider import DrSegProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("drseg")
    if existing is not None:
        yield existing
        return
    provider = DrSegProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


@pytest.fixture
def isolated_settings(monkeypatch, tmp_path_factory):
    """An empty model cache and no settings file: the dock and Processing see a fresh install
    (no DINO weights). Returns the cache folder (not created)."""
    folder = tmp_path_factory.mktemp("drseg_home")
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(folder / "models"))
    monkeypatch.setenv("DRSEG_CONFIG", str(folder / "settings.json"))
    return folder / "models"


@pytest.fixture
def plugin_iface(qgis_iface, monkeypatch, tmp_path):
    """pytest-qgis's iface with an empty message bar, an empty plugin packages folder
    (tmp_path/pkgs) on a sys.path restored afterwards, and the start-up check's state reset; the
    plugin's dialogs are closed afterwards."""
    import sys

    from drseg.core import dependencies
    from drseg.ui import integration

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv(dependencies.PACKAGES_ENV, str(tmp_path / "pkgs"))
    monkeypatch.setattr(integration, "_warning_widget", None)
    monkeypatch.setattr(integration, "_open_dialogs", {})
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    bar.clear_messages()
    yield qgis_iface
    integration.close_dialogs()
    bar.clearWidgets()


def install_buttons(bar) -> list:
    """The 'Install…' buttons of the missing-packages warnings in a message bar."""
    from qgis.PyQt.QtWidgets import QPushButton

    return [b for item in bar.items() for b in item.findChildren(QPushButton, "drsegInstallButton")]


@pytest.fixture
def fake_models(monkeypatch):
    from drseg.core import segment

    fake = FakeModels()
    monkeypatch.setattr(segment, "build_scorer", fake)
    return fake


# The real aerial scene (OpenEarthMap demo tile, Köln, 0.5 m, EPSG:25832), read where it lies:
# the shared/ folder beside the checkout (CI lays a copy there too).
KOELN_SCENE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "oem_koeln_50.tif")


@pytest.fixture
def koeln_scene() -> str:
    if not os.path.isfile(KOELN_SCENE):
        pytest.skip(f"the real aerial scene {KOELN_SCENE} is not on this machine")
    return KOELN_SCENE


def run_like_the_toolbox_dialog(algorithm_id: str, parameters: dict, project, feedback=None):
    """What the toolbox dialog does: prepare on the main thread, run in a QgsProcessingAlgRunnerTask
    of the task manager (worker thread), then processing.gui.Postprocessing's
    handleAlgorithmResults loads the outputs. -> (ok, results, loaded_ok, feedback)."""
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import (QgsProcessingAlgRunnerTask, QgsProcessingContext,
                           QgsProcessingFeedback)

    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    context = QgsProcessingContext()
    context.setProject(project)
    feedback = feedback or QgsProcessingFeedback()
    done = {}

    def on_complete(ok, results):
        done["ok"], done["results"] = ok, results
        if ok:
            done["loaded"] = handleAlgorithmResults(algorithm, context, feedback, False, parameters)

    task = QgsProcessingAlgRunnerTask(algorithm, parameters, context, feedback)
    if task.isCanceled():  # prepareAlgorithm failed, as the dialog handles it
        on_complete(False, {})
    else:
        task.executed.connect(on_complete)
        QgsApplication.taskManager().addTask(task)
    assert wait_for(lambda: "ok" in done, timeout=120)
    return done["ok"], done["results"], done.get("loaded"), feedback
