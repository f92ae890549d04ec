"""How results look on the map: one categorized polygon style, in two looks, and the class raster's
palette. Renderers only; main thread (they are built when a layer is added or loaded)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from qgis.core import (QgsCategorizedSymbolRenderer, QgsFillSymbol, QgsPalettedRasterRenderer,
                       QgsRasterLayer, QgsRendererCategory, QgsVectorLayer)
from qgis.PyQt.QtGui import QColor

from ..core.classes import BACKGROUND, BACKGROUND_INDEX
from ..core.colors import class_colour
from ..core.style import FILL_ALPHA

BACKGROUND_ALPHA = 0      # the class raster's background is see-through by default


@dataclass(frozen=True)
class PolygonLook:
    """How a category's fill symbol is drawn from its stable colour (core.colors.class_colour)."""

    fill_alpha: int            # 0..255
    outline_shade: float       # outline colour = fill colour × this (1: the same colour)
    outline_width_mm: float


# Class polygons: the look of the style stored in the GeoPackage (core/style.py), so a layer looks
# the same added by the plugin or opened from a file the command line wrote.
CLASS_LOOK = PolygonLook(fill_alpha=FILL_ALPHA, outline_shade=0.5, outline_width_mm=0.26)
# Referred objects: a see-through fill with a strong outline, so the imagery below stays readable.
HIGHLIGHT_LOOK = PolygonLook(fill_alpha=90, outline_shade=1.0, outline_width_mm=0.6)


def class_names(classes) -> list:
    """Names from ClassSpec objects or plain strings, in class-index order (1..K)."""
    return [getattr(c, "name", c) for c in classes]


def category_renderer(values: Sequence[str], field: str, look: PolygonLook
                      ) -> QgsCategorizedSymbolRenderer:
    """One category per distinct value of `field` (first appearance first), each a fill symbol in
    the value's stable colour drawn with `look`."""
    categories = []
    for value in dict.fromkeys(values):
        r, g, b = class_colour(value)
        outline = [int(c * look.outline_shade) for c in (r, g, b)]
        symbol = QgsFillSymbol.createSimple({
            "color": f"{r},{g},{b},{look.fill_alpha}",
            "outline_color": "{},{},{},255".format(*outline),
            "outline_width": str(look.outline_width_mm),
            "outline_width_unit": "MM",
        })
        categories.append(QgsRendererCategory(value, symbol, value))
    return QgsCategorizedSymbolRenderer(field, categories)


def polygon_renderer(classes: Sequence, field: str = "class") -> QgsCategorizedSymbolRenderer:
    """Class polygons (field `class`), one category per class."""
    return category_renderer(class_names(classes), field, CLASS_LOOK)


def referring_renderer(expressions: Sequence[str]) -> QgsCategorizedSymbolRenderer:
    """Referred objects (field `expression`), one category per expression."""
    return category_renderer(expressions, "expression", HIGHLIGHT_LOOK)


def style_polygon_layer(layer: QgsVectorLayer, classes: Sequence) -> None:
    layer.setRenderer(polygon_renderer(classes))
    layer.triggerRepaint()


def style_referring_layer(layer: QgsVectorLayer, expressions: Sequence[str]) -> None:
    layer.setRenderer(referring_renderer(expressions))
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
