"""Combo box helpers the dock, the Referring panel and the settings dialog share."""
from __future__ import annotations

from qgis.core import Qgis, QgsMapLayerProxyModel


def raster_layer_filter():
    """The 'raster layers only' filter of QgsMapLayerComboBox across QGIS 3.22 .. 4.x."""
    layer_filter = getattr(Qgis, "LayerFilter", None)
    if layer_filter is not None:
        return layer_filter.RasterLayer
    return QgsMapLayerProxyModel.Filter.RasterLayer


def select_device(combo, device: str) -> None:
    """Select `device` in a device combo box (items carry the device name as data), adding it
    when it is not listed ('cuda:1' and the like)."""
    device = (device or "auto").strip().lower()
    index = combo.findData(device)
    if index < 0:
        combo.addItem(device, device)
        index = combo.count() - 1
    combo.setCurrentIndex(index)
