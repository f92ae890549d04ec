"""Readers of the engine's outputs, for tests that compare them with the truth."""
from __future__ import annotations


def read_class_polygons(path):
    """Rows (geometry as WKB plus every field) and the spatial reference (WKT) of the class
    polygons written by run_segmentation."""
    from osgeo import ogr

    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    rows = []
    for feature in layer:
        rows.append(dict(geometry=feature.GetGeometryRef().ExportToWkb(), **feature.items()))
    srs = layer.GetSpatialRef().ExportToWkt()
    return rows, srs


def polygons_to_labels(rows, shape, transform):
    """Burn class polygons (read_class_polygons rows) into a label grid (0 where none)."""
    import shapely
    from rasterio import features

    shapes = [(shapely.from_wkb(bytes(r["geometry"])), r["class_id"]) for r in rows]
    return features.rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")


def read_referring_gpkg(path):
    """Field names, EPSG code, layer name and rows (expression, score, area_m2, shapely geometry)
    of a referring-segmentation GeoPackage, which holds exactly one layer."""
    import shapely
    from osgeo import ogr

    ds = ogr.Open(str(path))
    assert ds.GetLayerCount() == 1
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    srs = layer.GetSpatialRef()
    rows = []
    for feature in layer:
        geometry = shapely.from_wkb(bytes(feature.GetGeometryRef().ExportToWkb()))
        rows.append(dict(expression=feature.GetField("expression"), score=feature.GetField("score"),
                         area_m2=feature.GetField("area_m2"), geometry=geometry))
    return fields, srs.GetAuthorityCode(None), layer.GetName(), rows
