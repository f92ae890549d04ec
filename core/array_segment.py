"""Segmenting an image held in memory exactly as the benchmark protocol does (core/protocol.py).

The long side is resized to 448 as mmcv `imrescale` does with OpenCV (core/cv_resize.py); windows
of 224 px every 112 px are averaged with a count map (blend "mean"); the averaged query logits are
resized bilinearly back to the image's size, *then* ×logit scale, softmax over all queries, a class
takes its most likely synonym, and pixels below the threshold become background. An image (or
crop) smaller than a window is scored at its own size, padded after normalisation (see
core/sliding.py).

Benchmark tiles are small, so holding one in memory is fine; rasters go through core/segment.py.
core/evaluation/predictors.py wraps this as the benchmark predictor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.transform import Affine

from .classes import flatten_queries, parse_classes
from .cv_resize import imrescale
from .protocol import PROTOCOL_BLEND, PROTOCOL_LONG_SIDE, PROTOCOL_STRIDE, PROTOCOL_WINDOW
from .raster_io import Grid
from .sliding import SlidingWindowSegmenter, class_probabilities, label_classes, synonym_groups


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
    """(H, W, 3) uint8 with its long side resized to `long_side` as the protocol does."""
    return imrescale(np.asarray(image, np.uint8), long_side)


@dataclass
class ArraySegmentation:
    labels: np.ndarray         # uint8 (H, W): 0 background (below threshold), 1..K classes
    probabilities: np.ndarray  # float32 (K, H, W): class probabilities before the threshold


def segment_array_probabilities(image: np.ndarray, classes, scorer, threshold: float = 0.0,
                                long_side: Optional[int] = PROTOCOL_LONG_SIDE,
                                window: int = PROTOCOL_WINDOW, stride: int = PROTOCOL_STRIDE,
                                blend: str = PROTOCOL_BLEND) -> ArraySegmentation:
    """(H, W, 3) uint8 -> class map and class probabilities at the image's own size."""
    specs = parse_classes(classes)
    queries, owner = flatten_queries(specs)
    scorer.set_queries(queries)
    working = resize_long_side(image, long_side) if long_side else np.asarray(image, np.uint8)
    segmenter = SlidingWindowSegmenter(ArrayReader(working), scorer, owner, threshold=0.0,
                                       window=window, stride=stride, block=max(working.shape[:2]),
                                       keep_logits=True, blend=blend)
    (block,) = list(segmenter)
    # Logits are resized back (an identity at equal size), then turned into probabilities.
    logits = F.interpolate(torch.from_numpy(block.logits)[None], size=image.shape[:2],
                           mode="bilinear", align_corners=False)[0]
    probabilities = class_probabilities(logits, scorer.logit_scale, synonym_groups(owner))
    labels, _ = label_classes(probabilities, threshold)
    return ArraySegmentation(labels.numpy(), probabilities.numpy())


def segment_array(image: np.ndarray, classes, scorer, threshold: float = 0.0,
                  long_side: Optional[int] = PROTOCOL_LONG_SIDE, window: int = PROTOCOL_WINDOW,
                  stride: int = PROTOCOL_STRIDE, blend: str = PROTOCOL_BLEND) -> np.ndarray:
    """(H, W, 3) uint8 -> class map (H, W) uint8: 0 background (below threshold), 1..K classes."""
    return segment_array_probabilities(image, classes, scorer, threshold, long_side, window,
                                       stride, blend).labels
