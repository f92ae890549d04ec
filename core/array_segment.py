"""Segmenting an image held in memory, as the training-free benchmark protocol does:
long side resized to 448, 224 windows with stride 112, probabilities resized back bilinearly.

Benchmark tiles are small, so holding one in memory is fine; rasters go through core/segment.py.
core/evaluation/predictors.py wraps this as the benchmark predictor.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.transform import Affine

from .classes import flatten_queries, parse_classes
from .raster_io import Grid
from .sliding import SlidingWindowSegmenter


class ArrayReader:
    """The RasterReader interface over an (H, W, 3) uint8 array (no georeferencing)."""

    def __init__(self, image: np.ndarray, valid: Optional[np.ndarray] = None):
        self._image = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
        self._valid = np.ones(image.shape[:2], bool) if valid is None else valid
        self.grid = Grid(image.shape[1], image.shape[0], Affine.identity(), None)

    def read(self, window):
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        return self._image[:, rows, cols], self._valid[rows, cols]


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def segment_array(image: np.ndarray, classes, scorer, threshold: float = 0.0,
                  long_side: Optional[int] = 448, window: int = 224, stride: int = 112) -> np.ndarray:
    """(H, W, 3) uint8 -> class map (H, W) uint8: 0 background (below threshold), 1..K classes."""
    specs = parse_classes(classes)
    queries, owner = flatten_queries(specs)
    scorer.set_queries(queries)
    working = resize_long_side(image, long_side) if long_side else image
    segmenter = SlidingWindowSegmenter(ArrayReader(working), scorer, owner, threshold=0.0,
                                       window=window, stride=stride, block=max(working.shape[:2]),
                                       keep_probabilities=True)
    (block,) = list(segmenter)
    probabilities = torch.from_numpy(block.probabilities)
    if probabilities.shape[1:] != image.shape[:2]:
        probabilities = F.interpolate(probabilities[None], size=image.shape[:2], mode="bilinear",
                                      align_corners=False)[0]
    top, arg = probabilities.max(dim=0)
    labels = (arg + 1).to(torch.uint8)
    labels[top < threshold] = 0
    return labels.numpy()
