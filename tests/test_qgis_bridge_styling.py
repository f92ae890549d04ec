"""qgis_bridge.styling: one polygon style in two looks, and the class polygons drawn exactly as the
style the GeoPackage carries (core/style.py), so a layer looks the same however it was opened."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from qgis.core import QgsUnitTypes

from drseg.core.classes import parse_classes
from drseg.core.colors import class_colour
from drseg.core.style import categorized_qml
from drseg.qgis_bridge.styling import polygon_renderer, referring_renderer


def rgba(text):
    return tuple(int(v) for v in text.split(",")[:4])


def drawn(category):
    """(fill RGBA, outline RGBA, outline width in mm) of a category's simple fill."""
    layer = category.symbol().symbolLayer(0)
    assert layer.strokeWidthUnit() == QgsUnitTypes.RenderUnit.RenderMillimeters
    return layer.fillColor().getRgb(), layer.strokeColor().getRgb(), layer.strokeWidth()


def qml_looks(classes):
    """value -> (fill RGBA, outline RGBA, outline width) as the GeoPackage's QML says."""
    root = ET.fromstring(categorized_qml(classes).split("'SYSTEM'>", 1)[1])
    symbols = {}
    for symbol in root.iter("symbol"):
        props = {p.get("k"): p.get("v") for p in symbol.iter("prop")}
        symbols[symbol.get("name")] = (rgba(props["color"]), rgba(props["outline_color"]),
                                       float(props["outline_width"]))
    return {c.get("value"): symbols[c.get("symbol")] for c in root.iter("category")}


def test_class_polygons_look_like_the_style_stored_in_the_geopackage():
    classes = parse_classes("building,roof; road; tree; water")
    renderer = polygon_renderer(classes)
    assert renderer.classAttribute() == "class"
    looks = {c.value(): drawn(c) for c in renderer.categories()}
    assert list(looks) == ["building", "road", "tree", "water"]
    expected = qml_looks(classes)
    assert set(expected) == set(looks)
    for name, (fill, outline, width) in looks.items():
        assert (fill, outline) == expected[name][:2], name
        assert width == pytest.approx(expected[name][2])
        assert fill[:3] == class_colour(name)  # the stable colour the dock and the legend use


def test_referred_objects_are_highlighted_once_per_expression():
    renderer = referring_renderer(["the pond", "the road", "the pond"])
    assert renderer.classAttribute() == "expression"
    looks = {c.value(): drawn(c) for c in renderer.categories()}
    assert list(looks) == ["the pond", "the road"]          # first appearance first, no repeats
    for text, (fill, outline, width) in looks.items():
        r, g, b = class_colour(text)
        assert fill == (r, g, b, 90)                         # see-through: the imagery stays visible
        assert outline == (r, g, b, 255)                     # a strong outline in the same colour
        assert width == pytest.approx(0.6)
    # The same text in both looks: the same colour, so a class and an expression match on the map.
    (class_category,) = polygon_renderer(["the pond"]).categories()
    assert drawn(class_category)[0][:3] == looks["the pond"][0][:3]
