"""The engine end to end on synthetic scenes whose right answer is known (colour oracle scorer)."""
import os

import numpy as np
import pytest
import rasterio
from rasterio import features
from rasterio.transform import from_origin

from conftest import ColourOracleScorer, iou, scene_image, scene_labels, write_raster
from drseg.core.errors import InputError, RunCancelled
from drseg.core.segment import SegmentationRequest, run_segmentation

CLASSES = "building,roof; road,street; water; tree,forest; field"
FIELD = (215, 205, 150)


def oracle():
    colours = dict(ColourOracleScorer().colours, field=FIELD)
    return ColourOracleScorer(colours)


def run(path, out_dir, scorer=None, **kw):
    kw.setdefault("out_vector", str(out_dir / "out.gpkg"))
    kw.setdefault("out_raster", str(out_dir / "out.tif"))
    kw.setdefault("threshold", 0.0)
    request = SegmentationRequest(raster=path, classes=kw.pop("classes", CLASSES), **kw)
    return run_segmentation(request, scorer=scorer or oracle())


def read_gpkg(path):
    from osgeo import ogr
    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    rows = []
    for feature in layer:
        rows.append(dict(geometry=feature.GetGeometryRef().ExportToWkb(), **feature.items()))
    srs = layer.GetSpatialRef().ExportToWkt()
    return rows, srs


def polygons_to_labels(rows, shape, transform):
    import shapely
    shapes = [(shapely.from_wkb(bytes(r["geometry"])), r["class_id"]) for r in rows]
    return features.rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")


def test_oracle_scene_raster_and_polygons_match_the_truth(scene, tmp_path):
    path, truth = scene
    truth = np.where(truth == 0, 5, truth)  # the field is class 5 in the prompt
    result = run(path, tmp_path)
    with rasterio.open(result.raster_path) as src, rasterio.open(path) as ref:
        predicted = src.read(1)
        assert (src.width, src.height, src.transform, src.crs) == (ref.width, ref.height, ref.transform, ref.crs)
        assert src.nodata == 255
        assert src.tags()["CLASS_1"] == "building" and src.tags()["CLASS_3"] == "water"
        assert src.colormap(1)[3][:3] != src.colormap(1)[1][:3]
        transform = src.transform
    rows, srs = read_gpkg(result.vector_path)
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
    small = run(path, tmp_path / "a", block=96)
    large = run(path, tmp_path / "b", block=4096)
    with rasterio.open(small.raster_path) as a, rasterio.open(large.raster_path) as b:
        assert np.array_equal(a.read(1), b.read(1))
    rows_a, _ = read_gpkg(small.vector_path)
    rows_b, _ = read_gpkg(large.vector_path)
    # Polygons cut by block seams are dissolved again: same count and same total area per class.
    assert len(rows_a) == len(rows_b)
    for name in ("building", "road", "water"):
        area_a = sum(r["area_m2"] for r in rows_a if r["class"] == name)
        area_b = sum(r["area_m2"] for r in rows_b if r["class"] == name)
        assert area_a == pytest.approx(area_b, rel=1e-9)


def test_every_window_is_scored_once(scene, tmp_path):
    path, _ = scene
    scorer = oracle()
    result = run(path, tmp_path, scorer=scorer, block=128)
    # 600 x 520 px: rows 0,112,224,336 + 376; cols 0,112,224 + 296 -> 5 x 4 windows.
    assert scorer.windows == 20 == result.timings.windows


def test_nodata_is_excluded_from_prediction_and_outputs(tmp_path):
    labels = scene_labels()
    image = scene_image(labels)
    image[:, :, :100] = 0
    path = write_raster(tmp_path / "nodata.tif", image, nodata=0)
    result = run(path, tmp_path)
    with rasterio.open(result.raster_path) as src:
        predicted = src.read(1)
    assert (predicted[:, :100] == 255).all()
    assert (predicted[:, 100:] != 255).all()
    rows, _ = read_gpkg(result.vector_path)
    with rasterio.open(path) as src:
        burned = polygons_to_labels(rows, labels.shape, src.transform)
    assert (burned[:, :100] == 0).all()


def test_all_nodata_raster_is_a_clear_error(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    with pytest.raises(InputError, match="no valid pixels"):
        run(path, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["empty.tif"]


def test_cancel_leaves_no_file(scene, tmp_path):
    path, _ = scene
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    request = SegmentationRequest(raster=path, classes=CLASSES, out_vector=str(tmp_path / "o.gpkg"),
                                  out_raster=str(tmp_path / "o.tif"), block=128)
    with pytest.raises(RunCancelled):
        run_segmentation(request, scorer=oracle(), cancelled=cancelled)
    assert sorted(os.listdir(tmp_path)) == ["scene.tif"]


@pytest.mark.parametrize("classes", ["", " ; ; ", None])
def test_empty_prompt_is_a_clear_error(scene, tmp_path, classes):
    path, _ = scene
    with pytest.raises(InputError, match="class prompt is empty"):
        run(path, tmp_path, classes=classes)


def test_sixteen_bit_and_float_with_nan_are_stretched(tmp_path):
    from drseg.core.raster_io import RasterReader
    from rasterio.windows import Window

    labels = scene_labels(300, 260)
    image = scene_image(labels).astype(np.float32)
    data16 = (image * 40 + 1000).astype(np.uint16)
    data16[0, 0, 0] = 65000  # one hot pixel must not ruin the stretch
    path16 = write_raster(tmp_path / "u16.tif", data16)
    # Robust per-band stretch: the 2nd..98th percentiles map to 0..255.
    low, high = np.percentile(data16.reshape(3, -1).astype(np.float64), (2, 98), axis=1)
    expected = np.clip((data16 - low[:, None, None]) * (255.0 / (high - low))[:, None, None], 0, 255).round()
    with RasterReader(path16) as reader:
        got, valid = reader.read(Window(0, 0, 260, 300))
    assert valid.all()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # End to end, the 16-bit raster segments exactly like its stretched 8-bit equivalent.
    path8 = write_raster(tmp_path / "u8.tif", got)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    colours = {k: tuple(int(v) for v in np.median(got[:, labels == i], axis=1))
               for i, k in enumerate(["field", "building", "road", "water", "tree"])
               if (labels == i).any()}
    scorer = ColourOracleScorer(colours)
    a = run(path16, tmp_path / "a", scorer=scorer, out_vector=None)
    b = run(path8, tmp_path / "b", scorer=scorer, out_vector=None)
    with rasterio.open(a.raster_path) as ra, rasterio.open(b.raster_path) as rb:
        assert np.array_equal(ra.read(1), rb.read(1))
        predicted = ra.read(1)
    truth = np.where(labels == 0, 5, labels)
    assert (predicted == truth).mean() > 0.95

    floats = image / 255.0
    floats[:, :20, :20] = np.nan
    path_f = write_raster(tmp_path / "f32.tif", floats)
    (tmp_path / "f").mkdir()
    result = run(path_f, tmp_path / "f", out_vector=None)
    with rasterio.open(result.raster_path) as src:
        predicted = src.read(1)
    assert (predicted[:20, :20] == 255).all() and (predicted[20:, 20:] != 255).all()


@pytest.mark.parametrize("bands,count,expected", [(None, 1, [1, 1, 1]), (None, 5, [1, 2, 3]),
                                                  ([4, 3, 2], 5, [4, 3, 2]), ([2], 5, [2, 2, 2])])
def test_band_choice_for_one_to_many_bands(tmp_path, bands, count, expected):
    from drseg.core.raster_io import RasterReader
    from rasterio.windows import Window

    data = np.stack([np.full((40, 50), 10 * (b + 1), np.uint8) for b in range(count)])
    path = write_raster(tmp_path / "bands.tif", data)
    with RasterReader(path, bands=bands) as reader:
        image, _ = reader.read(Window(0, 0, 50, 40))
    assert [int(image[i, 0, 0]) for i in range(3)] == [10 * b for b in expected]


@pytest.mark.parametrize("bands,message", [([6], "does not exist"), ([1, 2], "one band")])
def test_bad_band_choice_is_a_clear_error(tmp_path, bands, message):
    path = write_raster(tmp_path / "bands.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(InputError, match=message):
        run(path, tmp_path, bands=bands)


def test_geographic_crs_areas_are_in_square_metres(tmp_path):
    labels = scene_labels(300, 260)
    degrees = 1e-5  # about 1.11 m at the equator
    path = write_raster(tmp_path / "geo.tif", scene_image(labels), crs="EPSG:4326",
                        transform=from_origin(10.0, 0.0015, degrees, degrees))
    result = run(path, tmp_path)
    rows, _ = read_gpkg(result.vector_path)
    water = sum(r["area_m2"] for r in rows if r["class"] == "water")
    pixel_m2 = (degrees * 111_320) * (degrees * 110_574)
    assert water == pytest.approx((labels == 3).sum() * pixel_m2, rel=0.06)


def test_extent_and_resolution_define_the_output_grid(scene, tmp_path):
    path, truth = scene
    with rasterio.open(path) as src:
        left, top = src.transform.c, src.transform.f
    extent = (left + 50, top - 200, left + 150, top - 40)  # 200 x 320 px at 0.5 m
    result = run(path, tmp_path, extent=extent, resolution=1.0)
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
        run(path, tmp_path, extent=(0, 0, 10, 10))


def test_polygons_do_not_depend_on_the_vectorizing_block(scene, tmp_path):
    """Regions cut by block seams (both directions) are joined again, with their scores."""
    from drseg.core.vectorize import vectorize

    path, _ = scene
    result = run(path, tmp_path, out_vector=None)
    with rasterio.open(result.raster_path) as src:
        profile = src.profile
        scores = (src.read(1) % 7 / 7.0).astype("float32")  # any per-pixel score will do
    profile.update(dtype="float32", nodata=None)
    score_path = str(tmp_path / "score.tif")
    with rasterio.open(score_path, "w", **profile) as dst:
        dst.write(scores[None])

    def regions(block):
        found = sorted((r.class_index, round(r.area_m2, 6), round(r.score, 9), r.pixels)
                       for r in vectorize(result.raster_path, score_path, block=block))
        return found

    whole = regions(4096)
    assert regions(64) == whole
    assert regions(97) == whole
    assert len(whole) >= 5
