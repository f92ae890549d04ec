"""Turning a finished run into styled map layers (main thread only)."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalettedRasterRenderer,
                       QgsProject, QgsRasterLayer, QgsRendererCategory, QgsVectorLayer)
from qgis.PyQt.QtGui import QColor

from ..core.classes import BACKGROUND, BACKGROUND_INDEX
from ..core.colors import class_colour

FILL_ALPHA = 190          # same look as the style stored in the GeoPackage (core/style.py)
BACKGROUND_ALPHA = 0      # the class raster's background is see-through by default


def class_names(classes) -> list:
    """Names from ClassSpec objects or plain strings, in class-index order (1..K)."""
    return [getattr(c, "name", c) for c in classes]


def polygon_renderer(classes: Sequence, field: str = "class") -> QgsCategorizedSymbolRenderer:
    categories = []
    for name in class_names(classes):
        r, g, b = class_colour(name)
        symbol = QgsFillSymbol.createSimple({
            "color": f"{r},{g},{b},{FILL_ALPHA}",
            "outline_color": f"{r // 2},{g // 2},{b // 2},255",
            "outline_width": "0.26",
            "outline_width_unit": "MM",
        })
        categories.append(QgsRendererCategory(name, symbol, name))
    return QgsCategorizedSymbolRenderer(field, categories)


def style_polygon_layer(layer: QgsVectorLayer, classes: Sequence) -> None:
    layer.setRenderer(polygon_renderer(classes))
    layer.triggerRepaint()


def style_class_raster(layer: QgsRasterLayer, classes: Sequence) -> None:
    """Paletted renderer: 0 background (transparent), 1..K classes with their names as labels."""
    entries = []
    background = QColor(*class_colour(BACKGROUND))
    background.setAlpha(BACKGROUND_ALPHA)
    entries.append(QgsPalettedRasterRenderer.Class(BACKGROUND_INDEX, background, BACKGROUND))
    for index, name in enumerate(class_names(classes), start=1):
        entries.append(QgsPalettedRasterRenderer.Class(index, QColor(*class_colour(name)), name))
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, entries))
    layer.triggerRepaint()


def open_polygon_layer(path: str, table: str, name: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername={table}", name, "ogr")
    if not layer.isValid():
        raise RuntimeError(f"QGIS cannot open the result layer '{table}' in '{path}'")
    return layer


def add_result_layers(result, group_name: Optional[str] = None, display_name: Optional[str] = None,
                      project: Optional[QgsProject] = None
                      ) -> Tuple[Optional[QgsVectorLayer], Optional[QgsRasterLayer]]:
    """Add a SegmentationResult's outputs to `project` in a new group at the top of the legend.

    display_name: the layers' name in the legend (default: the GeoPackage table name).
    -> (polygon layer or None, class raster layer or None)
    """
    project = project or QgsProject.instance()
    name = display_name or result.layer_name
    vector = raster = None
    if result.vector_path:
        vector = open_polygon_layer(result.vector_path, result.layer_name, name)
        style_polygon_layer(vector, result.classes)
    if result.raster_path:
        raster = QgsRasterLayer(result.raster_path, f"{name} (class raster)", "gdal")
        if not raster.isValid():
            raise RuntimeError(f"QGIS cannot open the class raster '{result.raster_path}'")
        style_class_raster(raster, result.classes)
    group = project.layerTreeRoot().insertGroup(0, group_name or f"DR-Seg: {name}")
    for layer in (vector, raster):
        if layer is not None:
            project.addMapLayer(layer, False)
            group.addLayer(layer)
    return vector, raster


def default_output_path(layer_name: str, folder: str, extension: str = ".gpkg") -> str:
    """`folder/<layer name>_drseg<extension>`, numbered so that no existing file is replaced."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer_name).strip("._") or "raster"
    base = os.path.join(folder, f"{safe}_drseg")
    path, number = base + extension, 1
    while os.path.exists(path) or os.path.exists(os.path.splitext(path)[0] + ".tif"):
        path = f"{base}_{number}{extension}"
        number += 1
    return path
