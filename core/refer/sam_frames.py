"""Coordinate frames between a raster tile and SAM's (v1) input frame.

SAM resizes an image so that its long side is 1024 (``ResizeLongestSide``) and pads the result
at the bottom and right to 1024×1024. Its low-resolution masks (input and output) are 256×256
and cover that *padded* square: low-res pixel ``i`` spans input pixels ``[4i, 4i + 4)``. A SAM
built for another input side (``image_encoder.img_size``, e.g. the tiny test models) keeps the
same layout at its own side: a frame's ``long_side`` is that side and its low-res grid a quarter
of it (:func:`sam_input_side`).

Conventions used here (the same as ``SamPredictor``):

- Point and box coordinates are ``x`` (column) then ``y`` (row), in *pixel-index* units: pixel
  ``(col, row)`` is the point ``(col, row)``; SAM itself adds 0.5 to reach the pixel centre.
  A rasterio fractional position (0 = the upper-left *corner* of the first pixel) converts
  with :func:`corner_to_index`.
- Boxes are ``x0, y0, x1, y1`` with ``x1, y1`` the last column/row inside (inclusive), as
  ``segment_anything.utils.amg.batched_mask_to_box`` makes them.
- Two conventions for points and boxes, chosen by ``convention``:
  ``"sam"`` (default) multiplies x by ``new_w / W`` and y by ``new_h / H``, where
  ``(new_h, new_w)`` is SAM's rounded resize of the tile. This is exactly
  ``ResizeLongestSide.apply_coords``, so prompts given to ``predict_torch`` in the SAM frame
  equal those given to ``SamPredictor.predict`` in raster pixels.
  ``"centre"`` maps pixel centres onto pixel centres, ``(x + 0.5)·s − 0.5``: where the pixel
  really lands in the resized image. The two differ by ``0.5·(s − 1)`` SAM pixels, i.e. less
  than half a raster pixel; it only matters when a small tile is enlarged (s > 1).

Dense (mask) prompts are placed geometrically, matching how ``Sam.postprocess_masks`` maps
low-res logits back to the tile: a low-res pixel whose centre lies inside the resized,
unpadded region samples the activation there; the padded rest gets a low logit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

SAM_LONG_SIDE = 1024
LOW_RES_SIZE = 256
LOW_RES_STRIDE = SAM_LONG_SIDE // LOW_RES_SIZE     # input pixels per low-res pixel
DEFAULT_PAD_LOGIT = -20.0


def sam_input_side(sam) -> int:
    """The square input side of a segment_anything ``Sam`` (or of a predictor's model): 1024
    for the published models; SAM_LONG_SIDE for anything that does not say."""
    model = getattr(sam, "model", sam)
    encoder = getattr(model, "image_encoder", None)
    side = getattr(encoder, "img_size", None)
    return int(side) if isinstance(side, int) and side > 0 else SAM_LONG_SIDE


def preprocess_shape(height: int, width: int, long_side: int = SAM_LONG_SIDE) -> Tuple[int, int]:
    """SAM's resized (height, width): long side -> ``long_side``, rounded half up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class SamFrame:
    """The geometry linking an ``height × width`` tile to SAM's padded input square."""

    height: int
    width: int
    long_side: int = SAM_LONG_SIDE
    low_res: Optional[int] = None        # None: a quarter of long_side (SAM's layout)

    def __post_init__(self) -> None:
        if int(self.height) < 1 or int(self.width) < 1:
            raise InputError(f"A tile must have at least one pixel, "
                             f"got {self.height}×{self.width}.")
        if self.low_res is None:
            object.__setattr__(self, "low_res", max(1, int(self.long_side) // LOW_RES_STRIDE))

    @classmethod
    def for_image(cls, image: np.ndarray, long_side: int = SAM_LONG_SIDE) -> "SamFrame":
        """Frame of an H×W or H×W×C array."""
        return cls(int(image.shape[0]), int(image.shape[1]), long_side)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(new_h, new_w): the unpadded resized image in the square (``predictor.input_size``)."""
        return preprocess_shape(self.height, self.width, self.long_side)

    @property
    def original_size(self) -> Tuple[int, int]:
        return int(self.height), int(self.width)

    @property
    def scale_xy(self) -> Tuple[float, float]:
        """Per-axis factors raster -> SAM frame (they differ slightly because of rounding)."""
        new_h, new_w = self.input_size
        return new_w / self.width, new_h / self.height

    @property
    def low_res_stride(self) -> float:
        """SAM input pixels per low-res pixel (4 for SAM1)."""
        return self.long_side / self.low_res

    @property
    def low_res_valid(self) -> Tuple[int, int]:
        """Rows and columns of the low-res grid whose centres fall inside the unpadded image."""
        new_h, new_w = self.input_size
        s = self.low_res_stride
        return (min(self.low_res, math.ceil(new_h / s - 0.5)),
                min(self.low_res, math.ceil(new_w / s - 0.5)))


def _as_points(points) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape[-1:] != (2,):
        raise InputError(f"Points must be (x, y) pairs, got an array of shape {arr.shape}.")
    return arr


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (4,):
        raise InputError(f"Boxes must be (x0, y0, x1, y1), got an array of shape {arr.shape}.")
    return arr


CONVENTIONS = ("sam", "centre")


def _offset(convention: str) -> float:
    if convention not in CONVENTIONS:
        raise InputError(f"Coordinate convention must be one of {', '.join(CONVENTIONS)}, "
                         f"got '{convention}'.")
    return 0.5 if convention == "centre" else 0.0


def raster_to_sam_points(points, frame: SamFrame, convention: str = "sam") -> np.ndarray:
    """(..., 2) raster pixel (x, y) -> SAM input frame. With ``convention="sam"`` this equals
    ``ResizeLongestSide.apply_coords``; ``"centre"`` maps pixel centres to pixel centres."""
    off = _offset(convention)
    out = _as_points(points).copy()
    sx, sy = frame.scale_xy
    out[..., 0] = (out[..., 0] + off) * sx - off
    out[..., 1] = (out[..., 1] + off) * sy - off
    return out


def sam_to_raster_points(points, frame: SamFrame, convention: str = "sam") -> np.ndarray:
    """Exact inverse of :func:`raster_to_sam_points` (same ``convention``)."""
    off = _offset(convention)
    out = _as_points(points).copy()
    sx, sy = frame.scale_xy
    out[..., 0] = (out[..., 0] + off) / sx - off
    out[..., 1] = (out[..., 1] + off) / sy - off
    return out


def raster_to_sam_boxes(boxes, frame: SamFrame, convention: str = "sam") -> np.ndarray:
    """(..., 4) xyxy raster boxes -> SAM frame; "sam" equals ``ResizeLongestSide.apply_boxes``."""
    arr = _as_boxes(boxes)
    pts = raster_to_sam_points(arr.reshape(arr.shape[:-1] + (2, 2)), frame, convention)
    return pts.reshape(arr.shape)


def sam_to_raster_boxes(boxes, frame: SamFrame, convention: str = "sam") -> np.ndarray:
    """Exact inverse of :func:`raster_to_sam_boxes` (same ``convention``)."""
    arr = _as_boxes(boxes)
    pts = sam_to_raster_points(arr.reshape(arr.shape[:-1] + (2, 2)), frame, convention)
    return pts.reshape(arr.shape)


def corner_to_index(points) -> np.ndarray:
    """Fractional pixel position measured from pixel corners (rasterio's ``~transform * (x, y)``)
    -> pixel-index coordinates (the centre of pixel 0 is 0)."""
    return _as_points(points) - 0.5


def index_to_corner(points) -> np.ndarray:
    """Inverse of :func:`corner_to_index`."""
    return _as_points(points) + 0.5


def _resample_matrix(n_in: int, centres: np.ndarray, step: float) -> np.ndarray:
    """Rows: linear-filter weights over ``n_in`` input pixels for output samples at continuous
    positions ``centres`` (input pixel j spans [j, j+1)). The triangle filter is plain bilinear
    (edge-clamped) when up-sampling and widens to about ``step`` pixels when down-sampling
    (anti-aliasing). Its half-width is a whole number of pixels so that, away from the edges,
    the weights sum to one and keep their centre of mass exactly at the sample position: a
    linear ramp is reproduced exactly, so nothing shifts."""
    half = float(max(1, int(round(step))))
    j = np.arange(n_in, dtype=np.float64) + 0.5
    weights = np.clip(1.0 - np.abs(j[None, :] - centres[:, None]) / half, 0.0, None)
    total = weights.sum(axis=1, keepdims=True)
    nearest = np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)
    empty = total[:, 0] <= 0
    if empty.any():   # sample outside the support: take the nearest edge pixel
        weights[empty] = 0.0
        weights[empty, nearest[empty]] = 1.0
        total[empty] = 1.0
    return weights / total


def activation_to_low_res(activation: np.ndarray, frame: SamFrame,
                          fill: float = np.nan) -> np.ndarray:
    """Place an H×W map into SAM's 256×256 low-res frame; padded cells get ``fill``."""
    act = np.asarray(activation, dtype=np.float64)
    if act.shape != frame.original_size:
        raise InputError(f"Activation map is {act.shape[0]}×{act.shape[1]} but the tile is "
                         f"{frame.height}×{frame.width}.")
    sx, sy = frame.scale_xy
    stride = frame.low_res_stride
    valid_h, valid_w = frame.low_res_valid
    rows = (np.arange(valid_h) + 0.5) * stride / sy      # low-res centres in raster units
    cols = (np.arange(valid_w) + 0.5) * stride / sx
    ry = _resample_matrix(frame.height, rows, stride / sy)
    rx = _resample_matrix(frame.width, cols, stride / sx)
    out = np.full((frame.low_res, frame.low_res), fill, dtype=np.float64)
    out[:valid_h, :valid_w] = ry @ act @ rx.T
    return out


def normalize_activation(activation: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; NaN/inf count as the minimum. A constant map becomes zeros."""
    act = np.asarray(activation, dtype=np.float64)
    if act.ndim != 2 or act.size == 0:
        raise InputError(f"An activation map must be a non-empty H×W array, "
                         f"got shape {act.shape}.")
    finite = np.isfinite(act)
    if not finite.any():
        return np.zeros(act.shape, np.float32)
    lo, hi = act[finite].min(), act[finite].max()
    out = np.where(finite, act, lo)
    if hi <= lo:
        return np.zeros(act.shape, np.float32)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def mask_input_from_activation(activation: np.ndarray, frame: SamFrame, *,
                               normalize: bool = True, threshold: float = 0.5,
                               gain: float = 20.0, logits: bool = False,
                               pad_logit: float = DEFAULT_PAD_LOGIT) -> np.ndarray:
    """SAM's dense prompt from an H×W activation map (higher = target): float32 1×1×256×256.

    The map becomes logits ``gain · (a − threshold)`` (``a`` min-max normalised to [0, 1] when
    ``normalize``; ``logits=True`` takes the values as logits already), is resampled into the
    unpadded part of the low-res frame and the padding is filled with ``pad_logit``.
    ``SamPredictor.predict`` wants ``mask_input[0]`` (1×256×256); ``predict_torch`` and the
    prompt encoder take the 1×1×256×256 array as a tensor.
    """
    act = np.asarray(activation, dtype=np.float64)
    if logits:
        values = np.where(np.isfinite(act), act, pad_logit)
    else:
        a = normalize_activation(act) if normalize else np.nan_to_num(act, nan=0.0)
        values = gain * (np.asarray(a, np.float64) - threshold)
    low = activation_to_low_res(values, frame, fill=pad_logit)
    return low.astype(np.float32)[None, None]


def low_res_to_raster(low_res_logits, frame: SamFrame) -> np.ndarray:
    """SAM low-res logits (…×256×256) -> tile resolution (…×H×W), exactly as
    ``Sam.postprocess_masks`` does (upsample to the padded square, crop, resize)."""
    import torch
    import torch.nn.functional as F

    arr = np.asarray(low_res_logits, dtype=np.float32)
    lead = arr.shape[:-2]
    if arr.shape[-2:] != (frame.low_res, frame.low_res):
        raise InputError(f"Low-res logits must end in {frame.low_res}×{frame.low_res}, "
                         f"got {arr.shape}.")
    t = torch.from_numpy(arr.reshape((-1, 1) + arr.shape[-2:]).copy())
    t = F.interpolate(t, (frame.long_side, frame.long_side), mode="bilinear", align_corners=False)
    new_h, new_w = frame.input_size
    t = t[..., :new_h, :new_w]
    t = F.interpolate(t, frame.original_size, mode="bilinear", align_corners=False)
    return t.numpy().reshape(lead + frame.original_size)
