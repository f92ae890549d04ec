"""The benchmark protocol's input resize, bit for bit: mmcv `imrescale` with OpenCV's INTER_LINEAR
on uint8 images (the protocol's resize; see core/protocol.py).

OpenCV resizes 8-bit images in fixed point: per output column and row the two source positions and
their weights `(1 - f, f)` are computed in float32 and rounded to 11-bit integers
(INTER_RESIZE_COEF_BITS); each source row is first interpolated horizontally into int32, then two
such rows are combined with `((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2`
(the 8-bit specialisation of its vertical pass, identical in its SIMD and scalar loops). An exact
halving in both directions is done as a 2×2 mean instead (`(a + b + c + d + 2) >> 2`), as OpenCV
switches INTER_LINEAR to its fast area mode there. opencv-python is not a dependency; this module
reproduces that arithmetic with numpy integers so `evaluate` matches the papers' input pixels.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS


def rescale_size(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """mmcv `rescale_size` for `scale=(long_side, long_side)` with keep_ratio: the long side becomes
    `long_side`, each side `int(side * factor + 0.5)` -> (new height, new width)."""
    factor = min(long_side / max(height, width), long_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def _axis_table(src: int, dst: int):
    """Per output index: first source index, the clamped second one, and the two 11-bit weights."""
    scale = 1.0 / (dst / src)  # OpenCV keeps inv_scale = dst/src and inverts it, in doubles
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos).astype(np.int64)
    frac = (pos - start.astype(np.float32)).astype(np.float32)
    return start, frac


def _weights(frac: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float32 (1 - f, f) * 2048, rounded half to even (OpenCV's saturate_cast<short>(float))."""
    one = np.float32(1.0)
    w0 = np.rint((one - frac) * np.float32(COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(COEF_SCALE)).astype(np.int64)
    return w0, w1


def resize_linear_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` for uint8 (H, W[, C])."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"resize_linear_u8 needs uint8, got {image.dtype}")
    squeeze = image.ndim == 2
    src = image[:, :, None] if squeeze else image
    src_h, src_w = src.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"target size {height}x{width} is empty")
    if (height, width) == (src_h, src_w):
        out = src.copy()
    elif src_h == 2 * height and src_w == 2 * width:
        out = _halve(src)
    else:
        out = _bilinear(src, height, width)
    return out[:, :, 0] if squeeze else out


def _halve(src: np.ndarray) -> np.ndarray:
    s = src.astype(np.int32)
    total = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def _bilinear(src: np.ndarray, height: int, width: int) -> np.ndarray:
    src_h, src_w = src.shape[:2]
    # Columns: a position left of the first pixel or right of the last one is clamped with f = 0.
    sx, fx = _axis_table(src_w, width)
    left = sx < 0
    fx[left], sx[left] = 0, 0
    right = sx >= src_w - 1
    fx[right], sx[right] = 0, src_w - 1
    ax0, ax1 = _weights(fx)
    sx1 = np.minimum(sx + 1, src_w - 1)  # weight 0 wherever this is clamped
    s = src.astype(np.int64)
    rows = s[:, sx] * ax0[None, :, None] + s[:, sx1] * ax1[None, :, None]   # (src_h, width, C)
    # Rows: the positions are not clamped, the rows they read are (weights stay as computed).
    sy, fy = _axis_table(src_h, height)
    by0, by1 = _weights(fy)
    r0 = rows[np.clip(sy, 0, src_h - 1)]
    r1 = rows[np.clip(sy + 1, 0, src_h - 1)]
    value = (((by0[:, None, None] * (r0 >> 4)) >> 16) + ((by1[:, None, None] * (r1 >> 4)) >> 16)
             + 2) >> 2
    return value.astype(np.uint8)


def imrescale(image: np.ndarray, long_side: int) -> np.ndarray:
    """mmcv `imrescale(image, (long_side, long_side))` with the cv2 bilinear backend, (H, W, C) uint8."""
    height, width = rescale_size(image.shape[0], image.shape[1], long_side)
    return resize_linear_u8(image, height, width)
