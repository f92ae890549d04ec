"""What the dock's two modes share, held as plain values instead of in the dock's widgets."""
from __future__ import annotations

from typing import List, Optional

from qgis.PyQt.QtCore import QObject, pyqtSignal

from ..core.models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE


class SharedChoices(QObject):
    """The raster layer and its bands, the device and the CLIP model and weights, as chosen in the
    dock's Classes form. The form writes them whenever the user (or the saved settings) changes
    them; the Referring panel reads them when it runs and follows `layerChanged`.

    `bands` apply to `layer` only; None means the engine's RGB default."""

    layerChanged = pyqtSignal(object)   # the new layer (or None)

    def __init__(self, layer=None, bands: Optional[List[int]] = None, device: str = DEFAULT_DEVICE,
                 clip_model: str = DEFAULT_CLIP_MODEL, clip_weights: str = DEFAULT_CLIP_WEIGHTS,
                 parent: Optional[QObject] = None):
        super().__init__(parent)
        self.layer = layer
        self.bands = bands
        self.device = device
        self.clip_model = clip_model
        self.clip_weights = clip_weights

    def set_layer(self, layer) -> None:
        if layer is not self.layer:
            self.layer = layer
            self.layerChanged.emit(layer)
