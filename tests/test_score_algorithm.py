"""The Processing algorithm drseg:scoreclassification on the hand-counted cases of
test_evaluation_scoring.py (core/evaluation/scoring.py)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest_qgis import drseg_provider, isolated_settings, run_algorithm  # noqa: F401
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature,
                       QgsGeometry, QgsProcessingException, QgsProcessingFeedback, QgsProject,
                       QgsRectangle, QgsVectorLayer)
from rasterio.warp import Resampling, calculate_default_transform, reproject

from test_evaluation_scoring import (EXPECTED_AACC, EXPECTED_IOU, EXPECTED_MIOU, NAMES,  # noqa: F401
                                     POLYGONS, PREDICTED_8, UTM, X0, Y0, square, tiny,
                                     write_classes)

ALG = "drseg:scoreclassification"


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
