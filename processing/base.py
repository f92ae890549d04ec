"""What the DR-Seg Processing algorithms share: one name for each QGIS 3/4 enum, the area and
resolution parameters, engine progress and cancel through the feedback, engine errors as
QgsProcessingException, and styling outputs when Processing loads them.

Algorithms read parameters in prepareAlgorithm() (main thread) and only run the engine in
processAlgorithm() (worker thread); the helpers here keep to that split.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable, List, Optional, Tuple

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsFeature, QgsFeatureSink, QgsFields,
                       QgsProcessing, QgsProcessingAlgorithm, QgsProcessingContext,
                       QgsProcessingException, QgsProcessingLayerPostProcessorInterface,
                       QgsProcessingParameterDefinition, QgsProcessingParameterNumber,
                       QgsProviderRegistry, QgsVectorLayer, QgsWkbTypes)

from ..core.advice import QGIS, speaking_to
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


def multi_polygon():
    new = getattr(Qgis, "WkbType", None)
    return new.MultiPolygon if new is not None else QgsWkbTypes.Type.MultiPolygon


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


# Features copied from the engine's work GeoPackage into a Processing sink per chunk; cancel is
# checked between chunks.
SINK_CHUNK = 1000
# The engine's share of the progress bar; copying into the sink takes the rest.
ENGINE_SHARE = 0.95


def wants_output(algorithm, parameters, name: str) -> bool:
    """Whether the optional destination `name` was asked for. Resolved on a throwaway context,
    so an empty choice (batch mode's blank cell) never registers a layer to load."""
    if parameters.get(name) in (None, ""):
        return False
    return bool(algorithm.parameterAsOutputLayer(parameters, name, QgsProcessingContext()))


def destination_files(algorithm, parameters, names) -> List[str]:
    """The files on disk the output parameters `names` will write (not memory layers or
    databases), resolved on a throwaway context so nothing is registered for loading."""
    files = []
    for name in names:
        if parameters.get(name) in (None, ""):
            continue
        value = algorithm.parameterAsOutputLayer(parameters, name, QgsProcessingContext())
        if not value or value.startswith(("memory:", "postgres:", "postgis:")):
            continue
        path = gpkg_destination(value)[0] if value.startswith("ogr:") else value
        if "dbname=" in path or "://" in path:
            continue
        files.append(path)
    return files


def file_of(destination: str) -> Tuple[Optional[str], Optional[str]]:
    """A Processing vector destination -> (file path, layer name) when it is a file on disk,
    else (None, None) (a memory layer id, a database)."""
    if destination.startswith("ogr:"):
        path, table = gpkg_destination(destination)
        return (path, table) if os.path.isfile(path) else (None, None)
    parts = QgsProviderRegistry.instance().decodeUri("ogr", destination)
    path = parts.get("path") or destination
    return (path, parts.get("layerName") or None) if os.path.isfile(path) else (None, None)


def store_file_style(destination: str, qml: str) -> None:
    """Give a written vector file its style for any later opening (qgis_process, Add Layer): in the
    GeoPackage's layer_styles table, else as the `.qml` beside the file that QGIS loads."""
    path, table = file_of(destination)
    if path is None:
        return
    if path.lower().endswith(".gpkg"):
        from ..core.gpkg import store_default_style

        store_default_style(path, table or os.path.splitext(os.path.basename(path))[0], qml)
    else:
        with open(os.path.splitext(path)[0] + ".qml", "w", encoding="utf-8") as handle:
            handle.write(qml)


def remove_output(destination: str) -> None:
    """Remove a partly written file destination (a cancelled copy), sidecars included."""
    path, _ = file_of(destination)
    if path is None:
        return
    stem = os.path.splitext(path)[0]
    folder = os.path.dirname(path) or "."
    for name in os.listdir(folder):
        candidate = os.path.join(folder, name)
        if os.path.splitext(candidate)[0] == stem and os.path.isfile(candidate):
            os.remove(candidate)


@contextmanager
def work_folder():
    """A private scratch folder for the engine's GeoPackage, removed afterwards whatever happens."""
    folder = tempfile.mkdtemp(prefix="drseg-processing-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    traceback for bad input); a cancelled run as `cancelled`. Advice in the engine's messages is
    given for QGIS (settings dialog, parameter names), not the command line."""
    try:
        with speaking_to(QGIS):
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

    def text_of(self, parameters, name: str, context) -> Optional[str]:
        """A text parameter as told, or None when it was left empty."""
        return self.parameterAsString(parameters, name, context).strip() or None

    @staticmethod
    def resolve_settings(told: dict, feedback):
        """The run's settings, resolved once by the one precedence (parameter > environment >
        saved DR-Seg settings > default); the log says where each value came from."""
        from ..core.settings import load_settings_or_defaults, resolve_all

        saved, problem = load_settings_or_defaults()
        if problem and feedback is not None:
            feedback.pushWarning(problem + " — the default settings are used")
        resolved = resolve_all(told, saved)
        if feedback is not None:
            for line in resolved.describe():
                feedback.pushInfo(f"Setting {line}")
        return resolved

    # -- running (worker thread) ----------------------------------------------------------------
    @staticmethod
    def engine_progress(feedback, steps: bool = True, share: float = ENGINE_SHARE
                        ) -> Callable[[float, str], None]:
        """The engine's progress(fraction, message) as the feedback's progress and, with `steps`,
        each new message as its progress text; the engine fills `share` of the bar."""
        last = {"message": None}

        def progress(fraction: float, message: str) -> None:
            feedback.setProgress(100.0 * share * fraction)
            # The log gets each stage once: "(3/8: road)" and "(16/24 windows)" details of the
            # engine's messages only move the bar.
            message = (message or "").split(" (")[0]
            if steps and message and message != last["message"]:
                last["message"] = message
                feedback.setProgressText(message)

        return progress

    def copy_to_sink(self, work_path: str, layer_name: str, parameters, name: str, context,
                     feedback, crs, qml: Optional[str] = None) -> Tuple[str, int]:
        """Copy the engine's polygon layer (work GeoPackage) into the feature sink `name` in
        chunks, checking cancel between them; -> (destination id, features copied).

        Called in processAlgorithm() with its own context, so the sink is registered for loading
        on the context QGIS hands back to the main thread. A cancelled copy removes what it wrote.
        """
        work = QgsVectorLayer(f"{work_path}|layername={layer_name}", layer_name, "ogr")
        if not work.isValid():
            raise QgsProcessingException(f"The engine's output {work_path} cannot be read")
        fields = QgsFields()
        for field in work.fields():
            if field.name().lower() != "fid":  # the GeoPackage key; every format makes its own
                fields.append(field)
        names = fields.names()
        sink, dest = self.parameterAsSink(parameters, name, context, fields, multi_polygon(),
                                          crs if crs.isValid() else work.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, name))
        total = max(1, work.featureCount())
        copied, chunk, problem = 0, [], None
        feedback.setProgressText("Writing the output layer")
        features = work.getFeatures()
        while problem is None:
            feature = next(features, None)
            if feature is not None:
                out = QgsFeature(fields)
                out.setGeometry(feature.geometry())
                out.setAttributes([feature[n] for n in names])
                chunk.append(out)
                if len(chunk) < SINK_CHUNK:
                    continue
            if feedback.isCanceled():
                problem = "cancelled"
            elif chunk and not sink.addFeatures(chunk, QgsFeatureSink.Flag.FastInsert):
                problem = f"Could not write the output: {sink.lastError()}"
            else:
                copied += len(chunk)
                chunk.clear()
                feedback.setProgress(100.0 * (ENGINE_SHARE + (1 - ENGINE_SHARE) * copied / total))
                if feature is None:
                    break
        # The sink is let go here, before any error is raised: an exception's traceback would
        # keep it (and its open file) alive until after QGIS has shut down.
        del sink, features, chunk, feature, work
        if problem is not None:
            remove_output(dest)
            if problem == "cancelled":
                raise RunCancelled()
            raise QgsProcessingException(problem)
        if qml:
            store_file_style(dest, qml)
        return dest, copied

    # -- after the run (main thread) ------------------------------------------------------------
    @staticmethod
    def style_on_load(context, destination: Optional[str], style: Callable, layer_type: type) -> None:
        """Have `style(layer)` applied to `destination` if Processing loads it."""
        if destination and context.willLoadLayerOnCompletion(destination):
            details = context.layerToLoadOnCompletionDetails(destination)
            details.setPostProcessor(StyleOnLoad.keep(StyleOnLoad(style, layer_type)))
