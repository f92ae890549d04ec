"""Writing polygon layers to GeoPackage with GDAL/OGR (the GDAL that QGIS itself uses)."""
from __future__ import annotations

from typing import Optional, Sequence

import contextlib
import sys

import shapely
from osgeo import gdal, ogr, osr

from .errors import OutputError
from .outputs import disk_full_hint

ogr.UseExceptions()
osr.UseExceptions()


def spatial_reference(crs) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs.to_wkt())
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x = easting/longitude
    return srs


class PolygonLayerWriter:
    """One GeoPackage polygon layer. fields: [(name, 'str'|'int'|'real')]."""

    _TYPES = {"str": ogr.OFTString, "int": ogr.OFTInteger, "real": ogr.OFTReal}

    def __init__(self, path: str, layer_name: str, crs, fields: Sequence, style_qml: Optional[str] = None,
                 destination: Optional[str] = None):
        """destination: the name the file will be published under, for error messages (the
        file itself is written under a hidden temporary name)."""
        self.path = path
        self.destination = destination or path
        self.layer_name = layer_name
        self.count = 0
        self._style_qml = style_qml
        self._ds = None
        with self._errors():
            self._ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
            self._layer = self._ds.CreateLayer(layer_name, spatial_reference(crs), ogr.wkbMultiPolygon,
                                               options=["SPATIAL_INDEX=YES"])
            for name, kind in fields:
                self._layer.CreateField(ogr.FieldDefn(name, self._TYPES[kind]))
            self._defn = self._layer.GetLayerDefn()
            self._ds.StartTransaction()

    @contextlib.contextmanager
    def _errors(self):
        """OGR's errors (SQLite text naming the hidden file) become one line about the output."""
        try:
            yield
        except RuntimeError as exc:
            self._drop()
            hint = disk_full_hint(self.path)
            detail = "" if hint else f" ({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else 'GDAL error'})"
            raise OutputError(f"Cannot write the GeoPackage '{self.destination}'{hint}{detail}; "
                              "nothing was replaced") from None

    def add(self, geometry, **attributes) -> None:
        if geometry.geom_type == "Polygon":
            geometry = shapely.MultiPolygon([geometry])
        elif geometry.geom_type != "MultiPolygon":  # e.g. a collection left by make_valid
            polygons = [g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
            if not polygons:
                return
            geometry = shapely.MultiPolygon([p for g in polygons for p in getattr(g, "geoms", [g])])
        feature = ogr.Feature(self._defn)
        for name, value in attributes.items():
            feature.SetField(name, value)
        # 2-D WKB explicitly: inside QGIS, its older GEOS may answer shapely and default otherwise.
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(geometry, output_dimension=2)))
        with self._errors():
            self._layer.CreateFeature(feature)
        self.count += 1

    def close(self) -> None:
        """Commit and close, then read the file back: a GeoPackage that cannot be reopened with
        every feature (full disk, failed flush) raises OutputError instead of being published."""
        if self._ds is None:
            return
        with self._errors():
            self._ds.CommitTransaction()
            if self._style_qml:
                _store_style(self._ds, self.layer_name, self._style_qml)
            if self._ds.FlushCache() not in (None, 0):
                raise RuntimeError("flushing the file failed")
        self._ds = None  # closes the file
        with self._errors():
            check = ogr.Open(self.path, 0)
            layer = check.GetLayerByName(self.layer_name)
            if layer is None:
                raise RuntimeError("the layer is missing when the file is read back")
            read = sum(1 for _ in layer)
            result = check.ExecuteSQL("PRAGMA quick_check")
            verdict = result.GetNextFeature().GetField(0) if result is not None else "ok"
            check.ReleaseResultSet(result)
            check = None
            if read != self.count or str(verdict).lower() != "ok":
                raise RuntimeError(f"{read} of {self.count} features read back; integrity: {verdict}")

    def abort(self) -> None:
        self._drop()

    def _drop(self) -> None:
        """Close without raising: after a failure (full disk) GDAL's own clean-up fails too, and
        its exception would be printed as 'Exception ignored in ...' beside our message."""
        if self._ds is None:
            return
        hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None
        gdal.PushErrorHandler("CPLQuietErrorHandler")
        try:
            self._layer = self._defn = None
            self._ds = None
        finally:
            gdal.PopErrorHandler()
            sys.unraisablehook = hook


def store_default_style(path: str, layer_name: str, qml: str) -> None:
    """Store `qml` as the default style of `layer_name` in the GeoPackage file `path`."""
    ds = ogr.Open(path, update=1)
    try:
        _store_style(ds, layer_name, qml)
    finally:
        ds = None


def _store_style(ds, layer_name: str, qml: str) -> None:
    """Store the style in the GeoPackage's `layer_styles` table, which QGIS applies on load."""
    styles = ds.GetLayerByName("layer_styles")
    if styles is None:
        styles = ds.CreateLayer("layer_styles", geom_type=ogr.wkbNone)
        for name, kind in (("f_table_catalog", ogr.OFTString), ("f_table_schema", ogr.OFTString),
                           ("f_table_name", ogr.OFTString), ("f_geometry_column", ogr.OFTString),
                           ("styleName", ogr.OFTString), ("styleQML", ogr.OFTString),
                           ("styleSLD", ogr.OFTString), ("useAsDefault", ogr.OFTInteger),
                           ("description", ogr.OFTString), ("owner", ogr.OFTString),
                           ("ui", ogr.OFTString), ("update_time", ogr.OFTDateTime)):
            styles.CreateField(ogr.FieldDefn(name, kind))
    feature = ogr.Feature(styles.GetLayerDefn())
    values = {"f_table_catalog": "", "f_table_schema": "", "f_table_name": layer_name,
              "f_geometry_column": "geom", "styleName": layer_name, "styleQML": qml,
              "styleSLD": "", "useAsDefault": 1, "description": "DR-Seg class colours",
              "owner": "", "ui": ""}
    for name, value in values.items():
        feature.SetField(name, value)
    styles.CreateFeature(feature)
