"""Processing outputs as QGIS users meet them: the toolbox dialog's threaded run and its loading of
results, batch mode, a graphical model chaining into a native algorithm, feature sinks in any
vector format or a temporary layer, each styled by class."""
from __future__ import annotations

import os

import pytest
from conftest_qgis import (drseg_provider, fake_models, files_under, isolated_settings,  # noqa: F401
                           koeln_scene, run_algorithm, run_like_the_toolbox_dialog, write_raster)
from qgis.core import (QgsCategorizedSymbolRenderer, QgsPalettedRasterRenderer,
                       QgsProcessingContext, QgsProcessingFeedback, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelOutput, QgsProcessingModelParameter,
                       QgsProcessingOutputLayerDefinition, QgsProcessingParameterRasterLayer,
                       QgsProject, QgsRasterLayer, QgsVectorLayer)

from drseg.core.colors import class_colour

ALG = "drseg:openvocabsegmentation"
REFER = "drseg:referringsegmentation"
CLASSES = "building,roof; water"


def params(raster, **extra):
    values = {"INPUT": raster, "CLASSES": CLASSES, "DEVICE": 1, "METHOD": 2}
    values.update(extra)
    return values


def loaded(project, kind):
    return [layer for layer in project.mapLayers().values() if isinstance(layer, kind)]


def class_colours(layer) -> dict:
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer), type(renderer)
    return {c.value(): c.symbol().color().getRgb()[:3] for c in renderer.categories()}


STYLED = {"building": class_colour("building"), "water": class_colour("water")}


def areas_by_class(layer) -> dict:
    areas = {}
    for feature in layer.getFeatures():
        areas[feature["class"]] = areas.get(feature["class"], 0.0) + feature.geometry().area()
    return areas


# The synthetic scene is 96×64 px of 1 m: its left half red (building), its right half blue (water).
HALVES = {"building": 48 * 64, "water": 48 * 64}


def test_toolbox_dialog_run_adds_styled_polygons_and_class_raster(drseg_provider, fake_models,
                                                                 tmp_path, qgis_new_project):
    """The dialog's path: a QgsProcessingAlgRunnerTask (worker thread) and the dialog's loading of
    results; outputs chosen with 'Open output file after running algorithm' checked."""
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    project = QgsProject.instance()
    parameters = params(raster, OUTPUT=QgsProcessingOutputLayerDefinition(
        str(tmp_path / "polygons.gpkg"), project), OUTPUT_RASTER=QgsProcessingOutputLayerDefinition(
        str(tmp_path / "classes.tif"), project))

    ok, results, loaded_ok, feedback = run_like_the_toolbox_dialog(ALG, parameters, project)

    assert ok and loaded_ok, feedback.textLog()
    (polygons,) = loaded(project, QgsVectorLayer)
    assert polygons.source().split("|")[0] == str(tmp_path / "polygons.gpkg")
    assert class_colours(polygons) == STYLED
    assert areas_by_class(polygons) == pytest.approx(HALVES)
    (classes,) = loaded(project, QgsRasterLayer)
    assert classes.source() == str(tmp_path / "classes.tif")
    assert isinstance(classes.renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in classes.renderer().classes()] == ["background", "building", "water"]
    assert results["POLYGONS"] == polygons.featureCount()


def test_toolbox_dialog_temporary_output_on_the_real_scene(drseg_provider, fake_models, tmp_path,
                                                           qgis_new_project, koeln_scene):
    """The default choice of the dialog, a temporary layer, on the real aerial scene: the layer
    comes back from the worker thread into the project, styled, every feature copied."""
    project = QgsProject.instance()
    parameters = params(koeln_scene, RESOLUTION=2.0, CLASSES="building; tree; water",
                        OUTPUT=QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", project))

    ok, results, loaded_ok, feedback = run_like_the_toolbox_dialog(ALG, parameters, project)

    assert ok and loaded_ok, feedback.textLog()
    (polygons,) = loaded(project, QgsVectorLayer)
    assert polygons.providerType() == "memory"
    assert polygons.crs().authid() == "EPSG:25832"
    assert polygons.featureCount() == results["POLYGONS"] > 0
    assert set(class_colours(polygons)) == {"building", "tree", "water"}
    # Every 2-m working pixel of the 500 m × 500 m tile is in exactly one polygon.
    total = sum(f.geometry().area() for f in polygons.getFeatures())
    assert total == pytest.approx(500.0 * 500.0, rel=1e-6)


def test_batch_run_loads_outputs_and_logs_no_missing_layer(drseg_provider, fake_models, tmp_path,
                                                           qgis_new_project):
    """The batch dialog: each row a QgsProcessingOutputLayerDefinition per destination, the class
    raster's cell left blank, run on the main thread, then the dialog loads the results."""
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsApplication

    project = QgsProject.instance()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALG)
    for row in range(2):
        raster = write_raster(tmp_path / f"scene{row}.tif", width=64 + 32 * row)
        parameters = params(raster, OUTPUT=QgsProcessingOutputLayerDefinition(
            str(tmp_path / f"out{row}.shp"), project),
            OUTPUT_RASTER=QgsProcessingOutputLayerDefinition("", project))
        context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
        context.setProject(project)
        results, ok = algorithm.run(parameters, context, feedback)
        assert ok, feedback.textLog()
        assert handleAlgorithmResults(algorithm, context, feedback, False, parameters)
        assert "not correctly generated" not in feedback.textLog()
    layers = loaded(project, QgsVectorLayer)
    assert sorted(layer.source().split("|")[0] for layer in layers) == [
        str(tmp_path / "out0.shp"), str(tmp_path / "out1.shp")]
    assert all(class_colours(layer) == STYLED for layer in layers)
    assert not loaded(project, QgsRasterLayer)


@pytest.mark.parametrize("name", ["polygons.shp", "polygons.geojson", "polygons.fgb",
                                  "polygons.gpkg"])
def test_polygons_in_any_vector_format_open_styled(drseg_provider, fake_models, tmp_path, name):
    """A file written through the sink carries its style for any later opening: the GeoPackage's
    layer_styles table, or the .qml QGIS reads beside other formats."""
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    out = str(tmp_path / name)
    result = run_algorithm(ALG, params(raster, OUTPUT=out))
    assert result["OUTPUT"].split("|")[0] == out
    layer = QgsVectorLayer(out, "opened later", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:32633"
    assert {"class", "class_id", "score", "area_m2"} <= set(layer.fields().names())
    assert areas_by_class(layer) == pytest.approx(HALVES)
    assert class_colours(layer) == STYLED


def test_temporary_output_through_processing_run(drseg_provider, fake_models, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    context = QgsProcessingContext()
    result = run_algorithm(ALG, params(raster, OUTPUT="TEMPORARY_OUTPUT"), context=context)
    layer = result["OUTPUT"]  # processing.run hands back the temporary layer itself
    assert isinstance(layer, QgsVectorLayer) and layer.providerType() == "memory"
    assert areas_by_class(layer) == pytest.approx(HALVES)
    assert files_under(tmp_path) == ["scene.tif"]  # the engine's work file is gone


def test_cancel_while_copying_into_the_sink_leaves_nothing(drseg_provider, fake_models, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)

    class CancelWhenCopying(QgsProcessingFeedback):
        def setProgressText(self, text):  # noqa: N802
            super().setProgressText(text)
            if text == "Writing the output layer":
                self.cancel()

    feedback = CancelWhenCopying()
    with pytest.raises(Exception) as failure:
        run_algorithm(ALG, params(raster, OUTPUT=str(tmp_path / "out.shp")), feedback=feedback)
    assert "Run cancelled" in str(failure.value) + feedback.textLog()
    assert files_under(tmp_path) == ["scene.tif"]


def test_model_chains_the_polygons_into_a_native_algorithm(drseg_provider, fake_models, tmp_path):
    """A graphical model: our polygons (a temporary child output) into native:fixgeometries."""
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)
    model = QgsProcessingModelAlgorithm("segment and fix", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("raster", "Raster"),
                            QgsProcessingModelParameter("raster"))
    seg = QgsProcessingModelChildAlgorithm(ALG)
    seg.setChildId("seg")
    seg.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("raster")])
    for name, value in {"CLASSES": CLASSES, "DEVICE": 1, "METHOD": 2}.items():
        seg.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    model.addChildAlgorithm(seg)
    fix = QgsProcessingModelChildAlgorithm("native:fixgeometries")
    fix.setChildId("fix")
    fix.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("seg", "OUTPUT")])
    output = QgsProcessingModelOutput("fixed")
    output.setChildId("fix")
    output.setChildOutputName("OUTPUT")
    fix.setModelOutputs({"fixed": output})
    model.addChildAlgorithm(fix)
    model.updateDestinationParameters()

    out = str(tmp_path / "fixed.gpkg")
    result = run_algorithm(model, {"raster": raster, "fix:fixed": out})

    layer = QgsVectorLayer(result["fix:fixed"], "", "ogr")
    assert layer.isValid()
    assert areas_by_class(layer) == pytest.approx(HALVES)


def test_referring_toolbox_dialog_run_adds_its_layer(drseg_provider, tmp_path, qgis_new_project,
                                                    monkeypatch):
    """The referring algorithm through the dialog's threaded path, with a stand-in engine that
    writes one known square: the layer reaches the project, styled by expression."""
    from drseg.core.refer import run as refer_run
    from drseg.core.refer.writer import write_referring_layer
    from shapely.geometry import box

    def fake_run(request, progress=None, cancelled=None):
        import rasterio

        with rasterio.open(request.raster) as src:
            crs = src.crs
        write_referring_layer(request.out_vector, crs,
                              [(box(500000, 5999950, 500010, 5999960), "the red roof", 0.9, 100.0)],
                              request.layer_name)
        from types import SimpleNamespace

        return SimpleNamespace(vector_path=request.out_vector, polygon_count=1, width=96,
                               height=64, resolution_m=1.0, tiles=1, device="cpu",
                               model_seconds=0.0, expressions=[])

    monkeypatch.setattr(refer_run, "run_referring", fake_run)
    raster = write_raster(tmp_path / "scene.tif")
    project = QgsProject.instance()
    parameters = {"INPUT": raster, "EXPRESSION": "the red roof", "DEVICE": 1,
                  "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "roof.geojson"),
                                                               project)}
    ok, results, loaded_ok, feedback = run_like_the_toolbox_dialog(REFER, parameters, project)
    assert ok and loaded_ok, feedback.textLog()
    (layer,) = loaded(project, QgsVectorLayer)
    assert layer.featureCount() == 1 and next(layer.getFeatures())["expression"] == "the red roof"
    assert layer.getFeatures().__next__().geometry().area() == pytest.approx(100.0)
    renderer = layer.renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert [c.value() for c in renderer.categories()] == ["the red roof"]
    assert os.path.isfile(tmp_path / "roof.qml")


def test_processing_progress_moves_and_logs_each_stage_once(drseg_provider, fake_models, tmp_path):
    raster = write_raster(tmp_path / "scene.tif", width=96, height=64)

    class Recording(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.texts, self.values = [], []
            self.progressChanged.connect(self.values.append)

        def setProgressText(self, text):  # noqa: N802
            super().setProgressText(text)
            self.texts.append(text)

    feedback = Recording()
    run_algorithm(ALG, params(raster, CLASSES="building,roof; water; tree",
                              OUTPUT=str(tmp_path / "out.gpkg")), feedback=feedback)
    assert feedback.texts.count("Encoding class names") == 1  # 4 queries, one log line
    assert not any("windows" in text for text in feedback.texts)
    assert len(set(feedback.values)) >= 6 and max(feedback.values) == pytest.approx(100.0)
