"""`drseg:referringsegmentation`: referring segmentation as a Processing algorithm (toolbox, batch,
modeler, qgis_process).

One expression per line of EXPRESSION; every expression's object(s) go into one GeoPackage layer
with fields expression, score and area_m2, in the raster's CRS. prepareAlgorithm() (main thread)
reads the layer and parameters, checks every expression's parse and imports the engine;
processAlgorithm() (worker thread) only runs the engine: no GUI, no project access. Models are
shared between runs through core.models.shared and areas through the engine's session cache, both
lock-protected, so batch runs on one area skip its encoders after the first.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from qgis.core import (QgsProcessingException, QgsProcessingOutputNumber,
                       QgsProcessingParameterEnum, QgsProcessingParameterExtent,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterFile,
                       QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsVectorLayer)

from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_SAM3_MODEL,
                                    DEVICE_CHOICES, REFER_ENGINE_CHOICES, SAM_MODELS)
from ..qgis_bridge.engine import DEFAULT_MAX_SIZE, import_model_libraries, load_refer_engine
from ..qgis_bridge.styling import style_referring_layer
from .base import (DrSegAlgorithm, destination_files, engine_errors, number_type, source_type,
                   work_folder)

# The engine's GeoPackage in the run's work folder, copied into the OUTPUT sink afterwards.
WORK_FILE, WORK_LAYER = "referring.gpkg", "referring"


def split_expressions(text: str) -> List[str]:
    """One expression per non-empty line."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


# ENGINE's options, in the order of REFER_ENGINE_CHOICES.
REFER_ENGINE_OPTIONS = ["CLIP finds, SAM delineates", "SAM 3 concept prompt (SAM License)"]

class ReferringSegmentationAlgorithm(DrSegAlgorithm):
    INPUT = "INPUT"
    EXPRESSION = "EXPRESSION"
    EXTENT = "EXTENT"
    SAM_MODEL = "SAM_MODEL"
    ENGINE = "ENGINE"
    SAM3_MODEL = "SAM3_MODEL"
    SAM3_WEIGHTS = "SAM3_WEIGHTS"
    SAM_WEIGHTS = "SAM_WEIGHTS"
    PROMPTER = "PROMPTER"
    CLIP_MODEL = "CLIP_MODEL"
    CLIP_WEIGHTS = "CLIP_WEIGHTS"
    DEVICE = "DEVICE"
    BANDS = "BANDS"
    RESOLUTION = "RESOLUTION"
    MAX_SIZE = "MAX_SIZE"
    THRESHOLD = "THRESHOLD"
    OUTPUT = "OUTPUT"
    POLYGONS = "POLYGONS"

    # -- identity -------------------------------------------------------------------------------
    NAME = "referringsegmentation"
    DISPLAY_NAME = "Referring segmentation (objects described in words)"
    TAGS = ["segmentation", "referring", "expression", "sam", "segment anything", "clip",
            "text", "object", "drseg", "ai"]
    HELP = (
        "Finds the object(s) each <b>Expression</b> describes and writes them as polygons: "
        "<i>the largest pond north of the road</i>, <i>all the storage tanks</i>, <i>the second "
        "building from the left</i>. One expression per line; all of them go into one layer "
        "with fields expression, score and area_m2, in the raster's CRS. An expression whose "
        "object is not recognised (no target) stops the run before it starts."
        "<br><br><b>Extent</b>: only this area (reprojected to the raster's CRS); empty: the "
        "whole raster. The area is read with its longest side at most <b>Working size</b> "
        "pixels (0: the native resolution, tiled), or at <b>Resolution</b> metres per pixel "
        "when given. Later expressions on the same area reuse its encoding."
        "<br><br><b>SAM model</b>/<b>SAM weights</b>: Segment Anything's architecture and a "
        "checkpoint file or catalog name (e.g. sam-vit-b); empty: the DR-Seg settings' SAM "
        "weights when they are for this model, else its catalog checkpoint (DR-Seg settings › "
        "Download models…, or <i>python -m drseg models download sam-vit-b</i>). "
        "<b>CLIP model</b>/<b>CLIP weights</b>: as for open-vocabulary segmentation. Needs "
        "torch, torchvision, open_clip_torch and segment-anything.")

    def __init__(self):
        super().__init__()
        self._request = None
        self._destination: Optional[str] = None
        self._expressions: List[str] = []
        self._crs = None

    # -- parameters -----------------------------------------------------------------------------
    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(
            self.EXPRESSION, "Expression(s), one per line (e.g. the largest pond north of the road)",
            multiLine=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Extent (empty: whole raster)", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.SAM_MODEL, "SAM model", options=list(SAM_MODELS), defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.SAM_WEIGHTS, "SAM weights (checkpoint file or catalog name; empty: default)",
            optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CLIP_MODEL, "CLIP model (open_clip name or config .json; empty: DR-Seg settings, "
                             f"else {DEFAULT_CLIP_MODEL})", optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.CLIP_WEIGHTS, "CLIP weights (pretrained tag, catalog name or checkpoint file; "
                               f"empty: DR-Seg settings, else {DEFAULT_CLIP_WEIGHTS})",
            optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, "Device", options=list(DEVICE_CHOICES), defaultValue=0))
        advanced = [
            QgsProcessingParameterString(self.BANDS, "Bands (1 or 3 band numbers, e.g. 1,2,3; "
                                         "empty: RGB)", optional=True),
            QgsProcessingParameterNumber(self.RESOLUTION, "Working resolution, metres per pixel "
                                         "(empty: see working size)", type=number_type("Double"),
                                         optional=True, minValue=0.0),
            QgsProcessingParameterNumber(self.MAX_SIZE, "Working size: longest side in pixels "
                                         "(0: native resolution, tiled)", type=number_type("Integer"),
                                         defaultValue=DEFAULT_MAX_SIZE, minValue=0),
            QgsProcessingParameterNumber(self.THRESHOLD, "Drop results scoring below",
                                         type=number_type("Double"), defaultValue=0.0, minValue=0.0,
                                         maxValue=0.99),
            QgsProcessingParameterString(self.SAM3_MODEL, "SAM 3 model (architecture or "
                                         "config.json)", defaultValue=DEFAULT_SAM3_MODEL),
            QgsProcessingParameterString(self.SAM3_WEIGHTS, "SAM 3 weights (model.safetensors file "
                                         "or folder, or catalog name; empty: the imported 'sam3')",
                                         optional=True),
            QgsProcessingParameterFile(self.PROMPTER, "Trained prompter head (.safetensors from "
                                       "train-referring; empty: the training-free path)",
                                       extension="safetensors", optional=True),
        ]
        self.addParameter(QgsProcessingParameterEnum(
            self.ENGINE, "Engine", options=REFER_ENGINE_OPTIONS, defaultValue=0))
        self.add_advanced(advanced)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Referred objects",
                                                            type=source_type("VectorPolygon")))
        self.addOutput(QgsProcessingOutputNumber(self.POLYGONS, "Number of polygons"))

    # -- running --------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Main thread: validate, resolve layer and output, parse, import the engine."""
        with engine_errors():
            self._request = self._build_request(parameters, context, feedback)
        return True

    def _build_request(self, parameters, context, feedback):
        from ..core.outputs import check_outputs
        from ..qgis_bridge.sources import layer_crs_check, raster_source

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        source = raster_source(layer)
        layer_crs_check(layer)
        expressions = split_expressions(self.parameterAsString(parameters, self.EXPRESSION, context))
        run = load_refer_engine()
        run.parse_expressions(expressions)   # none, or one without a target: the engine's message
        from ..core.raster_io import parse_bands

        bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context))
        extent = self.extent_of(parameters, self.EXTENT, context, layer)
        resolution = self.resolution_of(parameters, self.RESOLUTION, context)

        settings = self.resolve_settings({
            "sam_model": SAM_MODELS[self.parameterAsEnum(parameters, self.SAM_MODEL, context)],
            "sam_weights": self.text_of(parameters, self.SAM_WEIGHTS, context),
            "clip_model": self.text_of(parameters, self.CLIP_MODEL, context),
            "clip_weights": self.text_of(parameters, self.CLIP_WEIGHTS, context),
            "cache_dir": None}, feedback)

        # The sink is made in processAlgorithm(): only what is registered on its context reaches
        # the layers QGIS loads after a threaded (toolbox dialog) run.
        check_outputs(destination_files(self, parameters, (self.OUTPUT,)), [source])
        self._expressions = expressions
        self._crs = layer.crs()
        return run.ReferringRequest(
            raster=source, expressions=expressions, out_vector=WORK_FILE, extent=extent,
            resolution=resolution,
            max_size=self.parameterAsInt(parameters, self.MAX_SIZE, context) or None,
            bands=bands, sam_model=settings["sam_model"],
            sam_weights=settings["sam_weights"], clip_model=settings["clip_model"],
            clip_weights=settings["clip_weights"], cache_dir=settings["cache_dir"],
            engine=REFER_ENGINE_CHOICES[self.parameterAsEnum(parameters, self.ENGINE, context)],
            sam3_model=self.parameterAsString(parameters, self.SAM3_MODEL, context).strip()
            or DEFAULT_SAM3_MODEL,
            sam3_weights=self.parameterAsString(parameters, self.SAM3_WEIGHTS, context).strip() or None,
            device=DEVICE_CHOICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            prompter=self.parameterAsFile(parameters, self.PROMPTER, context) or None,
            layer_name=WORK_LAYER)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Worker thread: run the engine; no GUI, layer or project access here."""
        if self._request is None:  # prepareAlgorithm always runs first; be safe anyway
            raise QgsProcessingException("The algorithm was not prepared")
        from ..core.refer.run import model_libraries, run_referring
        from ..core.style import categorized_qml

        with engine_errors(), work_folder() as work:
            import_model_libraries(model_libraries(self._request))  # in the worker thread
            request = dataclasses.replace(self._request, out_vector=os.path.join(work, WORK_FILE))
            result = run_referring(request, progress=self.engine_progress(feedback),
                                   cancelled=feedback.isCanceled)
            self._destination, _ = self.copy_to_sink(
                result.vector_path, WORK_LAYER, parameters, self.OUTPUT, context, feedback,
                self._crs, categorized_qml(self._expressions, "expression"))

        feedback.pushInfo(f"{result.width}×{result.height} px ({result.resolution_m:.3g} m/px) in "
                          f"{result.tiles} tile(s) on {result.device}; models ready in "
                          f"{result.model_seconds:.1f} s")
        for item in result.expressions:
            t = item.timing
            found = (f"{item.polygon_count} polygon(s), best score {max(item.scores):.3f}"
                     if item.scores else "nothing found")
            kind = "cached" if t.cached else "first"
            feedback.pushInfo(f"  '{item.expression}': {found}; {t.total:.2f} s {kind} (CLIP "
                              f"encode {t.clip_encode:.2f} s, SAM encode {t.sam_encode:.2f} s)")
        return {self.OUTPUT: self._destination, self.POLYGONS: result.polygon_count}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        """Main thread, after a successful run: style the output if Processing loads it."""
        expressions = list(self._expressions)
        self.style_on_load(context, self._destination,
                           lambda layer: style_referring_layer(layer, expressions), QgsVectorLayer)
        return {}
