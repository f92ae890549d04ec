"""Windowed raster reading: band choice, area, working resolution, nodata and 8-bit stretch.

The whole raster is never read. `RasterReader.read(window)` returns one window of the *working
grid* (the requested extent at the requested resolution) as 3-band uint8 plus a validity mask.
"""
from __future__ import annotations

import contextlib
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
# Largest working grid accepted (pixels in all): a finer --resolution asks for more than any
# run can finish; and a working pixel may be at most this many times finer than the raster's.
MAX_GRID_PIXELS = 2 ** 31
MAX_UPSAMPLING = 16.0


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
    """

    def __init__(self, path: str, bands: Optional[Sequence[int]] = None,
                 extent: Optional[Sequence[float]] = None, resolution: Optional[float] = None):
        try:
            self._src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot open raster '{path}': {exc}") from None
        try:
            self._setup(path, bands, extent, resolution)
        except Exception:
            self._src.close()
            raise

    def _setup(self, path, bands, extent, resolution):
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
        # A paletted band holds colour-table indices, not brightness: read through the table.
        self.palette = palette_lut(src) if self.bands == [1] else None
        self.grid, self._source_window = self._working_grid(extent, resolution)
        self._vrt = None
        if (self.grid.width, self.grid.height) != (int(self._source_window.width),
                                                   int(self._source_window.height)):
            # Indices must not be interpolated between palette entries.
            resampling = Resampling.nearest if self.palette is not None else Resampling.bilinear
            self._vrt = WarpedVRT(src, crs=src.crs, transform=self.grid.transform,
                                  width=self.grid.width, height=self.grid.height,
                                  resampling=resampling)
        self.stretch = None if self.palette is not None else self._stretch_ranges()

    # -- grid ---------------------------------------------------------------------------------
    def _working_grid(self, extent, resolution) -> Tuple[Grid, Window]:
        src = self._src
        full = Window(0, 0, src.width, src.height)
        window = full
        if extent is not None:
            xmin, ymin, xmax, ymax = extent
            if not all(math.isfinite(v) for v in extent):
                raise InputError(f"Extent {tuple(extent)} has a value that is not a finite number")
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
        if resolution is not None:
            width, height = working_size(window.width, window.height, resolution,
                                         metres_per_pixel(src.crs, src.transform, src.bounds))
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
        with self._read_errors():
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
        with self._read_errors():
            data = dataset.read(self.bands, window=read_window)
            masks = dataset.read_masks(self.bands, window=read_window)
        valid = np.all(masks > 0, axis=0)
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        if self.palette is not None:
            colours = self.palette[np.clip(data[0], 0, len(self.palette) - 1).astype(np.intp)]  # (h,w,4)
            valid &= colours[..., 3] > 0
            image = np.ascontiguousarray(colours[..., :3].transpose(2, 0, 1))
        elif self.stretch is None:
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

    @contextlib.contextmanager
    def _read_errors(self):
        """GDAL read failures (a truncated or damaged file that still opens) -> one InputError."""
        try:
            yield
        except (rasterio.errors.RasterioError, OSError) as exc:  # RasterioIOError is an OSError
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if detail.startswith("Read or write failed. "):
                detail = detail[len("Read or write failed. "):]
            if detail.startswith(str(self.path)):
                detail = detail[len(str(self.path)):].lstrip(" ,:")
            raise InputError(f"Raster '{self.path}' cannot be read: the file is damaged or "
                             f"incomplete ({detail[:160]}); copy or download it again") from None

    def close(self):
        if self._vrt is not None:
            self._vrt.close()
        self._src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def working_size(width: int, height: int, resolution: float, native: float) -> Tuple[int, int]:
    """Size in pixels of a `width`×`height` px area (native pixel `native` m) at `resolution` m;
    InputError for non-finite, non-positive or absurd values (saying what grid they ask for)."""
    if not math.isfinite(resolution) or resolution <= 0:
        raise InputError(f"Resolution must be a positive number of metres per pixel, got {resolution}")
    scale = resolution / native
    new_w, new_h = width / scale, height / scale
    if new_w < 1 or new_h < 1:
        raise InputError(f"Resolution {resolution:g} m is coarser than the whole area "
                         f"({width * native:.6g}×{height * native:.6g} m): the grid would be "
                         f"{new_w:.3g}×{new_h:.3g} px; choose at most "
                         f"{min(width, height) * native:.6g} m")
    if scale < 1.0 / MAX_UPSAMPLING or new_w * new_h > MAX_GRID_PIXELS:
        raise InputError(f"Resolution {resolution:g} m asks for a {new_w:.0f}×{new_h:.0f} px grid from "
                         f"{width}×{height} px at {native:.3g} m; the limits are "
                         f"{MAX_UPSAMPLING:g}× finer than the raster ({native / MAX_UPSAMPLING:.3g} m) "
                         f"and {MAX_GRID_PIXELS:,} px in all")
    return max(1, int(round(new_w))), max(1, int(round(new_h)))


def palette_lut(dataset) -> Optional[np.ndarray]:
    """(N, 4) uint8 RGBA per index for a band with a colour table, else None."""
    if dataset.colorinterp[0] != ColorInterp.palette:
        return None
    try:
        table = dataset.colormap(1)
    except ValueError:  # no colour table after all
        return None
    size = 256 if dataset.dtypes[0] == "uint8" else 65536
    lut = np.zeros((size, 4), np.uint8)
    for index, colour in table.items():
        if 0 <= index < size:
            lut[index] = colour
    if dataset.nodata is not None and 0 <= dataset.nodata < size:
        lut[int(dataset.nodata), 3] = 0
    return lut


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
