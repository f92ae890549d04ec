"""The dock's adapter field, driven with clicks: adapters of the model cache are listed and
remembered, 'Adapt…' opens drseg:adaptmodel writing into the cache, and the adapter reaches the
engine and changes the class map."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import torch
from conftest_qgis import (drseg_provider, isolated_settings, raster_layer,  # noqa: F401
                           tiny_clip, wait_for)
from qgis.core import Qgis
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from support.rasters import write_halves_raster
from test_dock import dock  # noqa: F401 (the dock fixture)

from drseg.core.adapt.adapter import Adapter, ClassPrompt, save_adapter
from drseg.ui.dock import DrSegDock

CLASSES = ("building", "water")


@pytest.fixture
def tiny_weights(tmp_path_factory, tiny_clip):
    """A weights file of the tiny CLIP (the adapter's base must be the same weights each run)."""
    from safetensors.torch import save_file

    from drseg.core.models.clip import load_clip

    torch.manual_seed(0)
    model = load_clip(tiny_clip, "random", "cpu")[0]
    path = str(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def water_adapter(path, config, weights, bias=1.0):
    """A calibration adapter whose only effect is a large bias towards 'water'."""
    prompts = {c: ClassPrompt(c, bias=bias if c == "water" else 0.0) for c in CLASSES}
    adapter = Adapter("calibrate", config, weights, list(CLASSES), prompts, -0.3,
                      metrics={"before": {"mIoU": 10.0}, "after": {"mIoU": 90.0}})
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    return save_adapter(adapter, str(path))


def fill(dock, project, tmp_path, config, weights):
    layer = raster_layer(write_halves_raster(tmp_path / "scene.tif"), "scene")
    project.addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText("; ".join(CLASSES))
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(config)
    dock.clip_weights_widget.setFilePath(weights)
    dock.raster_check.setChecked(True)
    return layer


def click_run(dock, out):
    dock.output_widget.setFilePath(str(out))
    finished = []
    dock.runFinished.connect(finished.append)
    QTest.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    assert wait_for(lambda: finished, 90), "the run did not finish"
    dock.runFinished.disconnect()
    assert finished[0].succeeded, finished[0].error
    with rasterio.open(str(out).replace(".gpkg", ".tif")) as src:
        return finished[0], src.read(1)


def test_the_adapter_reaches_the_engine_and_changes_the_class_map(dock, qgis_iface, qgis_new_project,
                                                                  isolated_settings, tmp_path,
                                                                  tiny_clip, tiny_weights):
    water_adapter(isolated_settings / "adapters" / "lake.safetensors", tiny_clip, tiny_weights)
    dock.adapter_field.refresh()
    fill(dock, qgis_new_project, tmp_path, tiny_clip, tiny_weights)
    assert [dock.adapter_field.combo.itemText(i) for i in range(dock.adapter_field.combo.count())] \
        == ["", "lake"]
    assert "held-out mIoU 10.0 -> 90.0" in dock.adapter_field.combo.itemData(1, Qt.ItemDataRole.ToolTipRole)

    plain_task, plain = click_run(dock, tmp_path / "plain.gpkg")
    assert plain_task.request.adapter is None
    QTest.keyClicks(dock.adapter_field.combo.lineEdit(), "lake")
    adapted_task, adapted = click_run(dock, tmp_path / "adapted.gpkg")

    assert adapted_task.request.adapter == "lake"
    assert (adapted == 2).all()                       # the bias makes every pixel water
    assert not (plain == 2).all()                     # ... which it was not without it
    success = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success)[-1]
    assert "Adapter 'lake' (calibrate, classes: building, water)" in success


def test_an_unknown_adapter_stops_before_the_run(dock, qgis_iface, qgis_new_project, tmp_path,
                                                 tiny_clip, tiny_weights):
    fill(dock, qgis_new_project, tmp_path, tiny_clip, tiny_weights)
    QTest.keyClicks(dock.adapter_field.combo.lineEdit(), "pasture")
    QTest.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    assert not dock.is_running()
    (error,) = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)
    assert "'pasture' not found" in error


def test_the_adapter_is_remembered_with_the_dock(qgis_iface, qgis_new_project, isolated_settings,
                                                 tmp_path):
    first = DrSegDock(qgis_iface)
    QTest.keyClicks(first.adapter_field.combo.lineEdit(), str(tmp_path / "mine.safetensors"))
    first.shutdown()
    first.deleteLater()
    second = DrSegDock(qgis_iface)
    try:
        assert second.adapter_field.value() == str(tmp_path / "mine.safetensors")
    finally:
        second.shutdown()
        second.deleteLater()


def test_adapt_opens_the_processing_dialog_and_chooses_its_adapter(dock, qgis_new_project,
                                                                   isolated_settings, drseg_provider,
                                                                   tmp_path, tiny_clip, tiny_weights,
                                                                   monkeypatch):
    import processing

    layer = fill(dock, qgis_new_project, tmp_path, tiny_clip, tiny_weights)
    opened = []

    def dialog(algorithm_id, parameters):          # the user fills in the labels and clicks Run
        opened.append((algorithm_id, dict(parameters)))
        water_adapter(parameters["OUTPUT"], parameters["CLIP_MODEL"], parameters["CLIP_WEIGHTS"])
        return {"OUTPUT": parameters["OUTPUT"]}

    monkeypatch.setattr(processing, "execAlgorithmDialog", dialog)
    QTest.mouseClick(dock.adapter_field.adapt_button, Qt.MouseButton.LeftButton)

    ((algorithm_id, parameters),) = opened
    assert algorithm_id == "drseg:adaptmodel"
    assert parameters["INPUT"] is layer
    assert (parameters["CLIP_MODEL"], parameters["CLIP_WEIGHTS"]) == (tiny_clip, tiny_weights)
    assert parameters["OUTPUT"] == str(isolated_settings / "adapters" / "scene-adapter.safetensors")
    assert dock.adapter_field.value() == "scene-adapter"         # chosen, by its catalog name
    # a second adapter of the same layer gets a new name
    QTest.mouseClick(dock.adapter_field.adapt_button, Qt.MouseButton.LeftButton)
    assert opened[1][1]["OUTPUT"].endswith("scene-adapter-2.safetensors")
    assert dock.adapter_field.combo.findText("scene-adapter-2") > 0
