"""The Processing algorithm drseg:openvocabsegmentation, run through processing.run."""
from __future__ import annotations

import sys

import pytest
import rasterio
from conftest_qgis import (drseg_provider, fake_models, files_under, isolated_settings,  # noqa: F401
                           put_in_cache, run_algorithm, tiny_clip)
from support.rasters import write_halves_raster as write_raster
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                       QgsProcessingModelChildParameterSource, QgsProcessingModelOutput,
                       QgsProcessingModelParameter, QgsProcessingParameterRasterLayer, QgsProject,
                       QgsRasterLayer, QgsRectangle, QgsVectorLayer, QgsWkbTypes)

ALG = "drseg:openvocabsegmentation"


def params(raster, tiny_clip, tmp_path, **extra):
    values = {"INPUT": raster, "CLASSES": "building,roof; water", "CLIP_MODEL": tiny_clip,
              "CLIP_WEIGHTS": "random", "DEVICE": 1, "OUTPUT": str(tmp_path / "polygons.gpkg")}
    values.update(extra)
    return values


def run_failing(parameters) -> str:
    """Run, expect Processing's failure exception, and return the log the user sees."""
    feedback = QgsProcessingFeedback()
    with pytest.raises(QgsProcessingException) as failure:
        run_algorithm(ALG, parameters, feedback=feedback)
    return f"{failure.value}\n{feedback.textLog()}"


def test_algorithm_is_registered_with_its_parameters(drseg_provider):
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg is not None and alg.provider().id() == "drseg"
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"INPUT", "CLASSES", "BANDS", "EXTENT", "RESOLUTION", "THRESHOLD", "DEVICE", "CLIP_MODEL",
            "CLIP_WEIGHTS", "OUTPUT", "OUTPUT_RASTER"} <= names
    assert alg.parameterDefinition("DEVICE").options() == ["auto", "cpu", "cuda"]
    from drseg.core.segment import DEFAULT_THRESHOLD

    assert alg.parameterDefinition("THRESHOLD").defaultValue() == DEFAULT_THRESHOLD
    assert alg.flags() & alg.Flag.FlagSupportsBatch and alg.flags() & alg.Flag.FlagCanCancel


def test_run_writes_polygons_and_class_raster_in_the_input_crs(drseg_provider, tiny_clip, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    out_raster = str(tmp_path / "classes.tif")
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(progress.append)

    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path, OUTPUT_RASTER=out_raster),
                            feedback=feedback)

    assert result["OUTPUT"] == str(tmp_path / "polygons.gpkg")
    assert result["OUTPUT_RASTER"] == out_raster
    layer = QgsVectorLayer(result["OUTPUT"], "polygons", "ogr")
    assert layer.isValid()
    assert layer.crs().authid() == "EPSG:32633"
    assert layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    assert {"class", "class_id", "score", "area_m2"} <= set(layer.fields().names())
    assert layer.featureCount() == result["POLYGONS"] > 0
    assert {f["class"] for f in layer.getFeatures()} <= {"building", "water"}
    assert sum(f["area_m2"] for f in layer.getFeatures()) == pytest.approx(96 * 64)
    with rasterio.open(raster) as src, rasterio.open(out_raster) as out:
        assert (out.width, out.height, out.transform, out.crs) == (src.width, src.height,
                                                                   src.transform, src.crs)
    assert progress and max(progress) == pytest.approx(100.0)


def test_extent_in_another_crs_is_reprojected_to_the_layer(drseg_provider, tiny_clip, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    # The left half of the raster, given in WGS 84.
    utm, wgs84 = QgsCoordinateReferenceSystem("EPSG:32633"), QgsCoordinateReferenceSystem("EPSG:4326")
    left = QgsRectangle(500000.0 + 2, 6000000.0 - 62, 500000.0 + 40, 6000000.0 - 2)
    box = QgsCoordinateTransform(utm, wgs84, QgsProject.instance()).transformBoundingBox(left)
    extent = f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:4326]"
    out_raster = str(tmp_path / "classes.tif")

    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, EXTENT=extent, OUTPUT_RASTER=out_raster))

    with rasterio.open(out_raster) as out:
        xmin, ymin, xmax, ymax = out.bounds
        assert out.crs.to_epsg() == 32633
    # The reprojected box is slightly larger than `left`; outputs snap to whole input pixels.
    assert 500000.0 <= xmin <= 500002.0 and 500040.0 <= xmax <= 500043.0
    assert 5999936.0 <= ymin <= 5999938.0 and 5999998.0 <= ymax <= 6000000.0


def test_user_errors_become_processing_exceptions_with_the_engine_message(drseg_provider, tiny_clip,
                                                                          tmp_path):
    raster = write_raster(tmp_path / "scene.tif")
    cases = [
        ({"CLASSES": " ; , ;"}, "class prompt is empty"),
        ({"BANDS": "1,2"}, "one band (grey) or three bands"),
        ({"BANDS": "7"}, "Band 7 does not exist"),
        ({"CLIP_WEIGHTS": str(tmp_path / "no-such-weights.pt")}, "no-such-weights.pt"),
        ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap"),
    ]
    for extra, message in cases:
        assert message in run_failing(params(raster, tiny_clip, tmp_path, **extra)), extra
    assert files_under(tmp_path) == ["scene.tif"]


def test_non_file_raster_is_refused(drseg_provider, tiny_clip, tmp_path):
    xyz = QgsRasterLayer("type=xyz&url=http://127.0.0.1:9/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmax=19&zmin=0",
                         "tiles", "wms")
    assert xyz.isValid()
    log = run_failing(params(xyz, tiny_clip, tmp_path))
    assert "'tiles' is a 'wms' layer, not a raster file" in log


def test_missing_torch_gives_an_install_hint(drseg_provider, tiny_clip, tmp_path, monkeypatch):
    raster = write_raster(tmp_path / "scene.tif")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if open_clip were not installed
    log = run_failing(params(raster, tiny_clip, tmp_path))
    assert "open_clip_torch" in log and "Traceback" not in log
    # The plugin's own installer, not pip advice that fails under PEP 668 (Debian 12).
    assert "Install… button" in log and "pip install" not in log


def test_batch_of_runs_shares_one_model(drseg_provider, tiny_clip, tmp_path):
    """Like the batch dialog: one algorithm, several parameter sets, one after another."""
    from drseg.core.models import cache

    rasters = [write_raster(tmp_path / f"scene{i}.tif", width=64 + 16 * i) for i in range(3)]
    alg = QgsApplication.processingRegistry().createAlgorithmById(ALG)
    for i, raster in enumerate(rasters):
        context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
        result = run_algorithm(alg, params(raster, tiny_clip, tmp_path,
                                            OUTPUT=str(tmp_path / f"out{i}.gpkg")),
                                context=context, feedback=feedback)
        assert QgsVectorLayer(result["OUTPUT"], "", "ogr").featureCount() > 0
    keys = [k for k in cache.MODELS.keys() if k[1] == tiny_clip]
    assert len(keys) == 1


def test_runs_inside_a_model(drseg_provider, tiny_clip, tmp_path):
    """The graphical modeler's path: the algorithm as a child of a QgsProcessingModelAlgorithm."""
    raster = write_raster(tmp_path / "scene.tif")
    model = QgsProcessingModelAlgorithm("segment", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    child = QgsProcessingModelChildAlgorithm(ALG)
    child.setChildId("seg")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    static = {"CLASSES": "building; water", "CLIP_MODEL": tiny_clip, "CLIP_WEIGHTS": "random",
              "DEVICE": 1, "THRESHOLD": 0.3}
    for name, value in static.items():
        child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    output = QgsProcessingModelOutput("polygons")
    output.setChildId("seg")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"polygons": output})
    model.addChildAlgorithm(child)
    model.updateDestinationParameters()
    destination = [p.name() for p in model.destinationParameterDefinitions()]
    assert destination == ["seg:polygons"]

    out = str(tmp_path / "model_out.gpkg")
    result = run_algorithm(model, {"raster": raster, "seg:polygons": out})

    assert result["seg:polygons"] == out
    layer = QgsVectorLayer(out, "", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert layer.crs().authid() == "EPSG:32633"


def test_toolbox_run_loads_outputs_styled_by_class(drseg_provider, tiny_clip, tmp_path,
                                                 qgis_new_project):
    """runAndLoadResults, as the toolbox dialog: outputs are loaded and get the class styles."""
    from qgis.core import QgsCategorizedSymbolRenderer, QgsPalettedRasterRenderer

    from drseg.core.colors import class_colour

    raster = write_raster(tmp_path / "scene.tif")
    out_raster = str(tmp_path / "classes.tif")
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, OUTPUT_RASTER=out_raster),
                  load_results=True)

    layers = {layer.source().split("|")[0]: layer for layer in qgis_new_project.mapLayers().values()}
    assert set(layers) == {str(tmp_path / "polygons.gpkg"), out_raster}
    renderer = layers[str(tmp_path / "polygons.gpkg")].renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert {c.value(): c.symbol().color().getRgb()[:3] for c in renderer.categories()} == {
        "building": class_colour("building"), "water": class_colour("water")}
    palette = layers[out_raster].renderer()
    assert isinstance(palette, QgsPalettedRasterRenderer)
    assert [c.label for c in palette.classes()] == ["background", "building", "water"]


# -- method: DR-Seg or dense CLIP -----------------------------------------------------------------

def test_drseg_parameters_are_registered_with_compatible_defaults(drseg_provider):
    from drseg.core.segment import SegmentationRequest

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    engine = SegmentationRequest(raster="", classes="")
    method = alg.parameterDefinition("METHOD")
    assert method.defaultValue() == 0 and method.options()[0].startswith("Auto")
    assert len(method.options()) == 3
    assert not method.flags() & method.Flag.FlagAdvanced
    dino = alg.parameterDefinition("DINO_MODEL")
    assert dino.options() == ["dino_vits8", "dino_vitb8", "dinov2_vits14", "dinov2_vitb14"]
    assert dino.options()[dino.defaultValue()] == engine.dino_model
    assert alg.parameterDefinition("DINO_WEIGHTS").flags() & method.Flag.FlagOptional
    assert alg.parameterDefinition("SEMANTIC_RATIO").defaultValue() == engine.semantic_ratio
    assert alg.parameterDefinition("GRAPH_K").defaultValue() == engine.graph_k
    for name in ("DECOUPLE", "RECTIFY", "FUSION"):
        assert alg.parameterDefinition(name).defaultValue() is True
    for name in ("DINO_MODEL", "DINO_WEIGHTS", "SEMANTIC_RATIO", "GRAPH_K", "DECOUPLE", "RECTIFY",
                 "FUSION"):
        assert alg.parameterDefinition(name).flags() & method.Flag.FlagAdvanced, name
    assert {"USED_METHOD", "NOTE"} <= {o.name() for o in alg.outputDefinitions()}


def test_drseg_options_reach_the_engine(drseg_provider, tiny_clip, tmp_path, fake_models,
                                        isolated_settings):
    raster = write_raster(tmp_path / "scene.tif")
    weights = tmp_path / "dino.pth"
    weights.write_bytes(b"a checkpoint")
    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path, METHOD=1, DINO_MODEL=2,
                                        DINO_WEIGHTS=str(weights), SEMANTIC_RATIO=0.6, GRAPH_K=4,
                                        DECOUPLE=False, FUSION=False))
    (request,) = fake_models.requests
    assert request.method == "drseg" and request.dino_model == "dinov2_vits14"
    assert request.dino_weights == str(weights)
    assert request.semantic_ratio == pytest.approx(0.6) and request.graph_k == 4
    assert (request.decouple, request.rectify, request.fusion) == (False, True, False)
    assert result["USED_METHOD"] == "drseg" and result["NOTE"] == ""


def test_auto_takes_drseg_with_downloaded_dino_weights(drseg_provider, tiny_clip, tmp_path,
                                                       fake_models, isolated_settings):
    cached = put_in_cache(isolated_settings, "dino-vit-b8")
    raster = write_raster(tmp_path / "scene.tif")
    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path))  # METHOD left at Auto
    (request,) = fake_models.requests
    assert request.method == "drseg" and request.dino_weights == cached
    assert (request.semantic_ratio, request.graph_k) == (0.3, 8)
    assert result["USED_METHOD"] == "drseg"


def test_auto_without_dino_weights_falls_back_to_dense_clip_with_a_note(drseg_provider, tiny_clip,
                                                                       tmp_path, fake_models,
                                                                       isolated_settings):
    raster = write_raster(tmp_path / "scene.tif")
    feedback = QgsProcessingFeedback()
    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path), feedback=feedback)
    (request,) = fake_models.requests
    assert request.method == "clip" and request.dino_weights is None
    assert result["USED_METHOD"] == "clip"
    assert result["NOTE"].startswith("Plain dense CLIP: no DINO weights are set up for dino_vitb8")
    assert "dino-vit-b8" in result["NOTE"]
    assert result["NOTE"] in feedback.textLog() and "dense CLIP on cpu" in feedback.textLog()


def test_engine_note_is_passed_on(drseg_provider, tiny_clip, tmp_path, fake_models,
                                  isolated_settings):
    fake_models.note = "something the engine wants said"
    raster = write_raster(tmp_path / "scene.tif")
    feedback = QgsProcessingFeedback()
    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path, METHOD=2), feedback=feedback)
    assert fake_models.requests[0].method == "clip"
    assert result["NOTE"] == "something the engine wants said"
    assert "something the engine wants said" in feedback.textLog()


def test_drseg_without_dino_weights_is_a_clear_error(drseg_provider, tiny_clip, tmp_path,
                                                     fake_models, isolated_settings):
    raster = write_raster(tmp_path / "scene.tif")
    log = run_failing(params(raster, tiny_clip, tmp_path, METHOD=1))
    assert "DR-Seg needs DINO weights for dino_vitb8" in log and "Dense CLIP" in log
    assert "Traceback" not in log
    log = run_failing(params(raster, tiny_clip, tmp_path, DINO_WEIGHTS="rs-dino-vit-b8"))
    assert "'rs-dino-vit-b8' are not downloaded" in log
    assert fake_models.requests == []
    assert files_under(tmp_path) == ["scene.tif"]


def test_tiling_and_the_model_cache_come_from_the_settings(drseg_provider, tiny_clip, tmp_path,
                                                           fake_models, isolated_settings,
                                                           monkeypatch):
    import json
    import os

    from conftest_qgis import put_in_cache

    monkeypatch.delenv("DRSEG_CACHE_DIR")
    cached = put_in_cache(tmp_path / "cache", "rs-dino-vit-b8")
    with open(os.environ["DRSEG_CONFIG"], "w") as handle:
        json.dump({"cache_dir": str(tmp_path / "cache"), "window": 160, "stride": 96, "block": 256,
                   "batch_size": 3, "dino_model": "dino_vitb8", "dino_weights": "rs-dino-vit-b8"},
                  handle)
    raster = write_raster(tmp_path / "scene.tif")
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path))
    (request,) = fake_models.requests
    assert (request.window, request.stride, request.block, request.batch_size) == (160, 96, 256, 3)
    assert request.method == "drseg" and request.dino_weights == cached  # the settings' DINO
    # Another DINO model than the settings': its own catalog default, not downloaded here.
    result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path, DINO_MODEL=0,
                                        OUTPUT=str(tmp_path / "b.gpkg")))
    assert fake_models.requests[-1].method == "clip" and "dino_vits8" in result["NOTE"]


def test_fast_mode_from_the_parameter_or_the_settings(drseg_provider, tiny_clip, tmp_path,
                                                     fake_models, isolated_settings):
    import json
    import os

    raster = write_raster(tmp_path / "scene.tif")
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, OUTPUT=str(tmp_path / "a.gpkg")))
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, FAST=True,
                              OUTPUT=str(tmp_path / "b.gpkg")))
    with open(os.environ["DRSEG_CONFIG"], "w") as handle:
        json.dump({"fast": True}, handle)                  # unchecked: the settings decide
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, OUTPUT=str(tmp_path / "c.gpkg")))
    assert [r.stride for r in fake_models.requests] == [112, 168, 168]


def test_blend_and_class_probabilities_reach_the_engine(drseg_provider, tiny_clip, tmp_path):
    """BLEND picks the engine's window blend; OUTPUT_PROBABILITIES is a float32 raster on the
    input's grid, one band per class named after it, whose argmax and threshold give the classes."""
    import numpy as np

    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg.parameterDefinition("BLEND").options()[alg.parameterDefinition("BLEND")
                                                      .defaultValue()].startswith("Smooth")
    raster = write_raster(tmp_path / "scene.tif", width=300, height=250)
    probabilities = {}
    for blend in (0, 1):
        out = str(tmp_path / f"p{blend}.tif")
        classes = str(tmp_path / f"c{blend}.tif")
        result = run_algorithm(ALG, params(raster, tiny_clip, tmp_path, BLEND=blend, THRESHOLD=0.5,
                                           OUTPUT=str(tmp_path / f"o{blend}.gpkg"),
                                           OUTPUT_RASTER=classes, OUTPUT_PROBABILITIES=out))
        assert result["OUTPUT_PROBABILITIES"] == out
        with rasterio.open(out) as src, rasterio.open(raster) as ref, rasterio.open(classes) as cls:
            assert src.descriptions == ("building", "water") and src.dtypes == ("float32",) * 2
            assert (src.transform, src.crs, src.shape) == (ref.transform, ref.crs, ref.shape)
            probabilities[blend] = p = src.read()
            expected = np.where(p.max(axis=0) < 0.5, 0, p.argmax(axis=0) + 1)
            assert (cls.read(1) == expected).all()
    assert np.abs(probabilities[0] - probabilities[1]).max() > 1e-4   # the blend was applied


def test_saved_clip_settings_reach_the_algorithm_and_its_log_says_so(drseg_provider, tiny_clip,
                                                                      tmp_path, fake_models,
                                                                      isolated_settings):
    """CLIP model and weights left empty come from the DR-Seg settings (a local weights file
    here); given ones win; the log names the source of each value."""
    import os

    from drseg.core.settings import Settings, save_settings

    weights = str(tmp_path / "my_clip.safetensors")
    save_settings(Settings(clip_model=tiny_clip, clip_weights=weights), os.environ["DRSEG_CONFIG"])
    raster = write_raster(tmp_path / "scene.tif")
    feedback = QgsProcessingFeedback()
    run_algorithm(ALG, params(raster, None, tmp_path, CLIP_MODEL="", CLIP_WEIGHTS=None),
                  feedback=feedback)
    request = fake_models.requests[-1]
    assert (request.clip_model, request.clip_weights) == (tiny_clip, weights)
    log = feedback.textLog()
    assert f"Setting CLIP weights: {weights} (saved settings)" in log
    assert f"Setting Model cache folder: {isolated_settings} (environment DRSEG_CACHE_DIR)" in log
    assert request.cache_dir == str(isolated_settings)

    feedback = QgsProcessingFeedback()
    run_algorithm(ALG, params(raster, tiny_clip, tmp_path, OUTPUT=str(tmp_path / "b.gpkg")),
                  feedback=feedback)
    assert fake_models.requests[-1].clip_weights == "random"
    assert "Setting CLIP weights: random (parameter)" in feedback.textLog()


def test_dask_cluster_parameter_then_environment_then_settings(drseg_provider, tiny_clip, tmp_path,
                                                               isolated_settings, monkeypatch):
    import json
    import os

    from drseg.core.cluster import client

    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 1)
    assert alg_has_optional_dask_parameter()
    raster = write_raster(tmp_path / "scene.tif")
    with open(os.environ["DRSEG_CONFIG"], "w") as handle:
        json.dump({"dask": "tcp://127.0.0.1:7"}, handle)
    assert "Cannot reach the Dask scheduler at tcp://127.0.0.1:7" in run_failing(
        params(raster, tiny_clip, tmp_path))
    monkeypatch.setenv("DRSEG_DASK", "tcp://127.0.0.1:9")
    assert "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in run_failing(
        params(raster, tiny_clip, tmp_path))
    assert "Dask cluster 'local:x'" in run_failing(params(raster, tiny_clip, tmp_path,
                                                          DASK="local:x"))
    assert files_under(tmp_path) == ["scene.tif"]


def alg_has_optional_dask_parameter() -> bool:
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    definition = alg.parameterDefinition("DASK")
    return definition is not None and bool(definition.flags() & definition.Flag.FlagOptional)
