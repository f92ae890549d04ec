"""Output files written safely: to a temporary name first, renamed only when complete."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Sequence

import numpy as np
import rasterio

from .classes import BACKGROUND, BACKGROUND_INDEX, NODATA_INDEX, ClassSpec
from .colors import class_colour
from .errors import InputError


class WorkDir:
    """A hidden scratch folder beside the outputs (same file system, so renames are atomic)."""

    def __init__(self, near_path: str):
        folder = os.path.dirname(os.path.abspath(near_path)) or "."
        if not os.path.isdir(folder):
            raise InputError(f"Output folder '{folder}' does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"Output folder '{folder}' is not writable")
        self.path = tempfile.mkdtemp(prefix=".drseg-", dir=folder)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def publish(temporary: str, destination: str) -> None:
    """Atomically move a finished file to its destination (replacing an older result)."""
    os.replace(temporary, destination)


def check_destination(path: str, extensions: Sequence[str]) -> str:
    path = os.path.abspath(path)
    if not path.lower().endswith(tuple(extensions)):
        raise InputError(f"Output '{path}' must end with {' or '.join(extensions)}")
    if os.path.isdir(path):
        raise InputError(f"Output '{path}' is a folder, not a file name")
    return path


def raster_profile(grid, dtype: str, count: int = 1, nodata=None) -> Dict:
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=dtype,
                   crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def class_colour_table(classes: Sequence[ClassSpec]) -> Dict[int, tuple]:
    table = {BACKGROUND_INDEX: (*class_colour(BACKGROUND), 255), NODATA_INDEX: (0, 0, 0, 0)}
    for index, spec in enumerate(classes, start=1):
        table[index] = (*class_colour(spec.name), 255)
    return table


class ClassRasterWriter:
    """Class-index GeoTIFF (uint8, nodata 255, colour table, class names in tags) by blocks."""

    def __init__(self, path: str, grid, classes: Sequence[ClassSpec]):
        self.path = path
        self._dst = rasterio.open(path, "w", **raster_profile(grid, "uint8", nodata=NODATA_INDEX))
        self._dst.write_colormap(1, class_colour_table(classes))
        names = {f"CLASS_{i}": spec.name for i, spec in enumerate(classes, start=1)}
        self._dst.update_tags(CLASS_0=BACKGROUND, **names)
        self._dst.set_band_description(1, "class")

    def write(self, window, classes: np.ndarray) -> None:
        self._dst.write(classes[None], window=window)

    def close(self) -> None:
        self._dst.close()


class FloatRasterWriter:
    """Float32 GeoTIFF written by blocks (per-pixel score or per-class probabilities)."""

    def __init__(self, path: str, grid, count: int = 1, descriptions: Sequence[str] = ()):
        self.path = path
        self._dst = rasterio.open(path, "w", **raster_profile(grid, "float32", count=count))
        for band, text in enumerate(descriptions, start=1):
            self._dst.set_band_description(band, text)

    def write(self, window, data: np.ndarray) -> None:
        self._dst.write(data if data.ndim == 3 else data[None], window=window)

    def close(self) -> None:
        self._dst.close()
