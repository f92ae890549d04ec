"""The Referring tab's engine choice: CLIP + SAM (the default) or SAM 3 (concept prompts), with the
SAM 3 weights field shown only for SAM 3 and the SAM rows only for SAM; remembered between sessions
with the dock's other values (ui/remembered.py keys `refer_engine`, `refer_sam3_weights`)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from ..core.models.registry import (DEFAULT_REFER_ENGINE, DEFAULT_SAM3_MODEL, REFER_ENGINE_CHOICES,
                                    SAM3_LICENCE)

ENGINE_LABELS = {"sam": "CLIP + SAM", "sam3": "SAM 3"}
ENGINE_KEY, WEIGHTS_KEY = "refer_engine", "refer_sam3_weights"


class ReferEngineRows:
    """Adds 'Engine' and 'SAM 3 weights' rows to a form; `sam_only(fields)` names the form's SAM
    fields, hidden (with their labels) while SAM 3 is chosen."""

    def __init__(self, parent: QWidget, form: QFormLayout):
        self.combo = QComboBox(parent)
        self.combo.setObjectName("drsegReferringEngine")
        for value in REFER_ENGINE_CHOICES:
            self.combo.addItem(ENGINE_LABELS.get(value, value), value)
        self.combo.setToolTip(
            "CLIP + SAM: CLIP finds where the expression points, SAM draws the object. SAM 3: the "
            "expression's object is a concept SAM 3 finds every instance of (slow without a GPU); "
            f"its weights are gated ({SAM3_LICENCE}): import them with 'python -m drseg models "
            "import sam3 FILE' or choose the file below. Clicks refine either engine's result")
        form.addRow("Engine", self.combo)
        self.sam3_weights = QgsFileWidget(parent)
        self.sam3_weights.setObjectName("drsegReferringSam3Weights")
        self.sam3_weights.setStorageMode(QgsFileWidget.StorageMode.GetFile)
        self.sam3_weights.setFilter("safetensors (*.safetensors)")
        self.sam3_weights.lineEdit().setPlaceholderText("[The imported 'sam3' checkpoint]")
        self.sam3_label = QLabel("SAM 3 weights", parent)
        form.addRow(self.sam3_label, self.sam3_weights)
        self.sam3_model = DEFAULT_SAM3_MODEL   # an architecture or config.json (tests: tiny)
        self.form = form
        self.sam_rows = []
        self.combo.currentIndexChanged.connect(self._update)
        self._update()

    def sam_only(self, fields: Sequence[QWidget]) -> None:
        self.sam_rows = [w for field in fields for w in (self.form.labelForField(field), field)
                         if w is not None]
        self._update()

    def engine(self) -> str:
        return self.combo.currentData() or DEFAULT_REFER_ENGINE

    def set_engine(self, engine: Optional[str]) -> None:
        index = self.combo.findData(engine)
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def request_values(self) -> Dict:
        """The ReferringRequest fields of the choice."""
        return {"engine": self.engine(), "sam3_model": self.sam3_model,
                "sam3_weights": self.sam3_weights.filePath().strip() or None}

    def state(self) -> Dict:
        return {ENGINE_KEY: self.engine(), WEIGHTS_KEY: self.sam3_weights.filePath().strip()}

    def restore(self, state: Dict) -> None:
        if state.get(ENGINE_KEY) in REFER_ENGINE_CHOICES:
            self.set_engine(state[ENGINE_KEY])
        if isinstance(state.get(WEIGHTS_KEY), str):
            self.sam3_weights.setFilePath(state[WEIGHTS_KEY])

    def _update(self, *_args) -> None:
        sam3 = self.engine() == "sam3"
        self.sam3_weights.setVisible(sam3)
        self.sam3_label.setVisible(sam3)
        for widget in self.sam_rows:
            widget.setVisible(not sam3)
