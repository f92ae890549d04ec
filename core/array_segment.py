"""Segmenting an image held in memory, as the training-free benchmark protocol does:
long side resized to 448, 224 windows with stride 112, probabilities resized back bilinearly.

Benchmark tiles are small, so holding one in memory is fine; rasters go through core/segment.py.
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


def engine_options(parser, task: str) -> None:
    """The engine's options on `python -m drseg evaluate ...`."""
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument("--clip-weights", default="openai")
    parser.add_argument("--device", default="auto")
    if task == "refer":
        parser.add_argument("--sam-model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
        parser.add_argument("--sam-weights", help="SAM checkpoint file or catalog name")
    else:
        parser.add_argument("--long-side", type=int, default=448,
                            help="benchmark images are resized to this long side (0: keep the size)")


def ovss_predictor_factory(task: str, dataset, args):
    """predict_fn(image_path) -> the data set's class indices, for core.evaluate."""
    from PIL import Image

    from .errors import InputError
    from .evaluate import engine_to_dataset_labels
    from .model_cache import dense_clip_scorer

    if task == "refer":
        return refer_predictor(args)
    scorer = dense_clip_scorer(args.clip_model, args.clip_weights, args.device)

    def predict(image_path: str) -> np.ndarray:
        with Image.open(image_path) as img:
            image = np.asarray(img.convert("RGB"))
        class_map = segment_array(image, dataset.prompt, scorer, threshold=dataset.threshold,
                                  long_side=args.long_side or None)
        return engine_to_dataset_labels(class_map, dataset.background_index, dataset.num_classes)

    return predict


def refer_predictor(args):
    """predict_fn(image_path, expression) -> mask of every object the expression refers to.

    One ReferringSession per image (its SAM embedding and CLIP features), reused while the data
    set's expressions for the same image follow each other."""
    from PIL import Image

    from .model_cache import dense_clip_scorer
    from .refer.localize import Localizer
    from .refer.pipeline import ReferringSession
    from .sam_models import sam_model

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
