"""core/segment.py end to end on synthetic scenes whose right answer is known (colour oracle
scorer): the class raster and polygons, blocks, nodata, cancelling, bad prompts, the output grid."""
import os

import numpy as np
import pytest
import rasterio

from support.oracles import SCENE_CLASSES, iou, scene_oracle, segment_scene
from support.outputs import polygons_to_labels, read_class_polygons
from support.rasters import scene_image, scene_labels, write_raster
from drseg.core.errors import InputError, RunCancelled
from drseg.core.segment import SegmentationRequest, run_segmentation


def test_oracle_scene_raster_and_polygons_match_the_truth(scene, tmp_path):
    path, truth = scene
    truth = np.where(truth == 0, 5, truth)  # the field is class 5 in the prompt
    result = segment_scene(path, tmp_path)
    with rasterio.open(result.raster_path) as src, rasterio.open(path) as ref:
        predicted = src.read(1)
        assert (src.width, src.height, src.transform, src.crs) == (ref.width, ref.height, ref.transform, ref.crs)
        assert src.nodata == 255
        assert src.tags()["CLASS_1"] == "building" and src.tags()["CLASS_3"] == "water"
        assert src.colormap(1)[3][:3] != src.colormap(1)[1][:3]
        transform = src.transform
    rows, srs = read_class_polygons(result.vector_path)
    burned = polygons_to_labels(rows, truth.shape, transform)
    for class_id in range(1, 6):
        assert iou(predicted == class_id, truth == class_id) >= 0.95, class_id
        assert iou(burned == class_id, truth == class_id) >= 0.95, class_id
    assert {r["class"] for r in rows} == {"building", "road", "water", "tree", "field"}
    assert all(0.0 < r["score"] <= 1.0 for r in rows)
    # Areas: the pixel area is 0.25 m², so area_m2 = 0.25 × pixel count of the polygon.
    pond = max((r for r in rows if r["class"] == "water"), key=lambda r: r["area_m2"])
    assert pond["area_m2"] == pytest.approx(0.25 * (truth == 3).sum(), rel=0.05)
    assert "32633" in srs or "UTM zone 33N" in srs


def test_block_size_does_not_change_the_result(scene, tmp_path):
    path, _ = scene
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = segment_scene(path, tmp_path / "a", block=96)
    large = segment_scene(path, tmp_path / "b", block=4096)
    with rasterio.open(small.raster_path) as a, rasterio.open(large.raster_path) as b:
        assert np.array_equal(a.read(1), b.read(1))
    rows_a, _ = read_class_polygons(small.vector_path)
    rows_b, _ = read_class_polygons(large.vector_path)
    # Polygons cut by block seams are dissolved again: same count and same total area per class.
    assert len(rows_a) == len(rows_b)
    for name in ("building", "road", "water"):
        area_a = sum(r["area_m2"] for r in rows_a if r["class"] == name)
        area_b = sum(r["area_m2"] for r in rows_b if r["class"] == name)
        assert area_a == pytest.approx(area_b, rel=1e-9)


def test_every_window_is_scored_once(scene, tmp_path):
    path, _ = scene
    scorer = scene_oracle()
    result = segment_scene(path, tmp_path, scorer=scorer, block=128)
    # 600 x 520 px: rows 0,112,224,336 + 376; cols 0,112,224 + 296 -> 5 x 4 windows.
    assert scorer.windows == 20 == result.timings.windows


def test_nodata_is_excluded_from_prediction_and_outputs(tmp_path):
    labels = scene_labels()
    image = scene_image(labels)
    image[:, :, :100] = 0
    path = write_raster(tmp_path / "nodata.tif", image, nodata=0)
    result = segment_scene(path, tmp_path)
    with rasterio.open(result.raster_path) as src:
        predicted = src.read(1)
    assert (predicted[:, :100] == 255).all()
    assert (predicted[:, 100:] != 255).all()
    rows, _ = read_class_polygons(result.vector_path)
    with rasterio.open(path) as src:
        burned = polygons_to_labels(rows, labels.shape, src.transform)
    assert (burned[:, :100] == 0).all()


def test_all_nodata_raster_is_a_clear_error(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    with pytest.raises(InputError, match="no valid pixels"):
        segment_scene(path, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["empty.tif"]


def test_cancel_leaves_no_file(scene, tmp_path):
    path, _ = scene
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    request = SegmentationRequest(raster=path, classes=SCENE_CLASSES, out_vector=str(tmp_path / "o.gpkg"),
                                  out_raster=str(tmp_path / "o.tif"), block=128)
    with pytest.raises(RunCancelled):
        run_segmentation(request, scorer=scene_oracle(), cancelled=cancelled)
    assert sorted(os.listdir(tmp_path)) == ["scene.tif"]


@pytest.mark.parametrize("classes", ["", " ; ; ", None])
def test_empty_prompt_is_a_clear_error(scene, tmp_path, classes):
    path, _ = scene
    with pytest.raises(InputError, match="class prompt is empty"):
        segment_scene(path, tmp_path, classes=classes)


@pytest.mark.parametrize("bands,message", [([6], "does not exist"), ([1, 2], "one band")])
def test_bad_band_choice_is_a_clear_error(tmp_path, bands, message):
    path = write_raster(tmp_path / "bands.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(InputError, match=message):
        segment_scene(path, tmp_path, bands=bands)


def test_extent_and_resolution_define_the_output_grid(scene, tmp_path):
    path, truth = scene
    with rasterio.open(path) as src:
        left, top = src.transform.c, src.transform.f
    extent = (left + 50, top - 200, left + 150, top - 40)  # 200 x 320 px at 0.5 m
    result = segment_scene(path, tmp_path, extent=extent, resolution=1.0)
    with rasterio.open(result.raster_path) as out:
        assert out.res == (1.0, 1.0)
        assert (out.width, out.height) == (100, 160)
        assert out.bounds.left == pytest.approx(extent[0]) and out.bounds.top == pytest.approx(extent[3])
        predicted = out.read(1)
    # The window holds the first building (rows 60..230, cols 40..200 at 0.5 m).
    expected = np.where(truth[80:400:2, 100:300:2] == 0, 5, truth[80:400:2, 100:300:2])
    assert (predicted == expected).mean() > 0.93


def test_extent_outside_the_raster_is_a_clear_error(scene, tmp_path):
    path, _ = scene
    with pytest.raises(InputError, match="does not overlap"):
        segment_scene(path, tmp_path, extent=(0, 0, 10, 10))


def test_fast_mode_scores_fewer_windows_at_its_stride_and_gives_the_same_classes(scene, tmp_path):
    from drseg.core.protocol import FAST_OVERLAP, fast_stride
    from drseg.core.sliding import window_starts

    path, truth = scene
    (tmp_path / "default").mkdir()
    (tmp_path / "fast").mkdir()
    default_scorer, fast_scorer = scene_oracle(), scene_oracle()
    default = segment_scene(path, tmp_path / "default", scorer=default_scorer, block=128)
    fast = segment_scene(path, tmp_path / "fast", scorer=fast_scorer, block=128, fast=True)
    # 224-px windows overlapping by a quarter: stride 168; 600 x 520 px -> rows 0,168,336 + 376,
    # cols 0,168 + 296: 4 x 3 windows instead of 5 x 4
    stride = fast_stride(224, 112)
    assert stride == 224 - int(224 * FAST_OVERLAP) == 168
    expected = len(window_starts(600, 224, stride)) * len(window_starts(520, 224, stride))
    assert fast_scorer.windows == expected == fast.timings.windows == 12
    assert default_scorer.windows == 20
    with rasterio.open(default.raster_path) as a, rasterio.open(fast.raster_path) as b:
        reference, quick = a.read(1), b.read(1)
    assert (quick == reference).mean() > 0.99
    truth = np.where(truth == 0, 5, truth)
    for class_id in range(1, 6):
        assert iou(quick == class_id, truth == class_id) >= 0.95, class_id
    # an explicit stride larger than fast mode's stays
    assert fast_stride(224, 200) == 200


def test_fast_mode_from_the_command_line_and_the_saved_settings(monkeypatch, tmp_path):
    import argparse

    from drseg.cli.segment import SETTINGS, add_request_arguments, request_from_args
    from drseg.cli.arguments import resolve_settings
    from drseg.core.segment import windows_of
    from drseg.core.settings import Settings, save_settings

    parser = argparse.ArgumentParser()
    add_request_arguments(parser)
    monkeypatch.setenv("DRSEG_CONFIG", str(tmp_path / "settings.json"))

    def stride_of(*argv):
        args = parser.parse_args(["--classes", "water", *argv])
        args.quiet = True
        settings = resolve_settings(args, SETTINGS)
        return windows_of(request_from_args(args, "scene.tif", settings)).stride

    assert stride_of() == 112
    assert stride_of("--fast") == 168
    assert stride_of("--fast", "--window", "448", "--stride", "224") == 336
    save_settings(Settings(fast=True))
    assert stride_of() == 168                              # the saved setting
    assert Settings(fast="yes").validate()                  # not a boolean: a problem
