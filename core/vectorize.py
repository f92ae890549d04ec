"""Class raster -> polygons with class, mean score and area, block by block.

Each block is polygonised with `rasterio.features.shapes` (4-connected regions). Regions that touch
an inner block edge may continue in the next block: they are kept aside and, at the end, pieces
of one class that share an edge are dissolved into one polygon (their score sums and pixel
counts added), so the result equals polygonising the whole raster at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.strtree import STRtree

from .classes import BACKGROUND_INDEX, NODATA_INDEX
from .sliding import block_windows

VECTOR_BLOCK = 2048  # pixels per side of a polygonising block
# Longest edge, in degrees, of a geographic polygon before it is projected for its area: a long
# edge along a parallel would become a straight chord in the equal-area projection (far too small
# an area near the poles); at 0.05° the chord error is below 1e-6 of the area.
AREA_DENSIFY_DEGREES = 0.05


@dataclass
class Region:
    class_index: int        # 1..K
    geometry: object        # shapely Polygon/MultiPolygon in the raster's CRS
    score_sum: float        # sum of per-pixel scores
    pixels: int
    area_m2: float = 0.0

    @property
    def score(self) -> float:
        return self.score_sum / max(self.pixels, 1)


class AreaMeter:
    """Areas in square metres: planar for projected CRSs; for geographic ones, edges densified
    (so parallels stay parallels) and projected to a Lambert equal-area projection."""

    def __init__(self, crs: CRS, bounds):
        self._crs = crs
        self._factor = 1.0
        self._equal_area = None
        if crs.is_geographic:
            lon = (bounds[0] + bounds[2]) / 2.0
            lat = (bounds[1] + bounds[3]) / 2.0
            self._equal_area = CRS.from_proj4(
                f"+proj=laea +lat_0={lat} +lon_0={lon} +x_0=0 +y_0=0 +ellps=WGS84 +units=m")
        elif crs.linear_units_factor:
            self._factor = crs.linear_units_factor[1]

    def area(self, geometries: Sequence) -> List[float]:
        if self._equal_area is None:
            return [g.area * self._factor ** 2 for g in geometries]
        dense = shapely.segmentize(list(geometries), AREA_DENSIFY_DEGREES)
        projected = transform_geom(self._crs, self._equal_area, [mapping(g) for g in dense])
        return [shape(g).area for g in projected]


def vectorize(class_path: str, score_path: str, monitor=None, simplify: float = 0.0,
              min_area_m2: float = 0.0, block: int = VECTOR_BLOCK) -> Iterator[Region]:
    """Yield one Region per connected area of a class (background and nodata excluded).

    simplify: tolerance in pixels (0 keeps exact pixel edges); min_area_m2 drops small regions.
    """
    with rasterio.open(class_path) as classes_ds, rasterio.open(score_path) as score_ds:
        transform = classes_ds.transform
        area_meter = AreaMeter(classes_ds.crs, classes_ds.bounds)
        tolerance = simplify * (abs(transform.a) + abs(transform.e)) / 2.0
        blocks = block_windows(classes_ds.width, classes_ds.height, block)
        seams = SeamJoiner()
        for index, window in enumerate(blocks):
            if monitor is not None:
                monitor.report(index / len(blocks), "Vectorizing")
            labels = classes_ds.read(1, window=window)
            scores = score_ds.read(1, window=window)
            for region, touches_seam, touches_bottom in _block_regions(labels, scores, window,
                                                                        classes_ds):
                if touches_seam:
                    seams.add(region, touches_bottom)
                else:
                    yield from _finish([region], area_meter, tolerance, min_area_m2)
            if index + 1 == len(blocks) or blocks[index + 1].row_off != window.row_off:
                yield from _finish(seams.end_row(), area_meter, tolerance, min_area_m2)


class SeamJoiner:
    """Joins pieces cut by block seams, one row of blocks at a time.

    At the end of a row, the row's pieces are matched (shared edge, same class) with each other
    and with the previous row's pieces on the seam between the rows, so each comparison involves
    two rows at most. Pieces are kept in a union-find; a group is final once none of its pieces
    reaches the next row, and is then dissolved with one union."""

    def __init__(self):
        self.pending: Dict[int, Region] = {}   # pieces of groups that may still grow
        self.parent: Dict[int, int] = {}
        self.row: List[int] = []               # this row's pieces
        self.reaching: List[int] = []          # previous row's pieces on its bottom seam
        self.bottom: set = set()               # this row's pieces on its bottom seam
        self._next_key = 0

    def add(self, region: Region, touches_bottom: bool) -> None:
        key = self._next_key
        self._next_key += 1
        self.pending[key] = region
        self.parent[key] = key
        self.row.append(key)
        if touches_bottom:
            self.bottom.add(key)

    def _root(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def end_row(self) -> List[Region]:
        by_class: Dict[int, List[int]] = {}
        for key in self.row + self.reaching:
            by_class.setdefault(self.pending[key].class_index, []).append(key)
        for keys in by_class.values():  # pieces of different classes never join
            if len(keys) < 2:
                continue
            geoms = [self.pending[k].geometry for k in keys]
            left, right = STRtree(geoms).query(geoms, predicate="touches")
            for a, b in zip(left, right):
                ka, kb = keys[a], keys[b]
                if (a < b and self._root(ka) != self._root(kb)
                        and geoms[a].intersection(geoms[b]).length > 0):  # an edge, not a corner
                    self.parent[self._root(ka)] = self._root(kb)
        open_roots = {self._root(k) for k in self.bottom}
        groups: Dict[int, List[int]] = {}
        for key in self.pending:
            root = self._root(key)
            if root not in open_roots:
                groups.setdefault(root, []).append(key)
        finished = []
        for members in groups.values():
            pieces = [self.pending.pop(k) for k in members]
            geometry = (pieces[0].geometry if len(pieces) == 1
                        else shapely.union_all([p.geometry for p in pieces]))
            finished.append(Region(pieces[0].class_index, geometry,
                                   sum(p.score_sum for p in pieces), sum(p.pixels for p in pieces)))
        # Union-find entries of finished groups are no longer needed.
        self.parent = {k: self._root(k) for k in self.pending}
        self.reaching = sorted(self.bottom)
        self.row, self.bottom = [], set()
        return finished


def _block_regions(labels, scores, window, dataset):
    mask = (labels != BACKGROUND_INDEX) & (labels != NODATA_INDEX)
    if not mask.any():
        return
    transform = rasterio.windows.transform(window, dataset.transform)
    shapes = list(features.shapes(labels, mask=mask, connectivity=4))
    # Per-region sums of score: burn region ids back (boundaries follow pixel edges, so exact).
    ids = features.rasterize(((geom, i + 1) for i, (geom, _) in enumerate(shapes)),
                             out_shape=labels.shape, dtype="int32")
    score_sums = np.bincount(ids.ravel(), weights=scores.ravel().astype(np.float64),
                             minlength=len(shapes) + 1)
    counts = np.bincount(ids.ravel(), minlength=len(shapes) + 1)
    col_off, row_off = int(window.col_off), int(window.row_off)
    height, width = labels.shape
    inner_left, inner_top = col_off > 0, row_off > 0
    inner_right = col_off + width < dataset.width
    inner_bottom = row_off + height < dataset.height
    coeffs = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    for i, (geom, value) in enumerate(shapes):
        pixel_shape = shape(geom)
        minx, miny, maxx, maxy = pixel_shape.bounds
        bottom = inner_bottom and maxy >= height
        touches = ((inner_left and minx <= 0) or (inner_top and miny <= 0)
                   or (inner_right and maxx >= width) or bottom)
        geometry = shapely.affinity.affine_transform(pixel_shape, coeffs)
        yield (Region(int(value), geometry, float(score_sums[i + 1]), int(counts[i + 1])),
               touches, bottom)


def connected_groups(geoms: Sequence, predicate: str = "touches") -> List[List[int]]:
    """Indices of `geoms` grouped by chains of pieces sharing more than a corner point.

    predicate: the STRtree query that finds candidate pairs ('touches' for pieces that only
    meet at their boundaries, 'intersects' when they may overlap too).
    """
    parent = list(range(len(geoms)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if len(geoms) > 1:
        left, right = STRtree(geoms).query(geoms, predicate=predicate)
        for a, b in zip(left, right):
            if a < b and root(a) != root(b):
                shared = geoms[a].intersection(geoms[b])
                if shared.length > 0 or shared.area > 0:  # an edge or an overlap, not a corner
                    parent[root(a)] = root(b)
    groups: Dict[int, List[int]] = {}
    for i in range(len(geoms)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _finish(regions, area_meter: AreaMeter, tolerance: float, min_area_m2: float):
    geoms = []
    for region in regions:
        geometry = region.geometry
        if tolerance > 0:
            geometry = geometry.simplify(tolerance, preserve_topology=True)
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        region.geometry = geometry
        geoms.append(geometry)
    for region, area in zip(regions, area_meter.area(geoms)):
        if area >= min_area_m2 and not region.geometry.is_empty:
            region.area_m2 = area
            yield region
