"""Refining the last referring result with clicks on the map.

Left click adds a positive point (this belongs to the object), right click a negative one (this
does not); Esc ends the tool. Each click is transformed from the canvas CRS to the raster's, then
to the area's pixels (`session.pixel_of`), and SAM's decoder runs again on the area's cached
embedding in a `RefineTask` (no encoder, a fraction of a second). The refined polygon replaces the
feature's geometry (and area) through the layer's data provider, on the main thread; a feature the
refinement empties is deleted, and when the query found nothing a first positive click creates
one. Clicks made while a refinement runs are queued and sent together with the next one.

Which feature a click refines: the one nearest to the first click after the tool was (re)started,
then the same one until the tool ends or a new run replaces the target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature,
                       QgsFeatureRequest, QgsGeometry, QgsPointXY, QgsProject, QgsWkbTypes)
from qgis.gui import QgsMapTool, QgsVertexMarker
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from ..qgis_bridge import tasks as bridge_tasks
from ..qgis_bridge.tasks import RefineTask

POSITIVE_COLOUR = QColor(0, 200, 0)
NEGATIVE_COLOUR = QColor(230, 0, 0)


@dataclass(eq=False)
class RefineTarget:
    """What the clicks refine: the last run's layer, the area's session, and for each feature of
    the layer (by fid) the ReferringResult it shows. `current`: index in `items` being refined."""

    layer_id: str
    session: object
    raster_crs: QgsCoordinateReferenceSystem
    expression: str
    items: List[list] = field(default_factory=list)     # [fid or None, ReferringResult]
    current: Optional[int] = None
    project: Optional[QgsProject] = None
    clicks: Dict[int, int] = field(default_factory=dict)   # the user's clicks per item
    history: List[tuple] = field(default_factory=list)     # what each refinement replaced (undo)

    def layer(self):
        return (self.project or QgsProject.instance()).mapLayer(self.layer_id)


def target_from_run(task, layer, raster_crs: QgsCoordinateReferenceSystem,
                    project: Optional[QgsProject] = None) -> Tuple[Optional[RefineTarget], str]:
    """(target, '') for a finished ReferringTask whose layer `layer` was added, or (None, why).

    Features were written expression by expression, each expression's results in order, one
    feature per non-empty result: the layer's fids in ascending order follow that order."""
    result = task.result
    if task.session is None or result is None:
        return None, ("the area was tiled; zoom in or draw a smaller rectangle to refine with "
                      "clicks")
    if getattr(task.session, "cannot_refine", ""):        # SAM 3 weights without their tracker
        return None, task.session.cannot_refine
    shown = [r for e in result.expressions for r in e.results if r.mask.any()]
    features = sorted(layer.getFeatures(), key=lambda f: f.id())
    if len(features) != len(shown) or any(f["expression"] != r.expression
                                          for f, r in zip(features, shown)):
        return None, "the layer's features do not match the run's results"
    target = RefineTarget(layer.id(), task.session, raster_crs, result.expressions[-1].expression,
                          [[f.id(), r] for f, r in zip(features, shown)], project=project)
    return target, ""


class ReferringClickTool(QgsMapTool):
    """Map tool: left click = positive point, right click = negative point, Esc = done."""

    refined = pyqtSignal(object)           # the RefineTask, after the layer was updated
    message = pyqtSignal(object, str)      # (Qgis.MessageLevel, text) for the message bar

    def __init__(self, canvas):
        super().__init__(canvas)
        self.target: Optional[RefineTarget] = None
        self.markers: List[QgsVertexMarker] = []
        self._positive: List[Tuple[float, float]] = []
        self._negative: List[Tuple[float, float]] = []
        self._running: Optional[RefineTask] = None
        self.setCursor(Qt.CursorShape.CrossCursor)

    # -- target -------------------------------------------------------------------------------
    def set_target(self, target: Optional[RefineTarget]) -> None:
        """A new run's result (or None): earlier clicks and their markers are dropped."""
        self.target = target
        self._positive, self._negative = [], []
        self.clear_markers()

    def is_busy(self) -> bool:
        return self._running is not None

    # -- events -------------------------------------------------------------------------------
    def canvasReleaseEvent(self, event):  # noqa: N802 (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            self.add_click(event.mapPoint(), True)
        elif event.button() == Qt.MouseButton.RightButton:
            self.add_click(event.mapPoint(), False)

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if event.key() == Qt.Key.Key_Escape:
            self.canvas().unsetMapTool(self)
            event.accept()
        else:
            event.ignore()

    def deactivate(self):
        self.clear_markers()
        if self.target is not None:
            self.target.current = None          # the next click chooses its feature again
        super().deactivate()

    # -- clicks -------------------------------------------------------------------------------
    def add_click(self, map_point, positive: bool) -> bool:
        """A click at `map_point` (canvas CRS). False (with a message) when it cannot be used."""
        target = self.target
        if target is None:
            self.message.emit(Qgis.MessageLevel.Warning, "Nothing to refine: run a referring "
                              "query on an area that fits in one tile first")
            return False
        layer = target.layer()
        if layer is None:
            self.set_target(None)
            self.message.emit(Qgis.MessageLevel.Warning, "The referring result layer was removed; "
                              "run the query again to refine it")
            return False
        if layer.isEditable():
            self.message.emit(Qgis.MessageLevel.Warning, f"Layer '{layer.name()}' is being edited: "
                              "save or discard the edits before refining it with clicks")
            return False
        point = self.to_raster_crs(QgsPointXY(map_point), target)
        col, row = target.session.pixel_of(point.x(), point.y())
        session = target.session
        if not (-0.5 <= col < session.width - 0.5 and -0.5 <= row < session.height - 0.5):
            self.message.emit(Qgis.MessageLevel.Warning, "That click lies outside the area of the "
                              "last referring query")
            return False
        if target.current is None:
            target.current = self._choose(target, layer, point, positive)
            if target.current is None:
                return False
        (self._positive if positive else self._negative).append((col, row))
        self._add_marker(QgsPointXY(map_point), positive)
        self._start()
        return True

    def to_raster_crs(self, point: QgsPointXY, target: RefineTarget) -> QgsPointXY:
        canvas_crs = self.canvas().mapSettings().destinationCrs()
        if canvas_crs.isValid() and target.raster_crs.isValid() and canvas_crs != target.raster_crs:
            transform = QgsCoordinateTransform(canvas_crs, target.raster_crs,
                                               target.project or QgsProject.instance())
            return transform.transform(point)
        return point

    def _choose(self, target: RefineTarget, layer, point: QgsPointXY, positive: bool
                ) -> Optional[int]:
        """The item nearest to the click; a new, empty one when the query found nothing."""
        where = QgsGeometry.fromPointXY(point)
        best, distance = None, None
        for index, (fid, _) in enumerate(target.items):
            if fid is None:
                continue
            feature = next(layer.getFeatures(QgsFeatureRequest(fid)), None)
            if feature is None or not feature.hasGeometry():
                continue
            d = feature.geometry().distance(where)
            if distance is None or d < distance:
                best, distance = index, d
        if best is not None:
            return best
        if not positive:
            self.message.emit(Qgis.MessageLevel.Info, "The query found nothing here: start with a "
                              "left (positive) click on the object")
            return None
        from ..core.refer.pipeline import ReferringResult

        session = target.session
        empty = ReferringResult(mask=np.zeros((session.height, session.width), bool), score=0.0,
                                expression=target.expression,
                                low_res=np.zeros((1, 256, 256), np.float32))  # no mask prior
        target.items.append([None, empty])
        return len(target.items) - 1

    # -- markers ------------------------------------------------------------------------------
    def _add_marker(self, point: QgsPointXY, positive: bool) -> None:
        marker = QgsVertexMarker(self.canvas())
        marker.setCenter(point)
        marker.setIconType(QgsVertexMarker.IconType.ICON_CIRCLE if positive
                           else QgsVertexMarker.IconType.ICON_X)
        marker.setColor(POSITIVE_COLOUR if positive else NEGATIVE_COLOUR)
        marker.setIconSize(14)
        marker.setPenWidth(3)
        self.markers.append(marker)

    def clear_markers(self) -> None:
        scene = self.canvas().scene()
        for marker in self.markers:
            scene.removeItem(marker)
        self.markers = []

    # -- refinement ---------------------------------------------------------------------------
    def _start(self) -> None:
        target = self.target
        if self._running is not None or target is None or target.current is None:
            return
        if not (self._positive or self._negative):
            return
        _, result = target.items[target.current]
        task = RefineTask(target.session, result, self._positive, self._negative,
                          self._refine_finished)
        task.target, task.index = target, target.current
        self._positive, self._negative = [], []
        self._running = task
        bridge_tasks.start(task)

    def _refine_finished(self, task: RefineTask) -> None:
        """Main thread: write the refined polygon into the layer, then send queued clicks."""
        if self._running is task:
            self._running = None
        if task.target is not self.target:       # a new run replaced the target meanwhile
            return
        if not task.succeeded:
            if task.error:
                self.message.emit(Qgis.MessageLevel.Critical, task.error)
            self._positive, self._negative = [], []
            return
        try:
            self.apply(task)
        except RuntimeError as exc:
            self.message.emit(Qgis.MessageLevel.Critical, str(exc))
            return
        self.refined.emit(task)
        self._start()

    def apply(self, task: RefineTask) -> None:
        """Replace (or add, or delete) the refined feature through the data provider."""
        target = task.target
        layer = target.layer()
        if layer is None:
            self.set_target(None)
            raise RuntimeError("The referring result layer was removed; the refinement was "
                               "not saved")
        item = target.items[task.index]
        fid = item[0]
        provider = layer.dataProvider()
        fields = layer.fields()
        before = QgsFeature(layer.getFeature(fid)) if fid is not None else None
        target.history.append((task.index, fid, before, item[1], target.clicks.get(task.index, 0)))
        if task.geometry is None:                # every pixel was clicked away
            if fid is not None and not provider.deleteFeatures([fid]):
                raise RuntimeError(f"Could not update layer '{layer.name()}'")
            item[0] = None
        else:
            geometry = _qgs_geometry(task.geometry, layer.wkbType())
            values = {"area_m2": round(float(task.area_m2), 2)}
            if fid is None:
                feature = QgsFeature(fields)
                feature.setGeometry(geometry)
                values.update(expression=task.refined.expression,
                              score=round(float(task.refined.score), 4))
                for name, value in values.items():
                    feature.setAttribute(fields.indexOf(name), value)
                ok, added = provider.addFeatures([feature])
                if not ok:
                    raise RuntimeError(f"Could not add the refined polygon to '{layer.name()}'")
                item[0] = added[0].id()
            else:
                changes = {fields.indexOf(name): value for name, value in values.items()}
                if not (provider.changeGeometryValues({fid: geometry})
                        and provider.changeAttributeValues({fid: changes})):
                    raise RuntimeError(f"Could not update layer '{layer.name()}'")
        item[1] = task.refined
        target.clicks[task.index] = (target.clicks.get(task.index, 0) + len(task.positive)
                                     + len(task.negative))
        layer.updateExtents()
        layer.triggerRepaint()

    def can_undo(self) -> bool:
        return self.target is not None and bool(self.target.history) and self._running is None

    def undo(self) -> bool:
        """Put back what the last refinement replaced (the polygon, its area, or the feature it
        deleted or added); -> False when there is nothing to undo."""
        if not self.can_undo():
            return False
        target = self.target
        layer = target.layer()
        if layer is None:
            self.set_target(None)
            return False
        index, fid, before, result, clicks = target.history.pop()
        item = target.items[index]
        provider = layer.dataProvider()
        now = item[0]
        if before is None:                       # the refinement added the feature
            if now is not None and not provider.deleteFeatures([now]):
                raise RuntimeError(f"Could not update layer '{layer.name()}'")
            item[0] = None
        elif now is None:                        # the refinement deleted it
            ok, added = provider.addFeatures([QgsFeature(before)])
            if not ok:
                raise RuntimeError(f"Could not update layer '{layer.name()}'")
            item[0] = added[0].id()
        else:
            attributes = {i: before.attribute(i) for i in range(len(before.fields()))
                          if before.fields().at(i).name() != "fid"}
            if not (provider.changeGeometryValues({now: before.geometry()})
                    and provider.changeAttributeValues({now: attributes})):
                raise RuntimeError(f"Could not update layer '{layer.name()}'")
        item[1] = result
        target.clicks[index] = clicks
        self.clear_markers()
        layer.updateExtents()
        layer.triggerRepaint()
        return True


def _qgs_geometry(geometry, wkb_type) -> QgsGeometry:
    """shapely -> QgsGeometry (2-D WKB), multi-part when the layer is."""
    import shapely

    result = QgsGeometry()
    result.fromWkb(shapely.to_wkb(geometry, output_dimension=2))
    if QgsWkbTypes.isMultiType(wkb_type) and not result.isMultipart():
        result.convertToMultiType()
    return result
