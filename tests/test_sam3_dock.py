"""The dock's engine choice (Classes tab): SAM 3 and hybrid runs with the real SAM 3 architecture
at tiny size, the SAM 3 weights field shown only when an engine uses it."""
from __future__ import annotations

import pytest
from conftest_qgis import isolated_settings, raster_layer, tiny_clip, wait_for, write_raster  # noqa: F401
from qgis.core import Qgis, QgsVectorLayer

from drseg.ui.dock import METHOD_CLIP, METHOD_DRSEG, DrSegDock


@pytest.fixture
def dock(qgis_iface, qgis_new_project, isolated_settings):  # noqa: F811
    qgis_iface.messageBar().clear_messages()
    widget = DrSegDock(qgis_iface)
    yield widget
    widget.shutdown()
    widget.deleteLater()


def fill_form(dock, project, tmp_path, tiny_clip, tiny_sam3_json, engine):  # noqa: F811
    layer = raster_layer(write_raster(tmp_path / "scene.tif"), "scene")
    project.addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText("building,roof; water")
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(tiny_clip)
    dock.clip_weights_widget.setFilePath("random")
    dock.set_method(METHOD_CLIP)
    dock.engine_combo.setCurrentIndex(dock.engine_combo.findData(engine))
    dock.sam3_model = tiny_sam3_json
    dock.sam3_weights_widget.setFilePath("random")
    dock.threshold_spin.setValue(0.0)
    dock.output_widget.setFilePath(str(tmp_path / "result.gpkg"))
    return layer


def test_sam3_weights_field_follows_the_engine(dock):
    assert dock.engine() is None and dock.sam3_weights_widget.isHidden()
    for engine, shown in (("sam3", True), ("hybrid", True), (None, False)):
        dock.engine_combo.setCurrentIndex(dock.engine_combo.findData(engine))
        assert dock.sam3_weights_widget.isHidden() is not shown


def test_sam3_alone_does_not_need_dino_weights(dock, qgis_new_project, tmp_path, tiny_clip,  # noqa: F811
                                              tiny_sam3_json):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, tiny_sam3_json, "sam3")
    dock.set_method(METHOD_DRSEG)  # no DINO weights are set up, but SAM 3 does not use them
    request = dock.build_request()
    assert (request.engine, request.sam3_model, request.sam3_weights) == ("sam3", tiny_sam3_json, "random")


@pytest.mark.parametrize("engine, label", [("sam3", "SAM 3"), ("hybrid", "SAM 3 + CLIP hybrid")])
def test_run_with_a_sam3_engine_adds_the_same_layers(dock, qgis_iface, qgis_new_project, tmp_path,
                                                     tiny_clip, tiny_sam3_json, engine, label):  # noqa: F811
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, tiny_sam3_json, engine)
    finished = []
    dock.runFinished.connect(finished.append)
    dock.run_button.click()
    assert wait_for(lambda: finished, 120), "the run did not finish"
    assert finished[0].succeeded, finished[0].error
    success = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Success)
    assert len(success) == 1 and f"{label} on cpu" in success[0]
    layer = QgsVectorLayer(str(tmp_path / "result.gpkg"), "r", "ogr")
    assert layer.isValid() and layer.crs() == dock.layer_combo.currentLayer().crs()
    assert {"class", "class_id", "score", "area_m2"} <= set(layer.fields().names())
    assert {f["class"] for f in layer.getFeatures()} <= {"building", "water"}
