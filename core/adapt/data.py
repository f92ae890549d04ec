"""Training chips from a raster and the user's polygons (any OGR format, any CRS).

    chips = load_chips(raster, labels, class_field, chip=224, validation_share=0.2)

The polygons are reprojected into the raster's CRS once and rasterised per chip on the chip's own
grid. Chips are non-overlapping windows of the working grid, so no pixel belongs to two chips; the
validation share is taken by whole blocks of neighbouring chips (a spatial split: validation
pixels never sit between training pixels). Nodata and unlabelled pixels get IGNORE_INDEX.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import rasterio.windows
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window

from ..errors import InputError
from ..evaluation.metrics import IGNORE_INDEX
from ..raster_io import RasterReader
from .defaults import DEFAULT_CHIP, DEFAULT_VALIDATION_SHARE

SPLIT_BLOCK_CHIPS = 2   # validation is taken in blocks of 2×2 neighbouring chips
MAX_CHIPS = 2048


@dataclass
class LabelPolygons:
    """Polygons in the raster's CRS (GeoJSON-like dicts) and the 0-based class of each."""

    geometries: List[dict]
    class_ids: List[int]
    class_names: List[str]


@dataclass
class ChipSet:
    """uint8 images (N,3,S,S), labels (N,S,S) (class index or IGNORE_INDEX), each chip's window
    on the working grid, and the indices of the training and validation chips."""

    images: np.ndarray
    labels: np.ndarray
    windows: List[Window]
    class_names: List[str]
    train: List[int] = field(default_factory=list)
    validation: List[int] = field(default_factory=list)

    def subset(self, which: str) -> Tuple[np.ndarray, np.ndarray]:
        index = self.train if which == "train" else self.validation
        return self.images[index], self.labels[index]


@dataclass
class LabelFeatures:
    """Polygons a front end already holds (e.g. a QGIS layer read in Processing): GeoJSON-like
    geometries, their class values, and their CRS (WKT or 'EPSG:n')."""

    geometries: List[dict]
    values: List[object]
    crs: str


def read_label_polygons(labels, class_field: str, target_crs,
                        class_names: Optional[Sequence[str]] = None) -> LabelPolygons:
    """Every polygon of `labels` (a file's first layer, or LabelFeatures) with its class (the
    field's value as text), reprojected into `target_crs`. class_names fixes the class order
    (values not listed are skipped); None: the sorted distinct values."""
    labelled = read_labelled_polygons(labels, class_field, target_crs)
    names = list(class_names) if class_names else sorted({value for value, _ in labelled})
    if len(names) >= IGNORE_INDEX:
        raise InputError(f"Too many classes ({len(names)}); at most {IGNORE_INDEX - 1}")
    order = {name: i for i, name in enumerate(names)}
    kept = [(geometry, order[value]) for value, geometry in labelled if value in order]
    return LabelPolygons([g for g, _ in kept], [i for _, i in kept], names)


def read_labelled_polygons(labels, value_field: str, target_crs) -> List[Tuple[str, dict]]:
    """(value as text, GeoJSON-like geometry reprojected into `target_crs`) of every polygon of
    `labels` (a file's first layer, or LabelFeatures) with a non-empty `value_field`, in the
    layer's order (a class, or a referring expression: ``core/refer/train_data``)."""
    if isinstance(labels, LabelFeatures):
        try:
            source_crs = CRS.from_user_input(labels.crs)
        except Exception:
            raise InputError("The label polygons have no valid coordinate reference system") from None
        raw = [(str(v).strip(), g) for v, g in zip(labels.values, labels.geometries)
               if g is not None and v is not None and str(v).strip() != ""
               and g.get("type") in ("Polygon", "MultiPolygon")]
        what = "The label layer"
    else:
        raw, source_crs = _read_label_file(str(labels), value_field)
        what = f"Label layer '{labels}'"
    if not raw:
        raise InputError(f"{what} has no polygon with a value in '{value_field}'")
    return [(value, transform_geom(source_crs, target_crs, geometry)) for value, geometry in raw]


def _read_label_file(path: str, value_field: str):
    """([(value, GeoJSON geometry)], the layer's CRS) of a file's first layer."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    if not os.path.exists(path):
        raise InputError(f"Label layer '{path}' does not exist")
    try:
        source = ogr.Open(path)
    except RuntimeError as exc:
        raise InputError(f"Cannot open label layer '{path}': {exc}") from None
    if source is None or source.GetLayerCount() == 0:
        raise InputError(f"'{path}' holds no vector layer")
    layer = source.GetLayer(0)
    definition = layer.GetLayerDefn()
    fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    if value_field not in fields:
        raise InputError(f"Label layer '{path}' has no field '{value_field}'; its fields: "
                         + (", ".join(fields) or "none"))
    reference = layer.GetSpatialRef()
    if reference is None:
        raise InputError(f"Label layer '{path}' has no coordinate reference system")
    reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    source_crs = CRS.from_wkt(reference.ExportToWkt())
    raw = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        value = feature.GetField(value_field)
        if geometry is None or value is None or str(value).strip() == "":
            continue
        if ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon, ogr.wkbMultiPolygon):
            continue
        raw.append((str(value).strip(), _geojson(geometry)))
    return raw, source_crs


def _geojson(geometry) -> dict:
    import json

    return json.loads(geometry.ExportToJson())


def chip_windows(width: int, height: int, chip: int) -> List[Window]:
    """Non-overlapping chip windows covering the grid row by row (a remainder narrower than a
    chip at the right and bottom edges is left out)."""
    if width < chip or height < chip:
        raise InputError(f"The raster (or area) is {width}×{height} px, smaller than one "
                         f"{chip}×{chip} chip")
    return [Window(col, row, chip, chip) for row in range(0, height - chip + 1, chip)
            for col in range(0, width - chip + 1, chip)]


def rasterize_labels(polygons: LabelPolygons, window_transform, size: int) -> np.ndarray:
    """Class index per pixel of one chip; pixels no polygon covers are IGNORE_INDEX. Where
    polygons overlap, the later one wins."""
    shapes = list(zip(polygons.geometries, polygons.class_ids))
    if not shapes:
        return np.full((size, size), IGNORE_INDEX, np.uint8)
    return rasterize(shapes, out_shape=(size, size), transform=window_transform,
                     fill=IGNORE_INDEX, dtype="uint8")


def spatial_split(windows: Sequence[Window], chip: int, share: float, seed: int = 0,
                  block_chips: int = SPLIT_BLOCK_CHIPS) -> Tuple[List[int], List[int]]:
    """(training, validation) chip indices: blocks of block_chips × block_chips neighbouring
    chips go wholly to one side; blocks are drawn (seeded) into validation until it holds the
    share of chips closest to `share`. With two chips or more and 0 < share < 1, each side gets
    at least one chip."""
    if not 0.0 <= share < 1.0:
        raise InputError(f"Validation share must be in [0, 1), got {share}")
    count = len(windows)
    if share == 0.0 or count < 2:
        return list(range(count)), []
    span = chip * block_chips
    blocks = {}
    for index, window in enumerate(windows):
        blocks.setdefault((int(window.row_off) // span, int(window.col_off) // span), []).append(index)
    if len(blocks) < 2:  # one block: split it by chips instead, still as whole chips
        blocks = {(i, 0): [i] for i in range(count)}
    keys = sorted(blocks)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    target = share * count
    validation: List[int] = []
    for key in keys:
        members = blocks[key]
        if validation and abs(len(validation) + len(members) - target) >= abs(len(validation) - target):
            continue
        if len(validation) + len(members) >= count:
            continue
        validation.extend(members)
    if not validation:  # even the smallest block overshoots: take the smallest one
        smallest = min(keys, key=lambda k: len(blocks[k]))
        validation = list(blocks[smallest])[:max(1, count - 1)]
    chosen = set(validation)
    return [i for i in range(count) if i not in chosen], sorted(validation)


def load_chips(raster: str, labels, class_field: str, chip: int = DEFAULT_CHIP,
               validation_share: float = DEFAULT_VALIDATION_SHARE, area=None, bands=None,
               class_names: Optional[Sequence[str]] = None, seed: int = 0,
               max_chips: int = MAX_CHIPS, monitor=None) -> ChipSet:
    """Chips of `raster` that hold at least one labelled pixel, split spatially. labels: a
    polygon file (any OGR format) or LabelFeatures.

    area: (xmin, ymin, xmax, ymax) in the raster's CRS; None: the whole raster."""
    with RasterReader(raster, bands, area) as reader:
        grid = reader.grid
        polygons = read_label_polygons(labels, class_field, grid.crs, class_names)
        windows, images, masks = [], [], []
        candidates = chip_windows(grid.width, grid.height, chip)
        for done, window in enumerate(candidates, start=1):
            if monitor is not None:
                monitor.report(done / len(candidates), f"Reading chip {done}/{len(candidates)}")
            transform = rasterio.windows.transform(window, grid.transform)
            label = rasterize_labels(polygons, transform, chip)
            if not (label != IGNORE_INDEX).any():
                continue
            image, valid = reader.read(window)
            label[~valid] = IGNORE_INDEX
            if not (label != IGNORE_INDEX).any():
                continue
            windows.append(window)
            images.append(image)
            masks.append(label)
            if len(windows) >= max_chips:
                break
    if not windows:
        raise InputError("No labelled pixel falls on valid raster pixels: do the polygons "
                         "overlap the raster (and the area)?")
    train, validation = spatial_split(windows, chip, validation_share, seed)
    return ChipSet(np.stack(images), np.stack(masks), windows, polygons.class_names,
                   train, validation)
