"""core/evaluation/scoring.py: a predicted class raster scored against a reference raster or
polygons. Every number is checked against a hand count; test_score_algorithm.py runs the same
cases through the Processing algorithm."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from drseg.core.errors import InputError
from drseg.core.evaluation.scoring import PolygonReference, RasterReference, score_classification

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 6000000.0
NAMES = {0: "background", 1: "building", 2: "water"}

# A 4×4 prediction (255: nodata) and its reference (255: the ignore value). Pairs (reference,
# predicted) over the 14 scored pixels: background 4 right + 1 as building; building 3 right +
# 1 as water; water 4 right + 1 as background.
PREDICTED = [[1, 1, 2, 2],
             [1, 1, 2, 2],
             [0, 0, 0, 2],
             [0, 0, 255, 0]]
REFERENCE = [[1, 1, 1, 2],
             [1, 0, 2, 2],
             [0, 0, 2, 2],
             [0, 0, 0, 255]]
# IoU = TP / (reference + predicted - TP); accuracy = TP / reference
EXPECTED_IOU = {"background": 100 * 4 / (5 + 5 - 4), "building": 100 * 3 / (4 + 4 - 3),
                "water": 100 * 4 / (5 + 5 - 4)}
EXPECTED_ACC = {"background": 100 * 4 / 5, "building": 100 * 3 / 4, "water": 100 * 4 / 5}
EXPECTED_MIOU = sum(EXPECTED_IOU.values()) / 3
EXPECTED_AACC = 100 * 11 / 14


def write_classes(path, data, names=None, crs=UTM, pixel=1.0, nodata=None, transform=None):
    data = np.asarray(data, np.uint8)
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                   dtype="uint8", crs=crs, transform=transform or from_origin(X0, Y0, pixel, pixel))
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(str(path), "w", **profile) as dst:
        dst.write(data, 1)
        if names:
            dst.update_tags(**{f"CLASS_{i}": name for i, name in names.items()})
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    predicted = write_classes(tmp_path / "predicted.tif", PREDICTED, NAMES, nodata=255)
    reference = write_classes(tmp_path / "reference.tif", REFERENCE)
    return predicted, reference


def by_name(result):
    return {row.name: row for row in result.classes}


def test_hand_counted_ious_against_a_reference_raster(tiny):
    predicted, reference = tiny
    result = score_classification(predicted, RasterReference(reference), block=3)  # 4 blocks
    rows = by_name(result)
    assert list(rows) == ["background", "building", "water"]
    for name in rows:
        assert rows[name].iou == pytest.approx(EXPECTED_IOU[name])
        assert rows[name].accuracy == pytest.approx(EXPECTED_ACC[name])
    assert (rows["building"].true_positives, rows["building"].reference_pixels,
            rows["building"].predicted_pixels) == (3, 4, 4)
    assert result.miou == pytest.approx(EXPECTED_MIOU)
    assert result.macc == pytest.approx((80 + 75 + 80) / 3)
    assert result.aacc == pytest.approx(EXPECTED_AACC)
    assert (result.scored_pixels, result.ignored_pixels, result.prediction_nodata) == (14, 1, 1)
    assert result.unmatched == {} and "class id" in result.matching


def test_reference_raster_with_class_names_is_matched_by_name(tmp_path, tiny):
    predicted, _ = tiny
    swapped = {1: 2, 2: 1, 0: 0, 255: 255}   # the reference numbers building and water the other way
    data = [[swapped[v] for v in row] for row in REFERENCE]
    reference = write_classes(tmp_path / "named.tif", data,
                              {0: "Background", 1: "WATER", 2: "building"})
    result = score_classification(predicted, RasterReference(reference))
    assert {r.name: r.iou for r in result.classes} == pytest.approx(EXPECTED_IOU)
    assert "by class name" in result.matching
    by_id = score_classification(predicted, RasterReference(reference, match="id"))
    # numbers compared as they are: reference 2 (really building) against predicted water
    assert by_name(by_id)["water"].iou == pytest.approx(100 * 1 / (4 + 5 - 1))
    assert "class id" in by_id.matching


def test_reference_values_without_a_predicted_class_are_reported_not_scored(tmp_path, tiny):
    predicted, _ = tiny
    data = [row[:] for row in REFERENCE]
    data[0][0] = 7                 # a class the prediction does not have
    reference = write_classes(tmp_path / "extra.tif", data)
    result = score_classification(predicted, RasterReference(reference))
    assert result.unmatched == {"7": 1}
    assert result.scored_pixels == 13  # 16 - unmatched - ignore value - the prediction's nodata
    assert by_name(result)["building"].reference_pixels == 3
    # Without an ignore value, 255 is a label like any other, and no predicted class either.
    result = score_classification(predicted, RasterReference(reference, ignore_value=None))
    assert result.unmatched == {"7": 1, "255": 1} and result.scored_pixels == 13


def test_extent_limits_the_score_to_an_area(tiny):
    predicted, reference = tiny
    # The two top rows: reference 1 1 1 2 / 1 0 2 2, predicted 1 1 2 2 / 1 1 2 2.
    result = score_classification(predicted, RasterReference(reference),
                                  extent=(X0, Y0 - 2, X0 + 4, Y0))
    assert result.window == (0, 0, 4, 2) and result.scored_pixels == 8
    rows = by_name(result)
    assert rows["building"].iou == pytest.approx(100 * 3 / (4 + 4 - 3))
    assert rows["water"].iou == pytest.approx(100 * 3 / (3 + 4 - 3))
    assert rows["background"].iou == 0.0 and rows["background"].accuracy == 0.0
    with pytest.raises(InputError, match="does not overlap"):
        score_classification(predicted, RasterReference(reference), extent=(0, 0, 10, 10))


def square(col0, row0, col1, row1):
    """GeoJSON polygon of pixel columns [col0, col1) and rows [row0, row1) of the 1 m grid."""
    x0, x1, y0, y1 = X0 + col0, X0 + col1, Y0 - row0, Y0 - row1
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


# An 8×8 prediction: building in the top-left 4×4, water in the top-right 4×4, background below.
PREDICTED_8 = np.zeros((8, 8), np.uint8)
PREDICTED_8[:4, :4] = 1
PREDICTED_8[:4, 4:] = 2
# Reference polygons: the building covers only the two top rows of the predicted building; the
# water polygon matches; a 'parking' polygon (no such predicted class) covers the two last rows.
POLYGONS = [(square(0, 0, 4, 2), "Building"), (square(4, 0, 8, 4), "WATER"),
            (square(0, 6, 8, 8), "parking")]


def test_polygon_reference_by_name_with_uncovered_pixels_as_background(tmp_path):
    predicted = write_classes(tmp_path / "p8.tif", PREDICTED_8, NAMES, nodata=255)
    result = score_classification(predicted, PolygonReference(POLYGONS))
    rows = by_name(result)
    # background: 24 reference px (rows 2-5 outside polygons); 16 predicted background, 8 building
    assert rows["background"].reference_pixels == 24 and rows["background"].true_positives == 16
    assert rows["background"].iou == pytest.approx(100 * 16 / (24 + 16 - 16))
    assert rows["building"].iou == pytest.approx(100 * 8 / (8 + 16 - 8))
    assert rows["water"].iou == pytest.approx(100.0)
    assert result.miou == pytest.approx((100 * 16 / 24 + 50 + 100) / 3)
    assert result.aacc == pytest.approx(100 * 40 / 48)
    assert result.unmatched == {"parking": 16}
    ignored = score_classification(predicted, PolygonReference(POLYGONS, uncovered="ignore"))
    rows = by_name(ignored)
    assert rows["background"].iou is None and rows["background"].reference_pixels == 0
    assert rows["building"].iou == pytest.approx(100.0) and ignored.miou == pytest.approx(100.0)
    assert ignored.ignored_pixels == 24


def test_polygons_need_class_names_in_the_prediction_to_match_names(tmp_path):
    predicted = write_classes(tmp_path / "unnamed.tif", PREDICTED_8, nodata=255)
    with pytest.raises(InputError, match="no class names"):
        score_classification(predicted, PolygonReference(POLYGONS))
    # ids work without names: classes are the pixel values present
    ids = [(square(0, 0, 4, 4), 1), (square(4, 0, 8, 4), "2")]
    result = score_classification(predicted, PolygonReference(ids))
    assert [(r.name, r.iou) for r in result.classes] == [("class 0", 100.0), ("class 1", 100.0),
                                                          ("class 2", 100.0)]
