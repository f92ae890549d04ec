"""Windowed raster reading: band choice, area, working resolution, nodata and 8-bit stretch.

The whole raster is never read. `RasterReader.read(window)` returns one window of the *working
grid* (the requested extent at the requested resolution) as 3-band uint8 plus a validity mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds

from .errors import InputError

# Percentiles used to stretch non-8-bit data to 0..255, robust to a few hot or dark pixels.
STRETCH_PERCENTILES = (2.0, 98.0)
METRES_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class Grid:
    """The pixel grid every output shares: size, affine transform and CRS."""

    width: int
    height: int
    transform: Affine
    crs: rasterio.crs.CRS

    @property
    def pixel_size(self) -> Tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax)"""
        t = self.transform
        xs = (t.c, t.c + t.a * self.width)
        ys = (t.f, t.f + t.e * self.height)
        return min(xs), min(ys), max(xs), max(ys)


def parse_bands(text: Optional[str]) -> Optional[list]:
    """'1,2,3' -> [1, 2, 3]; empty -> None (automatic choice)."""
    if text is None or not str(text).strip():
        return None
    try:
        bands = [int(b) for b in str(text).replace(" ", "").split(",") if b]
    except ValueError:
        raise InputError(f"Bands must be a comma-separated list of band numbers, got '{text}'")
    return bands


def default_bands(dataset) -> list:
    """Red, green, blue by colour interpretation when the file says so; else 1,2,3; 1 band as grey."""
    interp = list(dataset.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    if dataset.count >= 3:
        return [1, 2, 3]
    return [1]


class RasterReader:
    """Reads windows of a raster on a working grid as uint8 RGB with a validity mask.

    bands: 1-based band numbers, one (grey) or three (RGB); None picks RGB automatically.
    extent: (xmin, ymin, xmax, ymax) in the raster's CRS; None is the whole raster.
    resolution: working pixel size in metres; None keeps the native resolution.
    stretch: the 8-bit stretch another reader of the same request found (its `.stretch`), so the
    tasks of one run on a cluster read identical pixels without sampling the raster again;
    "auto" finds it here.
    """

    def __init__(self, path: str, bands: Optional[Sequence[int]] = None,
                 extent: Optional[Sequence[float]] = None, resolution: Optional[float] = None,
                 stretch="auto"):
        try:
            self._src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot open raster '{path}': {exc}") from None
        try:
            self._setup(path, bands, extent, resolution, stretch)
        except Exception:
            self._src.close()
            raise

    def _setup(self, path, bands, extent, resolution, stretch):
        src = self._src
        if src.crs is None:
            raise InputError(f"Raster '{path}' has no coordinate reference system; "
                             "assign one (e.g. with QGIS 'Assign projection') before segmenting")
        if src.transform.b != 0 or src.transform.d != 0:
            raise InputError(f"Raster '{path}' is rotated; warp it to a north-up grid first")
        self.bands = list(bands) if bands else default_bands(src)
        for band in self.bands:
            if not 1 <= band <= src.count:
                raise InputError(f"Band {band} does not exist: '{path}' has {src.count} band(s)")
        if len(self.bands) not in (1, 3):
            raise InputError(f"Choose one band (grey) or three bands (RGB), not {len(self.bands)}")
        self.path = path
        self.grid, self._source_window = self._working_grid(extent, resolution)
        self._vrt = None
        if (self.grid.width, self.grid.height) != (int(self._source_window.width),
                                                   int(self._source_window.height)):
            self._vrt = WarpedVRT(src, crs=src.crs, transform=self.grid.transform,
                                  width=self.grid.width, height=self.grid.height,
                                  resampling=Resampling.bilinear)
        self.stretch = self._stretch_ranges() if stretch == "auto" else stretch

    # -- grid ---------------------------------------------------------------------------------
    def _working_grid(self, extent, resolution) -> Tuple[Grid, Window]:
        src = self._src
        full = Window(0, 0, src.width, src.height)
        window = full
        if extent is not None:
            xmin, ymin, xmax, ymax = extent
            if not (xmax > xmin and ymax > ymin):
                raise InputError(f"Extent {tuple(extent)} is empty (need xmin<xmax, ymin<ymax)")
            window = from_bounds(xmin, ymin, xmax, ymax, transform=src.transform)
            window = window.round_offsets(op="floor").round_lengths(op="ceil")
            try:
                window = window.intersection(full)
            except rasterio.errors.WindowError:
                raise InputError("The chosen extent does not overlap the raster") from None
            if window.width < 1 or window.height < 1:
                raise InputError("The chosen extent does not overlap the raster")
        window = Window(int(window.col_off), int(window.row_off), int(window.width), int(window.height))
        transform = rasterio.windows.transform(window, src.transform)
        width, height = window.width, window.height
        if resolution:
            if resolution <= 0:
                raise InputError(f"Resolution must be positive, got {resolution}")
            native = metres_per_pixel(src.crs, src.transform, src.bounds)
            scale = resolution / native
            width = max(1, int(round(window.width / scale)))
            height = max(1, int(round(window.height / scale)))
            transform = transform * Affine.scale(window.width / width, window.height / height)
        return Grid(width, height, transform, src.crs), window

    # -- stretch --------------------------------------------------------------------------------
    def _stretch_ranges(self):
        """Per band (low, high) for non-8-bit data, from a decimated read or a sample of windows."""
        if all(self._src.dtypes[b - 1] == "uint8" for b in self.bands):
            return None
        src = self._src
        win = self._source_window
        scale = max(1.0, math.sqrt(win.width * win.height / 1024 ** 2))
        shape = (len(self.bands), max(1, int(win.height / scale)), max(1, int(win.width / scale)))
        data = src.read(self.bands, window=win, out_shape=shape, resampling=Resampling.nearest,
                        masked=True).astype("float64")
        ranges = []
        for band in data:
            values = band.compressed()
            values = values[np.isfinite(values)]
            if values.size == 0:
                raise InputError(f"Raster '{self.path}' has no valid pixels in the chosen area "
                                 "(all nodata)")
            low, high = np.percentile(values, STRETCH_PERCENTILES)
            if high <= low:
                high = low + 1.0
            ranges.append((float(low), float(high)))
        return ranges

    # -- reading --------------------------------------------------------------------------------
    def read(self, window: Window) -> Tuple[np.ndarray, np.ndarray]:
        """One window of the working grid -> (uint8 array (3, h, w), valid mask (h, w) bool)."""
        if self._vrt is not None:
            dataset, read_window = self._vrt, window
        else:
            dataset = self._src
            read_window = Window(window.col_off + self._source_window.col_off,
                                 window.row_off + self._source_window.row_off,
                                 window.width, window.height)
        data = dataset.read(self.bands, window=read_window)
        masks = dataset.read_masks(self.bands, window=read_window)
        valid = np.all(masks > 0, axis=0)
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        if self.stretch is None:
            image = data.astype(np.uint8, copy=False)
        else:
            image = np.empty(data.shape, np.uint8)
            for i, (low, high) in enumerate(self.stretch):
                band = np.nan_to_num(data[i].astype(np.float32), nan=low)
                image[i] = np.clip((band - low) * (255.0 / (high - low)), 0, 255).round()
        if image.shape[0] == 1:
            image = np.repeat(image, 3, axis=0)
        image[:, ~valid] = 0
        return image, valid

    def close(self):
        if self._vrt is not None:
            self._vrt.close()
        self._src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def metres_per_pixel(crs, transform, bounds) -> float:
    """Native pixel size in metres (geographic CRS: measured at the raster's centre latitude)."""
    if crs.is_geographic:
        # Geometric mean of the east-west and north-south pixel sizes at the centre latitude.
        lat = math.radians((bounds.bottom + bounds.top) / 2.0)
        return math.sqrt(abs(transform.a) * METRES_PER_DEGREE * math.cos(lat)
                         * abs(transform.e) * METRES_PER_DEGREE)
    size = (abs(transform.a) + abs(transform.e)) / 2.0
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return size * factor
