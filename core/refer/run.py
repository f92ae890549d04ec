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

The parts live by job: ``request.py`` (request, results, expression check), ``tiling.py``
(working grid, tiles), ``loading.py`` (models), ``sessions.py`` (the session cache and its keys),
``merge.py`` (across tiles), ``writer.py`` (the GeoPackage).
"""
from __future__ import annotations

import time
from typing import List, Tuple

import rasterio
import shapely

from ..errors import InputError
from ..interrupt import cancel_points
from ..outputs import check_destination, check_outputs
from ..progress import RunMonitor
from ..raster_io import metres_per_pixel
from ..vectorize import AreaMeter
from .loading import load_models, model_libraries
from .merge import merge_pieces, select_across_tiles
from .pipeline import ReferringSettings
from .request import (DEFAULT_MAX_SIZE, DEFAULT_TILE_SIZE, ExpressionResult, ReferringRequest,
                      ReferringRunResult, parse_expressions)
from .sessions import area_session, open_session
from .tiling import open_reader, tile_windows
from .writer import write_referring_layer
from ..threads import all_cores

# What the front ends use of the referring engine.
__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_TILE_SIZE", "ReferringRequest", "ReferringRunResult",
           "ExpressionResult", "model_libraries", "parse_expressions", "open_session",
           "run_referring"]


def run_referring(request: ReferringRequest, progress=None, cancelled=None, sam=None, clip=None
                  ) -> ReferringRunResult:
    """Segment what each expression of `request` refers to and write one GeoPackage layer.

    sam: a segment_anything ``Sam`` (or predictor / predictor factory, see
    ``pipeline.make_predictor``); clip: a ``DenseClip`` or a localizer. None loads the request's
    models through the process-wide model cache.
    """
    all_cores()   # this thread may have been handed one torch thread (core/threads.py)
    started = time.perf_counter()
    monitor = RunMonitor(progress, cancelled)
    expressions = parse_expressions(request.expressions)
    if not request.out_vector:
        raise InputError("Choose an output GeoPackage (.gpkg)")
    out_vector = check_destination(request.out_vector, (".gpkg",))
    check_outputs([out_vector], [request.raster])  # folder writable, not the input: fail early
    if not 0.0 <= request.threshold < 1.0:
        raise InputError(f"Threshold must be in [0, 1), got {request.threshold}")
    settings = request.settings or ReferringSettings()

    with open_reader(request) as reader, cancel_points(monitor.check):
        grid = reader.grid
        tiles = tile_windows(grid.width, grid.height, request.tile_size, request.tile_overlap)
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
            session = area_session(request, reader, window, sam, localizer, settings)
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
