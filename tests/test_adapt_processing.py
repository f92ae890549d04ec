"""drseg:adaptmodel end to end on a memory polygon layer with the tiny real CLIP, and the
segmentation algorithm's adapter parameter."""
from __future__ import annotations

import os

import pytest
from conftest_qgis import drseg_provider, isolated_settings, run_algorithm  # noqa: F401
from qgis.core import QgsFeature, QgsGeometry, QgsProcessingException, QgsVectorLayer

from drseg.core.adapt.adapter import load_adapter
from drseg.core.adapt.catalog import import_adapter
from test_adapt_cli import labelled_scene  # noqa: F401


def memory_labels(path):
    """The GeoPackage's polygons copied into a memory layer (a layer QGIS holds, not a file)."""
    source = QgsVectorLayer(path, "labels", "ogr")
    layer = QgsVectorLayer(f"Polygon?crs={source.crs().authid()}&field=kind:string", "labels", "memory")
    features = []
    for f in source.getFeatures():
        copy = QgsFeature(layer.fields())
        copy.setGeometry(QgsGeometry(f.geometry()))
        copy.setAttributes([f["landuse"]])
        features.append(copy)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def test_adaptmodel_writes_an_adapter_and_segmentation_uses_it(tmp_path, labelled_scene, drseg_provider):
    raster, labels, config, weights = labelled_scene
    out = str(tmp_path / "mine.safetensors")
    result = run_algorithm("drseg:adaptmodel", {
        "INPUT": raster, "LABELS": memory_labels(labels), "FIELD": "kind", "LEVEL": 1,
        "VALIDATION_SHARE": 0.25, "STEPS": 2, "CHIP": 64, "CLIP_MODEL": config,
        "CLIP_WEIGHTS": weights, "DEVICE": 0, "OUTPUT": out})
    assert result["OUTPUT"] == out and os.path.exists(result["REPORT"])
    assert 0 <= result["MIOU_BEFORE"] <= 100 and 0 <= result["MIOU_AFTER"] <= 100
    adapter = load_adapter(out)
    assert adapter.level == "prompt" and adapter.classes == ["meadow", "roof"]

    seg = run_algorithm("drseg:openvocabsegmentation", {
        "INPUT": raster, "CLASSES": "meadow; roof; water", "CLIP_MODEL": config,
        "CLIP_WEIGHTS": weights, "METHOD": 2, "ADAPTER": out,
        "OUTPUT": str(tmp_path / "seg.gpkg")})
    assert os.path.exists(seg["OUTPUT"]) and "Adapter" in seg["NOTE"]

    # the adapter by its name in the model cache, as `models list` shows it
    import_adapter(out, name="farm")
    by_name = run_algorithm("drseg:openvocabsegmentation", {
        "INPUT": raster, "CLASSES": "meadow; roof; water", "CLIP_MODEL": config,
        "CLIP_WEIGHTS": weights, "METHOD": 2, "ADAPTER": "farm",
        "OUTPUT": str(tmp_path / "by_name.gpkg")})
    assert "Adapter" in by_name["NOTE"]
    assert read_classes(by_name["OUTPUT"]) == read_classes(seg["OUTPUT"])
    with pytest.raises(QgsProcessingException, match="'pasture' not found"):
        run_algorithm("drseg:openvocabsegmentation", {
            "INPUT": raster, "CLASSES": "meadow; roof", "CLIP_MODEL": config,
            "CLIP_WEIGHTS": weights, "METHOD": 2, "ADAPTER": "pasture",
            "OUTPUT": str(tmp_path / "unknown.gpkg")})


def read_classes(gpkg):
    """(class, area) of every polygon, in a stable order."""
    layer = QgsVectorLayer(gpkg, "result", "ogr")
    return sorted((f["class"], round(f.geometry().area(), 3)) for f in layer.getFeatures())


def test_adaptmodel_prompt_context_options(tmp_path, labelled_scene, drseg_provider):
    """The advanced context parameters reach the training: 2 shared context words + one per class."""
    raster, labels, config, weights = labelled_scene
    out = str(tmp_path / "context.safetensors")
    run_algorithm("drseg:adaptmodel", {
        "INPUT": raster, "LABELS": memory_labels(labels), "FIELD": "kind", "LEVEL": 1,
        "STEPS": 1, "CHIP": 64, "CLIP_MODEL": config, "CLIP_WEIGHTS": weights,
        "CONTEXT_TOKENS": 2, "CLASS_CONTEXT": True, "OUTPUT": out})
    adapter = load_adapter(out)
    assert adapter.context.shape[0] == 2 and adapter.class_context.shape[:2] == (2, 2)
    run_algorithm("drseg:adaptmodel", {
        "INPUT": raster, "LABELS": memory_labels(labels), "FIELD": "kind", "LEVEL": 1,
        "STEPS": 1, "CHIP": 64, "CLIP_MODEL": config, "CLIP_WEIGHTS": weights,
        "CONTEXT_TOKENS": 0, "OUTPUT": out})
    assert load_adapter(out).context is None


def test_adaptmodel_bad_field_is_one_clear_error(tmp_path, labelled_scene, drseg_provider):
    raster, labels, config, weights = labelled_scene
    with pytest.raises(QgsProcessingException):
        run_algorithm("drseg:adaptmodel", {
            "INPUT": raster, "LABELS": memory_labels(labels), "FIELD": "nope", "CHIP": 64,
            "CLIP_MODEL": config, "CLIP_WEIGHTS": weights, "OUTPUT": str(tmp_path / "x.safetensors")})
