"""Referring segmentation in QGIS's task manager, and its result as a styled map layer.

`ReferringTask.run()` runs in a worker thread and touches no GUI, layer or project: it calls
`core.refer.run.run_referring` and keeps the result, and for an area that fits in one tile the
area's `ReferringSession` (cached SAM embedding and CLIP features) for refinement by clicks.
`RefineTask.run()` re-runs SAM's decoder on that session with the user's clicks and turns the mask
into a polygon and its area. Both hand themselves to a callback from `finished()`, on the main
thread, where layers may be added or changed (`add_referring_layer`). Whoever creates a task must
keep a Python reference to it until the callback has run.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, Optional, Sequence

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsProject,
                       QgsRendererCategory, QgsVectorLayer)

from ..core.colors import class_colour
from .engine import MissingDependencies, dependency_message, load_engine
from .task import EngineTask

REFER_GROUP = "DR-Seg referring"
FILL_ALPHA = 90           # the imagery stays visible under the highlight
OUTLINE_WIDTH_MM = 0.6


def load_refer_engine():
    """Main thread: import the referring engine (torch, open_clip, segment_anything) and return
    `core.refer.run`, or raise MissingDependencies with an install hint. Call it before starting a
    task, so the first, slow import of torch never happens in a worker thread."""
    load_engine()
    try:
        found = importlib.util.find_spec("segment_anything") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencies(dependency_message(["segment-anything"]))
    try:
        importlib.import_module("segment_anything")
        from ..core.refer import run
    except ImportError as exc:
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None
    return run


class ReferringTask(EngineTask):
    """Runs `run_referring(request)` in the background.

    After the callback: `result` (ReferringRunResult) and `session` (the area's session, None for
    a tiled area) on success; `error` (user-facing) on failure, `error_detail` a traceback for
    unexpected failures; `was_cancelled` when cancelled. A cancelled or failed run leaves no file
    (the engine writes under a temporary name and renames last).

    sam / clip: models (or stand-ins) to use instead of loading the request's through the cache.
    """

    failure_prefix = "Referring segmentation failed"

    def __init__(self, request, on_finished: Optional[Callable[["ReferringTask"], None]] = None,
                 sam=None, clip=None, description: Optional[str] = None):
        super().__init__(description or "DR-Seg: referring segmentation", on_finished)
        self.request = request
        self.sam = sam
        self.clip = clip
        self.result = None
        self.session = None
        self.layer_name: Optional[str] = None   # legend name of the layer the callback adds

    def _work(self) -> None:
        from ..core.refer.run import run_referring

        self.result = run_referring(self.request, progress=self._progress,
                                    cancelled=self.isCanceled, sam=self.sam, clip=self.clip)
        self.session = self.result.session


class RefineTask(EngineTask):
    """Re-runs SAM's decoder on a session's cached embedding with clicks (area pixel (x, y)).

    After the callback: `refined` (ReferringResult carrying every click so far), `geometry`
    (shapely, the session's CRS, None when the mask became empty) and `area_m2`."""

    failure_prefix = "Refinement failed"

    def __init__(self, session, result, positive: Sequence = (), negative: Sequence = (),
                 on_finished: Optional[Callable[["RefineTask"], None]] = None):
        super().__init__("DR-Seg: refining with clicks", on_finished)
        self.session = session
        self.source = result
        self.positive = [tuple(map(float, p)) for p in positive]
        self.negative = [tuple(map(float, p)) for p in negative]
        self.refined = None
        self.geometry = None
        self.area_m2 = 0.0

    def _work(self) -> None:
        from ..core.vectorize import AreaMeter

        self.refined = self.session.refine(self.source, self.positive, self.negative)
        self.geometry = self.session.to_geometry(self.refined)
        if self.geometry is not None:
            self.area_m2 = float(AreaMeter(self.session.crs, self.geometry.bounds)
                                 .area([self.geometry])[0])


# --------------------------------------------------------------------------------------------
# Main thread: the result as a layer


def referring_renderer(expressions: Sequence[str]) -> QgsCategorizedSymbolRenderer:
    """One category per expression (field `expression`): a see-through fill in the expression's
    stable colour with a strong outline, so the imagery below stays readable."""
    categories = []
    for text in dict.fromkeys(expressions):
        r, g, b = class_colour(text)
        symbol = QgsFillSymbol.createSimple({
            "color": f"{r},{g},{b},{FILL_ALPHA}",
            "outline_color": f"{r},{g},{b},255",
            "outline_width": str(OUTLINE_WIDTH_MM),
            "outline_width_unit": "MM",
        })
        categories.append(QgsRendererCategory(text, symbol, text))
    return QgsCategorizedSymbolRenderer("expression", categories)


def layer_title(expressions: Sequence[str], limit: int = 60) -> str:
    if len(expressions) == 1:
        text = expressions[0]
        return text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{len(expressions)} referring expressions"


def add_referring_layer(result, name: Optional[str] = None, project: Optional[QgsProject] = None,
                        group_name: str = REFER_GROUP) -> QgsVectorLayer:
    """Open a ReferringRunResult's GeoPackage layer, style it by expression and put it on top of
    the `group_name` group (created at the top of the legend when missing). Main thread only."""
    project = project or QgsProject.instance()
    expressions = [e.expression for e in result.expressions]
    title = name or layer_title(expressions)
    layer = QgsVectorLayer(f"{result.vector_path}|layername={result.layer_name}", title, "ogr")
    if not layer.isValid():
        raise RuntimeError(f"QGIS cannot open the referring result '{result.vector_path}'")
    layer.setRenderer(referring_renderer(expressions))
    root = project.layerTreeRoot()
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    project.addMapLayer(layer, False)
    group.insertLayer(0, layer)
    return layer
