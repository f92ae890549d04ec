"""Which session serves a raster area: one :class:`~.pipeline.ReferringSession` per (raster
file and its modification, bands, window on the working grid, CRS, models, settings), kept in a
small LRU (:data:`SESSIONS`), so the next expressions on the same area skip both image
encoders."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Optional

import rasterio
from rasterio.windows import Window

from ..disk_cache import embedding_cache, raster_identity
from ..errors import InputError
from ..raster_io import RasterReader
from .loading import learned_prompter, load_models
from .pipeline import ReferringSession, ReferringSettings
from .request import ReferringRequest
from .tiling import open_reader, tile_windows


class SessionCache:
    """A small thread-safe LRU of sessions (each holds an area image, SAM's embedding and CLIP
    features: a few MB to a few tens of MB)."""

    def __init__(self, maxsize: int = 4):
        self.maxsize = maxsize
        self._items: "OrderedDict[Hashable, ReferringSession]" = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, build: Callable[[], Optional[ReferringSession]]
            ) -> Optional[ReferringSession]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            session = build()
            if session is None:            # nothing to cache (e.g. an all-nodata area)
                return None
            self._items[key] = session
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return session

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items


SESSIONS = SessionCache()


def session_key(request: ReferringRequest, reader: RasterReader, window: Window, sam, localizer,
                settings: ReferringSettings) -> Hashable:
    """Equal for the same pixels through the same models: the file's path, modification time
    and size (an edited raster is read again), bands, the window's transform and size, CRS."""
    path = os.path.abspath(request.raster)
    try:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    transform = rasterio.windows.transform(window, reader.grid.transform)
    return ("refer", path, stamp, tuple(reader.bands), tuple(round(v, 9) for v in transform[:6]),
            int(window.width), int(window.height), reader.grid.crs.to_wkt(), id(sam),
            id(localizer), settings, request.prompter)


def area_identity(request: ReferringRequest, reader: RasterReader, window: Window) -> dict:
    """The area as the disk cache knows it across processes: the raster file's identity (path,
    size, modification time), bands, the window on the working grid (transform, size), CRS."""
    transform = rasterio.windows.transform(window, reader.grid.transform)
    return {"raster": raster_identity(request.raster), "bands": list(reader.bands),
            "transform": [round(v, 9) for v in transform[:6]],
            "size": [int(window.width), int(window.height)], "crs": reader.grid.crs.to_wkt()}


def area_session(request: ReferringRequest, reader: RasterReader, window: Window, sam, localizer,
                 settings: ReferringSettings) -> Optional[ReferringSession]:
    """The cached session of one window, built (window read) when missing; None when the window
    is all nodata. Its encoders' outputs are also looked up in and stored to the disk cache."""
    prompter = learned_prompter(request, sam, localizer)

    def build():
        image, valid = reader.read(window)
        if not valid.any():
            return None
        if request.engine == "sam3":
            from .sam3_refer import Sam3ReferringSession

            return Sam3ReferringSession(image.transpose(1, 2, 0), sam, clicks=localizer,
                                        valid=valid,
                                        transform=rasterio.windows.transform(window, reader.grid.transform),
                                        crs=reader.grid.crs, weights=settings.weights)
        return ReferringSession(image.transpose(1, 2, 0), sam, localizer, valid=valid,
                                transform=rasterio.windows.transform(window, reader.grid.transform),
                                crs=reader.grid.crs, settings=settings,
                                area_key=area_identity(request, reader, window),
                                disk_cache=embedding_cache(models_folder=request.cache_dir),
                                prompter=prompter)

    return SESSIONS.get(session_key(request, reader, window, sam, localizer, settings), build)


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
        session = area_session(request, reader, tiles[0], sam, localizer, settings)
        if session is None:
            raise InputError(f"Raster '{request.raster}' has no valid pixels in the chosen area "
                             "(all nodata)")
        return session
