"""The dock's adapter choice: the adapters in the model cache by name (or any adapter file), and
'Adapt…', which opens the Processing algorithm drseg:adaptmodel to make one.

The list is read from the adapters' safetensors headers (core/adapt/catalog.py: no torch on the
main thread). An adapter made from here is written into the model cache, so it is listed next
time and chosen at once when the dialog reports it.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from qgis.PyQt.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QPushButton, QToolButton,
                                 QWidget)

from ..core.adapt.catalog import SUFFIX, adapters_folder, list_adapters

ADAPT_ALGORITHM = "drseg:adaptmodel"
NO_ADAPTER = "[No adapter]"


class AdapterField(QWidget):
    """`value()`: '' (none), an adapter name from the model cache, or an adapter file.

    cache_dir: the model cache folder now; parameters: the Processing dialog's starting values
    (raster layer, CLIP model and weights of the dock); error: shows a line to the user."""

    def __init__(self, parent, cache_dir: Callable[[], Optional[str]],
                 parameters: Callable[[], dict], error: Callable[[str], None]):
        super().__init__(parent)
        self._cache_dir, self._parameters, self._error = cache_dir, parameters, error
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox(self)
        self.combo.setEditable(True)
        self.combo.lineEdit().setPlaceholderText(NO_ADAPTER)
        self.combo.setToolTip("An adapter learned from your labelled polygons ('Adapt…', or "
                              "'python -m drseg adapt'): a name from the model cache or a "
                              ".safetensors file. It needs the CLIP model and weights it was "
                              "made for; class names it never saw still work")
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(8)
        row.addWidget(self.combo, 1)
        self.browse_button = QToolButton(self)
        self.browse_button.setText("…")
        self.browse_button.setToolTip("Choose an adapter file")
        self.browse_button.clicked.connect(self.browse)
        row.addWidget(self.browse_button)
        self.adapt_button = QPushButton("Adapt…", self)
        self.adapt_button.setObjectName("drsegAdaptButton")
        self.adapt_button.setToolTip("Learn from a polygon layer of your classes: opens the "
                                     "Processing algorithm 'Adapt the model to your labelled "
                                     "polygons'")
        self.adapt_button.clicked.connect(self.open_adapt_dialog)
        row.addWidget(self.adapt_button)
        self.refresh()

    def value(self) -> str:
        return self.combo.currentText().strip()

    def set_value(self, value: str) -> None:
        self.combo.setCurrentText(value or "")

    def refresh(self) -> None:
        """List the adapters in the model cache again (the typed value is kept)."""
        current = self.value()
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem("")
        for info in list_adapters(self._cache_dir()):
            miou = info.miou_text()
            self.combo.addItem(info.name)
            self.combo.setItemData(self.combo.count() - 1,
                                   f"{info.level}, base {info.base_model}, classes: "
                                   f"{', '.join(info.classes)}"
                                   + (f", held-out mIoU {miou}" if miou else ""),
                                   _tooltip_role())
        self.combo.setCurrentText(current)
        self.combo.blockSignals(False)

    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Adapter file", self.value() or "",
                                              f"Adapters (*{SUFFIX})")
        if path:
            self.set_value(path)

    def open_adapt_dialog(self):
        """Open drseg:adaptmodel's dialog filled from the dock; its adapter goes into the model
        cache and is chosen here when the run finishes. -> the dialog's results (or None)."""
        import processing
        from qgis.core import QgsApplication

        if QgsApplication.processingRegistry().algorithmById(ADAPT_ALGORITHM) is None:
            self._error("Adapting needs the DR-Seg Processing provider, which is not loaded "
                        "(Settings › Options › Processing › Providers)")
            return None
        folder = adapters_folder(self._cache_dir())
        parameters = dict(self._parameters())
        try:
            os.makedirs(folder, exist_ok=True)
            parameters["OUTPUT"] = os.path.join(folder, _free_name(folder, parameters))
        except OSError:
            pass                      # no cache folder to write in: the dialog asks for a file
        results = processing.execAlgorithmDialog(ADAPT_ALGORITHM, parameters)
        self.refresh()
        made = (results or {}).get("OUTPUT")
        if made and os.path.isfile(str(made)):
            base = os.path.basename(str(made))
            name = base[:-len(SUFFIX)] if base.endswith(SUFFIX) else base
            in_cache = os.path.dirname(os.path.abspath(str(made))) == os.path.abspath(folder)
            self.set_value(name if in_cache else str(made))
        return results


def _free_name(folder: str, parameters: dict) -> str:
    """'<layer>-adapter.safetensors', numbered when taken."""
    layer = parameters.get("INPUT")
    stem = getattr(layer, "name", lambda: "")() if layer is not None and not isinstance(layer, str) else ""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in (stem or "")).strip("-") \
        or "raster"
    name, number = f"{stem}-adapter", 1
    while os.path.exists(os.path.join(folder, name + SUFFIX)):
        number += 1
        name = f"{stem}-adapter-{number}"
    return name + SUFFIX


def _tooltip_role():
    from qgis.PyQt.QtCore import Qt

    return getattr(Qt, "ItemDataRole", Qt).ToolTipRole
