"""Referring segmentation of a raster: the engine entry point the front ends call.

    result = run_referring(ReferringRequest(raster="scene.tif",
                                            expressions=["the largest pond north of the road"],
                                            out_vector="ponds.gpkg", extent=(xmin, ymin, xmax, ymax)),
                           progress=lambda fraction, message: ..., cancelled=lambda: False)
    result.expressions[0].polygon_count, result.expressions[0].timing.cached

The area (``extent``, default the whole raster) is read by windows on a working grid: at
``resolution`` metres per pixel when given, else at the native resolution reduced so the long side
is at most ``max_size`` pixels (1024: SAM's own input size). An area that fits in one tile
(``tile_size``) is one :class:`ReferringSession`, cached across runs, so the next expressions on
the same area skip both image encoders; ``result.session`` and ``ExpressionResult.results`` give
it and its masks to the dock (refinement with clicks: ``session.refine``).

A larger area (e.g. the whole layer at a fine resolution) is tiled with overlap. Each tile returns
every instance of the target that satisfies the expression's relations; pieces of one
expression that overlap or touch across tile seams are dissolved into one polygon; then the
absolute position, order and number the expression asks for are applied to the merged polygons
over the whole area (``the largest``, ``in the north``, singular -> the best one).

One GeoPackage layer, fields ``expression``, ``score``, ``area_m2``, in the raster's CRS, written
under a temporary name and renamed when complete: a cancelled or failed run leaves nothing.
"""
from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
import shapely
from rasterio.windows import Window

from ..errors import InputError
from ..gpkg import PolygonLayerWriter
from ..models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE, DEFAULT_SAM_MODEL
from ..outputs import WorkDir, check_destination, publish
from ..progress import RunMonitor
from ..raster_io import RasterReader, metres_per_pixel
from ..sliding import window_starts
from ..vectorize import AreaMeter, connected_groups
from .parse import ParsedExpression, parse_expression
from .pipeline import (SESSIONS, QueryTimings, ReferringResult, ReferringSession,
                       ReferringSettings)
from .select import SelectionWeights

DEFAULT_MAX_SIZE = 1024
DEFAULT_TILE_SIZE = 1024
DEFAULT_TILE_OVERLAP = 128
DEFAULT_LAYER = "referring"
VECTOR_FIELDS = [("expression", "str"), ("score", "real"), ("area_m2", "real")]

_POSITION_TARGETS = {
    "left": (0.0, None), "right": (1.0, None), "top": (None, 0.0), "bottom": (None, 1.0),
    "top-left": (0.0, 0.0), "top-right": (1.0, 0.0), "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0), "centre": (0.5, 0.5),
}


@dataclass
class ReferringRequest:
    raster: str
    expressions: object                        # one expression or a list of them
    out_vector: str                            # GeoPackage (.gpkg)
    extent: Optional[Sequence[float]] = None   # xmin, ymin, xmax, ymax in the raster's CRS
    resolution: Optional[float] = None         # working pixel size, metres; None: see max_size
    max_size: Optional[int] = DEFAULT_MAX_SIZE  # long side cap without resolution; None: native
    bands: Optional[Sequence[int]] = None
    sam_model: str = DEFAULT_SAM_MODEL
    sam_weights: Optional[str] = None          # file, catalog name, None: the catalog's for sam_model
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    device: str = DEFAULT_DEVICE
    threshold: float = 0.0                     # results scoring below this are dropped
    tile_size: int = DEFAULT_TILE_SIZE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    simplify: float = 0.0                      # polygon simplification, pixels
    layer_name: str = DEFAULT_LAYER
    settings: Optional[ReferringSettings] = None


@dataclass
class ExpressionTiming:
    """Seconds for one expression, summed over tiles. ``cached``: no image encoder ran for it
    (the area's SAM embedding and CLIP features came from the session)."""

    clip_encode: float = 0.0
    sam_encode: float = 0.0
    prompting: float = 0.0      # maps, prompts, SAM decoding, region scores, selection
    vectorize: float = 0.0
    total: float = 0.0
    cached: bool = True
    candidates: int = 0

    def add(self, t: QueryTimings) -> None:
        self.clip_encode += t.clip_encode
        self.sam_encode += t.sam_encode
        self.prompting += t.prompting
        self.candidates += t.candidates
        self.cached &= t.cached


@dataclass(eq=False)
class ExpressionResult:
    expression: str
    parsed: ParsedExpression
    polygon_count: int = 0
    scores: List[float] = field(default_factory=list)
    areas_m2: List[float] = field(default_factory=list)
    timing: ExpressionTiming = field(default_factory=ExpressionTiming)
    results: List[ReferringResult] = field(default_factory=list)   # single-tile runs only
    geometries: List[object] = field(default_factory=list)         # shapely, raster CRS


@dataclass(eq=False)
class ReferringRunResult:
    vector_path: str
    layer_name: str
    expressions: List[ExpressionResult]
    width: int
    height: int
    tiles: int
    resolution_m: float
    crs_wkt: str
    device: str
    session: Optional[ReferringSession] = None   # the area's session when it was one tile
    read_seconds: float = 0.0
    model_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def polygon_count(self) -> int:
        return sum(e.polygon_count for e in self.expressions)


# --------------------------------------------------------------------------------------------
# Inputs


def parse_expressions(expressions) -> List[Tuple[str, ParsedExpression]]:
    """Each non-empty expression with its parse; InputError for none, an empty one or one whose
    target cannot be found."""
    if isinstance(expressions, str):
        expressions = [expressions]
    items = [str(e if e is not None else "").strip() for e in (expressions or [])]
    if not items:
        raise InputError("Type an expression, e.g. 'the largest pond north of the road'.")
    out = []
    for text in items:
        if not text:
            raise InputError("An expression is empty: say what to segment, e.g. 'the largest "
                             "pond north of the road'.")
        out.append((text, parse_expression(text)))
    return out


def open_reader(request: ReferringRequest) -> RasterReader:
    """The area on its working grid (resolution, or the native one capped at max_size)."""
    reader = RasterReader(request.raster, request.bands, request.extent, request.resolution)
    if request.resolution is None and request.max_size:
        if request.max_size < 16:
            reader.close()
            raise InputError(f"The working size must be at least 16 px, got {request.max_size}")
        long_side = max(reader.grid.width, reader.grid.height)
        if long_side > request.max_size:
            with rasterio.open(request.raster) as src:
                native = metres_per_pixel(src.crs, src.transform, src.bounds)
            resolution = native * long_side / request.max_size * (1.0 + 1e-9)
            reader.close()
            reader = RasterReader(request.raster, request.bands, request.extent, resolution)
    return reader


def tile_windows(width: int, height: int, tile: int = DEFAULT_TILE_SIZE,
                 overlap: int = DEFAULT_TILE_OVERLAP) -> List[Window]:
    """Overlapping tiles covering the working grid; one window when it fits."""
    if tile < 64 or not 0 <= overlap < tile // 2:
        raise InputError(f"Tiles must be at least 64 px with an overlap below half a tile "
                         f"(got {tile} and {overlap})")
    if width <= tile and height <= tile:
        return [Window(0, 0, width, height)]
    xs = window_starts(width, tile, tile - overlap)
    ys = window_starts(height, tile, tile - overlap)
    return [Window(x, y, min(tile, width - x), min(tile, height - y)) for y in ys for x in xs]


_LOCALIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def localizer_for(clip):
    """One ``Localizer`` per dense CLIP model (it keeps the text-embedding cache); an object that
    already localises (``localize`` method) is returned as is."""
    if hasattr(clip, "localize"):
        return clip
    from .localize import Localizer

    try:
        localizer = _LOCALIZERS.get(clip)
        if localizer is None:
            localizer = _LOCALIZERS[clip] = Localizer(clip)
        return localizer
    except TypeError:                        # not weak-referenceable
        return Localizer(clip)


def load_models(request: ReferringRequest, sam=None, clip=None, monitor: Optional[RunMonitor] = None):
    """-> (sam, localizer, device name): the given ones, or the request's through the model cache."""
    from ..device import resolve_device

    device = resolve_device(request.device)

    def downloading(what):
        def report(done, total):
            if monitor is not None:
                monitor.report(0.0, f"Downloading {what} weights: {done / 2 ** 20:.0f}"
                                    + (f" of {total / 2 ** 20:.0f} MB" if total else " MB"))
        return report

    cache_dir = None
    if sam is None or clip is None:
        from ..models.download import resolve_cache_dir

        cache_dir = resolve_cache_dir()  # once for both models
    if sam is None:
        from ..models.shared import sam_model

        sam = sam_model(request.sam_model, request.sam_weights, str(device),
                        download_progress=downloading("SAM"), cache_dir=cache_dir)
    if clip is None:
        from ..models.shared import dense_clip_scorer

        clip = dense_clip_scorer(request.clip_model, request.clip_weights, str(device),
                                 download_progress=downloading("CLIP"), cache_dir=cache_dir)
    return sam, localizer_for(clip), str(device)


def _session_key(request: ReferringRequest, reader: RasterReader, window: Window, sam, localizer,
                 settings: ReferringSettings):
    path = os.path.abspath(request.raster)
    try:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    transform = rasterio.windows.transform(window, reader.grid.transform)
    return ("refer", path, stamp, tuple(reader.bands), tuple(round(v, 9) for v in transform[:6]),
            int(window.width), int(window.height), reader.grid.crs.to_wkt(), id(sam),
            id(localizer), settings)


def open_session(request: ReferringRequest, sam=None, clip=None) -> ReferringSession:
    """The (cached) session of the request's area, for interactive use (queries, refinement).
    The area must fit in one tile at the working resolution."""
    sam, localizer, _ = load_models(request, sam, clip)
    settings = request.settings or ReferringSettings()
    with open_reader(request) as reader:
        tiles = tile_windows(reader.grid.width, reader.grid.height, request.tile_size,
                             request.tile_overlap)
        if len(tiles) != 1:
            raise InputError(f"The area is {reader.grid.width}×{reader.grid.height} px at this "
                             f"resolution, more than one {request.tile_size}-px tile: zoom in, "
                             "choose a coarser resolution, or run it as a (tiled) batch")
        session = _session(request, reader, tiles[0], sam, localizer, settings)
        if session is None:
            raise InputError(f"Raster '{request.raster}' has no valid pixels in the chosen area "
                             "(all nodata)")
        return session


def _session(request, reader, window, sam, localizer, settings) -> Optional[ReferringSession]:
    def build():
        image, valid = reader.read(window)
        if not valid.any():
            return None
        return ReferringSession(image.transpose(1, 2, 0), sam, localizer, valid=valid,
                                transform=rasterio.windows.transform(window, reader.grid.transform),
                                crs=reader.grid.crs, settings=settings)

    return SESSIONS.get(_session_key(request, reader, window, sam, localizer, settings), build)


# --------------------------------------------------------------------------------------------
# The run


def run_referring(request: ReferringRequest, progress=None, cancelled=None, sam=None, clip=None
                  ) -> ReferringRunResult:
    """Segment what each expression of `request` refers to and write one GeoPackage layer.

    sam: a segment_anything ``Sam`` (or predictor / predictor factory, see
    ``pipeline.make_predictor``); clip: a ``DenseClip`` or a localizer. None loads the request's
    models through the process-wide model cache.
    """
    started = time.perf_counter()
    monitor = RunMonitor(progress, cancelled)
    expressions = parse_expressions(request.expressions)
    if not request.out_vector:
        raise InputError("Choose an output GeoPackage (.gpkg)")
    out_vector = check_destination(request.out_vector, (".gpkg",))
    if not 0.0 <= request.threshold < 1.0:
        raise InputError(f"Threshold must be in [0, 1), got {request.threshold}")
    settings = request.settings or ReferringSettings()

    with open_reader(request) as reader:
        grid = reader.grid
        tiles = tile_windows(grid.width, grid.height, request.tile_size, request.tile_overlap)
        WorkDir(out_vector).cleanup()       # the output folder exists and is writable: fail early
        monitor.report(0.0, "Loading models")
        tick = time.perf_counter()
        sam, localizer, device = load_models(request, sam, clip, monitor)
        model_seconds = time.perf_counter() - tick
        results = [ExpressionResult(text, parsed) for text, parsed in expressions]
        tiled = len(tiles) > 1
        pieces: List[List[Tuple[object, float]]] = [[] for _ in results]
        steps = len(tiles) * len(results)
        step = 0
        read_seconds = 0.0
        last_session = None
        any_valid = False
        pixel = (abs(grid.transform.a) + abs(grid.transform.e)) / 2.0
        tolerance = request.simplify * pixel
        for t_index, window in enumerate(tiles):
            monitor.check()
            tick = time.perf_counter()
            session = _session(request, reader, window, sam, localizer, settings)
            read_seconds += time.perf_counter() - tick
            if session is None:            # all nodata
                step += len(results)
                continue
            any_valid = True
            last_session = session
            where = f" (tile {t_index + 1}/{len(tiles)})" if tiled else ""
            if not session.encoded:
                monitor.report(step / steps, f"Encoding the area{where}")
            for e_index, expression in enumerate(results):
                monitor.report(step / steps, f"'{expression.expression}'{where}")
                tick = time.perf_counter()
                found = session.query(expression.expression, local_only=tiled)
                expression.timing.add(session.last_timings)
                expression.timing.total += time.perf_counter() - tick
                tick = time.perf_counter()
                for item in found:
                    geometry = session.to_geometry(item)
                    if geometry is None:
                        continue
                    pieces[e_index].append((geometry, item.score))
                    if not tiled:
                        expression.results.append(item)
                elapsed = time.perf_counter() - tick
                expression.timing.vectorize += elapsed
                expression.timing.total += elapsed
                step += 1
        if not any_valid:
            raise InputError(f"Raster '{request.raster}' has no valid pixels in the chosen area "
                             "(all nodata)")
        monitor.report(0.95, "Writing polygons")
        weights = settings.weights
        rows = []
        for expression, found in zip(results, pieces):
            tick = time.perf_counter()
            if tiled:
                found = select_across_tiles(merge_pieces(found), expression.parsed, grid.bounds,
                                            weights)
            kept = []
            for geometry, score in found:
                if score < request.threshold:
                    continue
                if tolerance > 0:
                    geometry = shapely.make_valid(geometry.simplify(tolerance,
                                                                    preserve_topology=True))
                kept.append((geometry, score))
            if not tiled and request.threshold > 0:
                expression.results = [r for r in expression.results if r.score >= request.threshold]
            meter = AreaMeter(grid.crs, grid.bounds)
            areas = meter.area([g for g, _ in kept]) if kept else []
            for (geometry, score), area in zip(kept, areas):
                rows.append((geometry, expression.expression, score, area))
                expression.scores.append(float(score))
                expression.areas_m2.append(float(area))
                expression.geometries.append(geometry)
            expression.polygon_count = len(kept)
            elapsed = time.perf_counter() - tick
            expression.timing.vectorize += elapsed
            expression.timing.total += elapsed
        write_referring_layer(out_vector, grid.crs, rows, request.layer_name, monitor)
        monitor.report(1.0, "Done")
        with rasterio.open(request.raster) as src:
            native = metres_per_pixel(src.crs, src.transform, src.bounds)
        resolution = native * abs(grid.transform.a) / abs(src.transform.a)
        return ReferringRunResult(out_vector, request.layer_name, results, grid.width, grid.height,
                                  len(tiles), resolution, grid.crs.to_wkt(), device,
                                  None if tiled else last_session, read_seconds, model_seconds,
                                  time.perf_counter() - started)


def write_referring_layer(out_vector: str, crs, rows: Iterable[Tuple], layer_name: str = DEFAULT_LAYER,
                          monitor: Optional[RunMonitor] = None) -> int:
    """Write rows ``(geometry, expression, score[, area_m2])`` as one polygon layer, atomically
    (temporary name, renamed when complete). Area is computed when not given. -> feature count."""
    out_vector = check_destination(out_vector, (".gpkg",))
    rows = list(rows)
    work = WorkDir(out_vector)
    try:
        temporary = work.file("referring.gpkg")
        writer = PolygonLayerWriter(temporary, layer_name, crs, VECTOR_FIELDS)
        try:
            missing = [row[0] for row in rows if len(row) < 4]
            if missing:
                bounds = shapely.union_all(missing).bounds
                computed = iter(AreaMeter(crs, bounds).area(missing))
            for row in rows:
                geometry, expression, score = row[:3]
                area = row[3] if len(row) >= 4 else next(computed)
                writer.add(geometry, expression=str(expression), score=round(float(score), 4),
                           area_m2=round(float(area), 2))
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if monitor is not None:
            monitor.check()            # last chance to cancel before the output appears
        publish(temporary, out_vector)
        return writer.count
    finally:
        work.cleanup()


# --------------------------------------------------------------------------------------------
# Across tiles


def merge_pieces(pieces: Sequence[Tuple[object, float]]) -> List[Tuple[object, float]]:
    """Dissolve pieces (geometry, score) that overlap or share an edge into one polygon each
    (score: the best piece's). Pieces meeting at a corner only stay apart."""
    if len(pieces) <= 1:
        return list(pieces)
    geoms = [g for g, _ in pieces]
    merged = []
    for members in connected_groups(geoms, predicate="intersects"):
        geometry = (geoms[members[0]] if len(members) == 1
                    else shapely.union_all([geoms[i] for i in members]))
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        merged.append((geometry, max(pieces[i][1] for i in members)))
    return merged


def _position_value(geometry, position: str, bounds) -> Tuple[float, bool]:
    xmin, ymin, xmax, ymax = bounds
    c = geometry.centroid
    rel_x = (c.x - xmin) / max(xmax - xmin, 1e-12)
    rel_y = (ymax - c.y) / max(ymax - ymin, 1e-12)        # 0 = north edge, as image rows
    tx, ty = _POSITION_TARGETS[position]
    parts = [1.0 - abs(rel - target) / max(target, 1.0 - target)
             for target, rel in ((tx, rel_x), (ty, rel_y)) if target is not None]
    return float(np.mean(parts)), all(p >= 0.5 for p in parts)


def _order_value(geometry, key: str) -> Optional[float]:
    if key == "area":
        return geometry.area
    if key == "x":
        return geometry.centroid.x
    if key == "y":
        return -geometry.centroid.y                       # ascending = from the north
    if key == "length":
        rect = shapely.oriented_envelope(geometry)
        if rect.geom_type != "Polygon":
            return rect.length
        xy = np.asarray(rect.exterior.coords)
        return float(max(np.hypot(*(xy[1] - xy[0])), np.hypot(*(xy[2] - xy[1]))))
    return None                                           # distance: references are per tile


def select_across_tiles(groups: Sequence[Tuple[object, float]], parsed: ParsedExpression, bounds,
                        weights: Optional[SelectionWeights] = None) -> List[Tuple[object, float]]:
    """The expression's position, order and number applied to merged polygons over the whole
    area, as ``select.select_candidates`` does inside one tile: position re-weights the score
    (``modifier_strength``), order sorts the instances (score ≥ ``instance_relative`` × best),
    plural keeps them all (at most ``count``), singular keeps the best."""
    w = weights or SelectionWeights()
    if not groups:
        return []
    scored = []
    for geometry, score in groups:
        hold = True
        if parsed.position is not None:
            value, hold = _position_value(geometry, parsed.position, bounds)
            s = float(np.clip(w.modifier_strength, 0.0, 1.0))
            score = score * ((1.0 - s) + s * value)
        scored.append((geometry, float(score), hold))
    best = max(scored, key=lambda item: item[1])
    if not (parsed.plural or parsed.order is not None):
        return [best[:2]]
    floor = w.instance_relative * best[1]
    pool = [item for item in scored if item[1] >= floor and item[2]] or [best]
    wanted = parsed.count if (parsed.plural and parsed.count) else None
    if parsed.order is not None:
        values = [_order_value(g, parsed.order.key) for g, _, _ in pool]
        if all(v is not None for v in values):
            ranked = sorted(zip(values, range(len(pool))), reverse=parsed.order.descending)
            pool = [pool[i] for _, i in ranked]
        else:
            pool.sort(key=lambda item: -item[1])
        start = min(max(1, parsed.order.rank), len(pool)) - 1
        return [item[:2] for item in pool[start:start + (wanted or 1)]]
    pool.sort(key=lambda item: -item[1])
    return [item[:2] for item in (pool[:wanted] if wanted else pool)]
