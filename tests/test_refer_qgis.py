"""Referring segmentation in QGIS: the dock's Referring panel driven like a user, the task and its
cancel, the click tool refining the last result, and drseg:referringsegmentation in Processing.

Models are the stand-ins of support.oracles (their answers are known: objects are uniform
colour regions, the 'ponds' are blue), injected as the panel's sam/clip or in place of the
engine's model loading."""
from __future__ import annotations

import json
import threading
import uuid

import numpy as np
import pytest
import shapely
from support.rasters import write_raster as write_array
from conftest_qgis import (canvas_showing, drseg_provider, files_under,  # noqa: F401
                           isolated_settings, raster_layer, run_algorithm, wait_for)
from qgis.core import (Qgis, QgsApplication, QgsCategorizedSymbolRenderer,
                       QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsPointXY,
                       QgsProcessingException, QgsProcessingFeedback, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelOutput, QgsProcessingModelParameter,
                       QgsProcessingParameterRasterLayer, QgsProject, QgsRectangle, QgsSettings,
                       QgsVectorLayer)
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from qgis.PyQt.QtGui import QKeyEvent
from qgis.PyQt.QtTest import QTest
from support.oracles import ColourLocalizer, ColourPredictor
from support.rasters import WRITE_ORIGIN as ORIGIN, WRITE_PIXEL as PIXEL, pixel_box, pond_scene
from test_refer_pipeline import tiny_models  # noqa: F401 (a fixture)

from drseg.core.colors import class_colour
from drseg.core.refer.prompts import label_components
from drseg.core.refer.sessions import SESSIONS
from drseg.qgis_bridge.results import REFER_GROUP
from drseg.ui.choices import SharedChoices
from drseg.ui.refer_panel import AREA_DRAWN, AREA_LAYER, HISTORY_SIZE, ReferringPanel

ALG = "drseg:referringsegmentation"
NORTH, SOUTH = pixel_box(40, 30, 100, 80), pixel_box(120, 160, 200, 220)   # the two ponds


class ClickPredictor(ColourPredictor):
    """The stand-in SAM, plus refinement: with single-mask output it returns the colour regions
    under every positive point less those under every negative point."""

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True):
        if multimask_output:
            return super().predict(point_coords, point_labels, box, mask_input, multimask_output)
        self.calls.append(dict(points=np.asarray(point_coords), labels=np.asarray(point_labels),
                               box=box, mask_input=mask_input, multimask=False))
        keep = np.zeros(self.image.shape[:2], bool)
        drop = np.zeros_like(keep)
        for (x, y), label in zip(np.asarray(point_coords), np.asarray(point_labels)):
            x, y = int(round(x)), int(round(y))
            same = np.all(self.image == self.image[y, x], axis=-1)
            labels, _ = label_components(same, connectivity=4)
            region = labels == labels[y, x]
            if label == 1:
                keep |= region
            else:
                drop |= region
        return (keep & ~drop)[None], np.array([0.9]), np.zeros((1, 256, 256), np.float32)


class SlowLocalizer(ColourLocalizer):
    """Encoding waits for the test to let it go (to cancel a run while it is busy)."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def encode(self, image, valid):
        self.started.set()
        self.release.wait(20)
        return super().encode(image, valid)


@pytest.fixture(autouse=True)
def fresh_sessions():
    SESSIONS.clear()
    yield
    SESSIONS.clear()


@pytest.fixture(autouse=True)
def history_key(monkeypatch):
    key = f"drseg-tests/{uuid.uuid4().hex}/history"
    monkeypatch.setattr(ReferringPanel, "HISTORY_KEY", key)
    yield key
    QgsSettings().remove(key.rsplit("/", 1)[0])


@pytest.fixture
def ponds(tmp_path, qgis_new_project):
    path = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    layer = raster_layer(path, "ponds")
    qgis_new_project.addMapLayer(layer)
    return layer


@pytest.fixture
def panel(qgis_iface, qgis_new_project, isolated_settings, ponds, tmp_path, monkeypatch):
    qgis_iface.messageBar().clear_messages()
    widget = ReferringPanel(qgis_iface, SharedChoices(device="cpu"))
    widget.sam, widget.clip = ClickPredictor(), ColourLocalizer()
    monkeypatch.setattr(widget, "output_folder", lambda: str(tmp_path))
    widget.layer_combo.setLayer(ponds)
    with canvas_showing(qgis_iface, ponds):
        yield widget
        widget.shutdown()
    widget.deleteLater()


def messages(iface, level):
    return iface.messageBar().get_messages(level)


def type_and_enter(panel, text):
    line = panel.expression_combo.lineEdit()
    line.clear()
    QTest.keyClicks(line, text)
    QTest.keyClick(line, Qt.Key.Key_Return)


def run_by_typing(panel, text):
    started, finished = [], []
    panel.runStarted.connect(started.append)
    panel.runFinished.connect(finished.append)
    type_and_enter(panel, text)
    assert len(started) == 1, panel.status_label.text()
    assert wait_for(lambda: finished, 30), "the run did not finish"
    assert finished[0].succeeded, finished[0].error
    return finished[0]


def features(layer):
    return [dict(expression=f["expression"], score=f["score"], area_m2=f["area_m2"],
                 geometry=shapely.from_wkb(bytes(f.geometry().asWkb())))
            for f in sorted(layer.getFeatures(), key=lambda f: f.id())]


# --------------------------------------------------------------------------------------------
# The panel, like a user


def test_typing_an_expression_and_enter_adds_a_styled_layer_in_the_raster_crs(
        panel, qgis_iface, qgis_new_project, ponds, tmp_path, history_key):
    task = run_by_typing(panel, "the pond north of the road")

    assert task.request.extent == pytest.approx((500000.0, 4099880.0, 500120.0, 4100000.0))
    assert task.request.device == "cpu" and task.request.sam_model == "vit_b"
    layer = panel.last_layer
    assert layer.id() in qgis_new_project.mapLayers() and layer.name() == "the pond north of the road"
    assert layer.crs() == ponds.crs() and layer.crs().authid() == "EPSG:32633"
    assert {"expression", "score", "area_m2"} <= set(layer.fields().names())
    (found,) = features(layer)
    assert found["expression"] == "the pond north of the road"
    assert found["geometry"].equals(NORTH) and found["area_m2"] == pytest.approx(60 * 50 * PIXEL ** 2)
    assert 0 < found["score"] <= 1
    group = qgis_new_project.layerTreeRoot().children()[0]
    assert group.name() == REFER_GROUP and [n.layerId() for n in group.findLayers()] == [layer.id()]
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "expression"
    (category,) = renderer.categories()
    assert category.symbol().color().getRgb()[:3] == class_colour("the pond north of the road")
    (success,) = messages(qgis_iface, Qgis.MessageLevel.Success)
    assert "'the pond north of the road': 1 polygon(s)" in success and "first query" in success
    assert panel.history() == ["the pond north of the road"]
    assert json.loads(QgsSettings().value(history_key)) == ["the pond north of the road"]
    assert panel.progress_bar.value() == 100 and panel.run_button.isEnabled()

    # The next expression on the same area: the session's encoders are not run again.
    second = run_by_typing(panel, "the largest pond")
    assert second.result.session is task.result.session and panel.sam.set_calls == 1
    assert panel.clip.encodes == 1
    success = messages(qgis_iface, Qgis.MessageLevel.Success)[-1]
    assert "'the largest pond': 1 polygon(s)" in success and "cached" in success
    assert features(panel.last_layer)[0]["geometry"].equals(SOUTH)
    assert panel.history() == ["the largest pond", "the pond north of the road"]
    assert [n.layerId() for n in group.findLayers()] == [panel.last_layer.id(), layer.id()]
    assert sorted(files_under(tmp_path)) == ["ponds.tif", "ponds_referring.gpkg",
                                             "ponds_referring_1.gpkg"]


def test_empty_or_unparsable_expression_is_refused_before_starting(panel, qgis_iface, tmp_path):
    tasks_before = QgsApplication.taskManager().count()
    started = []
    panel.runStarted.connect(started.append)

    type_and_enter(panel, "   ")
    panel.run_button.click()
    type_and_enter(panel, "the big one on the left")

    errors = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert len(errors) == 3
    assert all("Type an expression" in e for e in errors[:2]) and "No target found" in errors[2]
    assert started == [] and not panel.is_running()
    assert QgsApplication.taskManager().count() == tasks_before
    assert panel.history() == [] and files_under(tmp_path) == ["ponds.tif"]


def test_area_choices_reach_the_request(panel, qgis_iface, ponds):
    panel.expression_combo.setEditText("the pond")
    panel.area_combo.setCurrentIndex(panel.area_combo.findData(AREA_DRAWN))
    assert panel.run() is None
    assert "Draw a rectangle" in messages(qgis_iface, Qgis.MessageLevel.Critical)[-1]
    # A rectangle drawn in another CRS than the raster's: reprojected and clipped to the layer.
    utm, web = ponds.crs(), QgsCoordinateReferenceSystem("EPSG:3857")
    inner = QgsRectangle(500010.0, 4099950.0, 500060.0, 4099990.0)
    drawn = QgsCoordinateTransform(utm, web, QgsProject.instance()).transformBoundingBox(inner)
    panel.area_combo.setCurrentIndex(0)
    panel.set_drawn_extent(drawn, web)
    assert panel.area() == AREA_DRAWN
    xmin, ymin, xmax, ymax = panel.build_request().extent
    assert 500009.0 < xmin <= 500010.0 and 500060.0 <= xmax < 500061.0
    assert 4099949.0 < ymin <= 4099950.0 and 4099990.0 <= ymax < 4099991.0
    panel.area_combo.setCurrentIndex(panel.area_combo.findData(AREA_LAYER))
    assert panel.build_request().extent is None
    # SAM model and weights: the catalog default follows the model, a file stays.
    panel.sam_weights_widget.setFilePath("sam-vit-b")
    panel.sam_model_combo.setCurrentText("vit_h")
    request = panel.build_request()
    assert (request.sam_model, request.sam_weights) == ("vit_h", "sam-vit-h")
    panel.sam_weights_widget.setFilePath("/data/my_sam.pth")
    panel.sam_model_combo.setCurrentText("vit_l")
    assert panel.build_request().sam_weights == "/data/my_sam.pth"
    # Saved settings (the settings dialog) become the form's SAM choice.
    from drseg.core.settings import Settings

    panel.apply_settings(Settings(sam_model="vit_l", sam_weights="/data/other_sam_l.pth"))
    request = panel.build_request()
    assert (request.sam_model, request.sam_weights) == ("vit_l", "/data/other_sam_l.pth")


def test_history_is_most_recent_first_without_repeats_and_kept_across_panels(
        panel, qgis_iface, history_key):
    for i in range(HISTORY_SIZE + 5):
        panel.remember(f"pond number {i}")
    panel.remember("pond number 22")
    history = panel.history()
    assert len(history) == HISTORY_SIZE and history[0] == "pond number 22"
    assert history[1] == "pond number 24" and history.count("pond number 22") == 1
    assert "pond number 0" not in history
    other = ReferringPanel(qgis_iface)
    try:
        assert other.history() == history
        other.expression_combo.setCurrentIndex(3)        # picking one fills the box
        assert other.expression() == history[3]
    finally:
        other.shutdown()
        other.deleteLater()


def test_cancel_leaves_no_layer_and_no_file(panel, qgis_iface, qgis_new_project, tmp_path):
    panel.clip = SlowLocalizer()
    finished = []
    panel.runFinished.connect(finished.append)
    panel.expression_combo.setEditText("the pond")
    panel.run_button.click()
    assert panel.is_running() and panel.cancel_button.isEnabled()
    assert panel.clip.started.wait(20)
    panel.cancel_button.click()
    panel.clip.release.set()
    assert wait_for(lambda: finished, 30)

    task = finished[0]
    assert task.was_cancelled and not task.succeeded and task.error is None
    assert panel.last_layer is None and len(qgis_new_project.mapLayers()) == 1
    assert qgis_new_project.layerTreeRoot().findGroup(REFER_GROUP) is None
    assert files_under(tmp_path) == ["ponds.tif"]
    assert any("cancelled" in m for m in messages(qgis_iface, Qgis.MessageLevel.Info))
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


# --------------------------------------------------------------------------------------------
# Refining with clicks


def raster_point(col, row):
    """Map coordinates (raster CRS) of the centre of raster pixel (col, row)."""
    return QgsPointXY(ORIGIN[0] + (col + 0.5) * PIXEL, ORIGIN[1] - (row + 0.5) * PIXEL)


def mouse_release(canvas, map_point, button):
    device = canvas.getCoordinateTransform().transform(map_point)
    return QgsMapMouseEvent(canvas, QEvent.Type.MouseButtonRelease,
                            QPoint(int(round(device.x())), int(round(device.y()))), button,
                            button, Qt.KeyboardModifier.NoModifier)


def test_clicks_refine_the_last_result_through_the_cached_embedding(panel, qgis_iface, ponds):
    task = run_by_typing(panel, "the pond")
    layer = panel.last_layer
    assert features(layer)[0]["geometry"].equals(SOUTH)
    session = task.result.session
    canvas = qgis_iface.mapCanvas()
    web = QgsCoordinateReferenceSystem("EPSG:3857")      # clicks come in the canvas CRS
    canvas.setDestinationCrs(web)
    to_web = QgsCoordinateTransform(ponds.crs(), web, QgsProject.instance())
    canvas.setExtent(to_web.transformBoundingBox(ponds.extent()))
    canvas.refresh()
    refined = []
    panel.click_tool.refined.connect(refined.append)

    panel.refine_action.trigger()
    assert canvas.mapTool() is panel.click_tool and panel.refine_action.isChecked()

    # Left click on the north pond, given exactly: area pixel (70, 55).
    assert panel.click_tool.add_click(to_web.transform(raster_point(70, 55)), True)
    assert wait_for(lambda: refined, 20)
    assert "(1 click so far)" in panel.status_label.text()  # the user's clicks, not SAM's prompts
    call = panel.sam.calls[-1]
    assert not call["multimask"] and call["labels"][-1] == 1
    assert call["points"][-1] == pytest.approx((70.0, 55.0), abs=1e-6)
    (both,) = features(layer)
    assert both["geometry"].equals(NORTH.union(SOUTH))
    assert both["area_m2"] == pytest.approx((60 * 50 + 80 * 60) * PIXEL ** 2)

    # Right click (a mouse event) on the south pond: a negative point where the click landed.
    event = mouse_release(canvas, to_web.transform(raster_point(160, 190)), Qt.MouseButton.RightButton)
    panel.click_tool.canvasReleaseEvent(event)
    assert wait_for(lambda: len(refined) == 2, 20)
    assert "(2 clicks so far)" in panel.status_label.text()
    back = QgsCoordinateTransform(web, ponds.crs(), QgsProject.instance())
    landed = back.transform(event.mapPoint())
    expected = ((landed.x() - ORIGIN[0]) / PIXEL - 0.5, (ORIGIN[1] - landed.y()) / PIXEL - 0.5)
    call = panel.sam.calls[-1]
    assert call["labels"][-2:].tolist() == [1, 0]
    assert call["points"][-1] == pytest.approx(expected, abs=1e-6)
    assert abs(expected[0] - 160) < 3 and abs(expected[1] - 190) < 3
    (north,) = features(layer)
    assert north["geometry"].equals(NORTH) and north["area_m2"] == pytest.approx(750.0)
    assert north["expression"] == "the pond"
    # the decoder only: the area was encoded once, by the query
    assert panel.sam.set_calls == 1 and session.sam_encoder_calls == 1 and session.refinements == 2
    assert len(panel.click_tool.markers) == 2
    assert panel.click_tool.markers[0].color() != panel.click_tool.markers[1].color()

    # The GeoPackage itself holds the refined polygon.
    on_disk = QgsVectorLayer(f"{task.result.vector_path}|layername=referring", "check", "ogr")
    assert features(on_disk)[0]["geometry"].equals(NORTH)

    # A click outside the area is refused; Esc ends the tool and removes the markers.
    assert not panel.click_tool.add_click(to_web.transform(raster_point(400, 10)), False)
    assert "outside" in messages(qgis_iface, Qgis.MessageLevel.Warning)[-1]
    panel.click_tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Escape,
                                             Qt.KeyboardModifier.NoModifier))
    assert canvas.mapTool() is None and not panel.refine_action.isChecked()
    assert panel.click_tool.markers == []

    # Undo puts back what each refinement replaced, the newest first.
    assert panel.undo_button.isEnabled()
    panel.undo_button.click()
    (both,) = features(layer)
    assert both["geometry"].equals(NORTH.union(SOUTH))
    assert both["area_m2"] == pytest.approx((60 * 50 + 80 * 60) * PIXEL ** 2)
    panel.undo_button.click()
    (first,) = features(layer)
    assert first["geometry"].equals(SOUTH) and first["expression"] == "the pond"
    assert not panel.undo_button.isEnabled()


def test_a_query_that_found_nothing_gets_its_object_from_a_positive_click(panel, qgis_iface):
    run_by_typing(panel, "the ship")                      # nothing is ship-coloured
    layer = panel.last_layer
    assert features(layer) == []
    assert "nothing found" in messages(qgis_iface, Qgis.MessageLevel.Warning)[-1]
    refined = []
    panel.click_tool.refined.connect(refined.append)
    panel.refine_action.trigger()
    assert not panel.click_tool.add_click(raster_point(70, 55), False)   # negative first: no
    assert panel.click_tool.add_click(raster_point(70, 55), True)
    assert wait_for(lambda: refined, 20)
    (ship,) = features(layer)
    assert ship["expression"] == "the ship" and ship["geometry"].equals(NORTH)
    assert ship["area_m2"] == pytest.approx(750.0)


def test_the_tool_needs_a_result_and_a_layer(panel, qgis_iface, qgis_new_project):
    panel.refine_action.trigger()
    assert not panel.click_tool.add_click(raster_point(70, 55), True)
    assert "Nothing to refine" in messages(qgis_iface, Qgis.MessageLevel.Warning)[-1]
    run_by_typing(panel, "the pond")
    qgis_new_project.removeMapLayer(panel.last_layer.id())
    assert not panel.click_tool.add_click(raster_point(70, 55), True)
    assert "was removed" in messages(qgis_iface, Qgis.MessageLevel.Warning)[-1]
    assert panel.sam.calls[-1]["multimask"]              # no refinement ran


def test_real_tiny_models_in_the_task_and_the_refinement(panel, ponds, tiny_models):
    """segment_anything and open_clip of the real architectures (random weights) in the worker
    threads: the layer is written in the raster's CRS; a click decodes on the cached embedding."""
    sam, clip, calls = tiny_models
    panel.sam, panel.clip = sam, clip
    encoded = calls["sam"]
    task = run_by_typing(panel, "the pond")
    assert calls["sam"] == encoded + 1
    layer = panel.last_layer
    assert layer.crs().authid() == "EPSG:32633" and layer.featureCount() <= 1
    raster = shapely.box(ORIGIN[0], ORIGIN[1] - 240 * PIXEL, ORIGIN[0] + 240 * PIXEL, ORIGIN[1])
    assert all(row["geometry"].within(raster) for row in features(layer))
    refined = []
    panel.click_tool.refined.connect(refined.append)
    panel.refine_action.trigger()
    assert panel.click_tool.add_click(raster_point(70, 55), True)
    assert wait_for(lambda: refined, 30)
    session = task.result.session
    assert session.refinements == 1 and calls["sam"] == encoded + 1   # the decoder only
    (done,) = refined
    assert done.refined.points[-1].tolist() == [70.0, 55.0] and done.refined.labels[-1] == 1
    rows = features(layer)
    if done.geometry is None:
        assert rows == []
    else:
        (row,) = rows
        # random weights leave thousands of specks: compare exactly rather than topologically
        expected = shapely.MultiPolygon(shapely.get_parts(done.geometry))
        assert shapely.normalize(row["geometry"]).equals_exact(shapely.normalize(expected), 1e-6)
        assert row["area_m2"] == pytest.approx(done.refined.pixels * PIXEL ** 2, abs=0.01)


# --------------------------------------------------------------------------------------------
# Processing


@pytest.fixture
def fake_load(monkeypatch):
    """The engine's model loading replaced by the stand-ins; records each request."""
    from drseg.core.refer import run as run_module

    requests = []

    def load(request, sam=None, clip=None, monitor=None):
        requests.append(request)
        return ColourPredictor(), ColourLocalizer(), "cpu"

    monkeypatch.setattr(run_module, "load_models", load)
    return requests


def refer_params(raster, tmp_path, **extra):
    values = {"INPUT": raster, "EXPRESSION": "the pond north of the road\n\n  all the ponds \n",
              "DEVICE": 1, "OUTPUT": str(tmp_path / "referred.gpkg")}
    values.update(extra)
    return values


def test_processing_writes_every_expression_into_one_layer(drseg_provider, fake_load, tmp_path):
    raster = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg is not None and alg.provider().id() == "drseg"
    assert alg.parameterDefinition("SAM_MODEL").options() == ["vit_b", "vit_l", "vit_h"]
    assert alg.parameterDefinition("EXPRESSION").multiLine()
    assert alg.flags() & alg.Flag.FlagSupportsBatch and alg.flags() & alg.Flag.FlagCanCancel
    feedback = QgsProcessingFeedback()

    result = run_algorithm(ALG, refer_params(raster, tmp_path, SAM_MODEL=1,
                                             SAM_WEIGHTS="/data/sam_vit_l.pth",
                                             CLIP_MODEL="ViT-B-32", CLIP_WEIGHTS="laion"),
                           feedback=feedback)

    (request,) = fake_load
    assert request.expressions == ["the pond north of the road", "all the ponds"]
    assert (request.sam_model, request.sam_weights) == ("vit_l", "/data/sam_vit_l.pth")
    assert (request.clip_model, request.clip_weights, request.device) == ("ViT-B-32", "laion", "cpu")
    layer = QgsVectorLayer(result["OUTPUT"], "referred", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633"
    rows = features(layer)
    assert result["POLYGONS"] == len(rows) == 3
    assert [r["expression"] for r in rows] == ["the pond north of the road"] + ["all the ponds"] * 2
    assert rows[0]["geometry"].equals(NORTH)
    assert {round(r["area_m2"]) for r in rows[1:]} == {750, 1200}
    log = feedback.textLog()
    assert "'the pond north of the road': 1 polygon(s)" in log and " first " in log
    assert "'all the ponds': 2 polygon(s)" in log and " cached " in log


def test_processing_sam_weights_default_to_the_settings_for_that_model(drseg_provider, fake_load,
                                                                       tmp_path):
    raster = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    run_algorithm(ALG, refer_params(raster, tmp_path, EXPRESSION="the pond"))
    run_algorithm(ALG, refer_params(raster, tmp_path, EXPRESSION="the pond", SAM_MODEL=2,
                                    OUTPUT=str(tmp_path / "b.gpkg")))
    assert [(r.sam_model, r.sam_weights) for r in fake_load] == [("vit_b", "sam-vit-b"),
                                                                 ("vit_h", None)]


def test_processing_errors_carry_the_engines_message(drseg_provider, fake_load, tmp_path):
    raster = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    cases = [({"EXPRESSION": " \n \n"}, "Type an expression"),
             ({"EXPRESSION": "the pond\nthe big one on the left"}, "No target found"),
             ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap")]
    for extra, message in cases:
        feedback = QgsProcessingFeedback()
        with pytest.raises(QgsProcessingException) as failure:
            run_algorithm(ALG, refer_params(raster, tmp_path, **extra), feedback=feedback)
        assert message in f"{failure.value}\n{feedback.textLog()}", extra
    assert fake_load == [] and files_under(tmp_path) == ["ponds.tif"]


def test_processing_runs_inside_a_model(drseg_provider, fake_load, tmp_path):
    raster = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    model = QgsProcessingModelAlgorithm("refer", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    child = QgsProcessingModelChildAlgorithm(ALG)
    child.setChildId("refer")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    for name, value in {"EXPRESSION": "the largest pond", "DEVICE": 1}.items():
        child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    output = QgsProcessingModelOutput("objects")
    output.setChildId("refer")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"objects": output})
    model.addChildAlgorithm(child)
    model.updateDestinationParameters()
    out = str(tmp_path / "model_out.gpkg")

    result = run_algorithm(model, {"raster": raster, "refer:objects": out})

    assert result["refer:objects"] == out
    (row,) = features(QgsVectorLayer(out, "", "ogr"))
    assert row["expression"] == "the largest pond" and row["geometry"].equals(SOUTH)


# --------------------------------------------------------------------------------------------
# In the dock


def test_the_dock_has_a_referring_mode_fed_by_its_form(qgis_iface, qgis_new_project,
                                                        isolated_settings, ponds, tmp_path):
    from drseg.ui.dock import DrSegDock

    dock = DrSegDock(qgis_iface)
    try:
        tabs = dock.modes
        assert [tabs.tabText(i) for i in range(tabs.count())] == ["Classes", "Referring"]
        panel = tabs.widget(1)
        assert panel is dock.refer_panel and isinstance(panel, ReferringPanel)
        other = raster_layer(write_array(tmp_path / "other.tif", pond_scene().transpose(2, 0, 1)),
                             "other")
        qgis_new_project.addMapLayer(other)
        dock.layer_combo.setLayer(other)                  # the dock's layer choice is followed
        assert panel.current_layer() is other
        dock.device_combo.setCurrentIndex(dock.device_combo.findData("cpu"))
        dock.clip_model_combo.setCurrentText("ViT-B-32")
        dock.clip_weights_widget.setFilePath("laion2b")
        panel.area_combo.setCurrentIndex(panel.area_combo.findData(AREA_LAYER))
        panel.expression_combo.setEditText("the pond")
        request = panel.build_request()
        assert (request.device, request.clip_model, request.clip_weights) == ("cpu", "ViT-B-32",
                                                                               "laion2b")
        assert request.bands == [1, 2, 3] and request.raster == str(tmp_path / "other.tif")
        assert (request.sam_model, request.sam_weights) == ("vit_b", "sam-vit-b")   # settings
    finally:
        dock.shutdown()
        dock.deleteLater()


def test_the_dock_shares_values_with_the_panel_settings_included(qgis_iface, qgis_new_project,
                                                                  isolated_settings, ponds):
    from drseg.core.settings import Settings
    from drseg.core.models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS
    from drseg.ui.dock import DrSegDock

    dock = DrSegDock(qgis_iface)
    try:
        panel = dock.refer_panel
        assert panel.choices is dock.choices
        dock.apply_settings(Settings(clip_model="ViT-B-32", clip_weights="/data/clip.pt",
                                     device="cpu", sam_model="vit_l",
                                     sam_weights="/data/sam_l.pth"))
        dock.layer_combo.setLayer(ponds)
        for combo, band in zip(dock.band_combos, (3, 2, 1)):
            combo.setBand(band)
        shared = dock.choices
        assert (shared.layer, shared.bands, shared.device, shared.clip_model,
                shared.clip_weights) == (ponds, [3, 2, 1], "cpu", "ViT-B-32", "/data/clip.pt")
        panel.area_combo.setCurrentIndex(panel.area_combo.findData(AREA_LAYER))
        panel.expression_combo.setEditText("the pond")
        request = panel.build_request()
        assert (request.bands, request.device, request.clip_model, request.clip_weights,
                request.sam_model, request.sam_weights) == (
            [3, 2, 1], "cpu", "ViT-B-32", "/data/clip.pt", "vit_l", "/data/sam_l.pth")
        # Emptied fields are shared as the defaults the engine would use; grey: one band.
        dock.clip_model_combo.setCurrentText("")
        dock.clip_weights_widget.setFilePath("")
        dock.band_combos[1].setBand(-1)
        dock.band_combos[2].setBand(-1)
        request = panel.build_request()
        assert (request.clip_model, request.clip_weights, request.bands) == (
            DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, [3])
    finally:
        dock.shutdown()
        dock.deleteLater()


def test_the_referring_tab_offers_an_output_destination(panel, tmp_path):
    import os

    chosen = tmp_path / "chosen" / "ponds_found"
    chosen.parent.mkdir()
    panel.output_widget.setFilePath(str(chosen))
    task = run_by_typing(panel, "the pond")
    assert task.result.vector_path == str(chosen) + ".gpkg"
    assert os.path.isfile(str(chosen) + ".gpkg")
    panel.output_widget.setFilePath(str(tmp_path / "no-such-folder" / "x.gpkg"))
    assert panel.run() is None
    assert "does not exist" in panel.status_label.text()


def test_processing_takes_a_trained_prompter_head(drseg_provider, fake_load, tmp_path):
    """PROMPTER (an advanced file parameter) reaches the engine's request; empty keeps the
    training-free path. (The stand-in models here cannot carry a head: the engine says so.)"""
    from qgis.core import QgsProcessingException

    raster = write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    run_algorithm(ALG, refer_params(raster, tmp_path, EXPRESSION="the pond"))
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"a head")
    with pytest.raises(QgsProcessingException, match="prompter head needs"):
        run_algorithm(ALG, refer_params(raster, tmp_path, EXPRESSION="the pond",
                                        PROMPTER=str(head), OUTPUT=str(tmp_path / "b.gpkg")))
    assert [r.prompter for r in fake_load] == [None, str(head)]


# --------------------------------------------------------------------------------------------
# A trained prompter head in the Referring tab

HEAD_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                          "layers": 1}}
LARGEST_POND = (slice(160, 220), slice(120, 200))        # pond_scene's south pond, rows/cols


@pytest.fixture(scope="module")
def pond_head(tmp_path_factory):
    """Tiny real CLIP and SAM (64-px input, random weights) and a head trained on them to find
    the south pond of pond_scene."""
    import copy

    import torch

    from drseg.core.refer.head import base_metadata
    from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
    from drseg.core.refer.synthetic import tiny_clip, tiny_sam
    from drseg.core.refer.train import TrainConfig, train_prompter
    from drseg.core.refer.train_data import TrainingSample

    clip_model, tokenizer = tiny_clip(HEAD_CLIP)
    sam = tiny_sam(64, prompt_dim=32)
    truth = np.zeros((240, 240), bool)
    truth[LARGEST_POND] = True
    torch.manual_seed(0)
    model = PromptedSegmenter(copy.deepcopy(clip_model), tokenizer, copy.deepcopy(sam),
                              PrompterConfig(width=32, heads=2, lora_rank=2))
    head = str(tmp_path_factory.mktemp("head") / "pond head.safetensors")
    train_prompter(model, [TrainingSample("the largest pond", pond_scene(), truth)], None,
                   TrainConfig(epochs=40, batch_size=1, lr=3e-3, eval_every=40, size=64),
                   out_path=head, base=base_metadata(clip_model, sam, "tiny", "tiny"))
    return clip_model, tokenizer, sam, head, truth


def test_the_prompter_head_field_reaches_the_engine_and_changes_the_answer(panel, pond_head):
    """Typed into the Referring tab, the head is in the request and its learned prompts answer
    (closer to the truth than the training-free path on the same models); remembered for the
    next panel; emptied, the training-free path answers again."""
    import os

    import torch

    from drseg.core.dense_clip import DenseClip
    from drseg.ui import remembered
    from drseg.ui.prompter_field import STATE_KEY, PrompterField

    clip_model, tokenizer, sam, head, truth = pond_head
    panel.sam = sam
    panel.clip = DenseClip(clip_model, tokenizer, torch.device("cpu"),
                           templates=["a photo of {}."], window_size=32)
    field = panel.prompter_widget

    def found(task):
        mask = np.zeros(truth.shape, bool)
        for item in task.result.expressions[0].results:
            mask |= item.mask
        return mask

    def iou(mask):
        return (mask & truth).sum() / max(1, (mask | truth).sum())

    free = run_by_typing(panel, "the largest pond")
    assert free.request.prompter is None and free.result.session.prompter is None

    QTest.keyClicks(field.lineEdit(), head)
    assert remembered.load_state()[STATE_KEY] == head
    learned = run_by_typing(panel, "the largest pond")
    assert learned.request.prompter == head
    assert learned.result.session.prompter.path == os.path.abspath(head)
    assert not np.array_equal(found(learned), found(free))
    assert iou(found(learned)) > max(0.5, iou(found(free)))
    assert PrompterField().filePath() == head             # the next session's field

    field.lineEdit().selectAll()
    QTest.keyClick(field.lineEdit(), Qt.Key.Key_Delete)
    assert remembered.load_state()[STATE_KEY] == ""
    again = run_by_typing(panel, "the largest pond")
    assert again.request.prompter is None
    assert np.array_equal(found(again), found(free))


def test_a_missing_prompter_head_is_refused_before_starting(panel, tmp_path):
    QTest.keyClicks(panel.prompter_widget.lineEdit(), str(tmp_path / "nowhere.safetensors"))
    started = []
    panel.runStarted.connect(started.append)
    type_and_enter(panel, "the pond")
    assert not started and "does not exist" in panel.status_label.text()
