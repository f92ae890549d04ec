"""The DR-Seg dock widget: choose a raster, type classes, Run; the result appears as styled layers.

Everything is validated on the main thread before a task starts, so mistakes (no layer, empty
prompt, a raster that is not a file, an area outside the layer) show as a message-bar error at
once. The run itself is a `qgis_bridge.tasks.SegmentationTask`. What the Referring panel shares
with this form (layer, bands, device, CLIP model and weights) it reads from a `SharedChoices`
object that this form keeps up to date, never from these widgets.
"""
from __future__ import annotations

import os
import time
from typing import List, Optional

from qgis.core import Qgis, QgsRasterLayer
from qgis.gui import (QgsCollapsibleGroupBox, QgsDoubleSpinBox, QgsFileWidget,
                      QgsMapLayerComboBox, QgsRasterBandComboBox)
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDockWidget, QFormLayout, QHBoxLayout,
                                 QLabel, QPlainTextEdit, QPushButton, QScrollArea, QSpinBox,
                                 QTabWidget, QVBoxLayout, QWidget)

from ..core.adapt.catalog import resolve_adapter
from ..core.advice import QGIS, speaking_to
from ..core.classes import parse_classes
from ..core.errors import DrSegError, InputError
from ..core.models.dino import dino_help, resolve_dino_weights
from ..core.models.registry import (CLIP_MODEL_CHOICES, DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS,
                                    DEFAULT_DINO_MODEL, DEFAULT_SAM3_MODEL, DINO_MODEL_CHOICES,
                                    DINO_MODELS, SAM3_ENGINES, SAM3_LICENCE)
from ..core.protocol import BLEND_LABELS, BLENDS, DEFAULT_BLEND
from ..core.settings import LIMITS, Settings, load_settings_or_defaults, resolve_all
from ..qgis_bridge.engine import (DEFAULT_GRAPH_K, DEFAULT_SEMANTIC_RATIO, DEFAULT_THRESHOLD,
                                  MissingDependencies, load_engine, method_label)
from ..qgis_bridge.outputs import default_output_path, output_folder
from ..qgis_bridge.results import add_result_layers, is_result
from ..qgis_bridge.sources import extent_in_layer_crs, layer_crs_check, raster_source
from ..qgis_bridge.tasks import LOG_TAG, SegmentationTask
from .adapter_field import AdapterField
from .choices import SharedChoices
from .combos import raster_layer_filter, select_device
from .refer_panel import ReferringPanel
from . import remembered
from .run_controls import RunControls

TITLE = "DR-Seg"
CLASS_PLACEHOLDER = "building,roof; road,street; tree,forest; water"
AREA_LAYER, AREA_CANVAS = "layer", "canvas"
DEVICE_LABELS = (("auto", "Auto (GPU if available)"), ("cpu", "CPU"), ("cuda", "CUDA GPU"),
                 ("mps", "Apple GPU (MPS)"))
METHOD_DRSEG, METHOD_CLIP = "drseg", "clip"
METHOD_ITEMS = ((METHOD_DRSEG, "DR-Seg (CLIP + DINO)"), (METHOD_CLIP, "Dense CLIP"))
# SegmentationRequest.engine values; None: the CLIP engine of the Method combo
ENGINE_ITEMS = ((None, "CLIP engine (Method)"), ("sam3", "SAM 3"),
                ("hybrid", "Hybrid: SAM 3 + CLIP engine"))


# An empty result is a warning with what to try.
EMPTY_RESULT_HINT = ("No pixel reached the threshold ({threshold:.2f}) for any class: lower the "
                     "threshold, or check the class names (synonyms after a comma help)")


def result_layer_name(raster: str, classes, stamp: str, limit: int = 48) -> str:
    """A result layer's legend name: raster, classes and time, e.g. 'ortho: building, road
    (14:02:11)' (the class list shortened to `limit` characters)."""
    names = ", ".join(getattr(c, "name", c) for c in classes)
    if len(names) > limit:
        names = names[:limit - 1] + "…"
    return f"{raster}: {names} ({stamp})"


class DrSegDock(QDockWidget):
    """Dock widget of the plugin. `iface` is the QGIS interface (or pytest-qgis's stub)."""

    runStarted = pyqtSignal(object)    # the SegmentationTask
    runFinished = pyqtSignal(object)   # the SegmentationTask, after layers were added / errors shown
    settingsRequested = pyqtSignal()   # the 'Settings…' button: the plugin opens the dialog

    def __init__(self, iface, parent=None):
        super().__init__(TITLE, parent)
        self.setObjectName("DrSegDock")
        self.iface = iface
        self.last_layers = (None, None)
        self.scorer = None            # an engine window scorer to use instead of loading models
        self.dino_path: Optional[str] = None   # the DINO checkpoint DR-Seg would use now
        self.dino_problem = ""        # why there is none, for the note and the error
        self._method_chosen = False   # the user picked a method: stop choosing it for them
        self.settings, self.settings_problem = load_settings_or_defaults()
        self.choices = SharedChoices(parent=self)   # what the Referring panel takes from this form
        self._build()
        self._layer_changed(self.layer_combo.currentLayer())
        self.apply_settings(self.settings)
        self.restore_state()
        self.prefer_input_layer()
        if self.settings_problem:
            self.status_label.setText(self.settings_problem + " — the defaults are used")
            self._message(Qgis.MessageLevel.Warning, self.settings_problem + " — the defaults are used")

    # -- widgets --------------------------------------------------------------------------------
    def _build(self) -> None:
        body = QWidget(self)
        outer = QVBoxLayout(body)
        form = QFormLayout()
        outer.addLayout(form)

        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(raster_layer_filter())
        self.layer_combo.layerChanged.connect(self._layer_changed)
        form.addRow("Raster layer", self.layer_combo)

        bands = QHBoxLayout()
        self.band_combos = []
        for label in ("R", "G", "B"):
            combo = QgsRasterBandComboBox(body)
            combo.setShowNotSetOption(label != "R", "none")
            combo.setToolTip("Red, green and blue bands; leave green and blue at 'none' to use "
                             "one band as grey")
            bands.addWidget(QLabel(label, body))
            bands.addWidget(combo, 1)
            self.band_combos.append(combo)
        form.addRow("Bands", bands)

        self.classes_edit = QPlainTextEdit(body)
        self.classes_edit.setPlaceholderText(CLASS_PLACEHOLDER)
        self.classes_edit.setToolTip("Classes separated by ';', synonyms of one class by ','. "
                                     "Pixels no class is sure about become background.")
        self.classes_edit.setMaximumHeight(70)
        form.addRow("Classes", self.classes_edit)

        self.area_combo = QComboBox(body)
        self.area_combo.addItem("Whole layer", AREA_LAYER)
        self.area_combo.addItem("Current map canvas extent", AREA_CANVAS)
        form.addRow("Area", self.area_combo)

        self.resolution_spin = QgsDoubleSpinBox(body)
        self.resolution_spin.setRange(0.0, 100000.0)
        self.resolution_spin.setDecimals(3)
        self.resolution_spin.setSingleStep(0.1)
        self.resolution_spin.setSpecialValueText("Native")
        self.resolution_spin.setSuffix(" m/pixel")
        self.resolution_spin.setClearValue(0.0)
        self.resolution_spin.setShowClearButton(True)
        self.resolution_spin.setToolTip("Working resolution in metres per pixel; 'Native' keeps the "
                                        "raster's own resolution")
        form.addRow("Resolution", self.resolution_spin)

        self.device_combo = QComboBox(body)
        for value, label in DEVICE_LABELS:
            self.device_combo.addItem(label, value)
        form.addRow("Device", self.device_combo)

        self.threshold_spin = QgsDoubleSpinBox(body)
        self.threshold_spin.setRange(0.0, 0.99)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setClearValue(DEFAULT_THRESHOLD)
        self.threshold_spin.setToolTip("Pixels whose most likely class is below this probability "
                                       "become background")
        form.addRow("Threshold", self.threshold_spin)

        self.method_combo = QComboBox(body)
        for value, label in METHOD_ITEMS:
            self.method_combo.addItem(label, value)
        self.method_combo.setToolTip("DR-Seg sharpens dense CLIP's class map with DINO's image "
                                     "structure (needs DINO weights); dense CLIP alone is faster "
                                     "and blurrier at boundaries")
        self.method_combo.activated.connect(self._method_picked)
        self.method_combo.currentIndexChanged.connect(self._update_method_widgets)
        form.addRow("Method", self.method_combo)
        self.method_note = QLabel("", body)
        self.method_note.setObjectName("drsegMethodNote")
        self.method_note.setWordWrap(True)
        self.method_note.setVisible(False)
        form.addRow(self.method_note)

        self.engine_combo = QComboBox(body)
        for value, label in ENGINE_ITEMS:
            self.engine_combo.addItem(label, value)
        self.engine_combo.setToolTip(
            "SAM 3 finds every instance of each class (best on countable objects; slow without a "
            "GPU); Hybrid fuses it per pixel with the CLIP engine, which fills in land cover SAM 3 "
            f"misses. SAM 3 weights are gated ({SAM3_LICENCE}): import them with "
            "'python -m drseg models import sam3 FILE' or choose the file below")
        self.engine_combo.currentIndexChanged.connect(self._update_engine_widgets)
        form.addRow("Engine", self.engine_combo)
        self.sam3_weights_widget = QgsFileWidget(body)
        self.sam3_weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.sam3_weights_widget.setFilter("safetensors (*.safetensors)")
        self.sam3_weights_widget.lineEdit().setPlaceholderText("[The imported 'sam3' checkpoint]")
        self.sam3_weights_label = QLabel("SAM 3 weights", body)
        form.addRow(self.sam3_weights_label, self.sam3_weights_widget)
        self.sam3_model = DEFAULT_SAM3_MODEL  # an architecture or config.json (tests: tiny)
        self._update_engine_widgets()

        self.output_widget = QgsFileWidget(body)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setFilter("GeoPackage (*.gpkg)")
        self.output_widget.setConfirmOverwrite(True)
        self.output_widget.lineEdit().setPlaceholderText("[Automatic: project or temporary folder]")
        form.addRow("Polygons", self.output_widget)

        self.raster_check = QCheckBox("Also write a class raster", body)
        self.raster_check.setToolTip("A GeoTIFF on the input's grid: 0 background, 1..K classes")
        self.raster_widget = QgsFileWidget(body)
        self.raster_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.raster_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.raster_widget.lineEdit().setPlaceholderText("[Automatic: beside the GeoPackage]")
        self.raster_widget.setEnabled(False)
        self.raster_check.toggled.connect(self.raster_widget.setEnabled)
        form.addRow(self.raster_check)
        form.addRow("Class raster", self.raster_widget)

        self.probabilities_check = QCheckBox("Also write class probabilities", body)
        self.probabilities_check.setToolTip("A float32 GeoTIFF on the input's grid, one band per "
                                            "class named after it: the probabilities before the "
                                            "threshold")
        self.probabilities_widget = QgsFileWidget(body)
        self.probabilities_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.probabilities_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.probabilities_widget.lineEdit().setPlaceholderText(
            "[Automatic: beside the GeoPackage]")
        self.probabilities_widget.setEnabled(False)
        self.probabilities_check.toggled.connect(self.probabilities_widget.setEnabled)
        form.addRow(self.probabilities_check)
        form.addRow("Probabilities", self.probabilities_widget)

        advanced = QgsCollapsibleGroupBox("Model", body)
        advanced.setCollapsed(True)
        adv = QFormLayout(advanced)
        self.clip_model_combo = QComboBox(advanced)
        self.clip_model_combo.setEditable(True)
        self.clip_model_combo.addItems(CLIP_MODEL_CHOICES)
        self.clip_model_combo.setCurrentText(DEFAULT_CLIP_MODEL)
        self.clip_model_combo.setToolTip("open_clip architecture name, or an open_clip model "
                                         "config (.json)")
        adv.addRow("CLIP model", self.clip_model_combo)
        self.clip_weights_widget = QgsFileWidget(advanced)
        self.clip_weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.clip_weights_widget.setFilePath(DEFAULT_CLIP_WEIGHTS)
        self.clip_weights_widget.setToolTip(f"open_clip pretrained tag (e.g. '{DEFAULT_CLIP_WEIGHTS}', downloaded on "
                                            "first use) or a local checkpoint file")
        adv.addRow("CLIP weights", self.clip_weights_widget)
        self.adapter_field = AdapterField(
            advanced, lambda: self.settings.effective_cache_dir(), self.adapt_parameters,
            lambda text: self._message(Qgis.MessageLevel.Critical, text))
        adv.addRow("Adapter", self.adapter_field)
        self.dino_model_combo = QComboBox(advanced)
        self.dino_model_combo.addItems(DINO_MODEL_CHOICES)
        self.dino_model_combo.setCurrentText(DEFAULT_DINO_MODEL)
        self.dino_model_combo.setToolTip("DINO backbone whose features guide DR-Seg's rectification")
        self.dino_model_combo.currentIndexChanged.connect(self._dino_model_changed)
        adv.addRow("DINO model", self.dino_model_combo)
        self.dino_weights_widget = QgsFileWidget(advanced)
        self.dino_weights_widget.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.dino_weights_widget.setFilter("Checkpoints (*.pth *.pt *.bin *.safetensors *.ckpt);;"
                                           "All files (*)")
        self.dino_weights_widget.setToolTip("A DINO checkpoint file, or a catalog name such as "
                                            "'rs-dino-vit-b8' (downloaded in the settings); empty: "
                                            "the catalog default of the DINO model")
        self.dino_weights_widget.fileChanged.connect(lambda _path: self.refresh_dino_state())
        adv.addRow("DINO weights", self.dino_weights_widget)
        self.window_spin = QSpinBox(advanced)
        self.window_spin.setRange(*LIMITS["window"])
        self.window_spin.setSuffix(" px")
        self.window_spin.setToolTip("Size of the square windows the models see, in working pixels")
        adv.addRow("Window", self.window_spin)
        self.stride_spin = QSpinBox(advanced)
        self.stride_spin.setRange(*LIMITS["stride"])
        self.stride_spin.setSuffix(" px")
        self.stride_spin.setToolTip("Step between windows; smaller than the window, windows "
                                    "overlap and are blended (no seams)")
        adv.addRow("Stride", self.stride_spin)
        self.blend_combo = QComboBox(advanced)
        for value in BLENDS:
            self.blend_combo.addItem(BLEND_LABELS[value], value)
        self.blend_combo.setCurrentIndex(BLENDS.index(DEFAULT_BLEND))
        self.blend_combo.setToolTip("How overlapping windows combine: smooth weights hide window "
                                    "seams; the mean is the benchmark protocol's")
        adv.addRow("Blend", self.blend_combo)
        self.simplify_spin = QgsDoubleSpinBox(advanced)
        self.simplify_spin.setRange(0.0, 100.0)
        self.simplify_spin.setSuffix(" px")
        adv.addRow("Simplify", self.simplify_spin)
        self.min_area_spin = QgsDoubleSpinBox(advanced)
        self.min_area_spin.setRange(0.0, 1e9)
        self.min_area_spin.setSuffix(" m²")
        adv.addRow("Minimum area", self.min_area_spin)
        self.settings_button = QPushButton("Settings and downloads…", advanced)
        self.settings_button.setToolTip("Default models, device, tiling, model cache; download "
                                        "CLIP, DINO and SAM weights")
        self.settings_button.clicked.connect(self.settingsRequested.emit)
        adv.addRow(self.settings_button)
        outer.addWidget(advanced)

        modules = QgsCollapsibleGroupBox("DR-Seg modules", body)
        modules.setCollapsed(True)
        self.drseg_group = modules
        mod = QFormLayout(modules)
        self.semantic_ratio_spin = QgsDoubleSpinBox(modules)
        self.semantic_ratio_spin.setRange(0.0, 1.0)
        self.semantic_ratio_spin.setDecimals(2)
        self.semantic_ratio_spin.setSingleStep(0.05)
        self.semantic_ratio_spin.setValue(DEFAULT_SEMANTIC_RATIO)
        self.semantic_ratio_spin.setClearValue(DEFAULT_SEMANTIC_RATIO)
        self.semantic_ratio_spin.setToolTip("Share of CLIP's feature channels kept as semantic "
                                            "(untouched); the rest is rectified with DINO (ρ)")
        mod.addRow("Semantic ratio", self.semantic_ratio_spin)
        self.graph_k_spin = QSpinBox(modules)
        self.graph_k_spin.setRange(1, 64)
        self.graph_k_spin.setValue(DEFAULT_GRAPH_K)
        self.graph_k_spin.setToolTip("Neighbours of each image patch in the DINO similarity graph")
        mod.addRow("Graph k", self.graph_k_spin)
        self.decouple_check = QCheckBox("Decouple channels", modules)
        self.decouple_check.setToolTip("Rectify only CLIP's structure channels and keep its "
                                       "semantic channels as they are (off: rectify all channels)")
        self.rectify_check = QCheckBox("Graph rectification", modules)
        self.rectify_check.setToolTip("Propagate the structure channels over the DINO "
                                      "nearest-neighbour graph of the image patches")
        self.fusion_check = QCheckBox("Uncertainty fusion", modules)
        self.fusion_check.setToolTip("Per pixel, weight plain and rectified CLIP by how sure each "
                                     "is (off: the rectified branch alone)")
        for check in (self.decouple_check, self.rectify_check, self.fusion_check):
            check.setChecked(True)
            mod.addRow(check)
        outer.addWidget(modules)

        self.controls = RunControls(self.iface, TITLE, body, self.run)
        self.controls.add_to(outer)
        self.run_button, self.cancel_button = self.controls.run_button, self.controls.cancel_button
        self.progress_bar, self.status_label = self.controls.progress_bar, self.controls.status_label

        for combo in body.findChildren(QComboBox):  # long entries must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(2 if combo in self.band_combos else 8)

        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        # Wide enough for the form (no clipped Cancel or band boxes) when the dock opens.
        scroll.setMinimumWidth(body.minimumSizeHint().width()
                               + scroll.verticalScrollBar().sizeHint().width()
                               + 2 * scroll.frameWidth())
        # Two modes: "Classes" (the form above) and "Referring" (ui/refer_panel.py, issue 4).
        self.refer_panel = ReferringPanel(self.iface, self.choices, self)
        self.refer_panel.runStarted.connect(lambda _task: self.save_state())
        for combo in self.band_combos:
            combo.bandChanged.connect(self._share_choices)
        self.device_combo.currentIndexChanged.connect(self._share_choices)
        self.clip_model_combo.currentTextChanged.connect(self._share_choices)
        self.clip_weights_widget.fileChanged.connect(self._share_choices)
        self.modes = QTabWidget(self)
        self.modes.addTab(scroll, "Classes")
        self.modes.addTab(self.refer_panel, "Referring")
        self.setWidget(self.modes)

    def prefer_input_layer(self) -> None:
        """Offer the active layer when it is a raster to segment, else the first raster that is
        not a DR-Seg result (a class raster of an earlier run is no input)."""
        current = self.layer_combo.currentLayer()
        active = self.iface.activeLayer() if self.iface is not None else None
        if isinstance(active, QgsRasterLayer) and not is_result(active):
            self.layer_combo.setLayer(active)
            return
        if isinstance(current, QgsRasterLayer) and not is_result(current):
            return
        for index in range(self.layer_combo.count()):
            layer = self.layer_combo.layer(index)
            if isinstance(layer, QgsRasterLayer) and not is_result(layer):
                self.layer_combo.setLayer(layer)
                return

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if not self.is_running():
            self.prefer_input_layer()
        super().showEvent(event)

    def _layer_changed(self, layer) -> None:
        for combo in self.band_combos:
            combo.setLayer(layer if isinstance(layer, QgsRasterLayer) else None)
        if isinstance(layer, QgsRasterLayer) and layer.isValid():
            red, green, blue = self.default_bands(layer)
            self.band_combos[0].setBand(red)
            self.band_combos[1].setBand(green)
            self.band_combos[2].setBand(blue)
        self._share_choices()

    def _share_choices(self, *_args) -> None:
        """Write what the Referring panel shares with this form into `self.choices`."""
        choices = self.choices
        try:
            choices.bands = self.selected_bands()
        except InputError:       # bands not chosen: the engine's RGB default
            choices.bands = None
        choices.device = self.device_combo.currentData() or "auto"
        choices.clip_model = self.clip_model_combo.currentText().strip() or DEFAULT_CLIP_MODEL
        choices.clip_weights = self.clip_weights_widget.filePath().strip() or DEFAULT_CLIP_WEIGHTS
        choices.set_layer(self.layer_combo.currentLayer())

    @staticmethod
    def default_bands(layer) -> tuple:
        """(red, green, blue) band numbers, -1 for 'none': colour interpretation, else 1,2,3, else grey."""
        provider = layer.dataProvider()
        count = layer.bandCount()
        names = {provider.colorInterpretationName(b).lower(): b for b in range(1, count + 1)}
        if all(c in names for c in ("red", "green", "blue")):
            return names["red"], names["green"], names["blue"]
        if count >= 3:
            return 1, 2, 3
        return 1, -1, -1

    # -- method ---------------------------------------------------------------------------------
    def method(self) -> str:
        return self.method_combo.currentData()

    def set_method(self, method: str) -> None:
        self.method_combo.setCurrentIndex(self.method_combo.findData(method))

    def _method_picked(self, _index: int) -> None:
        self._method_chosen = True  # a user's choice stays, whatever the DINO weights do
        self.refresh_dino_state()

    def _dino_model_changed(self, _index: int) -> None:
        # The catalog default of the previous model follows the model; a user's file stays.
        text = self.dino_weights_widget.filePath().strip()
        if text.lower() in {arch.catalog_name.lower() for arch in DINO_MODELS.values()}:
            self.dino_weights_widget.setFilePath(
                DINO_MODELS[self.dino_model_combo.currentText()].catalog_name)
        self.refresh_dino_state()

    def adapt_parameters(self) -> dict:
        """drseg:adaptmodel's starting values from this form (ui/adapter_field.py)."""
        parameters = {"CLIP_MODEL": self.clip_model_combo.currentText().strip() or DEFAULT_CLIP_MODEL,
                      "CLIP_WEIGHTS": self.clip_weights_widget.filePath().strip() or DEFAULT_CLIP_WEIGHTS}
        if self.layer_combo.currentLayer() is not None:
            parameters["INPUT"] = self.layer_combo.currentLayer()
        return parameters

    def dino_cache_dir(self) -> Optional[str]:
        return self.settings.effective_cache_dir()  # DRSEG_CACHE_DIR wins over the setting

    # -- settings -------------------------------------------------------------------------------
    def apply_settings(self, settings: Settings) -> None:
        """Take the shared settings (core/settings.py) as the form's models, device and tiling.

        A field the user changed from the previous settings' value keeps the user's value (saving
        the settings dialog must not wipe weights typed here)."""
        previous, self.settings = getattr(self, "_applied", None), settings
        self._applied = settings

        def follows(current, name) -> bool:
            return previous is None or str(current).strip() == str(getattr(previous, name)).strip()

        if follows(self.clip_model_combo.currentText(), "clip_model"):
            self.clip_model_combo.setCurrentText(settings.clip_model)
        if follows(self.clip_weights_widget.filePath(), "clip_weights"):
            self.clip_weights_widget.setFilePath(settings.clip_weights)
        if follows(self.dino_model_combo.currentText(), "dino_model") and \
                follows(self.dino_weights_widget.filePath(), "dino_weights"):
            self.dino_model_combo.blockSignals(True)  # the weights below belong to this model
            index = self.dino_model_combo.findText(settings.dino_model)
            self.dino_model_combo.setCurrentIndex(max(index, 0))
            self.dino_model_combo.blockSignals(False)
            self.dino_weights_widget.setFilePath(settings.dino_weights)
        if follows(self.device_combo.currentData(), "device"):
            select_device(self.device_combo, settings.device)
        if follows(self.window_spin.value(), "window"):
            self.window_spin.setValue(settings.window)
        if follows(self.stride_spin.value(), "stride"):
            self.stride_spin.setValue(settings.stride)
        self.refresh_dino_state()
        self.adapter_field.refresh()                          # another model cache folder
        self.refer_panel.apply_settings(settings, previous)  # SAM model and weights

    # -- remembered between sessions ---------------------------------------------------------------
    def restore_state(self) -> None:
        """The classes, threshold and weights of the last session (ui/remembered.py)."""
        state = remembered.load_state()
        if isinstance(state.get("classes"), str):
            self.classes_edit.setPlainText(state["classes"])
        if isinstance(state.get("threshold"), (int, float)):
            self.threshold_spin.setValue(float(state["threshold"]))
        if isinstance(state.get("clip_weights"), str) and state["clip_weights"].strip():
            self.clip_weights_widget.setFilePath(state["clip_weights"])
        if isinstance(state.get("sam_weights"), str):
            self.refer_panel.sam_weights_widget.setFilePath(state["sam_weights"])
        if isinstance(state.get("adapter"), str):
            self.adapter_field.set_value(state["adapter"])
        self.refer_panel.engine_rows.restore(state)

    def save_state(self) -> None:
        remembered.save_state({"classes": self.classes_edit.toPlainText(),
                               "threshold": self.threshold_spin.value(),
                               "clip_weights": self.clip_weights_widget.filePath().strip(),
                               "sam_weights": self.refer_panel.sam_weights_widget.filePath().strip(),
                               "adapter": self.adapter_field.value(),
                               **self.refer_panel.engine_rows.state()})

    def refresh_dino_state(self) -> None:
        """Find the DINO weights now (a few file checks, no torch); pick the method unless the
        user has; say in the note why DR-Seg cannot run."""
        model = self.dino_model_combo.currentText()
        try:
            with speaking_to(QGIS):  # its advice names the settings dialog, not commands
                self.dino_path = resolve_dino_weights(model, self.dino_weights_widget.filePath(),
                                                      self.dino_cache_dir())
            self.dino_problem = "" if self.dino_path else f"No DINO weights are set up for {model}"
        except DrSegError as exc:
            self.dino_path, self.dino_problem = None, str(exc).rstrip(".")
        if not self._method_chosen:
            self.set_method(METHOD_DRSEG if self.dino_path else METHOD_CLIP)
        self._update_method_widgets()

    def engine(self) -> Optional[str]:
        return self.engine_combo.currentData()

    def _update_engine_widgets(self, *_args) -> None:
        uses_sam3 = self.engine() in SAM3_ENGINES
        self.sam3_weights_widget.setVisible(uses_sam3)
        self.sam3_weights_label.setVisible(uses_sam3)

    def _update_method_widgets(self, *_args) -> None:
        drseg = self.method() == METHOD_DRSEG
        self.drseg_group.setEnabled(drseg)
        note = ""
        if self.dino_path is None and drseg:
            note = (f"⚠ DR-Seg cannot run: {self.dino_problem}. To use it, "
                    f"{dino_help(self.dino_model_combo.currentText())}; or choose Dense CLIP.")
        elif self.dino_path is None:
            note = (f"{self.dino_problem}, so plain dense CLIP is used (blurrier boundaries). "
                    f"For DR-Seg, {dino_help(self.dino_model_combo.currentText())}.")
        self.method_note.setText(note)
        self.method_note.setVisible(bool(note))
        self.method_combo.setToolTip(f"DINO weights: {self.dino_path}" if self.dino_path else
                                     "DR-Seg needs DINO weights; dense CLIP does not")

    def showEvent(self, event):  # noqa: N802 (Qt's name)
        self.refresh_dino_state()  # weights may have been downloaded meanwhile
        super().showEvent(event)

    # -- state ----------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.controls.is_running()

    def _message(self, level, text: str) -> None:
        self.controls.message(level, text)

    # -- building the request -------------------------------------------------------------------
    def selected_bands(self) -> List[int]:
        red, green, blue = (combo.currentBand() for combo in self.band_combos)
        if red < 1:
            raise InputError("Choose the band to read as red (or the single grey band)")
        if (green < 1) != (blue < 1):
            raise InputError("Choose both a green and a blue band, or neither to read the red band "
                             "alone as grey")
        return [red] if green < 1 else [red, green, blue]

    def selected_extent(self, layer) -> Optional[tuple]:
        if self.area_combo.currentData() != AREA_CANVAS:
            return None
        canvas = self.iface.mapCanvas()
        return extent_in_layer_crs(canvas.extent(), canvas.mapSettings().destinationCrs(), layer)

    def output_folder(self) -> str:
        return output_folder()

    def output_paths(self, layer) -> tuple:
        vector = self.output_widget.filePath().strip()
        if not vector:
            vector = default_output_path(layer.name(), self.output_folder())
        elif not vector.lower().endswith(".gpkg"):
            vector += ".gpkg"
        folder = os.path.dirname(os.path.abspath(vector))
        if not os.path.isdir(folder):
            raise InputError(f"Output folder '{folder}' does not exist")
        raster = None
        if self.raster_check.isChecked():
            raster = self.raster_widget.filePath().strip() or os.path.splitext(vector)[0] + ".tif"
            if not raster.lower().endswith((".tif", ".tiff")):
                raster += ".tif"
            if not os.path.isdir(os.path.dirname(os.path.abspath(raster))):
                raise InputError(f"Output folder of '{raster}' does not exist")
        return vector, raster

    def probabilities_path(self, vector: str) -> Optional[str]:
        """The class-probability GeoTIFF asked for, or None."""
        if not self.probabilities_check.isChecked():
            return None
        path = (self.probabilities_widget.filePath().strip()
                or os.path.splitext(vector)[0] + "_probabilities.tif")
        if not path.lower().endswith((".tif", ".tiff")):
            path += ".tif"
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"Output folder of '{path}' does not exist")
        return path

    def build_request(self):
        """Validate the form -> SegmentationRequest. Raises InputError or MissingDependencies."""
        layer = self.layer_combo.currentLayer()
        source = raster_source(layer)
        layer_crs_check(layer)
        text = self.classes_edit.toPlainText().strip()
        parse_classes(text)  # an empty or duplicated prompt stops here, before any task
        bands = self.selected_bands()
        extent = self.selected_extent(layer)
        vector, raster = self.output_paths(layer)
        probabilities = self.probabilities_path(vector)
        window, stride = self.window_spin.value(), self.stride_spin.value()
        if stride > window:
            raise InputError(f"The stride ({stride} px) must not be larger than the window "
                             f"({window} px): windows would leave gaps")
        clip_model = self.clip_model_combo.currentText().strip() or DEFAULT_CLIP_MODEL
        clip_weights = self.clip_weights_widget.filePath().strip() or DEFAULT_CLIP_WEIGHTS
        method, dino_model = self.method(), self.dino_model_combo.currentText()
        dino_weights = None
        engine = self.engine()
        if method == METHOD_DRSEG and engine != "sam3":
            self.refresh_dino_state()
            if self.dino_path is None:
                raise InputError(f"DR-Seg needs DINO weights: {self.dino_problem}. "
                                 f"{dino_help(dino_model).capitalize()}, or choose the Dense CLIP "
                                 "method")
            dino_weights = self.dino_path
        adapter = self.adapter_field.value() or None
        if adapter:   # a name or file that is not there stops here (headers only, no torch)
            resolve_adapter(adapter, self.settings.effective_cache_dir())
        segment = load_engine()  # last: the cheap checks above need no torch
        table = os.path.splitext(os.path.basename(vector))[0]
        return segment.SegmentationRequest(
            raster=source, classes=text, out_vector=vector, out_raster=raster, bands=bands,
            out_probabilities=probabilities, blend=self.blend_combo.currentData(),
            extent=extent, resolution=self.resolution_spin.value() or None,
            threshold=self.threshold_spin.value(), clip_model=clip_model, clip_weights=clip_weights,
            method=method, dino_model=dino_model, dino_weights=dino_weights,
            engine=engine, sam3_model=self.sam3_model,
            sam3_weights=self.sam3_weights_widget.filePath().strip() or None,
            semantic_ratio=self.semantic_ratio_spin.value(), graph_k=self.graph_k_spin.value(),
            decouple=self.decouple_check.isChecked(), rectify=self.rectify_check.isChecked(),
            fusion=self.fusion_check.isChecked(),
            device=self.device_combo.currentData(), window=window, stride=stride,
            block=self.settings.block, batch_size=self.settings.batch_size,
            fast=self.settings.fast, simplify=self.simplify_spin.value(),
            min_area=self.min_area_spin.value(), adapter=adapter,
            layer_name=table)

    # -- running --------------------------------------------------------------------------------
    def run(self) -> Optional[SegmentationTask]:
        """Validate and start a run; None (with a message-bar error) when the form is not valid."""
        request = self.controls.checked_request(self.build_request, "A run is already in progress",
                                                (InputError, MissingDependencies))
        if request is None:
            return None
        self.save_state()
        self.log_settings(request)
        layer = self.layer_combo.currentLayer()
        task = SegmentationTask(request, self._task_finished, scorer=self.scorer,
                                description=f"DR-Seg: segmenting {layer.name()}")
        stamp = time.strftime('%H:%M:%S')
        task.group_name = f"DR-Seg: {layer.name()} {stamp}"
        task.display_name = result_layer_name(layer.name(), parse_classes(request.classes), stamp)
        task.fallback_note = self.fallback_note()
        self.controls.start(task)
        self.runStarted.emit(task)
        return task

    def cancel(self) -> None:
        self.controls.cancel()

    def log_settings(self, request) -> None:
        """Say in the DR-Seg log where each model, device and tiling value came from: the form
        (changed here), or, left as the form took it, the saved settings or the default."""
        from qgis.core import QgsMessageLog

        told = {name: None if getattr(request, name) == getattr(self.settings, name)
                else getattr(request, name)
                for name in ("clip_model", "clip_weights", "device", "window", "stride")}
        told.update(block=None, batch_size=None, fast=None, cache_dir=None)
        for line in resolve_all(told, self.settings).describe(told_as="this form"):
            QgsMessageLog.logMessage(f"Setting {line}", LOG_TAG, Qgis.MessageLevel.Info)

    def _task_finished(self, task: SegmentationTask) -> None:
        """Main thread: add the layers of a successful run, or report why there are none."""
        seconds = self.controls.finish(task)
        self.last_layers = (None, None)
        if task.succeeded:
            result = task.result
            try:
                self.last_layers = add_result_layers(result, group_name=task.group_name,
                                                     display_name=task.display_name)
            except RuntimeError as exc:
                self._message(Qgis.MessageLevel.Critical, str(exc))
            else:
                text = (f"{result.polygon_count} polygons, {result.width}×{result.height} px, "
                        f"{method_label(result.method)} on {result.device} in {seconds:.1f} s")
                note = getattr(result, "note", "") or getattr(task, "fallback_note", "")
                note = note.strip().rstrip(".")
                if note:
                    text += f". {note}"
                self.progress_bar.setValue(100)
                reason = getattr(result, "device_reason", "")
                self.status_label.setText(f"Done: {text}" + (f"\nDevice: {reason}" if reason else ""))
                if result.vector_path and not result.polygon_count:
                    self._message(Qgis.MessageLevel.Warning, f"Segmentation found nothing: {text}. "
                                  + EMPTY_RESULT_HINT.format(threshold=self.threshold_spin.value()))
                else:
                    self._message(Qgis.MessageLevel.Success, f"Segmentation done: {text}")
                warnings = list(getattr(result, "warnings", None) or [])
                if warnings:
                    self._message(Qgis.MessageLevel.Warning,
                                  f"GPU memory was short: the window batch was reduced "
                                  f"{len(warnings)}× ({warnings[-1]}); a smaller batch size in "
                                  "the settings avoids the retries")
        else:
            self.controls.show_unsuccessful(task, "Run cancelled; no layer or file was created")
        self.runFinished.emit(task)

    def fallback_note(self) -> str:
        """Why this run uses plain dense CLIP, when that was not the user's choice ('' otherwise)."""
        if self.method() != METHOD_CLIP or self.dino_path is not None or self._method_chosen:
            return ""
        problem = self.dino_problem[:1].lower() + self.dino_problem[1:]
        return f"Plain dense CLIP: {problem}, so DR-Seg's structure rectification was skipped"

    def shutdown(self) -> None:
        """Cancel running tasks and detach them from this widget (plugin unload, QGIS exit)."""
        self.save_state()
        self.controls.shutdown()
        self.refer_panel.shutdown()
