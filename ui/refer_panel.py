"""The dock's "Referring" mode: type what you mean ("the largest pond north of the road"), press
Enter, get the object(s) as a layer; then refine the result with clicks on the map.

The panel owns what is specific to referring (expression and its history, area, SAM model and
weights, working size, Run/Cancel, progress, the click tool) and takes what the dock already has
(layer, bands of that layer, device, CLIP model and weights) from a `SharedChoices` object the
dock keeps up to date, so the dock embeds it in a few lines:

    self.refer_panel = ReferringPanel(self.iface, self.choices, self)

Everything is validated on the main thread before a `ReferringTask` starts; mistakes show as a
message-bar error at once.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsGeometry, QgsRectangle,
                       QgsSettings, QgsWkbTypes)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox, QgsMapToolExtent, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QSizePolicy, QSpinBox,
                                 QToolButton, QVBoxLayout, QWidget)

from ..core.errors import DrSegError, InputError
from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                    DEFAULT_REFER_ENGINE, SAM_CATALOG, SAM_MODELS)
from ..qgis_bridge.engine import DEFAULT_MAX_SIZE, MissingDependencies, load_refer_engine
from ..qgis_bridge.outputs import output_folder, referring_output_path
from ..qgis_bridge.results import add_referring_layer, layer_title
from ..qgis_bridge.sources import extent_in_layer_crs, layer_crs_check, raster_source
from ..qgis_bridge.tasks import ReferringTask
from .choices import SharedChoices
from .click_tool import ReferringClickTool, target_from_run
from .combos import raster_layer_filter
from .prompter_field import PrompterField
from .refer_engine import ReferEngineRows
from .run_controls import RunControls

try:
    from qgis.PyQt.QtGui import QAction  # Qt6 (QGIS 4)
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 (QGIS 3)

TITLE = "DR-Seg referring"
EXPRESSION_PLACEHOLDER = "the largest pond north of the road"
AREA_CANVAS, AREA_DRAWN, AREA_LAYER = "canvas", "drawn", "layer"
HISTORY_SIZE = 20


class ExpressionBox(QComboBox):
    """Editable combo box (typed text + history) that emits `entered` once per Enter.

    (QLineEdit.returnPressed fires twice in an editable QComboBox: the line edit ignores the key,
    the combo box receives it and hands it to the line edit again.)"""

    entered = pyqtSignal()

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            event.accept()
            self.entered.emit()
            return
        super().keyPressEvent(event)


class ReferringPanel(QWidget):
    """The Referring mode. `iface`: the QGIS interface; `choices`: what the host form shares
    (default: a SharedChoices of its own, for a panel on its own)."""

    runStarted = pyqtSignal(object)     # the ReferringTask
    runFinished = pyqtSignal(object)    # the ReferringTask, after its layer was added / errors shown

    HISTORY_KEY = "drseg/referring/history"

    def __init__(self, iface, choices: Optional[SharedChoices] = None, parent=None):
        super().__init__(parent)
        self.setObjectName("DrSegReferringPanel")
        self.iface = iface
        self.choices = choices if choices is not None else SharedChoices(parent=self)
        self.sam = None               # SAM model or stand-in to use instead of loading one (tests)
        self.clip = None              # dense CLIP or localizer likewise
        self.last_layer = None
        self.last_task: Optional[ReferringTask] = None
        self.drawn_extent = None      # (QgsRectangle, its CRS) from the Draw tool
        self._previous_tool = None
        canvas = self.canvas()
        self.click_tool = ReferringClickTool(canvas) if canvas is not None else None
        self.extent_tool = QgsMapToolExtent(canvas) if canvas is not None else None
        self.area_band = None
        self._build()
        if self.choices.layer is not None:
            self.layer_combo.setLayer(self.choices.layer)
        self.choices.layerChanged.connect(self.layer_combo.setLayer)   # the host's layer is followed
        self.load_history()

    # -- widgets --------------------------------------------------------------------------------
    def canvas(self):
        try:
            return self.iface.mapCanvas() if self.iface is not None else None
        except Exception:
            return None

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        form = QFormLayout()
        outer.addLayout(form)

        self.layer_combo = QgsMapLayerComboBox(self)
        self.layer_combo.setFilters(raster_layer_filter())
        form.addRow("Raster layer", self.layer_combo)

        self.expression_combo = ExpressionBox(self)
        self.expression_combo.setEditable(True)
        self.expression_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.expression_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.expression_combo.lineEdit().setPlaceholderText(EXPRESSION_PLACEHOLDER)
        self.expression_combo.lineEdit().setClearButtonEnabled(True)
        self.expression_combo.entered.connect(self.run)
        self.expression_combo.setToolTip(
            "What to find, in words: 'the largest pond north of the road', 'all the storage "
            "tanks', 'the second building from the left'. Enter runs it; the list holds your "
            "recent expressions")
        form.addRow("Expression", self.expression_combo)

        area = QHBoxLayout()
        self.area_combo = QComboBox(self)
        self.area_combo.addItem("Map canvas extent", AREA_CANVAS)
        self.area_combo.addItem("Drawn rectangle", AREA_DRAWN)
        self.area_combo.addItem("Whole layer", AREA_LAYER)
        self.area_combo.setToolTip("Where to look. The area is read at a working size (below); "
                                   "later expressions on the same area reuse its encoding")
        self.area_combo.currentIndexChanged.connect(self._area_changed)
        area.addWidget(self.area_combo, 1)
        self.draw_button = QToolButton(self)
        self.draw_button.setText("Draw…")
        self.draw_button.setToolTip("Drag a rectangle on the map to search only there")
        self.draw_button.clicked.connect(self.start_drawing)
        self.draw_button.setEnabled(self.extent_tool is not None)
        area.addWidget(self.draw_button)
        form.addRow("Area", area)

        self.engine_rows = ReferEngineRows(self, form)   # CLIP + SAM or SAM 3
        self.sam_model_combo = QComboBox(self)
        self.sam_model_combo.addItems(SAM_MODELS)
        self.sam_model_combo.setToolTip("Segment Anything architecture: vit_b is the fastest, "
                                        "vit_h the most precise")
        self.sam_model_combo.currentTextChanged.connect(self._sam_model_changed)
        form.addRow("SAM model", self.sam_model_combo)
        self.sam_weights_widget = QgsFileWidget(self)
        self.sam_weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.sam_weights_widget.setFilter("Checkpoints (*.pth *.pt *.bin *.safetensors);;All files (*)")
        self.sam_weights_widget.lineEdit().setPlaceholderText("[Catalog checkpoint of the model]")
        self.sam_weights_widget.setToolTip("A SAM checkpoint file, or a catalog name such as "
                                           "'sam-vit-b' (DR-Seg settings › Download models…); "
                                           "empty: the catalog checkpoint of the SAM model")
        form.addRow("SAM weights", self.sam_weights_widget)
        self.prompter_widget = PrompterField(self)
        form.addRow("Prompter head", self.prompter_widget)
        # the trained head is made for CLIP + SAM: hidden (and not sent) with SAM 3
        self.engine_rows.sam_only((self.sam_model_combo, self.sam_weights_widget,
                                   self.prompter_widget))
        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoPackage (*.gpkg)")
        self.output_widget.lineEdit().setPlaceholderText(
            "[The project's folder, or ~/DR-Seg outputs]")
        self.output_widget.setToolTip("The GeoPackage of the result; empty: a new file named after "
                                      "the raster in the project's folder (an unsaved project: "
                                      "'DR-Seg outputs' in your home folder)")
        form.addRow("Output", self.output_widget)

        self.max_size_spin = QSpinBox(self)
        self.max_size_spin.setRange(64, 8192)
        self.max_size_spin.setSingleStep(128)
        self.max_size_spin.setValue(DEFAULT_MAX_SIZE)
        self.max_size_spin.setSuffix(" px")
        self.max_size_spin.setToolTip("Longest side of the area as the models see it. Up to 1024 "
                                      "the area is one tile and can be refined with clicks; "
                                      "larger areas are tiled")
        form.addRow("Working size", self.max_size_spin)

        self.controls = RunControls(self.iface, TITLE, self, self.run)
        self.run_button, self.cancel_button = self.controls.run_button, self.controls.cancel_button
        self.progress_bar, self.status_label = self.controls.progress_bar, self.controls.status_label
        self.refine_action = QAction("Refine…", self)
        self.refine_action.setObjectName("drsegReferringRefine")
        self.refine_action.setCheckable(True)
        self.refine_action.setToolTip("Left click: part of the object; right click: not part of "
                                      "it; Esc: done. Refines the last result with SAM")
        self.refine_action.triggered.connect(self.set_refining)  # a user's click only
        self.refine_button = QToolButton(self)
        self.refine_button.setDefaultAction(self.refine_action)
        self.undo_button = QToolButton(self)
        self.undo_button.setText("Undo")
        self.undo_button.setObjectName("drsegReferringUndo")
        self.undo_button.setToolTip("Undo the last refinement (the polygon it replaced comes back)")
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(self.undo_refinement)
        self.controls.add_to(outer, (self.refine_button, self.undo_button))
        if self.click_tool is not None:
            self.click_tool.setAction(self.refine_action)
            self.click_tool.message.connect(self.controls.message)
            self.click_tool.refined.connect(self._refined)
        if self.extent_tool is not None:
            self.extent_tool.extentChanged.connect(self.set_drawn_extent)
        for combo in self.findChildren(QComboBox):  # long entries must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)

    # -- expression and history -----------------------------------------------------------------
    def expression(self) -> str:
        return " ".join(self.expression_combo.currentText().split())

    def history(self) -> List[str]:
        return [self.expression_combo.itemText(i) for i in range(self.expression_combo.count())]

    def load_history(self) -> List[str]:
        raw = QgsSettings().value(self.HISTORY_KEY, "[]")
        try:
            items = json.loads(raw) if isinstance(raw, str) else list(raw or [])
        except ValueError:
            items = []
        items = [str(i) for i in items if isinstance(i, str) and i.strip()][:HISTORY_SIZE]
        self._show_history(items)
        return items

    def remember(self, text: str) -> None:
        """Put `text` first in the history (no duplicates, at most HISTORY_SIZE), and save it."""
        items = [text] + [item for item in self.history() if item != text]
        items = items[:HISTORY_SIZE]
        QgsSettings().setValue(self.HISTORY_KEY, json.dumps(items))
        self._show_history(items)

    def _show_history(self, items: List[str]) -> None:
        current = self.expression_combo.currentText()
        self.expression_combo.blockSignals(True)
        self.expression_combo.clear()
        self.expression_combo.addItems(items)
        self.expression_combo.setCurrentIndex(-1)
        self.expression_combo.setEditText(current)
        self.expression_combo.blockSignals(False)

    def apply_settings(self, settings, previous=None) -> None:
        """Take the shared settings' SAM model and weights (core/settings.py) as the form's; with
        the `previous` settings, weights the user changed from theirs are kept."""
        if previous is not None and self.sam_weights_widget.filePath().strip() != \
                (getattr(previous, "sam_weights", "") or "").strip():
            return
        if getattr(settings, "sam_model", None) in SAM_MODELS:
            self.sam_model_combo.blockSignals(True)   # the weights below belong to this model
            self.sam_model_combo.setCurrentText(settings.sam_model)
            self.sam_model_combo.blockSignals(False)
        self.sam_weights_widget.setFilePath(getattr(settings, "sam_weights", "") or "")

    def _sam_model_changed(self, model: str) -> None:
        # A catalog default of another model follows the model; a user's file stays.
        text = self.sam_weights_widget.filePath().strip().lower()
        if text in SAM_CATALOG.values() and model in SAM_CATALOG:
            self.sam_weights_widget.setFilePath(SAM_CATALOG[model])

    # -- area -----------------------------------------------------------------------------------
    def area(self) -> str:
        return self.area_combo.currentData()

    def start_drawing(self) -> None:
        canvas = self.canvas()
        if canvas is None or self.extent_tool is None:
            return
        if canvas.mapTool() is not self.extent_tool:
            self._previous_tool = canvas.mapTool()
        canvas.setMapTool(self.extent_tool)
        self.status_label.setText("Drag a rectangle on the map")

    def set_drawn_extent(self, rect: QgsRectangle, crs: Optional[QgsCoordinateReferenceSystem] = None
                         ) -> None:
        """The Draw tool's rectangle (canvas CRS unless `crs` is given) becomes the area."""
        if rect is None or rect.isEmpty() or rect.width() <= 0 or rect.height() <= 0:
            return
        canvas = self.canvas()
        if crs is None:
            crs = (canvas.mapSettings().destinationCrs() if canvas is not None
                   else QgsCoordinateReferenceSystem())
        self.drawn_extent = (QgsRectangle(rect), QgsCoordinateReferenceSystem(crs))
        self.area_combo.setCurrentIndex(self.area_combo.findData(AREA_DRAWN))
        self._show_drawn_extent()
        if canvas is not None and self.extent_tool is not None and canvas.mapTool() is self.extent_tool:
            if self._previous_tool is not None:
                canvas.setMapTool(self._previous_tool)
            else:
                canvas.unsetMapTool(self.extent_tool)
        self._previous_tool = None
        self.status_label.setText("Area: the drawn rectangle")

    def _show_drawn_extent(self) -> None:
        canvas = self.canvas()
        if canvas is None:
            return
        if self.area_band is None:
            self.area_band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
            self.area_band.setColor(QColor(255, 140, 0, 200))
            self.area_band.setFillColor(QColor(255, 140, 0, 25))
            self.area_band.setWidth(2)
        self.area_band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        if self.drawn_extent is not None and self.area() == AREA_DRAWN:
            rect, crs = self.drawn_extent
            self.area_band.setToGeometry(QgsGeometry.fromRect(rect), crs)

    def _area_changed(self, _index: int) -> None:
        if self.area_band is not None:
            self._show_drawn_extent()

    def selected_extent(self, layer) -> Optional[tuple]:
        area = self.area()
        if area == AREA_LAYER:
            return None
        if area == AREA_DRAWN:
            if self.drawn_extent is None:
                raise InputError("Draw a rectangle on the map first (Draw…), or choose another area")
            rect, crs = self.drawn_extent
            return extent_in_layer_crs(rect, crs, layer)
        canvas = self.canvas()
        if canvas is None:
            raise InputError("There is no map canvas: choose 'Whole layer' as the area")
        return extent_in_layer_crs(canvas.extent(), canvas.mapSettings().destinationCrs(), layer)

    # -- request --------------------------------------------------------------------------------
    def current_layer(self):
        return self.layer_combo.currentLayer()

    def output_folder(self) -> str:
        return output_folder()

    def output_path(self, layer) -> str:
        """The chosen GeoPackage, else a new file named after the layer in the output folder."""
        chosen = self.output_widget.filePath().strip()
        if not chosen:
            return referring_output_path(layer.name(), self.output_folder())
        if not chosen.lower().endswith(".gpkg"):
            chosen += ".gpkg"
        folder = os.path.dirname(os.path.abspath(chosen))
        if not os.path.isdir(folder):
            raise InputError(f"Output folder '{folder}' does not exist")
        return chosen

    def build_request(self):
        """Validate the form -> ReferringRequest. Raises DrSegError or MissingDependencies."""
        layer = self.current_layer()
        source = raster_source(layer)
        layer_crs_check(layer)
        text = self.expression()
        if not text:
            raise InputError(f"Type an expression, e.g. '{EXPRESSION_PLACEHOLDER}'")
        extent = self.selected_extent(layer)
        prompter = self.prompter_widget.head()
        shared = self.choices
        run = load_refer_engine()          # last: the cheap checks above need no torch
        run.parse_expressions([text])      # 'no target found' before anything starts
        return run.ReferringRequest(
            raster=source, expressions=[text],
            out_vector=self.output_path(layer),
            extent=extent, max_size=self.max_size_spin.value(),
            bands=shared.bands if shared.layer is layer else None,
            sam_model=self.sam_model_combo.currentText(),
            sam_weights=self.sam_weights_widget.filePath().strip() or None,
            clip_model=shared.clip_model or DEFAULT_CLIP_MODEL,
            clip_weights=shared.clip_weights or DEFAULT_CLIP_WEIGHTS,
            device=shared.device or DEFAULT_DEVICE, **self.engine_rows.request_values(),
            prompter=prompter if self.engine_rows.engine() == "sam" else None)

    # -- running --------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.controls.is_running()

    def run(self) -> Optional[ReferringTask]:
        """Validate and start a run; None (with a message-bar error) when the form is not valid."""
        request = self.controls.checked_request(self.build_request,
                                                "A referring run is already in progress",
                                                (DrSegError, MissingDependencies))
        if request is None:
            return None
        layer = self.current_layer()
        text = request.expressions[0]
        self.remember(text)
        task = ReferringTask(request, self._task_finished, sam=self.sam, clip=self.clip,
                             description=f"DR-Seg: '{layer_title([text], 40)}' in {layer.name()}")
        task.raster_crs = QgsCoordinateReferenceSystem(layer.crs())
        self.controls.start(task)
        self.runStarted.emit(task)
        return task

    def cancel(self) -> None:
        self.controls.cancel()

    def _task_finished(self, task: ReferringTask) -> None:
        """Main thread: add the layer of a successful run and make it the clicks' target."""
        seconds = self.controls.finish(task)
        if task.succeeded:
            try:
                layer = add_referring_layer(task.result)
            except RuntimeError as exc:
                self._message(Qgis.MessageLevel.Critical, str(exc))
            else:
                self.last_layer, self.last_task = layer, task
                target, why = target_from_run(task, layer, task.raster_crs)
                if self.click_tool is not None:
                    self.click_tool.set_target(target)
                    self.undo_button.setEnabled(False)   # undo belongs to the new result
                self.progress_bar.setValue(100)
                report = self.report(task.result, seconds, task.request.engine)
                found = task.result.polygon_count > 0
                self._message(Qgis.MessageLevel.Success if found else Qgis.MessageLevel.Warning,
                              report)
                note = ("Refine it with clicks on the map: 'Refine…'" if target is not None
                        else f"Refining with clicks is not available: {why}")
                if target is not None and getattr(task.session, "click_note", ""):
                    note += f" ({task.session.click_note})"   # e.g. SAM 3 without its tracker
                self.status_label.setText(f"Done: {report}\n{note}")
        else:
            self.controls.show_unsuccessful(task, "Referring run cancelled; no layer or file was "
                                                  "created")
        self.runFinished.emit(task)

    @staticmethod
    def report(result, seconds: float, engine: str = DEFAULT_REFER_ENGINE) -> str:
        """One line per expression: what was found, its time and whether the cache served it."""
        encoders = "SAM 3 encoded it" if engine == "sam3" else "SAM and CLIP encoded it"
        lines = []
        for item in result.expressions:
            t = item.timing
            found = (f"{item.polygon_count} polygon(s), best score {max(item.scores):.2f}"
                     if item.scores else "nothing found")
            source = ("cached: the area's encoders were skipped" if t.cached
                      else f"first query on this area: {encoders}")
            lines.append(f"'{item.expression}': {found}; {t.total:.2f} s ({source})")
        return "; ".join(lines) + f" [{result.width}×{result.height} px on {result.device}, " \
                                  f"{seconds:.1f} s in all]"

    # -- refinement -----------------------------------------------------------------------------
    def set_refining(self, on: bool) -> None:
        """Switch the click tool on (the refine button) or off."""
        canvas = self.canvas()
        if canvas is None or self.click_tool is None:
            return
        if on and canvas.mapTool() is not self.click_tool:
            if self.click_tool.target is None:
                self._message(Qgis.MessageLevel.Info, "Run a referring query first; its result "
                                                      "is what the clicks refine")
            canvas.setMapTool(self.click_tool)
        elif not on and canvas.mapTool() is self.click_tool:
            canvas.unsetMapTool(self.click_tool)

    def _refined(self, task) -> None:
        area = f"{task.area_m2:.0f} m²" if task.geometry is not None else "empty"
        clicks = task.target.clicks.get(task.index, 0)   # the user's clicks, not SAM's prompts
        self.status_label.setText(f"Refined '{task.refined.expression}': {area} "
                                  f"({clicks} click{'s' if clicks != 1 else ''} so far)")
        self.undo_button.setEnabled(self.click_tool.can_undo())

    def undo_refinement(self) -> None:
        """Put back what the last refinement changed."""
        if self.click_tool is None:
            return
        try:
            undone = self.click_tool.undo()
        except RuntimeError as exc:
            self._message(Qgis.MessageLevel.Critical, str(exc))
            return
        if undone:
            self.status_label.setText("The last refinement was undone")
        self.undo_button.setEnabled(self.click_tool.can_undo())

    # -- state ----------------------------------------------------------------------------------
    def _message(self, level, text: str) -> None:
        self.controls.message(level, text)

    def shutdown(self) -> None:
        """Cancel running tasks, end the map tools, drop markers (plugin unload, QGIS exit)."""
        self.controls.shutdown()
        canvas = self.canvas()
        for tool in (self.click_tool, self.extent_tool):
            if canvas is not None and tool is not None and canvas.mapTool() is tool:
                canvas.unsetMapTool(tool)
        if self.click_tool is not None:
            self.click_tool.set_target(None)
        if self.area_band is not None and canvas is not None:
            canvas.scene().removeItem(self.area_band)
            self.area_band = None

