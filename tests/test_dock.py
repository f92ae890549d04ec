"""The dock widget, driven like a user: pick a layer, type classes, click Run."""
from __future__ import annotations

import os

import pytest
from conftest_qgis import (fake_models, files_under, isolated_settings, koeln_scene,  # noqa: F401
                           plugin_iface, put_in_cache, raster_layer, tiny_clip, wait_for)
from support.rasters import write_halves_raster as write_raster
from qgis.core import (Qgis, QgsApplication, QgsCategorizedSymbolRenderer, QgsCoordinateReferenceSystem,
                       QgsPalettedRasterRenderer, QgsRasterLayer, QgsRectangle)

from drseg.core.colors import class_colour
from drseg.ui.dock import AREA_CANVAS, DrSegDock


@pytest.fixture
def dock(qgis_iface, qgis_new_project, isolated_settings):
    qgis_iface.messageBar().clear_messages()
    widget = DrSegDock(qgis_iface)
    yield widget
    widget.shutdown()
    widget.deleteLater()


def messages(iface, level):
    return iface.messageBar().get_messages(level)


def fill_form(dock, project, tmp_path, tiny_clip, classes="building,roof; water; tree", **raster_kw):
    layer = raster_layer(write_raster(tmp_path / "scene.tif", **raster_kw), "scene")
    project.addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText(classes)
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(tiny_clip)
    dock.clip_weights_widget.setFilePath("random")
    dock.output_widget.setFilePath(str(tmp_path / "result.gpkg"))
    return layer


def test_run_adds_a_styled_polygon_layer_and_class_raster(dock, qgis_iface, qgis_new_project,
                                                          tmp_path, tiny_clip):
    layer = fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    assert [c.currentBand() for c in dock.band_combos] == [1, 2, 3]
    dock.raster_check.setChecked(True)
    started, finished = [], []
    dock.runStarted.connect(started.append)
    dock.runFinished.connect(finished.append)

    dock.run_button.click()

    assert len(started) == 1 and dock.is_running()
    assert not dock.run_button.isEnabled() and dock.cancel_button.isEnabled()
    assert wait_for(lambda: finished, 60), "the run did not finish"
    assert finished[0].succeeded, finished[0].error
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()
    assert dock.progress_bar.value() == 100

    success = messages(qgis_iface, Qgis.MessageLevel.Success)
    assert len(success) == 1 and "polygons" in success[0] and " on cpu in " in success[0]
    assert messages(qgis_iface, Qgis.MessageLevel.Critical) == []

    vector, raster = dock.last_layers
    assert os.path.isfile(tmp_path / "result.gpkg") and os.path.isfile(tmp_path / "result.tif")
    assert vector.id() in qgis_new_project.mapLayers() and raster.id() in qgis_new_project.mapLayers()
    # Named from the raster, the classes and the time: runs on other rasters stay apart.
    stamp = group.name().rsplit(" ", 1)[1] if (group := qgis_new_project.layerTreeRoot().children()[0]) else ""
    assert vector.name() == f"scene: building, water, tree ({stamp})"
    assert raster.name() == f"scene: building, water, tree ({stamp}) (class raster)"
    assert vector.crs() == layer.crs() and raster.crs() == layer.crs()
    assert vector.featureCount() > 0
    renderer = vector.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "class"
    colours = {c.value(): c.symbol().color().getRgb()[:3] for c in renderer.categories()}
    assert colours == {name: class_colour(name) for name in ("building", "water", "tree")}
    assert isinstance(raster.renderer(), QgsPalettedRasterRenderer)
    assert (raster.width(), raster.height()) == (layer.width(), layer.height())
    group = qgis_new_project.layerTreeRoot().children()[0]
    assert group.name().startswith("DR-Seg: scene ")
    assert {n.layerId() for n in group.findLayers()} == {vector.id(), raster.id()}


@pytest.mark.parametrize("text", ["", "  ;  ; ,"])
def test_empty_prompt_shows_an_error_and_starts_nothing(dock, qgis_iface, qgis_new_project, tmp_path,
                                                        tiny_clip, text):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, classes=text)
    tasks_before = QgsApplication.taskManager().count()
    started = []
    dock.runStarted.connect(started.append)

    dock.run_button.click()

    errors = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert len(errors) == 1 and "class prompt is empty" in errors[0]
    assert started == [] and not dock.is_running()
    assert QgsApplication.taskManager().count() == tasks_before
    assert dock.run_button.isEnabled()
    assert files_under(tmp_path) == ["scene.tif"]


def test_no_layer_and_non_file_raster_are_refused_before_starting(dock, qgis_iface, qgis_new_project,
                                                                  tmp_path, tiny_clip):
    dock.classes_edit.setPlainText("water")
    assert dock.layer_combo.currentLayer() is None  # an empty project
    assert dock.run() is None
    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png", "tiles", "wms")
    assert xyz.isValid()
    qgis_new_project.addMapLayer(xyz)
    dock.layer_combo.setLayer(xyz)
    assert dock.run() is None

    errors = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert len(errors) == 2
    assert "Choose a raster layer" in errors[0]
    assert "'tiles' is a 'wms' layer, not a raster file" in errors[1]
    assert not dock.is_running()


def test_band_choice_defaults_and_checks(dock, qgis_iface, qgis_new_project, tmp_path, tiny_clip):
    grey = raster_layer(write_raster(tmp_path / "grey.tif", bands=1), "grey")
    five = raster_layer(write_raster(tmp_path / "five.tif", bands=5), "five")
    qgis_new_project.addMapLayers([grey, five])
    dock.layer_combo.setLayer(grey)
    assert [c.currentBand() for c in dock.band_combos] == [1, -1, -1]
    assert dock.selected_bands() == [1]
    dock.layer_combo.setLayer(five)
    assert [c.currentBand() for c in dock.band_combos] == [1, 2, 3]
    for combo, band in zip(dock.band_combos, (5, 4, 2)):
        combo.setBand(band)
    assert dock.selected_bands() == [5, 4, 2]
    dock.band_combos[2].setBand(-1)  # green without blue
    dock.classes_edit.setPlainText("water")
    assert dock.run() is None
    assert "both a green and a blue band" in messages(qgis_iface, Qgis.MessageLevel.Critical)[-1]


def test_canvas_extent_is_transformed_into_the_layer_crs(dock, qgis_iface, qgis_new_project, tmp_path,
                                                         tiny_clip):
    layer = fill_form(dock, qgis_new_project, tmp_path, tiny_clip, width=200, height=100)
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    from qgis.core import QgsCoordinateTransform

    to_map = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(),
                                    qgis_new_project)
    inner = QgsRectangle(500050.0, 5999920.0, 500120.0, 5999970.0)  # inside the 200×100 m raster
    canvas.setExtent(to_map.transformBoundingBox(inner))
    canvas.refresh()
    dock.area_combo.setCurrentIndex(dock.area_combo.findData(AREA_CANVAS))

    request = dock.build_request()

    xmin, ymin, xmax, ymax = request.extent
    visible = canvas.extent()  # the canvas keeps its aspect ratio, so it can show a bit more
    back = QgsCoordinateTransform(canvas.mapSettings().destinationCrs(), layer.crs(),
                                  qgis_new_project).transformBoundingBox(visible)
    expected = back.intersect(layer.extent())
    assert (xmin, ymin, xmax, ymax) == pytest.approx(
        (expected.xMinimum(), expected.yMinimum(), expected.xMaximum(), expected.yMaximum()), abs=0.01)
    assert 500000.0 <= xmin <= 500050.0 and 500120.0 <= xmax <= 500200.0
    # Whole layer: no extent at all.
    dock.area_combo.setCurrentIndex(0)
    assert dock.build_request().extent is None
    # A canvas far away from the raster: refused before starting.
    canvas.setExtent(QgsRectangle(0, 0, 1000, 1000))
    canvas.refresh()
    dock.area_combo.setCurrentIndex(dock.area_combo.findData(AREA_CANVAS))
    assert dock.run() is None
    assert "does not overlap" in messages(qgis_iface, Qgis.MessageLevel.Critical)[-1]


def test_default_output_goes_to_a_new_file_named_after_the_layer(dock, qgis_new_project, tmp_path,
                                                                 tiny_clip, monkeypatch):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    dock.output_widget.setFilePath("")
    monkeypatch.setattr(dock, "output_folder", lambda: str(tmp_path))
    (tmp_path / "scene_drseg.gpkg").write_bytes(b"an older result")
    dock.raster_check.setChecked(True)
    request = dock.build_request()
    assert request.out_vector == str(tmp_path / "scene_drseg_1.gpkg")
    assert request.out_raster == str(tmp_path / "scene_drseg_1.tif")
    dock.resolution_spin.setValue(2.5)
    dock.threshold_spin.setValue(0.55)
    request = dock.build_request()
    assert request.resolution == 2.5 and request.threshold == pytest.approx(0.55)
    assert request.bands == [1, 2, 3] and request.device == "cpu"


def test_cancel_button_stops_the_run_without_layers_or_files(dock, qgis_iface, qgis_new_project,
                                                             tmp_path, tiny_clip):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, width=1024, height=1024)
    before = files_under(tmp_path)
    finished = []
    dock.runFinished.connect(finished.append)

    dock.run_button.click()
    assert dock.is_running()
    dock.cancel_button.click()
    assert wait_for(lambda: finished, 60)

    assert finished[0].was_cancelled
    assert dock.last_layers == (None, None)
    assert list(qgis_new_project.mapLayers().values())[0].name() == "scene"
    assert len(qgis_new_project.mapLayers()) == 1
    assert files_under(tmp_path) == before
    assert any("cancelled" in m for m in messages(qgis_iface, Qgis.MessageLevel.Info))
    assert dock.run_button.isEnabled()


def test_a_cancel_by_qgis_shows_cancelling_and_no_failure(dock, qgis_iface, qgis_new_project,
                                                          tmp_path, tiny_clip, fake_models):
    """QGIS's own cancel (the task manager, or "tasks are running, cancel?" on closing) reaches
    the dock: it says "Cancelling…", then the run ends as cancelled, not as a failed task."""
    from qgis.core import QgsTask

    fake_models.delay = 1.0  # a slow window batch: the cancel lands while one computes
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, width=512, height=512)
    finished, texts = [], []
    dock.runFinished.connect(finished.append)
    dock.run_button.click()
    assert wait_for(lambda: "windows" in dock.status_label.text(), 60)
    task = dock.controls.tasks[0]
    QgsApplication.taskManager().cancelAll()
    assert wait_for(lambda: dock.status_label.text() == "Cancelling…" or finished, 30)
    texts.append(dock.status_label.text())
    assert wait_for(lambda: finished, 60)
    assert texts == ["Cancelling…"]
    assert finished[0].was_cancelled and task.status() == QgsTask.TaskStatus.Complete
    assert dock.status_label.text() == "Cancelled; nothing was written"
    assert not messages(qgis_iface, Qgis.MessageLevel.Critical)


def test_run_without_packages_offers_the_plugins_installer(dock, plugin_iface, qgis_new_project,
                                                           tmp_path, tiny_clip, monkeypatch):
    import sys

    from conftest_qgis import install_buttons

    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip were not installed
    dock.run_button.click()
    assert not dock.is_running()
    (error,) = messages(plugin_iface, Qgis.MessageLevel.Critical)
    assert "open_clip_torch" in error and "Install… button" in error and "pip" in error
    assert "python3 -m pip" not in error
    assert len(install_buttons(plugin_iface.messageBar())) == 1


def test_run_and_cancel_stay_put_when_the_status_changes(dock):
    dock.resize(420, 800)
    dock.show()
    QgsApplication.processEvents()
    before = dock.run_button.mapTo(dock, dock.run_button.rect().topLeft())
    dock.status_label.setText("A long status line " * 12)
    QgsApplication.processEvents()
    dock.status_label.setText("Short")
    QgsApplication.processEvents()
    assert dock.run_button.mapTo(dock, dock.run_button.rect().topLeft()) == before


# -- method: DR-Seg or dense CLIP -----------------------------------------------------------------

def run_and_wait(dock):
    finished = []
    dock.runFinished.connect(finished.append)
    task = dock.run()
    assert task is not None, dock.status_label.text()
    assert wait_for(lambda: finished, 60), "the run did not finish"
    assert finished[0].succeeded, finished[0].error
    return finished[0]


def test_without_dino_weights_dense_clip_is_preselected_with_a_note(dock, isolated_settings):
    assert dock.method() == "clip"
    assert dock.method_note.isVisibleTo(dock)
    note = dock.method_note.text()
    assert "No DINO weights are set up for dino_vitb8" in note and "dense CLIP" in note
    assert "dino-vit-b8" in note and "Download models" in note
    assert not dock.drseg_group.isEnabled()  # DR-Seg's options do not apply to dense CLIP

    put_in_cache(isolated_settings, "dino-vit-b8")  # "downloaded" meanwhile
    dock.refresh_dino_state()                       # (also done whenever the dock is shown)
    assert dock.method() == "drseg" and dock.drseg_group.isEnabled()
    assert not dock.method_note.isVisibleTo(dock)
    assert dock.dino_path == str(isolated_settings / "dino_vitbase8_pretrain.pth")


def test_a_method_the_user_picked_is_kept(dock, isolated_settings):
    put_in_cache(isolated_settings, "dino-vit-b8")
    dock.refresh_dino_state()
    assert dock.method() == "drseg"
    index = dock.method_combo.findData("clip")
    dock.method_combo.setCurrentIndex(index)
    dock.method_combo.activated.emit(index)  # what a user's pick sends
    dock.refresh_dino_state()
    assert dock.method() == "clip" and not dock.method_note.isVisibleTo(dock)


def test_dino_model_change_moves_the_catalog_default_along(dock, isolated_settings):
    put_in_cache(isolated_settings, "dino-vit-s8")   # an entry without a published size
    dock.dino_weights_widget.setFilePath("dinov2-vit-b14")
    dock.dino_model_combo.setCurrentText("dino_vits8")
    assert dock.dino_weights_widget.filePath() == "dino-vit-s8"
    assert dock.method() == "drseg"
    assert dock.dino_path.endswith("dino_deitsmall8_pretrain.pth")


def test_drseg_options_reach_the_engine(dock, qgis_iface, qgis_new_project, tmp_path, tiny_clip,
                                        fake_models):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    weights = tmp_path / "my_dino.pth"
    weights.write_bytes(b"a checkpoint")
    dock.dino_model_combo.setCurrentText("dino_vits8")
    dock.dino_weights_widget.setFilePath(str(weights))
    assert dock.method() == "drseg"  # weights given: DR-Seg is the default
    dock.semantic_ratio_spin.setValue(0.45)
    dock.graph_k_spin.setValue(5)
    dock.rectify_check.setChecked(False)

    run_and_wait(dock)

    (request,) = fake_models.requests
    assert request.method == "drseg" and request.dino_model == "dino_vits8"
    assert request.dino_weights == str(weights)
    assert request.semantic_ratio == pytest.approx(0.45) and request.graph_k == 5
    assert (request.decouple, request.rectify, request.fusion) == (True, False, True)
    (success,) = messages(qgis_iface, Qgis.MessageLevel.Success)
    assert ", DR-Seg on cpu in " in success and "Note" not in success and "CLIP" not in success


def test_dense_clip_fallback_is_reported_with_its_note(dock, qgis_iface, qgis_new_project, tmp_path,
                                                       tiny_clip, fake_models):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    assert dock.method() == "clip"

    task = run_and_wait(dock)

    (request,) = fake_models.requests
    assert request.method == "clip" and request.dino_weights is None
    (success,) = messages(qgis_iface, Qgis.MessageLevel.Success)
    assert ", dense CLIP on cpu in " in success
    assert success.endswith("Plain dense CLIP: no DINO weights are set up for dino_vitb8, so "
                            "DR-Seg's structure rectification was skipped")
    assert task.fallback_note in dock.status_label.text()


def test_the_engines_own_note_is_shown(dock, qgis_iface, qgis_new_project, tmp_path, tiny_clip,
                                       fake_models):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    fake_models.note = "Windows were batched one at a time"
    index = dock.method_combo.findData("clip")
    dock.method_combo.setCurrentIndex(index)
    dock.method_combo.activated.emit(index)  # chosen by the user: no fallback note of our own
    run_and_wait(dock)
    (success,) = messages(qgis_iface, Qgis.MessageLevel.Success)
    assert ", dense CLIP on cpu in " in success
    assert "Windows were batched one at a time" in success and "no DINO weights" not in success


def test_drseg_without_dino_weights_is_refused_with_advice(dock, qgis_iface, qgis_new_project,
                                                           tmp_path, tiny_clip, fake_models):
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    index = dock.method_combo.findData("drseg")
    dock.method_combo.setCurrentIndex(index)
    dock.method_combo.activated.emit(index)
    assert "DR-Seg cannot run" in dock.method_note.text() and dock.method_note.isVisibleTo(dock)

    assert dock.run() is None

    (error,) = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert "DR-Seg needs DINO weights" in error and "dino-vit-b8" in error
    assert "Dense CLIP" in error
    assert fake_models.requests == [] and not dock.is_running()
    # A named checkpoint that is not downloaded says which one.
    dock.dino_weights_widget.setFilePath("rs-dino-vit-b8")
    assert dock.run() is None
    error = messages(qgis_iface, Qgis.MessageLevel.Critical)[-1]
    assert "'rs-dino-vit-b8' are not downloaded" in error
    assert "Import file…" in error and "python -m drseg" not in error  # QGIS's own advice
    dock.dino_weights_widget.setFilePath(str(tmp_path / "gone.pth"))
    assert dock.run() is None
    assert "gone.pth' does not exist" in messages(qgis_iface, Qgis.MessageLevel.Critical)[-1]


# -- settings and memory ----------------------------------------------------------------------------

def test_saving_the_settings_keeps_weights_typed_in_the_dock(dock, tmp_path):
    from dataclasses import replace

    typed_clip, typed_sam = str(tmp_path / "my_clip.pt"), str(tmp_path / "my_sam.pth")
    dock.clip_weights_widget.setFilePath(typed_clip)
    dock.refer_panel.sam_weights_widget.setFilePath(typed_sam)
    # The settings dialog saved (another window size, the same weights as before).
    dock.apply_settings(replace(dock.settings, window=448, stride=224))
    assert dock.clip_weights_widget.filePath() == typed_clip
    assert dock.refer_panel.sam_weights_widget.filePath() == typed_sam
    assert (dock.window_spin.value(), dock.stride_spin.value()) == (448, 224)
    # A field the user left as the settings had it follows the new settings.
    dock.apply_settings(replace(dock.settings, clip_model="ViT-L-14"))
    assert dock.clip_model_combo.currentText() == "ViT-L-14"


def test_the_dock_remembers_classes_threshold_and_weights(qgis_iface, qgis_new_project,
                                                         isolated_settings, tmp_path):
    first = DrSegDock(qgis_iface)
    first.classes_edit.setPlainText("roof; pond")
    first.threshold_spin.setValue(0.42)
    first.clip_weights_widget.setFilePath(str(tmp_path / "clip.pt"))
    first.refer_panel.sam_weights_widget.setFilePath(str(tmp_path / "sam.pth"))
    first.shutdown()  # QGIS closes
    first.deleteLater()

    second = DrSegDock(qgis_iface)  # the next session
    try:
        assert second.classes_edit.toPlainText() == "roof; pond"
        assert second.threshold_spin.value() == pytest.approx(0.42)
        assert second.clip_weights_widget.filePath() == str(tmp_path / "clip.pt")
        assert second.refer_panel.sam_weights_widget.filePath() == str(tmp_path / "sam.pth")
    finally:
        second.shutdown()
        second.deleteLater()


# -- details ------------------------------------------------------------------------------------------

def test_the_dock_opens_wide_enough_for_its_form(dock):
    from qgis.PyQt.QtWidgets import QScrollArea

    dock.resize(dock.minimumSizeHint().width(), 900)
    dock.show()
    QgsApplication.processEvents()
    scroll = dock.modes.widget(0)
    assert isinstance(scroll, QScrollArea)
    viewport = scroll.viewport().width()
    for widget in (dock.cancel_button, *dock.band_combos):
        right = widget.mapTo(scroll.widget(), widget.rect().topRight()).x()
        assert right <= viewport, widget  # nothing cut off on the right
    dock.shutdown()
    dock.deleteLater()


def test_the_layer_box_skips_earlier_results(qgis_iface, qgis_new_project, isolated_settings,
                                             tmp_path):
    from drseg.qgis_bridge.results import mark_result

    result = raster_layer(write_raster(tmp_path / "a_classes.tif"), "a_classes")  # first by name
    mark_result(result)
    scene = raster_layer(write_raster(tmp_path / "scene.tif"), "scene")
    qgis_new_project.addMapLayers([result, scene])
    widget = DrSegDock(qgis_iface)
    try:
        assert widget.layer_combo.currentLayer() is scene
    finally:
        widget.shutdown()
        widget.deleteLater()


def test_an_empty_result_is_a_warning_with_a_hint(dock, qgis_iface, qgis_new_project, tmp_path,
                                                  tiny_clip, fake_models):
    # Two classes the colour scorer scores alike: each 0.5, below the threshold everywhere.
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, classes="tree; forest")
    dock.threshold_spin.setValue(0.6)
    task = run_and_wait(dock)
    assert task.result.polygon_count == 0
    assert messages(qgis_iface, Qgis.MessageLevel.Success) == []
    (warning,) = messages(qgis_iface, Qgis.MessageLevel.Warning)
    assert "found nothing" in warning and "lower the threshold" in warning
    assert "0.60" in warning


def test_an_unsaved_project_writes_to_a_kept_documented_folder(qgis_new_project, monkeypatch,
                                                               tmp_path):
    from drseg.qgis_bridge.outputs import UNSAVED_PROJECT_FOLDER, output_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    assert qgis_new_project.homePath() == ""
    folder = output_folder(qgis_new_project)
    assert folder == str(tmp_path / UNSAVED_PROJECT_FOLDER) and os.path.isdir(folder)


def test_a_dock_run_on_the_real_aerial_scene(dock, qgis_iface, qgis_new_project, koeln_scene,
                                             tmp_path, tiny_clip, fake_models):
    """The OpenEarthMap tile of Köln (0.5 m, EPSG:25832) at 2 m: every working pixel ends up in
    one polygon of the result, which is named after the scene and styled by class; the progress
    bar moved through the run's stages."""
    layer = raster_layer(koeln_scene, "koeln")
    qgis_new_project.addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.classes_edit.setPlainText("building, roof; tree; water")
    dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
    dock.clip_model_combo.setCurrentText(tiny_clip)
    dock.clip_weights_widget.setFilePath("random")
    dock.resolution_spin.setValue(2.0)
    dock.threshold_spin.setValue(0.0)
    dock.output_widget.setFilePath(str(tmp_path / "koeln.gpkg"))
    values = []
    dock.progress_bar.valueChanged.connect(values.append)
    task = run_and_wait(dock)
    vector, _ = dock.last_layers
    assert vector.crs().authid() == "EPSG:25832"
    assert vector.name().startswith("koeln: building, tree, water (")
    assert vector.featureCount() == task.result.polygon_count > 0
    total = sum(f.geometry().area() for f in vector.getFeatures())
    assert total == pytest.approx(500.0 * 500.0, rel=1e-6)
    assert len(set(values)) >= 5 and values == sorted(values)  # it moved, never back


def test_blend_and_class_probabilities_reach_the_request_and_the_file(dock, qgis_new_project,
                                                                       tmp_path, tiny_clip):
    import rasterio

    fill_form(dock, qgis_new_project, tmp_path, tiny_clip, width=300, height=250)
    request = dock.build_request()
    assert request.blend == "smooth" and request.out_probabilities is None
    dock.blend_combo.setCurrentIndex(dock.blend_combo.findData("mean"))
    dock.probabilities_check.setChecked(True)
    request = dock.build_request()
    assert request.blend == "mean"
    assert request.out_probabilities == str(tmp_path / "result_probabilities.tif")
    finished = []
    dock.runFinished.connect(finished.append)
    dock.run_button.click()
    assert wait_for(lambda: finished, 60) and finished[0].succeeded, finished[0].error
    with rasterio.open(tmp_path / "result_probabilities.tif") as src:
        assert src.descriptions == ("building", "water", "tree")
        assert src.dtypes == ("float32",) * 3 and (src.width, src.height) == (300, 250)


def test_the_run_logs_where_each_setting_came_from(qgis_iface, qgis_new_project, isolated_settings,
                                                   tmp_path, tiny_clip, fake_models):
    """CLIP weights saved in the settings (a local file) fill the dock and reach the engine; the
    DR-Seg log says so, and names the form for a value changed in the dock."""
    import os

    from qgis.core import QgsApplication

    from drseg.core.settings import Settings, save_settings

    weights = str(tmp_path / "my_clip.safetensors")
    save_settings(Settings(clip_model=tiny_clip, clip_weights=weights, window=160, stride=80),
                  os.environ["DRSEG_CONFIG"])
    dock = DrSegDock(qgis_iface)
    fill_form(dock, qgis_new_project, tmp_path, tiny_clip)
    dock.clip_weights_widget.setFilePath(weights)   # as the settings filled it
    dock.stride_spin.setValue(64)                   # changed here
    logged = []
    log = QgsApplication.messageLog()
    log.messageReceived.connect(lambda text, tag, level: logged.append((tag, text)))
    run_and_wait(dock)
    (request,) = fake_models.requests
    assert (request.clip_weights, request.window, request.stride) == (weights, 160, 64)
    lines = [text for tag, text in logged if tag == "DR-Seg"]
    assert f"Setting CLIP weights: {weights} (saved settings)" in lines
    assert "Setting Window size: 160 (saved settings)" in lines
    assert "Setting Stride: 64 (this form)" in lines
    dock.shutdown()
    dock.deleteLater()
