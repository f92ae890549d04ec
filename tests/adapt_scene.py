"""Label layers for the adaptation tests: polygons written with OGR in any CRS."""
from __future__ import annotations

from osgeo import ogr, osr
from rasterio.warp import transform_geom

ogr.UseExceptions()


def write_polygons(path, polygons, crs="EPSG:32633", field="landuse", driver="GPKG"):
    """polygons: [(class value, GeoJSON-like geometry in EPSG:32633)], written reprojected to
    `crs` (so a test can place labels in raster coordinates and store them in another CRS)."""
    import json

    reference = osr.SpatialReference()
    reference.SetFromUserInput(crs)
    reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    source = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    layer = source.CreateLayer("labels", reference, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTString))
    for value, geometry in polygons:
        if crs != "EPSG:32633":
            geometry = transform_geom("EPSG:32633", crs, geometry)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField(field, value)
        feature.SetGeometry(ogr.CreateGeometryFromJson(json.dumps(geometry)))
        layer.CreateFeature(feature)
    source = None
    return str(path)


def pixel_box(col0, row0, col1, row1, origin=(500000.0, 4100000.0), size=0.5):
    """A rectangle in EPSG:32633 covering pixels [col0, col1) × [row0, row1) of a raster whose
    north-west corner is `origin` with `size` m pixels (conftest.write_raster's default grid)."""
    x0, y0 = origin[0] + col0 * size, origin[1] - row0 * size
    x1, y1 = origin[0] + col1 * size, origin[1] - row1 * size
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


def scene_polygons(labels, names):
    """One polygon per labelled rectangle of a class grid, by runs of equal rows (exact)."""
    polygons = []
    height, width = labels.shape
    for row in range(height):
        col = 0
        while col < width:
            value = labels[row, col]
            end = col
            while end < width and labels[row, end] == value:
                end += 1
            if value in names:
                polygons.append((names[value], pixel_box(col, row, end, row + 1)))
            col = end
    return polygons
