"""Segmenting an image held in memory exactly as the benchmark protocol does (DESIGN.md section 8).

The long side is resized to 448 as mmcv `imrescale` does with OpenCV (core/cv_resize.py); windows
of 224 px every 112 px are averaged with a count map (blend "mean"); the averaged query logits are
resized bilinearly back to the image's size, *then* ×logit scale, softmax over all queries, a class
takes its most likely synonym, and pixels below the threshold become background. An image (or
crop) smaller than a window is scored at its own size, padded after normalisation (see
core/sliding.py).

Benchmark tiles are small, so holding one in memory is fine; rasters go through core/segment.py.
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


def engine_options(parser, task: str) -> None:
    """The engine's options on `python -m drseg evaluate ...`."""
    from .models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                  DEFAULT_SAM_MODEL, SAM_MODELS)

    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL)
    parser.add_argument("--clip-weights", default=DEFAULT_CLIP_WEIGHTS)
    parser.add_argument("--device", default=DEFAULT_DEVICE)
    if task == "refer":
        parser.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, choices=list(SAM_MODELS))
        parser.add_argument("--sam-weights", help="SAM checkpoint file or catalog name")
    else:
        parser.add_argument("--long-side", type=int,
                            help="resize images to this long side (0: keep the size); default: "
                                 "the data set's protocol (448)")


def ovss_predictor_factory(task: str, dataset, args):
    """predict_fn(image_path) -> the data set's class indices, for core.evaluate."""
    from PIL import Image

    from .errors import InputError
    from .evaluate import engine_to_dataset_labels
    from .models.shared import dense_clip_scorer

    if task == "refer":
        return refer_predictor(args)
    scorer = dense_clip_scorer(args.clip_model, args.clip_weights, args.device)
    protocol = dataset.protocol
    long_side = protocol["long_side"] if args.long_side is None else args.long_side
    window, stride, blend = protocol["window"], protocol["stride"], protocol["blend"]

    def predict(image_path: str) -> np.ndarray:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"))
        class_map = segment_array(image, dataset.prompt, scorer, threshold=dataset.threshold,
                                  long_side=long_side or None, window=window, stride=stride,
                                  blend=blend)
        return engine_to_dataset_labels(class_map, dataset.background_index, dataset.num_classes)

    predict.settings = {"long_side": long_side, "window": window, "stride": stride, "blend": blend,
                        "prob_thd": dataset.threshold, "clip_model": args.clip_model,
                        "clip_weights": args.clip_weights}
    return predict


def refer_predictor(args):
    """predict_fn(image_path, expression) -> mask of every object the expression refers to.

    One ReferringSession per image (its SAM embedding and CLIP features), reused while the data
    set's expressions for the same image follow each other."""
    from PIL import Image

    from .models.shared import dense_clip_scorer, sam_model
    from .refer.localize import Localizer
    from .refer.pipeline import ReferringSession

    sam = sam_model(args.sam_model, args.sam_weights, args.device)
    localizer = Localizer(dense_clip_scorer(args.clip_model, args.clip_weights, args.device))
    current = {}

    def predict(image_path: str, expression: str) -> np.ndarray:
        if current.get("path") != image_path:
            with Image.open(image_path) as img:
                image = np.asarray(img.convert("RGB"))
            current.update(path=image_path, session=ReferringSession(image, sam, localizer))
        session = current["session"]
        mask = np.zeros((session.height, session.width), bool)
        for result in session.query(expression):
            mask |= result.mask
        return mask

    return predict
