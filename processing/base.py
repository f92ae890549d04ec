"""What the DR-Seg Processing algorithms share: one name for each QGIS 3/4 enum, the area and
resolution parameters, engine progress and cancel through the feedback, engine errors as
QgsProcessingException, and styling outputs when Processing loads them.

Algorithms read parameters in prepareAlgorithm() (main thread) and only run the engine in
processAlgorithm() (worker thread); the helpers here keep to that split.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, List, Optional

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsProcessing, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingParameterDefinition, QgsProcessingParameterNumber, QgsWkbTypes)

from ..core.errors import DrSegError, RunCancelled
from ..qgis_bridge.engine import MissingDependencies
from ..qgis_bridge.sources import extent_in_layer_crs

CANCELLED = "Run cancelled; no output was written"


# -- QGIS 3.22 .. 4.x: the enums moved to Qgis.*; the old names are gone in QGIS 4 --------------

def number_type(kind: str):
    """'Double' or 'Integer' as QgsProcessingParameterNumber's type."""
    new = getattr(Qgis, "ProcessingNumberParameterType", None)
    return getattr(new, kind) if new is not None else getattr(QgsProcessingParameterNumber.Type, kind)


def advanced_flag():
    new = getattr(Qgis, "ProcessingParameterFlag", None)
    return new.Advanced if new is not None else QgsProcessingParameterDefinition.Flag.FlagAdvanced


def source_type(kind: str):
    """'Raster', 'Vector' or 'VectorPolygon' as a Processing source (layer) type."""
    new = getattr(Qgis, "ProcessingSourceType", None)
    if new is not None:
        return getattr(new, kind)
    return getattr(QgsProcessing.SourceType, "Type" + kind)


def no_geometry():
    new = getattr(Qgis, "WkbType", None)
    return new.NoGeometry if new is not None else QgsWkbTypes.Type.NoGeometry


# -- outputs ------------------------------------------------------------------------------------

def gpkg_destination(dest: str):
    """A vector destination -> (GeoPackage file, table name or None).

    Handles plain file names and the `ogr:dbname='…' table="…"` form that the 'Save to
    GeoPackage…' choice of the Processing dialog produces.
    """
    if dest.startswith("ogr:"):
        dbname = re.search(r"dbname='((?:[^'\\]|\\.)*)'", dest)
        table = re.search(r'table="((?:[^"\\]|\\.)*)"', dest)
        if dbname:
            return dbname.group(1), table.group(1) if table else None
    return dest, None


# Post-processors must outlive the run that creates them; QGIS only keeps a C++ pointer.
_POST_PROCESSORS: List["StyleOnLoad"] = []
KEPT_POST_PROCESSORS = 64


class StyleOnLoad(QgsProcessingLayerPostProcessorInterface):
    """Calls `style(layer)` when Processing loads an output of `layer_type` (main thread)."""

    def __init__(self, style: Callable, layer_type: type):
        super().__init__()
        self.style = style
        self.layer_type = layer_type

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if isinstance(layer, self.layer_type):
            self.style(layer)

    @classmethod
    def keep(cls, instance: "StyleOnLoad") -> "StyleOnLoad":
        _POST_PROCESSORS.append(instance)
        del _POST_PROCESSORS[:-KEPT_POST_PROCESSORS]
        return instance


# -- errors -------------------------------------------------------------------------------------

@contextmanager
def engine_errors(cancelled: str = CANCELLED):
    """The engine's errors as QgsProcessingException with the engine's one-line message (no
    traceback for bad input); a cancelled run as `cancelled`."""
    try:
        yield
    except RunCancelled:
        raise QgsProcessingException(cancelled) from None
    except (DrSegError, MissingDependencies) as exc:
        raise QgsProcessingException(str(exc)) from None


class DrSegAlgorithm(QgsProcessingAlgorithm):
    """Base of the DR-Seg algorithms: identity from class attributes, instance creation and the
    shared parameter readers. A subclass sets NAME, DISPLAY_NAME, TAGS and HELP (and GROUP,
    GROUP_ID when not a segmentation algorithm)."""

    NAME = DISPLAY_NAME = HELP = ""
    TAGS: List[str] = []
    GROUP, GROUP_ID = "Segmentation", "segmentation"

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.DISPLAY_NAME

    def tags(self) -> List[str]:
        return list(self.TAGS)

    def shortHelpString(self) -> str:  # noqa: N802
        return self.HELP

    def group(self) -> str:
        return self.GROUP

    def groupId(self) -> str:  # noqa: N802
        return self.GROUP_ID

    def createInstance(self):  # noqa: N802
        return type(self)()

    def add_advanced(self, parameters) -> None:
        for parameter in parameters:
            parameter.setFlags(parameter.flags() | advanced_flag())
            self.addParameter(parameter)

    # -- reading parameters (main thread) -------------------------------------------------------
    def extent_of(self, parameters, name: str, context, layer) -> Optional[tuple]:
        """The optional extent parameter `name` as (xmin, ymin, xmax, ymax) in `layer`'s CRS,
        clipped to the layer; None when not given. An extent without a CRS is in the layer's."""
        if parameters.get(name) in (None, ""):
            return None
        rect = self.parameterAsExtent(parameters, name, context)
        if rect.isNull():
            return None
        crs = self.parameterAsExtentCrs(parameters, name, context)
        if not crs.isValid():
            crs = QgsCoordinateReferenceSystem(layer.crs())
        return extent_in_layer_crs(rect, crs, layer, context.project())

    def resolution_of(self, parameters, name: str, context) -> Optional[float]:
        """The optional resolution parameter `name` in metres per pixel; None (native) when not
        given or 0."""
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsDouble(parameters, name, context) or None

    # -- running (worker thread) ----------------------------------------------------------------
    @staticmethod
    def engine_progress(feedback, steps: bool = True) -> Callable[[float, str], None]:
        """The engine's progress(fraction, message) as the feedback's progress and, with `steps`,
        each new message as its progress text."""
        last = {"message": None}

        def progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * fraction)
            if steps and message and message != last["message"]:
                last["message"] = message
                feedback.setProgressText(message)

        return progress

    # -- after the run (main thread) ------------------------------------------------------------
    @staticmethod
    def style_on_load(context, destination: Optional[str], style: Callable, layer_type: type) -> None:
        """Have `style(layer)` applied to `destination` if Processing loads it."""
        if destination and context.willLoadLayerOnCompletion(destination):
            details = context.layerToLoadOnCompletionDetails(destination)
            details.setPostProcessor(StyleOnLoad.keep(StyleOnLoad(style, layer_type)))
