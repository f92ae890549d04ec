"""A finished run's outputs as styled map layers in the project (main thread only)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

from .styling import style_class_raster, style_polygon_layer, style_referring_layer

REFER_GROUP = "DR-Seg referring"


def open_polygon_layer(path: str, table: str, name: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"{path}|layername={table}", name, "ogr")
    if not layer.isValid():
        raise RuntimeError(f"QGIS cannot open the result layer '{table}' in '{path}'")
    return layer


# A custom property (saved with the project) marking the layers DR-Seg added, so its forms do not
# offer a class raster of an earlier run as the raster to segment.
RESULT_PROPERTY = "drseg/result"


def mark_result(layer) -> None:
    layer.setCustomProperty(RESULT_PROPERTY, True)


def is_result(layer) -> bool:
    value = layer.customProperty(RESULT_PROPERTY, False)
    return value is True or str(value).lower() == "true"


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
            mark_result(layer)
            project.addMapLayer(layer, False)
            group.addLayer(layer)
    return vector, raster


def layer_title(expressions: Sequence[str], limit: int = 60) -> str:
    if len(expressions) == 1:
        text = expressions[0]
        return text if len(text) <= limit else text[:limit - 1] + "…"
    return f"{len(expressions)} referring expressions"


def add_referring_layer(result, name: Optional[str] = None, project: Optional[QgsProject] = None,
                        group_name: str = REFER_GROUP) -> QgsVectorLayer:
    """Open a ReferringRunResult's GeoPackage layer, style it by expression and put it on top of
    the `group_name` group (created at the top of the legend when missing)."""
    project = project or QgsProject.instance()
    expressions = [e.expression for e in result.expressions]
    title = name or layer_title(expressions)
    layer = QgsVectorLayer(f"{result.vector_path}|layername={result.layer_name}", title, "ogr")
    if not layer.isValid():
        raise RuntimeError(f"QGIS cannot open the referring result '{result.vector_path}'")
    style_referring_layer(layer, expressions)
    mark_result(layer)
    root = project.layerTreeRoot()
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    project.addMapLayer(layer, False)
    group.insertLayer(0, layer)
    return layer
