"""Class raster -> polygons with class, mean score and area, block by block.

Each block's regions (4-connected pixels of one class) are labelled and polygonised with
`rasterio.features.shapes`. Regions that touch an inner block edge may continue in the next
block: the labels on both sides of each seam say which pieces join (see SeamJoiner), and each
joined group becomes one polygon (score sums and pixel counts added), so the result equals
polygonising the whole raster at once, in time linear in the raster's area.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape
from shapely.strtree import STRtree

from .classes import BACKGROUND_INDEX, NODATA_INDEX
from .sliding import block_windows
from .union_find import UnionFind

VECTOR_BLOCK = 2048  # pixels per side of a polygonising block
CONNECTIVITY = 4     # regions are 4-connected: polygonising, labelling and seam joining agree
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
        seams = SeamJoiner(classes_ds.width, classes_ds.height)

        def finish(regions):
            return _finish(regions, transform, area_meter, tolerance, min_area_m2)

        for index, window in enumerate(blocks):
            if monitor is not None:
                monitor.report(index / len(blocks), "Vectorizing")
            labels = classes_ds.read(1, window=window)
            scores = score_ds.read(1, window=window)
            yield from finish(seams.add_block(labels, scores, window))
            if index + 1 == len(blocks) or blocks[index + 1].row_off != window.row_off:
                yield from finish(seams.end_row())


class SeamJoiner:
    """Joins regions cut by block seams by comparing the region labels on both sides of each seam.

    Blocks come row by row. Every block's regions are polygonised, burnt back into a label raster
    and given global keys; the pixel rows/columns on both sides of a seam give the pairs of keys
    that touch across it (same class, side by side: 4-connectivity, as polygonising), joined in a
    union-find. Regions that touch no inner block edge are final at once; the others (pieces, in pixel coordinates) are kept aside
    until the end of a block row, when every group none of whose pieces lies on the row's bottom
    seam can no longer grow: it is assembled once from its pieces (`_assemble`), and its pieces
    and union-find entries are dropped. So memory holds one row of blocks' pieces plus the groups
    still open, and no geometric predicate is evaluated."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pieces: Dict[int, Region] = {}   # pieces of groups that may still grow
        self.groups = UnionFind()
        self.bottom: List[int] = []           # this row's pieces on its bottom seam
        # Keys (-1: none) and classes of the pixels just above the current row's top seam, and
        # just left of the current block's left seam.
        self.above = (np.full(width, -1, np.int64), np.zeros(width, np.int64))
        self.left = None
        self._next_key = 0

    def add_block(self, labels: np.ndarray, scores: np.ndarray, window) -> List[Region]:
        """Polygonise and label one block; -> its regions that touch no inner seam (final)."""
        col, row = int(window.col_off), int(window.row_off)
        height, width = labels.shape
        pixel_transform = Affine.translation(col, row)  # global pixel coordinates: exact
        shapes = list(features.shapes(labels, mask=(labels != BACKGROUND_INDEX)
                                      & (labels != NODATA_INDEX),
                                      connectivity=CONNECTIVITY, transform=pixel_transform))
        # Region labels: burn region numbers back (boundaries follow pixel edges, so exact).
        ids = np.zeros(labels.shape, np.int32)
        if shapes:
            ids = features.rasterize(((geom, i + 1) for i, (geom, _) in enumerate(shapes)),
                                     out_shape=labels.shape, transform=pixel_transform,
                                     dtype="int32")
        classes = np.array([0] + [int(value) for _, value in shapes], np.int64)
        count = len(classes) - 1
        base = self._next_key - 1             # global key of region i: base + i
        self._next_key += count

        def edge(ids_line):                   # -> (keys, classes) of a row or column of pixels
            return np.where(ids_line > 0, ids_line + base, -1), classes[ids_line]

        inner_bottom = row + height < self.height
        inner_right = col + width < self.width
        on_seam = np.zeros(count + 1, bool)
        if col > 0:
            on_seam[ids[:, 0]] = True
            self._join(self.left, edge(ids[:, 0]))
        if row > 0:
            on_seam[ids[0]] = True
            self._join((self.above[0][col:col + width], self.above[1][col:col + width]),
                       edge(ids[0]))
        if inner_right:
            on_seam[ids[:, -1]] = True
        self.left = edge(ids[:, -1])
        on_bottom = np.zeros(count + 1, bool)
        if inner_bottom:
            on_seam[ids[-1]] = on_bottom[ids[-1]] = True
            self.above[0][col:col + width], self.above[1][col:col + width] = edge(ids[-1])
        if count == 0:
            return []
        flat = ids.ravel()
        score_sums = np.bincount(flat, weights=scores.ravel(), minlength=count + 1)
        pixels = np.bincount(flat, minlength=count + 1)
        final = []
        for i, (geojson, _) in enumerate(shapes, start=1):
            rings = [np.asarray(ring, np.float64) for ring in geojson["coordinates"]]
            region = Region(int(classes[i]), shapely.Polygon(rings[0], rings[1:]),
                            float(score_sums[i]), int(pixels[i]))
            if not on_seam[i]:
                final.append(region)
                continue
            key = base + i
            self.pieces[key] = region
            self.groups.add(key)
            if on_bottom[i]:
                self.bottom.append(key)
        return final

    def _join(self, side_a, side_b) -> None:
        """Union the keys of pixels facing each other across a seam with the same class."""
        keys_a, classes_a = side_a
        keys_b, classes_b = side_b
        touch = (keys_a >= 0) & (keys_b >= 0) & (classes_a == classes_b)
        if touch.any():
            pairs = np.unique(np.stack([keys_a[touch], keys_b[touch]], axis=1), axis=0)
            for a, b in pairs.tolist():
                self.groups.union(a, b)

    def end_row(self) -> List[Region]:
        """-> the groups finished with this row of blocks, each assembled into one Region."""
        open_roots = {self.groups.find(k) for k in self.bottom}
        members: Dict[int, List[int]] = {}
        for key in self.pieces:
            root = self.groups.find(key)
            if root not in open_roots:
                members.setdefault(root, []).append(key)
        finished = []
        for keys in members.values():
            pieces = [self.pieces.pop(k) for k in keys]
            geometry = (pieces[0].geometry if len(pieces) == 1
                        else _assemble([p.geometry for p in pieces]))
            finished.append(Region(pieces[0].class_index, geometry,
                                   sum(p.score_sum for p in pieces), sum(p.pixels for p in pieces)))
        self.groups.retain(self.pieces)
        self.bottom = []
        self.left = None
        return finished


def _assemble(pieces: Sequence) -> object:
    """One polygon from the pieces of one region, which share edges along block seams.

    A piece's holes lie strictly inside its block (a gap reaching the block's edge is outside
    the piece there), so no other piece can fill them: only the outer rings are unioned, and
    every hole is added back unchanged. That keeps the union (GEOS overlay, n·log n) to the
    rings that can change."""
    pieces = np.asarray(pieces, dtype=object)
    joined = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(pieces)))
    holes = list(joined.interiors) + [ring for piece in pieces for ring in piece.interiors]
    return shapely.Polygon(joined.exterior, holes)


def connected_groups(geoms: Sequence, predicate: str = "touches") -> List[List[int]]:
    """Indices of `geoms` grouped by chains of pieces sharing more than a corner point.

    predicate: the STRtree query that finds candidate pairs ('touches' for pieces that only
    meet at their boundaries, 'intersects' when they may overlap too).
    """
    groups = UnionFind(range(len(geoms)))
    if len(geoms) > 1:
        left, right = STRtree(geoms).query(geoms, predicate=predicate)
        for a, b in zip(left, right):
            if a < b and groups.find(a) != groups.find(b):
                shared = geoms[a].intersection(geoms[b])
                if shared.length > 0 or shared.area > 0:  # an edge or an overlap, not a corner
                    groups.union(int(a), int(b))
    return groups.groups()


def _finish(regions, transform, area_meter: AreaMeter, tolerance: float, min_area_m2: float):
    """Regions in pixel coordinates -> in the raster's CRS, simplified, valid, with areas."""
    if not regions:
        return
    geoms = shapely.transform(np.array([r.geometry for r in regions], dtype=object),
                              lambda xy: np.column_stack([
                                  transform.a * xy[:, 0] + transform.b * xy[:, 1] + transform.c,
                                  transform.d * xy[:, 0] + transform.e * xy[:, 1] + transform.f]))
    if tolerance > 0:
        geoms = shapely.simplify(geoms, tolerance, preserve_topology=True)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    for region, geometry, area in zip(regions, geoms, area_meter.area(geoms)):
        if area >= min_area_m2 and not geometry.is_empty:
            region.geometry = geometry
            region.area_m2 = area
            yield region
