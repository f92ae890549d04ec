"""The straightforward sliding-window inference of research code, as a yardstick for the engine.

What research code for training-free open-vocabulary segmentation typically does (mmseg-style
`slide_inference`):

* the whole image is read into memory as one array;
* windows of `window` px every `stride` px (the last one of a row or column shifted back to end at
  the image edge), scored in batches by the same scorer the engine uses
  (`score_windows(uint8 (B,3,S,S)) -> logits (B,Q,h,w)`);
* each window's token logits are resized bilinearly to the window and *added into a full-size
  float32 accumulator for all queries* (Q×H×W), with a full-size count map (H×W);
* logits = accumulator / count, ×logit_scale, softmax over all queries, a class's probability is
  its most likely synonym's, argmax; pixels whose top probability is below the threshold are
  background (0). Classes are 1..K like the engine's class raster.

Its memory therefore grows with the image (Q×H×W floats plus temporaries of that size), which is
what the benchmark shows against the engine's block-wise inference.

`weighting="count"` is the research recipe (every window pixel counts 1). `weighting="ramp"` uses
the engine's smooth blend window instead (sin² ramp, floored at 1e-3, written out here again on
purpose) so that the two must produce the same class map: that is how the benchmark and
tests/test_research_baseline.py check that they compare the same computation.

No nodata handling, no reprojection, no vectorizing: research code has none of them either.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RAMP_FLOOR = 1e-3


def slide_starts(length: int, window: int, stride: int) -> List[int]:
    """Window origins along one axis, computed as mmseg's slide_inference does."""
    grids = max(length - window + stride - 1, 0) // stride + 1
    starts = []
    for i in range(grids):
        end = min(i * stride + window, length)
        start = max(end - window, 0)
        if not starts or start != starts[-1]:
            starts.append(start)
    return starts


def window_weights(window: int, weighting: str) -> torch.Tensor:
    """(window, window) weight of each window pixel in the average."""
    if weighting == "count":
        return torch.ones((window, window))
    if weighting == "ramp":
        ramp = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2
        ramp = torch.from_numpy(np.maximum(ramp, RAMP_FLOOR).astype(np.float32))
        return torch.outer(ramp, ramp)
    raise ValueError(f"weighting must be 'count' or 'ramp', got {weighting!r}")


@dataclass
class BaselineTimings:
    read: float = 0.0
    model: float = 0.0        # scorer.score_windows
    accumulate: float = 0.0   # resizing window logits and adding them up at full size
    classify: float = 0.0     # divide, softmax, synonyms, argmax, threshold
    write: float = 0.0
    windows: int = 0

    def as_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)


@dataclass
class BaselineResult:
    classes: np.ndarray       # uint8 (H, W): 0 background, 1..K
    score: np.ndarray         # float32 (H, W): probability of the chosen class
    timings: BaselineTimings = field(default_factory=BaselineTimings)


def segment_image(image: np.ndarray, scorer, query_owner: Sequence[int], threshold: float = 0.0,
                  window: int = 224, stride: int = 112, batch_size: int = 8,
                  weighting: str = "count", timings: Optional[BaselineTimings] = None
                  ) -> BaselineResult:
    """Whole-image inference. image: uint8 (3, H, W) already in memory; `scorer.set_queries` must
    have been called with the queries `query_owner` describes (query -> 0-based class)."""
    timings = timings or BaselineTimings()
    _, height, width = image.shape
    owner = list(query_owner)
    num_queries = len(owner)
    weights = window_weights(window, weighting)

    # Full-size accumulators: the research recipe's memory cost.
    accumulated = torch.zeros((num_queries, height, width), dtype=torch.float32)
    count = torch.zeros((height, width), dtype=torch.float32)

    boxes = [(y, x) for y in slide_starts(height, window, stride)
             for x in slide_starts(width, window, stride)]
    for start in range(0, len(boxes), batch_size):
        batch = boxes[start:start + batch_size]
        crops = np.zeros((len(batch), 3, window, window), np.uint8)  # zero-padded if image < window
        for i, (y, x) in enumerate(batch):
            crop = image[:, y:y + window, x:x + window]
            crops[i, :, :crop.shape[1], :crop.shape[2]] = crop
        started = time.perf_counter()
        logits = torch.from_numpy(np.asarray(scorer.score_windows(crops), dtype=np.float32))
        timings.model += time.perf_counter() - started
        timings.windows += len(batch)

        started = time.perf_counter()
        logits = F.interpolate(logits, size=(window, window), mode="bilinear", align_corners=False)
        for (y, x), window_logits in zip(batch, logits):
            h, w = min(window, height - y), min(window, width - x)
            weight = weights[:h, :w]
            accumulated[:, y:y + h, x:x + w] += window_logits[:, :h, :w] * weight
            count[y:y + h, x:x + w] += weight
        timings.accumulate += time.perf_counter() - started

    started = time.perf_counter()
    logits = accumulated / count
    del accumulated
    probabilities = torch.softmax(scorer.logit_scale * logits, dim=0)
    del logits
    num_classes = max(owner) + 1
    class_probs = torch.stack([probabilities[[q for q, c in enumerate(owner) if c == k]].amax(dim=0)
                               for k in range(num_classes)])
    del probabilities
    top, arg = class_probs.max(dim=0)
    classes = (arg + 1).to(torch.uint8)
    classes[top < threshold] = 0
    timings.classify += time.perf_counter() - started
    return BaselineResult(classes.numpy(), top.numpy(), timings)


def segment_raster(path: str, scorer, query_owner: Sequence[int], out_raster: Optional[str] = None,
                   **options) -> BaselineResult:
    """Read the whole raster (first three bands, or one band as grey), segment it, and write the
    class map as one GeoTIFF in one go."""
    import rasterio

    timings = options.pop("timings", None) or BaselineTimings()
    started = time.perf_counter()
    with rasterio.open(path) as src:
        image = src.read([1, 2, 3] if src.count >= 3 else [1])
        profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, compress="deflate", tiled=True)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    image = image.astype(np.uint8, copy=False)
    timings.read += time.perf_counter() - started

    result = segment_image(image, scorer, query_owner, timings=timings, **options)
    if out_raster:
        started = time.perf_counter()
        with rasterio.open(out_raster, "w", **profile) as dst:
            dst.write(result.classes[None])
        timings.write += time.perf_counter() - started
    return result
