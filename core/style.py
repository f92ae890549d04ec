"""QGIS style (QML text) for the polygon layer: one category per class, in its stable colour.

Written into the GeoPackage, so the layer opens styled in any QGIS, also when made by the CLI.
"""
from __future__ import annotations

from typing import Sequence, Union
from xml.sax.saxutils import quoteattr

from .classes import ClassSpec
from .colors import class_colour

FILL_ALPHA = 190


def categorized_qml(classes: Sequence[Union[ClassSpec, str]], field: str = "class") -> str:
    """One category per class (ClassSpec or plain value of `field`, e.g. an expression)."""
    categories, symbols = [], []
    for index, spec in enumerate(classes):
        name = getattr(spec, "name", spec)
        r, g, b = class_colour(name)
        categories.append(f'<category render="true" symbol="{index}" value={quoteattr(name)} '
                          f'label={quoteattr(name)}/>')
        symbols.append(
            f'<symbol type="fill" name="{index}" alpha="1" clip_to_extent="1" force_rhr="0">'
            '<layer class="SimpleFill" enabled="1" locked="0" pass="0">'
            f'<prop k="color" v="{r},{g},{b},{FILL_ALPHA}"/>'
            f'<prop k="outline_color" v="{r // 2},{g // 2},{b // 2},255"/>'
            '<prop k="outline_style" v="solid"/><prop k="outline_width" v="0.26"/>'
            '<prop k="outline_width_unit" v="MM"/><prop k="style" v="solid"/>'
            '</layer></symbol>')
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
            '<qgis version="3.22.0" styleCategories="Symbology">'
            f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(field)} symbollevels="0" '
            'enableorderby="0" forceraster="0">'
            f'<categories>{"".join(categories)}</categories>'
            f'<symbols>{"".join(symbols)}</symbols>'
            '</renderer-v2></qgis>')
