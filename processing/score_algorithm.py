"""`drseg:scoreclassification`: score a predicted class raster against a reference class raster
or reference polygons over an area; a per-class table (IoU, accuracy, pixel counts) and mIoU,
mACC and aAcc, as papers report them.

prepareAlgorithm() (main thread) resolves the layers and the area; processAlgorithm() (worker
thread) reads the polygons through a thread-safe feature source snapshot and leaves the pixels to
core/evaluation/scoring.py, which reads both sides block by block on the prediction's grid.
"""
from __future__ import annotations

import json

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsFeature, QgsFeatureRequest,
                       QgsFeatureSink, QgsField, QgsFields, QgsGeometry, QgsProcessingException,
                       QgsProcessingOutputNumber, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterField, QgsProcessingParameterMapLayer,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                       QgsRasterLayer, QgsRectangle, QgsVectorLayer, QgsVectorLayerFeatureSource,
                       QgsWkbTypes)
from qgis.PyQt.QtCore import QMetaType, QVariant

from ..core.errors import RunCancelled
from ..qgis_bridge.engine import dependency_message
from .base import DrSegAlgorithm, engine_errors, no_geometry, number_type, source_type

UNCOVERED_CHOICES = ("background", "ignore")
UNCOVERED_OPTIONS = ["Background (class 0)", "Not scored"]
MATCH_CHOICES = ("auto", "name", "id")
MATCH_OPTIONS = ["Auto: by class name when the reference raster has class names, else by value",
                 "By class name (CLASS_i tags)", "By value (class id)"]
# Output table: (name, type); percentages are NULL where undefined.
if Qgis.QGIS_VERSION_INT >= 33800:  # fields are typed by QMetaType; PyQt6 has no QVariant.Type
    _INT, _TEXT, _REAL, _BIG = (QMetaType.Type.Int, QMetaType.Type.QString, QMetaType.Type.Double,
                                QMetaType.Type.LongLong)
else:
    _INT, _TEXT, _REAL, _BIG = (QVariant.Type.Int, QVariant.Type.String, QVariant.Type.Double,
                                QVariant.Type.LongLong)
TABLE_FIELDS = (("class_id", _INT), ("class", _TEXT), ("iou", _REAL), ("accuracy", _REAL),
                ("true_pos", _BIG), ("ref_pixels", _BIG), ("pred_pixels", _BIG))


def _plain(value):
    """A QGIS attribute value as a Python label: None for NULL, numbers and text as they are."""
    if value is None or isinstance(value, QVariant) and value.isNull():
        return None
    if isinstance(value, (str, int, float)):
        return value
    return str(value)


class ScoreClassificationAlgorithm(DrSegAlgorithm):
    INPUT = "INPUT"
    REFERENCE = "REFERENCE"
    FIELD = "FIELD"
    EXTENT = "EXTENT"
    UNCOVERED = "UNCOVERED"
    MATCH = "MATCH"
    IGNORE_VALUE = "IGNORE_VALUE"
    OUTPUT = "OUTPUT"
    MIOU = "MIOU"
    MACC = "MACC"
    AACC = "AACC"
    SCORED_PIXELS = "SCORED_PIXELS"
    GROUP, GROUP_ID = "Evaluation", "evaluation"

    # -- identity -------------------------------------------------------------------------------
    NAME = "scoreclassification"
    DISPLAY_NAME = "Score a classification against a reference (IoU per class)"
    TAGS = ["accuracy", "iou", "miou", "evaluation", "confusion", "validation", "ground truth",
            "reference", "segmentation", "drseg"]
    HELP = (
        "Compares a <b>predicted class raster</b> (e.g. the class raster of DR-Seg's "
        "segmentation) with a <b>reference</b> over an area, as segmentation papers do: one "
        "confusion matrix over all pixels; per class IoU = TP / (reference + predicted − TP) "
        "and accuracy = TP / reference pixels; mIoU and mACC are their means over classes "
        "(background included; a class in neither raster is left out), aAcc the share of "
        "pixels classified right."
        "<br><br>The comparison runs on the prediction's grid, block by block. A reference "
        "raster in another CRS or resolution is warped onto it (nearest neighbour). Reference "
        "polygons are reprojected and rasterized (a pixel is inside when its centre is); "
        "<b>Class field</b> holds a class name or id; pixels outside every polygon are "
        "background or not scored (<b>Outside the polygons</b>)."
        "<br><br>Classes are the prediction's: the class names DR-Seg stores in its class "
        "rasters (0 is background) or, for other rasters, their pixel values. Reference names "
        "match case-insensitively (synonyms are not considered). Reference labels with no "
        "predicted class, reference nodata, the <b>Ignore value</b> and pixels where the "
        "prediction has nodata are not scored; the log says how many of each."
        "<br><br>Output: a table with one row per class (class_id, class, iou and accuracy in "
        "%, true_pos, ref_pixels, pred_pixels) and the numbers mIoU, mACC, aAcc (%).")

    def __init__(self):
        super().__init__()
        self._job = None

    # -- parameters -----------------------------------------------------------------------------
    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Predicted class raster"))
        self.addParameter(QgsProcessingParameterMapLayer(
            self.REFERENCE, "Reference: class raster or polygon layer",
            types=[source_type("Raster"), source_type("VectorPolygon")]))
        self.addParameter(QgsProcessingParameterField(
            self.FIELD, "Class field of the reference polygons (class name or id)",
            parentLayerParameterName=self.REFERENCE, optional=True))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Area (empty: the whole predicted raster)", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.UNCOVERED, "Outside the reference polygons", options=UNCOVERED_OPTIONS,
            defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.MATCH, "Matching reference raster values to classes", options=MATCH_OPTIONS,
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.IGNORE_VALUE, "Ignore value of the reference raster (not scored)",
            type=number_type("Integer"), defaultValue=255, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, "Scores per class", type=source_type("Vector")))
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, "mIoU (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.MACC, "mACC (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.AACC, "aAcc (%)"))
        self.addOutput(QgsProcessingOutputNumber(self.SCORED_PIXELS, "Pixels scored"))

    # -- running --------------------------------------------------------------------------------
    def prepareAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Main thread: resolve layers, the area and the class field; nothing is read yet."""
        with engine_errors():
            self._job = self._prepare(parameters, context)
        return True

    def _prepare(self, parameters, context) -> dict:
        from ..core.errors import InputError
        from ..qgis_bridge.sources import layer_crs_check, raster_source

        try:
            from ..core.evaluation import scoring  # noqa: F401 (rasterio: say what is missing now)
        except ImportError as exc:
            raise InputError(dependency_message(["rasterio"], f"{type(exc).__name__}: {exc}")) from None
        predicted = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        job = {"prediction": raster_source(predicted)}
        layer_crs_check(predicted)
        job["crs"] = QgsCoordinateReferenceSystem(predicted.crs())
        job["extent"] = self.extent_of(parameters, self.EXTENT, context, predicted)
        job["rect"] = (QgsRectangle(*job["extent"]) if job["extent"] is not None
                       else QgsRectangle(predicted.extent()))

        reference = self.parameterAsLayer(parameters, self.REFERENCE, context)
        if isinstance(reference, QgsRasterLayer):
            job["reference_raster"] = raster_source(reference)
            layer_crs_check(reference)
            job["match"] = MATCH_CHOICES[self.parameterAsEnum(parameters, self.MATCH, context)]
            ignore = parameters.get(self.IGNORE_VALUE)
            job["ignore"] = (None if ignore in (None, "") else
                             self.parameterAsInt(parameters, self.IGNORE_VALUE, context))
        elif isinstance(reference, QgsVectorLayer):
            if reference.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
                raise InputError(f"The reference layer '{reference.name()}' holds no polygons; "
                                 "use a polygon layer or a class raster")
            if not reference.crs().isValid():
                raise InputError(f"The reference layer '{reference.name()}' has no coordinate "
                                 "reference system")
            field = self.parameterAsString(parameters, self.FIELD, context).strip()
            if not field:
                raise InputError("Choose the class field of the reference polygons (a class name "
                                 "or id per polygon)")
            if reference.fields().indexOf(field) < 0:
                raise InputError(f"The reference layer '{reference.name()}' has no field "
                                 f"'{field}'; its fields: {', '.join(reference.fields().names())}")
            job["polygons"] = QgsVectorLayerFeatureSource(reference)  # safe to read in a thread
            job["polygon_crs"] = QgsCoordinateReferenceSystem(reference.crs())
            job["field"] = field
            job["fields"] = reference.fields()
            job["uncovered"] = UNCOVERED_CHOICES[
                self.parameterAsEnum(parameters, self.UNCOVERED, context)]
            job["transform_context"] = context.transformContext()
        else:
            raise InputError("Choose a reference: a class raster or a polygon layer")
        return job

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Worker thread: read polygons from the snapshot, score block by block, write the table."""
        from ..core.evaluation import scoring as score_raster

        job = self._job
        if job is None:
            raise QgsProcessingException("The algorithm was not prepared")
        with engine_errors(cancelled="Scoring cancelled"):
            if "polygons" in job:
                reference = score_raster.PolygonReference(self._read_polygons(job, feedback),
                                                          uncovered=job["uncovered"])
            else:
                reference = score_raster.RasterReference(job["reference_raster"], match=job["match"],
                                                         ignore_value=job["ignore"])
            result = score_raster.score_classification(
                job["prediction"], reference, extent=job["extent"],
                progress=self.engine_progress(feedback, steps=False, share=1.0), cancelled=feedback.isCanceled)

        fields = QgsFields()
        for name, kind in TABLE_FIELDS:
            fields.append(QgsField(name, kind))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, no_geometry(),
                                          QgsCoordinateReferenceSystem())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for row in result.classes:
            feature = QgsFeature(fields)
            feature.setAttributes([row.index, row.name, _rounded(row.iou), _rounded(row.accuracy),
                                   row.true_positives, row.reference_pixels, row.predicted_pixels])
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
        self._report(result, feedback)
        return {self.OUTPUT: dest, self.MIOU: result.miou, self.MACC: result.macc,
                self.AACC: result.aacc, self.SCORED_PIXELS: result.scored_pixels}

    def _read_polygons(self, job, feedback) -> list:
        request = QgsFeatureRequest()
        request.setDestinationCrs(job["crs"], job["transform_context"])
        request.setFilterRect(job["rect"])  # in the destination CRS
        request.setSubsetOfAttributes([job["field"]], job["fields"])
        index = job["fields"].indexOf(job["field"])
        polygons = []
        for feature in job["polygons"].getFeatures(request):
            if feedback.isCanceled():
                raise RunCancelled()
            geometry = QgsGeometry(feature.geometry())
            if geometry.isNull() or geometry.isEmpty():
                continue
            if QgsWkbTypes.isCurvedType(geometry.wkbType()):
                geometry.convertToStraightSegment()
            polygons.append((json.loads(geometry.asJson()), _plain(feature.attribute(index))))
        feedback.pushInfo(f"{len(polygons)} reference polygons in the area")
        return polygons

    @staticmethod
    def _report(result, feedback) -> None:
        def pct(value):
            return "n/a" if value is None else f"{value:.2f} %"

        feedback.pushInfo(f"Matching: {result.matching}")
        for row in result.classes:
            feedback.pushInfo(f"  {row.name}: IoU {pct(row.iou)}, accuracy {pct(row.accuracy)} "
                              f"({row.reference_pixels} reference px, {row.predicted_pixels} "
                              "predicted px)")
        feedback.pushInfo(f"mIoU {pct(result.miou)}, mACC {pct(result.macc)}, aAcc "
                          f"{pct(result.aacc)} over {result.scored_pixels} pixels")
        if result.ignored_pixels:
            feedback.pushInfo(f"{result.ignored_pixels} reference pixels not scored (nodata, "
                              "ignore value or outside the polygons)")
        if result.prediction_nodata:
            feedback.pushWarning(f"{result.prediction_nodata} reference pixels not scored: the "
                                 "prediction has nodata there")
        for label, pixels in result.unmatched.items():
            feedback.pushWarning(f"Reference class '{label}' is not a predicted class: its "
                                 f"{pixels} pixels were not scored")
        if not result.scored_pixels:
            feedback.pushWarning("No pixel could be scored: check the area, the reference and the "
                                 "class field")


def _rounded(value):
    return None if value is None else round(float(value), 4)
