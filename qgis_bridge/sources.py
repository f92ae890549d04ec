"""From QGIS layers and map views to what the engine reads: a GDAL file name and an extent."""
from __future__ import annotations

import os
from typing import Optional, Tuple

from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject,
                       QgsProviderRegistry, QgsRasterLayer, QgsRectangle)

from ..core.errors import InputError


def raster_source(layer) -> str:
    """The string GDAL (rasterio) opens for `layer`, or InputError saying why it cannot be used."""
    if layer is None:
        raise InputError("Choose a raster layer to segment")
    if not isinstance(layer, QgsRasterLayer):
        raise InputError(f"'{layer.name()}' is not a raster layer")
    if not layer.isValid():
        raise InputError(f"Raster layer '{layer.name()}' is not valid (file moved or unreadable?)")
    if layer.providerType() != "gdal":
        raise InputError(f"'{layer.name()}' is a '{layer.providerType()}' layer, not a raster file: "
                         "DR-Seg reads rasters through GDAL. Save it as a GeoTIFF first "
                         "(right-click the layer › Export › Save As…) and segment that file")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or layer.source()
    if not path.startswith("/vsi") and not os.path.exists(path):
        raise InputError(f"The file of raster layer '{layer.name()}' was not found: {path}")
    if parts.get("layerName") or path.startswith("/vsi"):
        return layer.source()  # a GDAL connection string (sub-dataset, archive, remote file)
    return path


def layer_crs_check(layer) -> None:
    if not layer.crs().isValid():
        raise InputError(f"Raster layer '{layer.name()}' has no coordinate reference system; "
                         "assign one (Layer Properties › Source) before segmenting")


def extent_in_layer_crs(rect: QgsRectangle, rect_crs: QgsCoordinateReferenceSystem, layer,
                        project: Optional[QgsProject] = None) -> Tuple[float, float, float, float]:
    """`rect` (in `rect_crs`) as (xmin, ymin, xmax, ymax) in the layer's CRS, clipped to the layer.

    InputError when the area does not overlap the layer.
    """
    project = project or QgsProject.instance()
    if rect_crs.isValid() and layer.crs().isValid() and rect_crs != layer.crs():
        transform = QgsCoordinateTransform(rect_crs, layer.crs(), project)
        try:
            rect = transform.transformBoundingBox(rect)
        except Exception as exc:  # QgsCsException: the area lies outside the layer CRS's domain
            raise InputError(f"The chosen area cannot be transformed to the CRS of "
                             f"'{layer.name()}': {exc}") from None
    clipped = rect.intersect(layer.extent())
    if clipped.isEmpty() or clipped.width() <= 0 or clipped.height() <= 0:
        raise InputError(f"The chosen area does not overlap raster layer '{layer.name()}'")
    return clipped.xMinimum(), clipped.yMinimum(), clipped.xMaximum(), clipped.yMaximum()
