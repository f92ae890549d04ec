"""qgis_bridge.tasks: SegmentationTask runs in QGIS's task manager, adds layers on success, nothing
on cancel/failure; every started task is kept alive until its callback has run, also when its owner
went away."""
from __future__ import annotations

import re
import time

from conftest_qgis import files_under, wait_for
from support.oracles import ColourScorer
from support.rasters import write_halves_raster as write_raster
from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsPalettedRasterRenderer,
                       QgsTask, QgsWkbTypes)

from drseg.core.colors import class_colour
from drseg.core.errors import RunCancelled
from drseg.qgis_bridge import tasks as bridge_tasks
from drseg.qgis_bridge.results import add_result_layers
from drseg.qgis_bridge.tasks import EngineTask, SegmentationTask


def make_request(tmp_path, raster, **kwargs):
    from drseg.core.segment import SegmentationRequest

    options = dict(raster=raster, classes="building,roof; water", out_vector=str(tmp_path / "out.gpkg"),
                   out_raster=str(tmp_path / "out.tif"), window=32, stride=16, block=32,
                   device="cpu", layer_name="out")
    options.update(kwargs)
    return SegmentationRequest(**options)


class Recorder:
    """Callback that adds the layers like the dock does, and remembers what happened."""

    def __init__(self, project):
        self.project = project
        self.tasks = []
        self.layers = (None, None)

    def __call__(self, task):
        self.tasks.append(task)
        if task.succeeded:
            self.layers = add_result_layers(task.result, group_name="run 1", project=self.project)


def run_in_task_manager(task, recorder, timeout=60.0):
    QgsApplication.taskManager().addTask(task)
    assert wait_for(lambda: recorder.tasks, timeout), "the task never finished"


def test_task_runs_in_background_and_adds_styled_layers(qgis_new_project, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    recorder = Recorder(qgis_new_project)
    scorer = ColourScorer()
    task = SegmentationTask(make_request(tmp_path, raster), recorder, scorer=scorer)
    progress = []
    task.progressChanged.connect(progress.append)

    run_in_task_manager(task, recorder)

    assert recorder.tasks == [task]
    assert task.succeeded, task.error
    assert task.result.device == "custom"
    assert scorer.calls > 0
    assert progress and max(progress) == 100.0
    vector, raster_layer = recorder.layers
    assert vector is not None and raster_layer is not None
    assert set(qgis_new_project.mapLayers()) == {vector.id(), raster_layer.id()}
    group = qgis_new_project.layerTreeRoot().findGroup("run 1")
    assert group is not None and {n.layerId() for n in group.findLayers()} == {vector.id(),
                                                                               raster_layer.id()}
    # Polygons: red half -> building, blue half -> water, each half one polygon.
    assert vector.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    assert sorted(f["class"] for f in vector.getFeatures()) == ["building", "water"]
    areas = {f["class"]: f["area_m2"] for f in vector.getFeatures()}
    assert areas == {"building": 48 * 64, "water": 48 * 64}
    renderer = vector.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == "class"
    colours = {c.value(): c.symbol().color().getRgb()[:3] for c in renderer.categories()}
    assert colours == {"building": class_colour("building"), "water": class_colour("water")}
    # Class raster: paletted with class names as labels, same grid as the input.
    assert isinstance(raster_layer.renderer(), QgsPalettedRasterRenderer)
    labels = {c.value: (c.label, c.color.getRgb()[:3]) for c in raster_layer.renderer().classes()}
    assert labels[1] == ("building", class_colour("building"))
    assert labels[2] == ("water", class_colour("water"))
    assert labels[0][0] == "background"
    assert (raster_layer.width(), raster_layer.height()) == (96, 64)
    assert raster_layer.crs().authid() == "EPSG:32633"


def test_cancel_during_run_adds_nothing_and_leaves_no_file(qgis_new_project, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=256, height=256)
    before = files_under(tmp_path)
    recorder = Recorder(qgis_new_project)
    scorer = ColourScorer(delay=0.02)
    task = SegmentationTask(make_request(tmp_path, raster, batch_size=1), recorder, scorer=scorer)
    blocks = []
    task.stepMessage.connect(blocks.append)

    QgsApplication.taskManager().addTask(task)
    assert wait_for(lambda: task.status() == QgsTask.TaskStatus.Running and scorer.calls >= 12, 30)
    calls_at_cancel = scorer.calls
    task.cancel()
    assert wait_for(lambda: recorder.tasks, 30)

    assert task.was_cancelled and not task.succeeded and task.error is None
    # Not a failure for QGIS (which notifies "Task failed" for terminated tasks).
    assert task.status() == QgsTask.TaskStatus.Complete
    assert recorder.layers == (None, None)
    assert qgis_new_project.mapLayers() == {}
    assert files_under(tmp_path) == before  # no output, no hidden work folder
    # 64 blocks of 32 px: some were done before the cancel, far from all.
    done = [int(m.group(1)) for m in map(re.compile(r"block (\d+)/").search, blocks) if m]
    assert done and max(done) < 32
    # It stops within one window batch (cancel is checked between batches inside a block).
    assert scorer.calls - calls_at_cancel <= 1


def test_cancel_before_start_calls_back_as_cancelled(qgis_new_project, tmp_path):
    raster = write_raster(tmp_path / "scene.tif")
    recorder = Recorder(qgis_new_project)
    task = SegmentationTask(make_request(tmp_path, raster), recorder, scorer=ColourScorer())
    task.cancel()  # not yet in the task manager: QGIS terminates it without running
    task.finished(False)
    assert recorder.tasks == [task] and task.was_cancelled
    assert qgis_new_project.mapLayers() == {}


def test_failed_run_reports_engine_message_and_adds_nothing(qgis_new_project, tmp_path):
    recorder = Recorder(qgis_new_project)
    missing = str(tmp_path / "missing.tif")
    task = SegmentationTask(make_request(tmp_path, missing), recorder, scorer=ColourScorer())

    run_in_task_manager(task, recorder)

    assert not task.succeeded and not task.was_cancelled
    assert "Cannot open raster" in task.error and "missing.tif" in task.error
    assert task.error_detail is None  # a user error, not a crash: no traceback
    assert qgis_new_project.mapLayers() == {}
    assert files_under(tmp_path) == []


def test_unexpected_exception_is_caught_with_traceback(qgis_new_project, tmp_path):
    class BrokenScorer(ColourScorer):
        def score_windows(self, images):
            raise ZeroDivisionError("boom")

    raster = write_raster(tmp_path / "scene.tif")
    recorder = Recorder(qgis_new_project)
    task = SegmentationTask(make_request(tmp_path, raster), recorder, scorer=BrokenScorer())
    assert task.run() is False  # run() directly, in this thread
    task.finished(False)
    assert recorder.tasks == [task]
    assert "ZeroDivisionError: boom" in task.error and "Traceback" in task.error_detail
    assert files_under(tmp_path) == ["scene.tif"]


# -- the one keep-alive list ----------------------------------------------------------------------

class UntilCancelled(EngineTask):
    """Works until cancelled, as a long run does."""

    def _work(self):
        while not self.isCanceled():
            time.sleep(0.01)
        raise RunCancelled()


def test_a_started_task_is_kept_until_its_callback_has_run(qgis_new_project, tmp_path):
    raster = write_raster(tmp_path / "scene.tif")
    seen_while_called = []

    class Kept(Recorder):
        def __call__(self, task):
            seen_while_called.append(task in bridge_tasks.running())
            super().__call__(task)

    recorder = Kept(qgis_new_project)
    task = SegmentationTask(make_request(tmp_path, raster), recorder, scorer=ColourScorer())
    assert bridge_tasks.start(task) is task
    assert task in bridge_tasks.running()
    assert wait_for(lambda: recorder.tasks, 60)
    assert task.succeeded and recorder.tasks == [task]
    assert seen_while_called == [True]                # still referenced during the callback
    assert task not in bridge_tasks.running()         # and let go after it


def test_a_detached_task_is_cancelled_calls_nobody_back_and_is_let_go_when_done():
    calls = []
    task = UntilCancelled("until cancelled", calls.append)
    bridge_tasks.start(task)
    assert wait_for(lambda: task.status() == QgsTask.TaskStatus.Running, 10)
    bridge_tasks.detach(task)                         # its owner goes away
    assert task in bridge_tasks.running()             # QGIS still needs its Python half
    assert wait_for(lambda: task not in bridge_tasks.running(), 10)
    assert task.was_cancelled and calls == []
