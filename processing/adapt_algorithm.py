"""`drseg:adaptmodel`: adapt the CLIP segmenter to the user's labelled polygons (core/adapt) and
write one adapter file, with held-out IoU before and after.

prepareAlgorithm() (main thread) resolves the raster, snapshots the polygon layer and reads the
parameters; processAlgorithm() (worker thread) reads the polygons from the snapshot and runs the
engine, which reports progress and stops within a training step when cancelled (an interrupted
prompt/finetune run leaves a checkpoint that 'Resume' continues).
"""
from __future__ import annotations

import json

from qgis.core import (QgsFeatureRequest, QgsProcessingOutputFile, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsProcessingParameterString, QgsVectorLayerFeatureSource)

from ..core.adapt.defaults import LEVELS
from ..core.errors import InputError
from ..core.models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEVICE_CHOICES
from .base import DrSegAlgorithm, engine_errors, number_type, source_type

LEVEL_OPTIONS = ["Calibrate (seconds, no training): prompts, λ, per-class bias",
                 "Prompt: learned prompt context and class-text offsets, encoders frozen",
                 "Fine-tune, soft-guided: attention weights kept close to a frozen copy, "
                 "cost-map decoder"]


class AdaptModelAlgorithm(DrSegAlgorithm):
    INPUT = "INPUT"
    LABELS = "LABELS"
    FIELD = "FIELD"
    LEVEL = "LEVEL"
    VALIDATION_SHARE = "VALIDATION_SHARE"
    STEPS = "STEPS"
    EXTENT = "EXTENT"
    DEVICE = "DEVICE"
    CLIP_MODEL = "CLIP_MODEL"
    CLIP_WEIGHTS = "CLIP_WEIGHTS"
    CHIP = "CHIP"
    RESUME = "RESUME"
    CONTEXT_TOKENS = "CONTEXT_TOKENS"
    CLASS_CONTEXT = "CLASS_CONTEXT"
    OUTPUT = "OUTPUT"
    MIOU_BEFORE = "MIOU_BEFORE"
    MIOU_AFTER = "MIOU_AFTER"
    REPORT = "REPORT"
    GROUP, GROUP_ID = "Adaptation", "adaptation"

    NAME = "adaptmodel"
    DISPLAY_NAME = "Adapt the model to your labelled polygons"
    TAGS = ["training", "fine-tuning", "calibration", "labels", "polygons", "adapter", "clip",
            "drseg", "ai"]
    HELP = (
        "Learns from polygons you digitised: a <b>Label layer</b> whose <b>Class field</b> holds "
        "class names, over the <b>Input raster</b> (any CRS: the polygons are reprojected and "
        "rasterised per chip; pixels outside every polygon and nodata are ignored). Chips are "
        "cut from the raster (optionally only in <b>Area</b>); a share of them, in blocks of "
        "neighbouring chips, is held out to measure IoU before and after."
        "<br><br><b>Level</b>: <i>Calibrate</i> chooses per class the best wording, a bias and "
        "the global-token weight λ (seconds); <i>Prompt</i> also learns prompt context words "
        "(shared by every class name, also ones you did not label) and an offset of each class's "
        "text embedding; <i>Fine-tune</i> also trains the CLIP vision tower's attention weights "
        "at a small learning rate while a frozen copy keeps its features close, and a light "
        "decoder that sharpens the class map, so class names you did not label still work."
        "<br><br>Output: one <b>adapter file</b> (.safetensors) for the segmentation algorithm's "
        "'Adapter' parameter and the dock's Adapter field (it needs the same CLIP model and "
        "weights; saved in the model cache's 'adapters' folder it is listed by name), a "
        ".report.json and "
        "a .iou.png chart beside it. <b>Resume</b> continues an interrupted prompt/fine-tune run "
        "from its checkpoint.")

    def __init__(self):
        super().__init__()
        self._request = None
        self._labels = None

    def initAlgorithm(self, config=None):  # noqa: N802
        from ..core.adapt.defaults import (DEFAULT_CHIP, DEFAULT_CONTEXT_TOKENS, DEFAULT_STEPS,
                                           DEFAULT_VALIDATION_SHARE, MAX_CONTEXT_TOKENS)

        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABELS, "Label layer (polygons)", types=[source_type("VectorPolygon")]))
        self.addParameter(QgsProcessingParameterField(
            self.FIELD, "Class field", parentLayerParameterName=self.LABELS))
        self.addParameter(QgsProcessingParameterEnum(self.LEVEL, "Level", options=LEVEL_OPTIONS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.VALIDATION_SHARE, "Validation share (held out by blocks of chips)",
            type=number_type("Double"), defaultValue=DEFAULT_VALIDATION_SHARE, minValue=0.0,
            maxValue=0.9))
        self.addParameter(QgsProcessingParameterNumber(
            self.STEPS, "Training steps (prompt and fine-tune)", type=number_type("Integer"),
            defaultValue=DEFAULT_STEPS, minValue=0))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area (empty: whole raster)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, "Device",
                                                     options=list(DEVICE_CHOICES), defaultValue=0))
        self.add_advanced([
            QgsProcessingParameterString(self.CLIP_MODEL, "CLIP model (open_clip name or config .json)",
                                         defaultValue=DEFAULT_CLIP_MODEL),
            QgsProcessingParameterString(self.CLIP_WEIGHTS,
                                         "CLIP weights (pretrained tag, catalog name or file)",
                                         defaultValue=DEFAULT_CLIP_WEIGHTS),
            QgsProcessingParameterNumber(self.CHIP, "Chip size (pixels)", type=number_type("Integer"),
                                         defaultValue=DEFAULT_CHIP, minValue=32),
            QgsProcessingParameterNumber(self.CONTEXT_TOKENS, "Learned prompt context words "
                                         "(prompt and fine-tune; 0: none)",
                                         type=number_type("Integer"),
                                         defaultValue=DEFAULT_CONTEXT_TOKENS, minValue=0,
                                         maxValue=MAX_CONTEXT_TOKENS),
            QgsProcessingParameterBoolean(self.CLASS_CONTEXT, "Each labelled class also learns "
                                          "context of its own", defaultValue=False),
            QgsProcessingParameterBoolean(self.RESUME, "Resume an interrupted run", defaultValue=False),
        ])
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, "Adapter file", fileFilter="Adapter (*.safetensors)"))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU_BEFORE, "Held-out mIoU before (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU_AFTER, "Held-out mIoU after (%)"))
        self.addOutput(QgsProcessingOutputFile(self.REPORT, "Report (JSON)"))

    # -- running --------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        with engine_errors():
            self._request, self._labels = self._prepare(parameters, context)
        return True

    def _prepare(self, parameters, context):
        from ..core.adapt.run import AdaptRequest
        from ..qgis_bridge.sources import layer_crs_check, raster_source

        raster = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        source = raster_source(raster)
        layer_crs_check(raster)
        labels = self.parameterAsVectorLayer(parameters, self.LABELS, context)
        if labels is None or not labels.isValid():
            raise InputError("Choose a valid polygon layer with your labels")
        if not labels.crs().isValid():
            raise InputError(f"Label layer '{labels.name()}' has no coordinate reference system")
        field = self.parameterAsString(parameters, self.FIELD, context)
        if labels.fields().indexOf(field) < 0:
            raise InputError(f"Label layer '{labels.name()}' has no field '{field}'")
        snapshot = (QgsVectorLayerFeatureSource(labels), field, labels.crs().toWkt())
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        request = AdaptRequest(
            raster=source, labels=None, class_field=field, out=out,
            level=LEVELS[self.parameterAsEnum(parameters, self.LEVEL, context)],
            validation_share=self.parameterAsDouble(parameters, self.VALIDATION_SHARE, context),
            steps=self.parameterAsInt(parameters, self.STEPS, context),
            chip=self.parameterAsInt(parameters, self.CHIP, context),
            area=self.extent_of(parameters, self.EXTENT, context, raster),
            clip_model=self.parameterAsString(parameters, self.CLIP_MODEL, context).strip()
            or DEFAULT_CLIP_MODEL,
            clip_weights=self.parameterAsString(parameters, self.CLIP_WEIGHTS, context).strip()
            or DEFAULT_CLIP_WEIGHTS,
            device=DEVICE_CHOICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            context_tokens=self.parameterAsInt(parameters, self.CONTEXT_TOKENS, context),
            class_context=self.parameterAsBoolean(parameters, self.CLASS_CONTEXT, context),
            resume=self.parameterAsBoolean(parameters, self.RESUME, context))
        return request, snapshot

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..core.adapt.data import LabelFeatures
        from ..core.adapt.run import run_adaptation

        source, field, crs = self._labels
        geometries, values = [], []
        request = QgsFeatureRequest().setSubsetOfAttributes([field], source.fields())
        for feature in source.getFeatures(request):
            geometry = feature.geometry()
            geometries.append(None if geometry.isNull() else json.loads(geometry.asJson()))
            value = feature[field]
            values.append(None if value is None or getattr(value, "isNull", lambda: False)()
                          else value)
        self._request.labels = LabelFeatures(geometries, values, crs)
        with engine_errors("Run cancelled; no adapter was written (a checkpoint, if any, can be "
                           "resumed)"):
            result = run_adaptation(self._request, progress=self.engine_progress(feedback),
                                    cancelled=feedback.isCanceled)
        report = result.report
        feedback.pushInfo(f"{report['train_chips']} training chips, {report['validation_chips']} "
                          f"validation chips; held-out mIoU {report['before']['mIoU']:.1f} -> "
                          f"{report['after']['mIoU']:.1f}")
        for name in report["classes"]:
            feedback.pushInfo(f"  {name}: {report['before']['per_class'][name]} -> "
                              f"{report['after']['per_class'][name]}")
        return {self.OUTPUT: result.adapter_path, self.MIOU_BEFORE: report["before"]["mIoU"],
                self.MIOU_AFTER: report["after"]["mIoU"], self.REPORT: result.report_path}
