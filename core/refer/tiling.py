"""The working grid of a referring run and its tiles.

The area (``extent``, default the whole raster) is read at ``resolution`` metres per pixel when
given, else at the native resolution reduced so the long side is at most ``max_size`` pixels.
An area that fits in one tile (``tile_size``) is one window; a larger one is cut into
overlapping tiles (``tile_overlap``) so an object cut by one seam lies whole in a neighbour.
"""
from __future__ import annotations

from typing import List

import rasterio
from rasterio.windows import Window

from ..errors import InputError
from ..raster_io import RasterReader, metres_per_pixel
from ..sliding import window_starts
from .request import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, ReferringRequest


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
