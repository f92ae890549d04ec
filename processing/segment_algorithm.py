"""`drseg:openvocabsegmentation`: the engine as a Processing algorithm (toolbox, batch, modeler,
qgis_process).

prepareAlgorithm() (main thread) reads the layer and parameters and imports the engine;
processAlgorithm() (worker thread) only runs the engine: no GUI, no project access. Loaded models
are shared between runs through core.models.shared, which is lock-protected.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from qgis.core import (QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingOutputString,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterFile, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString,
                       QgsRasterLayer, QgsVectorLayer)

from ..core.errors import InputError
from ..core.models.dino import dino_help, resolve_dino_weights
from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DINO_MODEL,
                                    DEFAULT_SAM3_MODEL, DEVICE_CHOICES, DINO_MODEL_CHOICES,
                                    SAM3_LICENCE)
from ..core.protocol import BLEND_LABELS, BLENDS, DEFAULT_BLEND
from ..qgis_bridge.engine import (DEFAULT_GRAPH_K, DEFAULT_SEMANTIC_RATIO, DEFAULT_THRESHOLD,
                                  import_model_libraries, load_engine, method_label)
from ..qgis_bridge.styling import style_class_raster, style_polygon_layer
from .base import (DrSegAlgorithm, destination_files, engine_errors, number_type, source_type,
                   wants_output, work_folder)

# METHOD's options (values of SegmentationRequest.method) and how the dialog names them.
METHOD_CHOICES = ("auto", "drseg", "clip")
METHOD_OPTIONS = ["Auto: DR-Seg when DINO weights are set up, else dense CLIP",
                  "DR-Seg (dense CLIP rectified with DINO structure)", "Dense CLIP"]

# ENGINE's options (values of SegmentationRequest.engine; None: the CLIP engine METHOD picks).
ENGINE_CHOICES = (None, "sam3", "hybrid")
ENGINE_OPTIONS = ["CLIP engine (as Method says)", "SAM 3 (concept prompts)",
                  "Hybrid: SAM 3 fused with the CLIP engine"]


# The engine's GeoPackage in the run's work folder, copied into the OUTPUT sink afterwards.
WORK_FILE, WORK_LAYER = "polygons.gpkg", "segmentation"


class OpenVocabSegmentationAlgorithm(DrSegAlgorithm):
    INPUT = "INPUT"
    CLASSES = "CLASSES"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    RESOLUTION = "RESOLUTION"
    THRESHOLD = "THRESHOLD"
    DEVICE = "DEVICE"
    CLIP_MODEL = "CLIP_MODEL"
    CLIP_WEIGHTS = "CLIP_WEIGHTS"
    SIMPLIFY = "SIMPLIFY"
    MIN_AREA = "MIN_AREA"
    METHOD = "METHOD"
    ENGINE = "ENGINE"
    SAM3_MODEL = "SAM3_MODEL"
    SAM3_WEIGHTS = "SAM3_WEIGHTS"
    DINO_MODEL = "DINO_MODEL"
    DINO_WEIGHTS = "DINO_WEIGHTS"
    SEMANTIC_RATIO = "SEMANTIC_RATIO"
    GRAPH_K = "GRAPH_K"
    DECOUPLE = "DECOUPLE"
    RECTIFY = "RECTIFY"
    FUSION = "FUSION"
    ADAPTER = "ADAPTER"
    BLEND = "BLEND"
    FAST = "FAST"
    DASK = "DASK"
    OUTPUT = "OUTPUT"
    OUTPUT_RASTER = "OUTPUT_RASTER"
    OUTPUT_PROBABILITIES = "OUTPUT_PROBABILITIES"
    POLYGONS = "POLYGONS"
    USED_METHOD = "USED_METHOD"
    NOTE = "NOTE"

    # -- identity -------------------------------------------------------------------------------
    NAME = "openvocabsegmentation"
    DISPLAY_NAME = "Open-vocabulary segmentation (classes from text)"
    TAGS = ["segmentation", "classification", "clip", "open vocabulary", "text", "landcover",
            "drseg", "ai"]
    HELP = (
        "Every pixel of the raster gets one of the classes typed in <b>Classes</b>, or "
        "background when no class is likely enough (<b>Threshold</b>). Classes are separated by "
        "';', synonyms of one class by ',': <i>building,roof; road,street; tree,forest; water</i>."
        "<br><br><b>Polygons</b>: a layer (temporary, or any vector format) with fields class, "
        "class_id, score (mean probability) and area_m2, in the raster's CRS, styled by class. "
        "<b>Class raster</b> (optional): a GeoTIFF "
        "on the same grid as the input (0 background, 1..K classes, 255 nodata). "
        "<b>Class probabilities</b> (optional): a float32 GeoTIFF on the same grid, one band per "
        "class named after it, the probabilities before the threshold."
        "<br><br><b>Bands</b>: one (grey) or three (RGB) band numbers, e.g. 4,3,2; empty picks "
        "the RGB bands. <b>Extent</b>: only this area (reprojected to the raster's CRS). "
        "<b>Resolution</b>: working pixel size in metres; empty or 0 keeps the native one."
        "<br><br><b>Method</b>: <i>DR-Seg</i> sharpens dense CLIP's class map with the image "
        "structure seen by a DINO model (needs DINO weights); <i>Dense CLIP</i> is CLIP alone; "
        "<i>Auto</i> (default) takes DR-Seg when DINO weights are set up and says so in the log "
        "when it falls back to dense CLIP. <b>DINO weights</b>: a checkpoint file or a catalog "
        "name (e.g. rs-dino-vit-b8); empty: the DINO weights of the DR-Seg settings when they are "
        "for this DINO model, else its catalog checkpoint, once downloaded (DR-Seg settings › "
        "Download models…, or <i>python -m drseg models download dino-vit-b8</i>). <b>Semantic ratio</b>, <b>Graph k</b> and the three module "
        "switches tune DR-Seg (advanced). <b>Blend</b> (advanced): how overlapping windows "
        "combine; <i>Mean</i> averages them as the benchmark protocol does. <b>Fast mode</b> "
        "(advanced): neighbouring windows overlap by a quarter of a window instead of half, "
        "about 2.25× fewer windows on large rasters with class maps close to the default's."
        "<br><br><b>Engine</b>: the CLIP engine above, <i>SAM 3</i> "
        "(every class is a SAM 3 concept prompt; best on countable objects, slow without a GPU) "
        "or <i>Hybrid</i> (SAM 3 and the CLIP engine fused per pixel by their confidence, so "
        "land cover SAM 3 misses comes from CLIP). SAM 3 weights are gated under the "
        f"{SAM3_LICENCE}: download model.safetensors from huggingface.co/facebook/sam3 and run "
        "<i>python -m drseg models import sam3 FILE</i>, or give the file in <b>SAM 3 weights</b>."
        "<br><br>Tiling (window, stride, batch) and the model "
        "cache folder come from the DR-Seg settings (Plugins › DR-Seg › DR-Seg settings…)."
        f"<br><br><b>CLIP weights</b>: an open_clip pretrained tag (e.g. '{DEFAULT_CLIP_WEIGHTS}', "
        "downloaded on "
        "first use) or a local checkpoint file; <b>CLIP model</b>: an open_clip architecture "
        "name or a model config .json. Needs the Python packages torch, torchvision and "
        "open_clip_torch (DR-Seg also timm).")

    def __init__(self):
        super().__init__()
        self._request = None
        self._destinations = {}
        self._classes = []
        self._note = ""
        self._settings = None
        self._wants_raster = False
        self._wants_probabilities = False
        self._crs = None

    # -- parameters -----------------------------------------------------------------------------
    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, "Classes (';' between classes, ',' between synonyms, e.g. "
                          "building,roof; road,street; tree,forest; water)"))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands (1 or 3 band numbers, e.g. 1,2,3; empty: RGB)", optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Extent (empty: whole raster)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Working resolution, metres per pixel (empty: native)",
            type=number_type("Double"), optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Threshold: below this probability a pixel is background",
            type=number_type("Double"), defaultValue=DEFAULT_THRESHOLD, minValue=0.0, maxValue=0.99))
        self.addParameter(QgsProcessingParameterEnum(
            self.DEVICE, "Device", options=list(DEVICE_CHOICES), defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.METHOD, "Method", options=METHOD_OPTIONS, defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.ENGINE, "Engine", options=ENGINE_OPTIONS, defaultValue=0))
        advanced = [
            QgsProcessingParameterString(self.CLIP_MODEL, "CLIP model (open_clip name or config "
                                         f".json; empty: DR-Seg settings, else {DEFAULT_CLIP_MODEL})",
                                         optional=True),
            QgsProcessingParameterString(self.CLIP_WEIGHTS, "CLIP weights (pretrained tag or "
                                         "checkpoint file; empty: DR-Seg settings, else "
                                         f"{DEFAULT_CLIP_WEIGHTS})", optional=True),
            QgsProcessingParameterNumber(self.SIMPLIFY, "Simplify polygons (tolerance in pixels)",
                                         type=number_type("Double"), defaultValue=0.0, minValue=0.0),
            QgsProcessingParameterNumber(self.MIN_AREA, "Minimum polygon area (m²)",
                                         type=number_type("Double"), defaultValue=0.0, minValue=0.0),
            QgsProcessingParameterEnum(self.DINO_MODEL, "DINO model (DR-Seg)",
                                       options=list(DINO_MODEL_CHOICES),
                                       defaultValue=DINO_MODEL_CHOICES.index(DEFAULT_DINO_MODEL)),
            QgsProcessingParameterString(self.DINO_WEIGHTS, "DINO weights (checkpoint file or "
                                         "catalog name; empty: the downloaded default)",
                                         optional=True),
            QgsProcessingParameterNumber(self.SEMANTIC_RATIO, "DR-Seg semantic ratio (share of CLIP "
                                         "channels kept as they are)", type=number_type("Double"),
                                         defaultValue=DEFAULT_SEMANTIC_RATIO, minValue=0.0,
                                         maxValue=1.0),
            QgsProcessingParameterNumber(self.GRAPH_K, "DR-Seg graph k (neighbours per patch)",
                                         type=number_type("Integer"), defaultValue=DEFAULT_GRAPH_K,
                                         minValue=1, maxValue=256),
            QgsProcessingParameterBoolean(self.DECOUPLE, "DR-Seg: decouple semantic and structural "
                                          "channels", defaultValue=True),
            QgsProcessingParameterBoolean(self.RECTIFY, "DR-Seg: rectify structure over the DINO "
                                          "graph", defaultValue=True),
            QgsProcessingParameterBoolean(self.FUSION, "DR-Seg: uncertainty-guided fusion",
                                          defaultValue=True),
            QgsProcessingParameterFile(self.ADAPTER, "Adapter file (from 'Adapt the model to your "
                                       "labelled polygons'; same CLIP model and weights)",
                                       extension="safetensors", optional=True),
            QgsProcessingParameterEnum(self.BLEND, "Blend of overlapping windows",
                                       options=[BLEND_LABELS[b] for b in BLENDS],
                                       defaultValue=BLENDS.index(DEFAULT_BLEND)),
            QgsProcessingParameterBoolean(self.FAST, "Fast mode: windows overlap by a quarter "
                                          "instead of half (unchecked: as the DR-Seg settings say)",
                                          defaultValue=False),
            QgsProcessingParameterString(self.SAM3_MODEL, "SAM 3 model (architecture or "
                                         "config.json)", defaultValue=DEFAULT_SAM3_MODEL),
            QgsProcessingParameterString(self.SAM3_WEIGHTS, "SAM 3 weights (model.safetensors "
                                         "file or folder, or catalog name; empty: the imported "
                                         "'sam3')", optional=True),
            QgsProcessingParameterString(self.DASK, "Dask cluster (local:N or tcp://HOST:PORT; "
                                         "empty: DRSEG_DASK, else the DR-Seg settings, else here)",
                                         optional=True),
        ]
        self.add_advanced(advanced)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Polygons",
                                                            type=source_type("VectorPolygon")))
        raster = QgsProcessingParameterRasterDestination(self.OUTPUT_RASTER, "Class raster",
                                                         optional=True, createByDefault=False)
        raster.setSupportsNonFileBasedOutput(False)
        self.addParameter(raster)
        probabilities = QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITIES, "Class probabilities (one band per class)", optional=True,
            createByDefault=False)
        probabilities.setSupportsNonFileBasedOutput(False)
        self.addParameter(probabilities)
        self.addOutput(QgsProcessingOutputNumber(self.POLYGONS, "Number of polygons"))
        self.addOutput(QgsProcessingOutputString(self.USED_METHOD, "Engine used (drseg, clip, sam3 or hybrid)"))
        self.addOutput(QgsProcessingOutputString(self.NOTE, "Note on the method"))

    # -- running --------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Main thread: validate, resolve layer and outputs, import the engine."""
        self._settings = self.resolve_settings({
            "clip_model": self.text_of(parameters, self.CLIP_MODEL, context),
            "clip_weights": self.text_of(parameters, self.CLIP_WEIGHTS, context),
            "dino_model": DINO_MODEL_CHOICES[self.parameterAsEnum(parameters, self.DINO_MODEL,
                                                                  context)],
            "dino_weights": self.text_of(parameters, self.DINO_WEIGHTS, context),
            "window": None, "stride": None, "block": None, "batch_size": None,
            # checked: fast; unchecked: not told, so the saved settings decide
            "fast": self.parameterAsBoolean(parameters, self.FAST, context) or None,
            "cache_dir": None, "dask": self.text_of(parameters, self.DASK, context)}, feedback)
        with engine_errors():
            self._request = self._build_request(parameters, context)
        return True

    def _build_request(self, parameters, context):
        from ..core.classes import parse_classes
        from ..core.outputs import check_outputs
        from ..qgis_bridge.sources import layer_crs_check, raster_source

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        source = raster_source(layer)
        layer_crs_check(layer)
        text = self.parameterAsString(parameters, self.CLASSES, context)
        classes = parse_classes(text)
        segment = load_engine()
        from ..core.raster_io import parse_bands

        bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context))
        extent = self.extent_of(parameters, self.EXTENT, context, layer)
        resolution = self.resolution_of(parameters, self.RESOLUTION, context)

        # Outputs are resolved in processAlgorithm(): only what is registered on its context
        # reaches the layers QGIS loads after a threaded (toolbox dialog) run.
        # Every file destination is checked now, not after the compute.
        check_outputs(destination_files(self, parameters, (
            self.OUTPUT, self.OUTPUT_RASTER, self.OUTPUT_PROBABILITIES)), [source])
        self._wants_raster = wants_output(self, parameters, self.OUTPUT_RASTER)
        self._wants_probabilities = wants_output(self, parameters, self.OUTPUT_PROBABILITIES)
        self._crs = layer.crs()

        engine = ENGINE_CHOICES[self.parameterAsEnum(parameters, self.ENGINE, context)]
        if engine == "sam3":  # no CLIP engine runs, so its DINO weights are not looked up
            method, dino_model, dino_weights, self._note = "clip", DEFAULT_DINO_MODEL, None, ""
        else:
            method, dino_model, dino_weights, self._note = self._method(parameters, context)
        from ..core.cluster.spec import parse_dask_spec

        dask = self._settings["dask"] or None
        parse_dask_spec(dask)  # a wrong address fails here, before the run
        request = segment.SegmentationRequest(
            raster=source, classes=text, out_vector="polygons.gpkg", out_raster=None, bands=bands,
            out_probabilities=None,
            blend=BLENDS[self.parameterAsEnum(parameters, self.BLEND, context)],
            extent=extent, resolution=resolution,
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            clip_model=self._settings["clip_model"], clip_weights=self._settings["clip_weights"],
            method=method, dino_model=dino_model, dino_weights=dino_weights,
            engine=engine,
            sam3_model=self.parameterAsString(parameters, self.SAM3_MODEL, context).strip()
            or DEFAULT_SAM3_MODEL,
            sam3_weights=self.parameterAsString(parameters, self.SAM3_WEIGHTS, context).strip() or None,
            semantic_ratio=self.parameterAsDouble(parameters, self.SEMANTIC_RATIO, context),
            graph_k=self.parameterAsInt(parameters, self.GRAPH_K, context),
            decouple=self.parameterAsBoolean(parameters, self.DECOUPLE, context),
            rectify=self.parameterAsBoolean(parameters, self.RECTIFY, context),
            fusion=self.parameterAsBoolean(parameters, self.FUSION, context),
            adapter=self.parameterAsFile(parameters, self.ADAPTER, context) or None,
            window=self._settings["window"], stride=self._settings["stride"],
            fast=bool(self._settings["fast"]),
            block=self._settings["block"], batch_size=self._settings["batch_size"],
            cache_dir=self._settings["cache_dir"],
            device=DEVICE_CHOICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            simplify=self.parameterAsDouble(parameters, self.SIMPLIFY, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            layer_name=WORK_LAYER, dask=dask)
        self._classes = classes
        return request

    def dino_cache_dir(self) -> Optional[str]:
        return self._settings["cache_dir"]

    def _method(self, parameters, context):
        """-> (method for the engine, DINO model, DINO checkpoint file or None, note).

        'auto' is decided here, where the DINO weights are looked up, so the log can say why
        plain dense CLIP was used; 'drseg' without DINO weights is an error before anything runs.
        """
        method = METHOD_CHOICES[self.parameterAsEnum(parameters, self.METHOD, context)]
        dino_model = DINO_MODEL_CHOICES[self.parameterAsEnum(parameters, self.DINO_MODEL, context)]
        if method == "clip":
            return "clip", dino_model, None, ""
        weights = self._settings.chosen("dino_weights")  # told, or saved for this DINO model
        path = resolve_dino_weights(dino_model, weights, self.dino_cache_dir())
        if path is not None:
            return "drseg", dino_model, path, ""
        if method == "drseg":
            raise InputError(f"DR-Seg needs DINO weights for {dino_model} and none are set up: "
                             f"{dino_help(dino_model)}, or choose the Dense CLIP method")
        return "clip", dino_model, None, (
            f"Plain dense CLIP: no DINO weights are set up for {dino_model}, so DR-Seg's structure "
            f"rectification was skipped. For DR-Seg, {dino_help(dino_model)}")

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Worker thread: run the engine; no GUI, layer or project access here."""
        if self._request is None:  # prepareAlgorithm always runs first; be safe anyway
            raise QgsProcessingException("The algorithm was not prepared")
        if self._request.dask:
            feedback.pushInfo(f"Running on the Dask cluster {self._request.dask}")
        from ..core.style import categorized_qml

        out_raster = (self.parameterAsOutputLayer(parameters, self.OUTPUT_RASTER, context)
                      if self._wants_raster else None)
        out_probabilities = (
            self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITIES, context)
            if self._wants_probabilities else None)
        with engine_errors(), work_folder() as work:
            segment = load_engine()
            # in the worker thread: the dialog stays responsive
            import_model_libraries(segment.model_libraries(self._request))
            request = dataclasses.replace(self._request, out_vector=os.path.join(work, WORK_FILE),
                                          out_raster=out_raster, out_probabilities=out_probabilities)
            result = segment.run_segmentation(request, progress=self.engine_progress(feedback),
                                              cancelled=feedback.isCanceled)
            dest, _ = self.copy_to_sink(result.vector_path, WORK_LAYER, parameters, self.OUTPUT,
                                        context, feedback, self._crs,
                                        categorized_qml(self._classes))
        self._destinations = {"vector": dest, "raster": out_raster,
                              "probabilities": out_probabilities}

        t = result.timings
        note = result.note or self._note
        if note:
            feedback.pushWarning(note)
        feedback.pushInfo(f"{result.width}×{result.height} px, {method_label(result.method)} on "
                          f"{result.device}: "
                          f"{result.polygon_count} polygons (read {t.read:.1f} s, model "
                          f"{t.model:.1f} s, stitch {t.stitch:.1f} s, vectorize {t.vectorize:.1f} s)")
        for name, pixels in result.class_pixels.items():
            feedback.pushInfo(f"  {name}: {pixels} px")
        return {self.OUTPUT: dest,
                self.OUTPUT_RASTER: result.raster_path,
                self.OUTPUT_PROBABILITIES: result.probabilities_path,
                self.POLYGONS: result.polygon_count,
                self.USED_METHOD: result.method, self.NOTE: note}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        """Main thread, after a successful run: style the outputs Processing will load."""
        names = [spec.name for spec in self._classes]
        self.style_on_load(context, self._destinations.get("vector"),
                           lambda layer: style_polygon_layer(layer, names), QgsVectorLayer)
        self.style_on_load(context, self._destinations.get("raster"),
                           lambda layer: style_class_raster(layer, names), QgsRasterLayer)
        return {}
