"""The DR-Seg settings dialog: model cache and mirror, default models, device, tiling; and a
'Download models…' section listing the catalog with what is in the cache.

Values are checked before saving (each problem is shown; nothing is saved until all are fixed) and
written to the same JSON file the command line and Processing read (core/settings.py). Downloads
and imports run as a `qgis_bridge.tasks.ModelTransferTask`, so QGIS stays responsive; a transfer
can be cancelled and resumes later where it stopped. The device is described by a
`DeviceCheckTask` for the same reason: the first description imports torch (seconds).
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QDialog,
                                 QDialogButtonBox, QFileDialog, QFormLayout, QFrame, QGroupBox,
                                 QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
                                 QScrollArea, QSpinBox, QTreeWidget, QTreeWidgetItem, QVBoxLayout,
                                 QWidget)

from ..core import disk_cache
from ..core import settings as core_settings
from ..core.errors import DrSegError, InputError
from ..core.models import download
from ..core.models.catalog import list_models
from ..core.models.registry import CLIP_MODEL_CHOICES, DEFAULT_CLIP_WEIGHTS, DINO_MODEL_CHOICES, SAM_MODELS
from ..core.protocol import fast_stride
from ..core.settings import Settings
from ..qgis_bridge import tasks as bridge_tasks
from ..qgis_bridge.engine import MissingDependencies, import_model_libraries
from ..qgis_bridge.tasks import DeviceCheckTask, ModelTransferTask
from .combos import select_device

DEVICE_LABELS = (("auto", "Auto: CUDA GPU, else Apple GPU, else CPU"), ("cpu", "CPU"),
                 ("cuda", "CUDA GPU"), ("mps", "Apple GPU (MPS)"))
CHECKING_DEVICE = "Checking the device…"
STATE_DOWNLOADED, STATE_MISSING, STATE_PARTIAL = "downloaded", "not downloaded", "partly downloaded"
MODEL_COLUMNS = ("Model", "Family", "Size", "State", "Good for")
COLUMN_STATE = 3


def describe_device(name: str) -> str:
    """Worker thread: what `name` resolves to on this machine, in words. The first call imports
    torch (seconds), the way a run does: without stopping QGIS's event loop."""
    try:
        import_model_libraries(("torch",))  # triton kept out, GC paused, libraries GIL-free
        from ..core.device import describe_device_choice
    except MissingDependencies as exc:
        return f"Cannot check devices: {exc}"
    except Exception as exc:  # torch present but broken
        return f"Cannot check devices: torch is not usable ({type(exc).__name__}: {exc})"
    try:
        return describe_device_choice(name)[1]
    except DrSegError as exc:
        return str(exc)


PREFERRED_WIDTH, PREFERRED_HEIGHT = 720, 860
MIN_HEIGHT = 320          # the dialog may be this short: the form scrolls
SCREEN_MARGIN = 80        # room for the title bar and the desktop's panels


class SettingsDialog(QDialog):
    """path: the settings file (default: core.settings.config_path()). settings: start from these
    instead of the file. device_describer(name) -> text (default: describe_device), called in a
    background task: the first description imports torch, which must not freeze QGIS."""

    settingsSaved = pyqtSignal(object)          # the saved Settings
    transferFinished = pyqtSignal(object)       # the ModelTransferTask
    deviceDescribed = pyqtSignal(str)           # the device text, once shown

    def __init__(self, parent=None, path: Optional[str] = None, settings: Optional[Settings] = None,
                 device_describer: Optional[Callable[[str], str]] = None):
        super().__init__(parent)
        self.setObjectName("DrSegSettingsDialog")
        self.setWindowTitle("DR-Seg settings")
        self.path = path or core_settings.config_path()
        self.load_problem = None
        if settings is None:
            settings, self.load_problem = core_settings.load_settings_or_defaults(self.path)
        self._extra = dict(settings.extra)
        self.device_describer = device_describer or describe_device
        self.task: Optional[ModelTransferTask] = None
        self.device_task: Optional[DeviceCheckTask] = None
        self._build()
        self.set_settings(settings)
        if self.load_problem:
            self._show_problems([self.load_problem + " — the defaults are shown; Save replaces the file"])
        self.detect_device()  # in the background: shown when known

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        content = QWidget(self)
        layout = QVBoxLayout(content)
        overrides = Settings().overridden_by_environment()

        models = QGroupBox("Models", self)
        form = QFormLayout(models)
        self.cache_dir_widget = QgsFileWidget(models)
        self.cache_dir_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.cache_dir_widget.lineEdit().setPlaceholderText(core_settings.default_cache_dir())
        self.cache_dir_widget.setToolTip("Where downloaded model weights are kept; empty: "
                                         + core_settings.default_cache_dir())
        form.addRow("Model cache folder", self.cache_dir_widget)
        self.mirror_edit = QLineEdit(models)
        self.mirror_edit.setPlaceholderText("https://… (empty: each model's own address)")
        self.mirror_edit.setToolTip("A server (or file:// folder) holding the same file names as "
                                    "the catalog, for offline networks and company mirrors")
        form.addRow("Mirror URL", self.mirror_edit)
        for name, widget in (("cache_dir", self.cache_dir_widget), ("mirror_url", self.mirror_edit)):
            if name in overrides:
                widget.setEnabled(False)
                widget.setToolTip(f"Overridden by the environment: {overrides[name]}")
        self.override_label = QLabel(
            "Set by the environment: " + ", ".join(overrides.values()) if overrides else "", models)
        self.override_label.setWordWrap(True)
        self.override_label.setVisible(bool(overrides))
        form.addRow(self.override_label)

        self.clip_model_combo = self._combo(CLIP_MODEL_CHOICES, editable=True)
        self.clip_model_combo.setToolTip("open_clip architecture, or an open_clip config .json file")
        form.addRow("CLIP model", self.clip_model_combo)
        self.clip_weights_combo = self._combo([DEFAULT_CLIP_WEIGHTS] + _catalog_names("clip"), editable=True)
        self.clip_weights_combo.setToolTip(f"open_clip tag ('{DEFAULT_CLIP_WEIGHTS}'), catalog model "
                                           "or checkpoint file")
        form.addRow("CLIP weights", self.clip_weights_combo)
        self.dino_model_combo = self._combo(DINO_MODEL_CHOICES)
        form.addRow("DINO model", self.dino_model_combo)
        self.dino_weights_combo = self._combo(_catalog_names("dino"), editable=True)
        form.addRow("DINO weights", self.dino_weights_combo)
        self.sam_model_combo = self._combo(SAM_MODELS)
        form.addRow("SAM model", self.sam_model_combo)
        self.sam_weights_combo = self._combo(_catalog_names("sam"), editable=True)
        form.addRow("SAM weights", self.sam_weights_combo)
        layout.addWidget(models)

        processing = QGroupBox("Processing", self)
        form = QFormLayout(processing)
        self.device_combo = QComboBox(processing)
        for value, label in DEVICE_LABELS:
            self.device_combo.addItem(label, value)
        self.device_combo.currentIndexChanged.connect(self._device_changed)
        self.detect_button = QPushButton("Check", processing)
        self.detect_button.setToolTip("Show which device this choice uses on this computer")
        self.detect_button.clicked.connect(self.detect_device)
        row = QHBoxLayout()
        row.addWidget(self.device_combo, 1)
        row.addWidget(self.detect_button)
        form.addRow("Device", _wrap(row, processing))
        self.device_info_label = QLabel("", processing)
        self.device_info_label.setWordWrap(True)
        form.addRow("", self.device_info_label)
        self.window_spin = self._spin("window", " px", "Size of the square windows (tiles) the "
                                      "model sees, in working pixels")
        form.addRow("Window (tile) size", self.window_spin)
        self.stride_spin = self._spin("stride", " px", "Step between windows; smaller steps overlap "
                                      "more (smoother, slower)")
        form.addRow("Stride", self.stride_spin)
        self.overlap_label = QLabel(processing)
        form.addRow("Overlap", self.overlap_label)
        self.fast_check = QCheckBox("Fast mode: windows overlap by a quarter instead of half",
                                    processing)
        self.fast_check.setToolTip("About 2.25× fewer windows on large rasters; class maps stay "
                                   "close to the default's (see benchmarks/bench_fast_mode.py)")
        self.fast_check.toggled.connect(self._update_overlap)
        form.addRow("", self.fast_check)
        self.block_spin = self._spin("block", " px", "Output is computed and written in blocks of "
                                     "this size; memory use grows with it")
        form.addRow("Block size", self.block_spin)
        self.batch_spin = self._spin("batch_size", "", "Windows per model call; halved "
                                     "automatically when the GPU runs out of memory")
        form.addRow("Batch size", self.batch_spin)
        self.dask_edit = QLineEdit(processing)
        self.dask_edit.setPlaceholderText("empty: this computer; local:4 or tcp://host:8786")
        self.dask_edit.setToolTip("Run segmentation on a Dask cluster: local:N starts N worker "
                                  "processes here, tcp://HOST:PORT uses a running scheduler")
        if "dask" in overrides:
            self.dask_edit.setEnabled(False)
            self.dask_edit.setToolTip(f"Overridden by the environment: {overrides['dask']}")
        form.addRow("Dask cluster", self.dask_edit)
        for spin in (self.window_spin, self.stride_spin):
            spin.valueChanged.connect(self._update_overlap)
        self.embedding_cache_check = QCheckBox("Keep image and text embeddings on disk", processing)
        self.embedding_cache_check.setToolTip(
            "An area or phrase encoded once is not encoded again, in later runs and QGIS "
            "sessions too (SAM and CLIP image embeddings, text embeddings)")
        self.embedding_cache_spin = self._spin("embedding_cache_mb", " MB", "Largest size of the "
                                               "embedding cache; the least recently used go first")
        self.clear_cache_button = QPushButton("Clear", processing)
        self.clear_cache_button.setToolTip("Remove every stored embedding now")
        self.clear_cache_button.clicked.connect(self.clear_embedding_cache)
        row = QHBoxLayout()
        row.addWidget(self.embedding_cache_check, 1)
        row.addWidget(self.embedding_cache_spin)
        row.addWidget(self.clear_cache_button)
        form.addRow("Embedding cache", _wrap(row, processing))
        self.cache_info_label = QLabel("", processing)
        self.cache_info_label.setWordWrap(True)
        form.addRow("", self.cache_info_label)
        layout.addWidget(processing)

        layout.addWidget(self._build_models_section())

        self.errors_label = QLabel(self)
        self.errors_label.setWordWrap(True)
        self.errors_label.setStyleSheet("color: #b00020")
        self.errors_label.setVisible(False)
        layout.addWidget(self.errors_label)

        self.button_box = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
            | QDialogButtonBox.StandardButton.RestoreDefaults, self)
        self.button_box.accepted.connect(self.accept)
        self.button_box.rejected.connect(self.reject)
        self.button_box.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(
            self.restore_defaults)
        # The form scrolls and the buttons stay below it, so Save is reachable on small screens
        # (1366×768 leaves about 700 px for a dialog).
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.button_box)
        screen = QApplication.primaryScreen()
        height = PREFERRED_HEIGHT
        if screen is not None:
            height = min(height, screen.availableGeometry().height() - SCREEN_MARGIN)
        self.resize(PREFERRED_WIDTH, max(height, MIN_HEIGHT))

    def _build_models_section(self) -> QWidget:
        box = QGroupBox("Download models…", self)
        layout = QVBoxLayout(box)
        self.model_tree = QTreeWidget(box)
        self.model_tree.setHeaderLabels(list(MODEL_COLUMNS))
        self.model_tree.setRootIsDecorated(False)
        self.model_tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.model_tree.setMinimumHeight(180)
        self.model_tree.itemSelectionChanged.connect(self._update_model_buttons)
        layout.addWidget(self.model_tree)
        buttons = QHBoxLayout()
        self.download_button = QPushButton("Download", box)
        self.download_button.clicked.connect(self.download_selected)
        self.import_button = QPushButton("Import file…", box)
        self.import_button.setToolTip("Copy a checkpoint you already have into the cache, verified "
                                      "like a download")
        self.import_button.clicked.connect(lambda: self.import_selected())
        self.cancel_transfer_button = QPushButton("Cancel", box)
        self.cancel_transfer_button.clicked.connect(self.cancel_transfer)
        self.refresh_button = QPushButton("Refresh", box)
        self.refresh_button.clicked.connect(self.refresh_models)
        for button in (self.download_button, self.import_button, self.cancel_transfer_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        layout.addLayout(buttons)
        self.transfer_progress = QProgressBar(box)
        self.transfer_progress.setRange(0, 100)
        self.transfer_progress.setVisible(False)
        layout.addWidget(self.transfer_progress)
        self.transfer_label = QLabel(box)
        self.transfer_label.setWordWrap(True)
        layout.addWidget(self.transfer_label)
        return box

    def _combo(self, values, editable: bool = False) -> QComboBox:
        combo = QComboBox(self)
        combo.setEditable(editable)
        for value in values:
            combo.addItem(value)
        return combo

    def _spin(self, name: str, suffix: str, tip: str) -> QSpinBox:
        spin = QSpinBox(self)
        low, high = core_settings.LIMITS[name]
        spin.setRange(low, high)
        spin.setSuffix(suffix)
        spin.setToolTip(tip)
        return spin

    # -- values -------------------------------------------------------------------------------
    def settings(self) -> Settings:
        """The settings as currently entered (not validated)."""
        return Settings(
            cache_dir=self.cache_dir_widget.filePath().strip(),
            mirror_url=self.mirror_edit.text().strip(),
            clip_model=self.clip_model_combo.currentText().strip(),
            clip_weights=self.clip_weights_combo.currentText().strip(),
            dino_model=self.dino_model_combo.currentText(),
            dino_weights=self.dino_weights_combo.currentText().strip(),
            sam_model=self.sam_model_combo.currentText(),
            sam_weights=self.sam_weights_combo.currentText().strip(),
            device=self.device_combo.currentData() or self.device_combo.currentText(),
            window=self.window_spin.value(), stride=self.stride_spin.value(),
            fast=self.fast_check.isChecked(),
            block=self.block_spin.value(), batch_size=self.batch_spin.value(),
            embedding_cache=self.embedding_cache_check.isChecked(),
            embedding_cache_mb=self.embedding_cache_spin.value(),
            dask=self.dask_edit.text().strip(), extra=dict(self._extra))

    def set_settings(self, settings: Settings) -> None:
        self.cache_dir_widget.setFilePath(settings.cache_dir)
        self.mirror_edit.setText(settings.mirror_url)
        for combo, value in ((self.clip_model_combo, settings.clip_model),
                             (self.clip_weights_combo, settings.clip_weights),
                             (self.dino_model_combo, settings.dino_model),
                             (self.dino_weights_combo, settings.dino_weights),
                             (self.sam_model_combo, settings.sam_model),
                             (self.sam_weights_combo, settings.sam_weights)):
            _set_combo_text(combo, value)
        select_device(self.device_combo, settings.device)
        self.window_spin.setValue(settings.window)
        self.stride_spin.setValue(settings.stride)
        self.fast_check.setChecked(bool(settings.fast))
        self.block_spin.setValue(settings.block)
        self.batch_spin.setValue(settings.batch_size)
        self.embedding_cache_check.setChecked(bool(settings.embedding_cache))
        self.embedding_cache_spin.setValue(int(settings.embedding_cache_mb))
        self.dask_edit.setText(settings.dask)
        self._update_overlap()
        self._show_cache_info()
        self.refresh_models()

    def _embedding_folder(self) -> Optional[str]:
        """The folder the entered settings point at (the environment still wins)."""
        return disk_cache.cache_folder(Settings(cache_dir=self.cache_dir_widget.filePath().strip()))

    def _show_cache_info(self) -> None:
        folder = self._embedding_folder()
        if folder is None:
            self.cache_info_label.setText(f"Turned off by {disk_cache.EMBEDDINGS_ENV}")
            return
        info = disk_cache.DiskCache(folder).info()
        self.cache_info_label.setText(f"{info.entries} entries, {info.bytes / 2 ** 20:.0f} MB "
                                      f"in {folder}")

    def clear_embedding_cache(self) -> int:
        """Remove every stored embedding; -> how many."""
        folder = self._embedding_folder()
        removed = disk_cache.DiskCache(folder).clear() if folder else 0
        self._show_cache_info()
        return removed

    def restore_defaults(self) -> None:
        self.set_settings(Settings())
        self._show_problems([])

    def validate(self) -> List[str]:
        problems = self.settings().validate(check_files=True)
        self._show_problems(problems)
        return problems

    def _show_problems(self, problems: List[str]) -> None:
        self.errors_label.setText("\n".join("• " + p for p in problems))
        self.errors_label.setVisible(bool(problems))

    def accept(self) -> None:
        """Save when every value is valid; otherwise list the problems and stay open."""
        if self.validate():
            return
        settings = self.settings()
        try:
            core_settings.save_settings(settings, self.path)
        except InputError as exc:
            self._show_problems([str(exc)])
            return
        self.settingsSaved.emit(settings)
        self._detach_task()
        super().accept()

    def reject(self) -> None:
        self._detach_task()
        super().reject()

    def _update_overlap(self) -> None:
        window, stride = self.window_spin.value(), self.stride_spin.value()
        if self.fast_check.isChecked():
            stride = fast_stride(window, stride)
        overlap = window - stride
        if overlap < 0:
            self.overlap_label.setText("none: the stride is larger than the window (gaps!)")
        else:
            share = 100.0 * overlap / max(1, window)
            fast = f"; fast mode: stride {stride} px" if self.fast_check.isChecked() else ""
            self.overlap_label.setText(f"{overlap} px ({share:.0f} % of the window){fast}")

    # -- device -------------------------------------------------------------------------------
    def _device_changed(self) -> None:
        self.detect_device()

    def detect_device(self) -> DeviceCheckTask:
        """Describe the chosen device in a background task (the first description imports torch);
        the label says so meanwhile and shows the answer for the choice still current."""
        name = self.device_combo.currentData() or "auto"
        self.device_info_label.setText(CHECKING_DEVICE)
        if self.device_task is not None:
            if self.device_task.name == name:
                return self.device_task
            bridge_tasks.detach(self.device_task)  # a check of an earlier choice: its answer is stale
        self.device_task = DeviceCheckTask(name, self.device_describer,
                                           on_finished=self._device_checked)
        return bridge_tasks.start(self.device_task)

    def _device_checked(self, task: DeviceCheckTask) -> None:
        if task is not self.device_task:
            return
        self.device_task = None
        text = task.text if task.text is not None else f"Cannot check devices: {task.error}"
        self.device_info_label.setText(text)
        self.deviceDescribed.emit(text)

    # -- models -------------------------------------------------------------------------------
    def _cache_settings(self) -> Settings:
        current = self.settings()
        return Settings(cache_dir=current.cache_dir, mirror_url=current.mirror_url)

    def refresh_models(self) -> None:
        selected = self.selected_model()
        cache = self._cache_settings().effective_cache_dir()
        self.model_tree.clear()
        try:
            entries = list_models()
        except DrSegError as exc:
            self.transfer_label.setText(str(exc))
            return
        for entry in entries:
            item = QTreeWidgetItem([entry.name, entry.family.upper(), entry.size_text(),
                                    cache_state(entry, cache), entry.good_for])
            item.setData(0, Qt.ItemDataRole.UserRole, entry.name)
            item.setToolTip(4, entry.good_for)
            self.model_tree.addTopLevelItem(item)
            if entry.name == selected:
                item.setSelected(True)
        for column in range(4):
            self.model_tree.resizeColumnToContents(column)
        self._update_model_buttons()

    def selected_model(self) -> Optional[str]:
        items = self.model_tree.selectedItems() if hasattr(self, "model_tree") else []
        return items[0].data(0, Qt.ItemDataRole.UserRole) if items else None

    def model_state(self, name: str) -> Optional[str]:
        for index in range(self.model_tree.topLevelItemCount()):
            item = self.model_tree.topLevelItem(index)
            if item.data(0, Qt.ItemDataRole.UserRole) == name:
                return item.text(COLUMN_STATE)
        return None

    def select_model(self, name: str) -> None:
        for index in range(self.model_tree.topLevelItemCount()):
            item = self.model_tree.topLevelItem(index)
            item.setSelected(item.data(0, Qt.ItemDataRole.UserRole) == name)

    def _update_model_buttons(self) -> None:
        busy = self.task is not None
        chosen = self.selected_model() is not None
        self.download_button.setEnabled(chosen and not busy)
        self.import_button.setEnabled(chosen and not busy)
        self.cancel_transfer_button.setEnabled(busy)
        self.refresh_button.setEnabled(not busy)

    def download_selected(self) -> Optional[ModelTransferTask]:
        name = self.selected_model()
        if name is None or self.task is not None:
            return None
        settings = self._cache_settings()
        mirror_problems = [p for p in settings.validate() if "Mirror" in p]
        if mirror_problems:
            self.transfer_label.setText(mirror_problems[0])
            return None
        cache, mirror = settings.effective_cache_dir(), settings.effective_mirror()

        def work(progress, cancelled, status):
            return download.download(name, cache, mirror=mirror, progress=progress,
                                     cancelled=cancelled, status=status)

        return self._start(f"DR-Seg: downloading {name}", work, f"Downloading {name}…",
                           f"Download of {name}")

    def import_selected(self, path: Optional[str] = None) -> Optional[ModelTransferTask]:
        name = self.selected_model()
        if name is None or self.task is not None:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, f"Import the checkpoint of {name}")
            if not path:
                return None
        cache = self._cache_settings().effective_cache_dir()

        def work(progress, cancelled, status):
            return download.import_file(path, name, cache, cancelled=cancelled, status=status)

        return self._start(f"DR-Seg: importing {name}", work, f"Verifying and importing {name}…",
                           f"Import of {name}")

    def _start(self, description: str, work, message: str, label: str) -> ModelTransferTask:
        task = ModelTransferTask(description, work, on_finished=self._transfer_done, label=label)
        task.progressChanged.connect(lambda value: self.transfer_progress.setValue(int(value)))
        task.statusMessage.connect(self.transfer_label.setText)
        self.task = task
        self.transfer_progress.setValue(0)
        self.transfer_progress.setVisible(True)
        self.transfer_label.setText(message)
        self._update_model_buttons()
        bridge_tasks.start(task)
        return task

    def cancel_transfer(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.transfer_label.setText("Cancelling… (what arrived is kept; Download resumes it)")

    def _transfer_done(self, task: ModelTransferTask) -> None:
        if task is not self.task:
            return
        self.task = None
        self.transfer_progress.setVisible(False)
        if task.path and not task.was_cancelled:
            self.transfer_label.setText(f"Done: {task.path}")
        elif task.was_cancelled:
            self.transfer_label.setText("Cancelled. Download again to resume where it stopped.")
        else:
            self.transfer_label.setText(f"{task.label} failed: {task.error or 'unknown error'}")
        self.refresh_models()
        self.transferFinished.emit(task)

    def _detach_task(self) -> None:
        """Closing the dialog cancels a running transfer and device check; the tasks stay
        referenced until QGIS has finished with them and no longer call back into this dialog."""
        for task in (self.task, self.device_task):
            if task is not None:
                bridge_tasks.detach(task)
        self.task = self.device_task = None


def cache_state(entry, cache_dir: str) -> str:
    """'downloaded', 'partly downloaded' or 'not downloaded' for the list (cheap: no hashing)."""
    if download.cached_path(entry, cache_dir) is not None:
        return STATE_DOWNLOADED
    if os.path.isfile(os.path.join(cache_dir, entry.download_name + download.PART_SUFFIX)):
        return STATE_PARTIAL
    return STATE_MISSING


def _catalog_names(family: str) -> List[str]:
    try:
        return [entry.name for entry in list_models(family)]
    except DrSegError:
        return []


def _set_combo_text(combo: QComboBox, value: str) -> None:
    index = combo.findText(value)
    if index >= 0:
        combo.setCurrentIndex(index)
    elif combo.isEditable():
        combo.setEditText(value)
    else:
        combo.addItem(value)  # shown as it is; validation names the problem
        combo.setCurrentIndex(combo.count() - 1)


def _wrap(layout, parent) -> QWidget:
    widget = QWidget(parent)
    layout.setContentsMargins(0, 0, 0, 0)
    widget.setLayout(layout)
    return widget
