"""Scoring a predicted class raster against a reference: core/score_raster.py and the Processing
algorithm drseg:scoreclassification. Every number is checked against a hand count."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest_qgis import drseg_provider, isolated_settings, run_algorithm  # noqa: F401
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature,
                       QgsGeometry, QgsProcessingException, QgsProcessingFeedback, QgsProject,
                       QgsRectangle, QgsVectorLayer)
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject

from drseg.core.errors import InputError
from drseg.core.score_raster import PolygonReference, RasterReference, score_classification

ALG = "drseg:scoreclassification"
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


# -- core ------------------------------------------------------------------------------------------

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


# -- Processing ------------------------------------------------------------------------------------

def polygon_layer(polygons, crs=UTM, field_type="string"):
    layer = QgsVectorLayer(f"Polygon?crs={crs}&field=cls:{field_type}", "reference", "memory")
    assert layer.isValid()
    to_layer = None
    if crs != UTM:
        to_layer = QgsCoordinateTransform(QgsCoordinateReferenceSystem(UTM),
                                          QgsCoordinateReferenceSystem(crs), QgsProject.instance())
    features = []
    for geometry, label in polygons:
        ring = geometry["coordinates"][0]
        wkt = "POLYGON((" + ", ".join(f"{x!r} {y!r}" for x, y in ring) + "))"
        geom = QgsGeometry.fromWkt(wkt)
        if to_layer is not None:
            geom.transform(to_layer)
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geom)
        feature.setAttributes([label])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    layer.updateExtents()
    return layer


def is_null(value) -> bool:
    return value is None or (hasattr(value, "isNull") and value.isNull())


def table(result):
    layer = result["OUTPUT"]
    if isinstance(layer, str):
        layer = QgsVectorLayer(layer, "scores", "ogr")
    return {f["class"]: f for f in layer.getFeatures()}


def test_algorithm_is_registered(drseg_provider):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg is not None and alg.group() == "Evaluation"
    assert {p.name() for p in alg.parameterDefinitions()} >= {
        "INPUT", "REFERENCE", "FIELD", "EXTENT", "UNCOVERED", "MATCH", "IGNORE_VALUE", "OUTPUT"}
    assert {o.name() for o in alg.outputDefinitions()} >= {"OUTPUT", "MIOU", "MACC", "AACC"}


def test_processing_table_and_numbers_for_a_reference_raster(drseg_provider, tiny, tmp_path):
    predicted, reference = tiny
    out = str(tmp_path / "scores.gpkg")
    feedback = QgsProcessingFeedback()
    result = run_algorithm(ALG, {"INPUT": predicted, "REFERENCE": reference, "OUTPUT": out},
                           feedback=feedback)
    assert result["MIOU"] == pytest.approx(EXPECTED_MIOU)
    assert result["AACC"] == pytest.approx(EXPECTED_AACC)
    assert result["SCORED_PIXELS"] == 14
    rows = table(result)
    layer = QgsVectorLayer(out, "scores", "ogr")
    assert not layer.isSpatial()
    assert set(layer.fields().names()) >= {"class_id", "class", "iou", "accuracy", "true_pos",
                                           "ref_pixels", "pred_pixels"}
    assert {name: rows[name]["iou"] for name in rows} == pytest.approx(EXPECTED_IOU, abs=1e-4)
    assert rows["building"]["class_id"] == 1 and rows["building"]["pred_pixels"] == 4
    assert rows["water"]["accuracy"] == pytest.approx(80.0)
    assert "mIoU 64.44 %" in feedback.textLog()
    assert "prediction has nodata" in feedback.textLog()


def test_processing_reference_raster_in_another_crs_is_warped(drseg_provider, tiny, tmp_path):
    predicted, reference = tiny
    # The reference reprojected to WGS 84, about 20 times finer than the prediction's 1 m.
    wgs84 = str(tmp_path / "reference_wgs84.tif")
    with rasterio.open(reference) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds, resolution=(2.5e-6, 2.5e-6))
        data = np.full((height, width), 255, np.uint8)
        reproject(rasterio.band(src, 1), data, dst_transform=transform, dst_crs="EPSG:4326",
                  resampling=Resampling.nearest, dst_nodata=255)
    write_classes(wgs84, data, crs="EPSG:4326", transform=transform)
    result = run_algorithm(ALG, {"INPUT": predicted, "REFERENCE": wgs84,
                                 "OUTPUT": "TEMPORARY_OUTPUT"})
    rows = table(result)
    assert {name: rows[name]["iou"] for name in rows} == pytest.approx(EXPECTED_IOU, abs=1e-4)
    assert result["SCORED_PIXELS"] == 14


@pytest.mark.parametrize("crs", [UTM, "EPSG:4326"])
def test_processing_polygon_reference(drseg_provider, tmp_path, crs):
    predicted = write_classes(tmp_path / "p8.tif", PREDICTED_8, NAMES, nodata=255)
    layer = polygon_layer(POLYGONS, crs=crs)
    feedback = QgsProcessingFeedback()
    result = run_algorithm(ALG, {"INPUT": predicted, "REFERENCE": layer, "FIELD": "cls",
                                 "OUTPUT": "TEMPORARY_OUTPUT"}, feedback=feedback)
    rows = table(result)
    assert rows["building"]["iou"] == pytest.approx(50.0)
    assert rows["water"]["iou"] == pytest.approx(100.0)
    assert rows["background"]["iou"] == pytest.approx(100 * 16 / 24, abs=1e-4)
    assert result["MIOU"] == pytest.approx((100 * 16 / 24 + 50 + 100) / 3)
    assert "Reference class 'parking' is not a predicted class: its 16 pixels" in feedback.textLog()
    # Outside the polygons not scored, and only the left half of the area (in WGS 84).
    left = QgsRectangle(X0, Y0 - 8, X0 + 4, Y0)
    box = QgsCoordinateTransform(QgsCoordinateReferenceSystem(UTM),
                                 QgsCoordinateReferenceSystem("EPSG:4326"),
                                 QgsProject.instance()).transformBoundingBox(left)
    extent = f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:4326]"
    result = run_algorithm(ALG, {"INPUT": predicted, "REFERENCE": layer, "FIELD": "cls",
                                 "UNCOVERED": 1, "EXTENT": extent, "OUTPUT": "TEMPORARY_OUTPUT"})
    rows = table(result)
    assert result["SCORED_PIXELS"] == 8  # the building polygon; water is outside the area
    assert rows["building"]["iou"] == pytest.approx(100.0) and is_null(rows["water"]["iou"])


def test_processing_polygon_field_of_class_ids(drseg_provider, tmp_path):
    predicted = write_classes(tmp_path / "p8.tif", PREDICTED_8, NAMES, nodata=255)
    layer = polygon_layer([(square(0, 0, 4, 4), 1), (square(4, 0, 8, 4), 1)], field_type="integer")
    result = run_algorithm(ALG, {"INPUT": predicted, "REFERENCE": layer, "FIELD": "cls",
                                 "UNCOVERED": 1, "OUTPUT": "TEMPORARY_OUTPUT"})
    rows = table(result)
    assert rows["building"]["iou"] == pytest.approx(50.0)      # 16 right of 16 + 16 as water
    assert rows["water"]["iou"] == 0.0 and rows["building"]["accuracy"] == pytest.approx(50.0)


def test_processing_errors_are_clear(drseg_provider, tmp_path, tiny):
    predicted, _ = tiny
    layer = polygon_layer(POLYGONS)
    cases = [({"REFERENCE": layer}, "Choose the class field"),
             ({"REFERENCE": layer, "FIELD": "nope"}, "has no field 'nope'; its fields: cls"),
             ({"REFERENCE": QgsVectorLayer("Point?crs=EPSG:32633&field=cls:string", "points",
                                           "memory"), "FIELD": "cls"}, "'points' holds no polygons")]
    for extra, message in cases:
        feedback = QgsProcessingFeedback()
        with pytest.raises(QgsProcessingException) as failure:
            run_algorithm(ALG, dict({"INPUT": predicted, "OUTPUT": "TEMPORARY_OUTPUT"}, **extra),
                          feedback=feedback)
        assert message in str(failure.value) + feedback.textLog()
    unnamed = write_classes(tmp_path / "unnamed.tif", PREDICTED_8, nodata=255)
    with pytest.raises(QgsProcessingException, match="no class names"):
        run_algorithm(ALG, {"INPUT": unnamed, "REFERENCE": polygon_layer(POLYGONS), "FIELD": "cls",
                            "OUTPUT": "TEMPORARY_OUTPUT"})
