"""Reading label and mask files: single band (class values, palette indices) or RGB."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from ...errors import InputError

LABEL_READ_EXTS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif")
_TIFF_EXTS = (".tif", ".tiff")


def read_array(path: Union[str, Path]) -> np.ndarray:
    """A label/mask file as a 2-D array (single band, palette indices) or H x W x 3 (RGB)."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"File not found: {path}")
    if path.lower().endswith(_TIFF_EXTS):
        return _read_tiff(path)
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("RGBA", "LA", "PA"):
                image = image.convert("RGB" if mode == "RGBA" else "L")
            elif mode == "CMYK" or mode.startswith("YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def _read_tiff(path: str) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count = src.count
                data = src.read(list(range(1, min(count, 3) + 1)) if count >= 3 else 1)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"Cannot read {path}: {exc}")
    if data.ndim == 3:
        data = np.moveaxis(data, 0, -1)
    return data


def binary_mask(array: np.ndarray) -> np.ndarray:
    """Foreground of a referring mask file: any non-zero pixel (in any band)."""
    array = np.asarray(array)
    if array.ndim == 3:
        return np.any(array != 0, axis=-1)
    return array != 0
