"""The dock's Referring tab with SAM 3, driven like a user (QTest keys and mouse clicks): the engine
choice reaches the request and is remembered, the run uses the real SAM 3 architecture at tiny size
(random weights), and clicks on the map refine its result, Undo putting the polygon back.

Direction of a refinement: a stand-in click head with a known answer (test_sam3_clicks.DiscClicks)
is handed to the panel as its click model; with the real tiny head the test checks that the
layer shows what the decoder returned and that Undo restores it."""
from __future__ import annotations

import pytest
import shapely
from conftest_qgis import canvas_showing, isolated_settings, raster_layer, wait_for  # noqa: F401
from qgis.core import QgsPointXY
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from support.rasters import WRITE_ORIGIN as ORIGIN, WRITE_PIXEL as PIXEL, pond_scene
from support.rasters import write_raster as write_array
from test_sam3_clicks import DiscClicks

from drseg.core.refer import sam3_refer
from drseg.core.refer.sessions import SESSIONS
from drseg.ui import remembered
from drseg.ui.dock import DrSegDock
from drseg.ui.refer_panel import AREA_LAYER


@pytest.fixture(autouse=True)
def keep_every_instance(monkeypatch):
    monkeypatch.setattr(sam3_refer, "MIN_INSTANCE_SCORE", 0.0)   # random weights: keep them all
    SESSIONS.clear()
    yield
    SESSIONS.clear()


@pytest.fixture
def dock(qgis_iface, qgis_new_project, isolated_settings, tmp_path, monkeypatch):  # noqa: F811
    qgis_iface.messageBar().clear_messages()
    layer = raster_layer(write_array(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1)), "ponds")
    qgis_new_project.addMapLayer(layer)
    widget = DrSegDock(qgis_iface)
    widget.layer_combo.setLayer(layer)
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    monkeypatch.setattr(widget.refer_panel, "output_folder", lambda: str(tmp_path))
    with canvas_showing(qgis_iface, layer):
        yield widget
        widget.shutdown()
    widget.deleteLater()


def choose_sam3(dock, tiny_sam3_json):
    """The user's way: the Referring tab, Down on the engine box, 'random' typed as the weights."""
    dock.modes.setCurrentIndex(1)
    panel = dock.refer_panel
    rows = panel.engine_rows
    assert rows.engine() == "sam" and rows.sam3_weights.isHidden()
    QTest.keyClick(rows.combo, Qt.Key.Key_Down)
    assert rows.engine() == "sam3"
    assert panel.sam_model_combo.isHidden() and panel.sam_weights_widget.isHidden()
    assert panel.prompter_widget.isHidden()          # a trained head is for CLIP + SAM only
    assert not rows.sam3_weights.isHidden()
    QTest.keyClicks(rows.sam3_weights.lineEdit(), "random")
    rows.sam3_model = tiny_sam3_json          # the architecture (no widget, as in the Classes tab)
    panel.area_combo.setCurrentIndex(panel.area_combo.findData(AREA_LAYER))
    return panel


def run_by_typing(panel, text):
    finished = []
    panel.runFinished.connect(finished.append)
    line = panel.expression_combo.lineEdit()
    QTest.keyClicks(line, text)
    QTest.keyClick(line, Qt.Key.Key_Return)
    assert wait_for(lambda: finished, 120), "the run did not finish"
    assert finished[0].succeeded, finished[0].error
    return finished[0]


def click_on_map(canvas, col, row, button):
    """A real mouse click on the canvas at the centre of raster pixel (col, row)."""
    point = QgsPointXY(ORIGIN[0] + (col + 0.5) * PIXEL, ORIGIN[1] - (row + 0.5) * PIXEL)
    device = canvas.getCoordinateTransform().transform(point)
    QTest.mouseClick(canvas.viewport(), button, Qt.KeyboardModifier.NoModifier,
                     device.toQPointF().toPoint())


def geometry(layer):
    (feature,) = list(layer.getFeatures())
    return shapely.from_wkb(bytes(feature.geometry().asWkb()))


def refine_with(panel, canvas, clicks):
    refined = []
    panel.click_tool.refined.connect(refined.append)
    if canvas.mapTool() is not panel.click_tool:
        panel.refine_action.trigger()
    for count, (col, row, button) in enumerate(clicks, 1):
        click_on_map(canvas, col, row, button)
        assert wait_for(lambda: len(refined) == count, 30), panel.status_label.text()
    return refined


def test_the_engine_choice_reaches_the_request_and_is_remembered(dock, qgis_iface,
                                                                 tiny_sam3_json, tmp_path):
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"{}")                   # a head chosen earlier, for CLIP + SAM
    dock.refer_panel.prompter_widget.setFilePath(str(head))
    panel = choose_sam3(dock, tiny_sam3_json)
    QTest.keyClicks(panel.expression_combo.lineEdit(), "the largest pond")
    request = panel.build_request()
    assert (request.engine, request.sam3_model, request.sam3_weights) == ("sam3", tiny_sam3_json,
                                                                          "random")
    assert request.prompter is None           # not sent to SAM 3
    task = run_by_typing(panel, "")
    assert task.request.engine == "sam3" and task.result.session.encoder_calls == 1
    assert "first query on this area: SAM 3 encoded it" in panel.status_label.text()
    assert remembered.load_state()["refer_engine"] == "sam3"   # saved when the run started
    again = DrSegDock(qgis_iface)
    try:
        assert again.refer_panel.engine_rows.engine() == "sam3"
        assert again.refer_panel.engine_rows.sam3_weights.filePath() == "random"
        assert again.refer_panel.sam_model_combo.isHidden()
    finally:
        again.shutdown()
        again.deleteLater()


def test_clicks_refine_a_sam3_result_in_the_expected_direction_and_undo(dock, qgis_iface,
                                                                         tiny_sam3_json):
    panel = choose_sam3(dock, tiny_sam3_json)
    panel.clip = DiscClicks()                 # the click head with a known answer
    task = run_by_typing(panel, "the largest pond")
    layer = panel.last_layer
    original = geometry(layer)
    canvas = qgis_iface.mapCanvas()
    outside = next((c, r) for c in range(5, 240, 10) for r in range(5, 240, 10)
                   if not original.contains(shapely.Point(*_map(c, r))))
    col, row = outside
    refine_with(panel, canvas, [(col, row, Qt.MouseButton.LeftButton)])
    grown = geometry(layer)
    assert grown.contains(shapely.Point(*_map(col, row)))           # a positive click adds
    assert grown.area > original.area
    refine_with(panel, canvas, [(col, row, Qt.MouseButton.RightButton)])
    assert not geometry(layer).contains(shapely.Point(*_map(col, row)))   # a negative one removes
    session = task.result.session
    assert session.refinements == 2 and session.encoder_calls == 1
    panel.undo_button.click()
    assert geometry(layer).equals(grown)
    panel.undo_button.click()
    assert geometry(layer).equals(original) and not panel.undo_button.isEnabled()


def test_the_real_tiny_click_head_refines_in_the_dock(dock, qgis_iface, tiny_sam3_json):
    panel = choose_sam3(dock, tiny_sam3_json)
    task = run_by_typing(panel, "the largest pond")
    layer = panel.last_layer
    before = [shapely.from_wkb(bytes(f.geometry().asWkb())) for f in layer.getFeatures()]
    (done,) = refine_with(panel, qgis_iface.mapCanvas(), [(60, 50, Qt.MouseButton.LeftButton)])
    session = task.result.session
    assert session.refinements == 1 and session.encoder_calls == 1   # the decoder only
    screen_pixel = qgis_iface.mapCanvas().mapUnitsPerPixel() / PIXEL   # in raster pixels
    assert done.refined.points[-1] == pytest.approx((60.0, 50.0), abs=screen_pixel + 0.01)
    rows = [shapely.from_wkb(bytes(f.geometry().asWkb())) for f in layer.getFeatures()]
    if done.geometry is None:
        assert rows == []
    else:
        expected = shapely.MultiPolygon(shapely.get_parts(done.geometry))
        assert shapely.normalize(rows[0]).equals_exact(shapely.normalize(expected), 1e-6)
    panel.undo_button.click()
    after = [shapely.from_wkb(bytes(f.geometry().asWkb())) for f in layer.getFeatures()]
    assert len(after) == len(before) and all(a.equals(b) for a, b in zip(after, before))


def _map(col, row):
    return ORIGIN[0] + (col + 0.5) * PIXEL, ORIGIN[1] - (row + 0.5) * PIXEL
