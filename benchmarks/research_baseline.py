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

`protocol_probabilities` (at the end) is the whole benchmark protocol (core/protocol.py),
from the uint8 image to class probabilities, on an open_clip model: the yardstick that
tests/test_protocol_parity.py holds `python -m drseg evaluate`'s path against.
"""
from __future__ import annotations

import math
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


# ------------------------------------------------------------------------------------------------
# The benchmark protocol, whole (see core/protocol.py), written out plainly as the yardstick of
# `python -m drseg evaluate` (tests/test_protocol_parity.py). Nothing here is imported from
# drseg: the input resize follows OpenCV's C++ loops, the dense CLIP forward is spelled out on
# the open_clip modules, and the windows are stitched as mmseg's slide inference does.
# ------------------------------------------------------------------------------------------------

CLIP_MEAN_255 = (122.771, 116.746, 104.094)
CLIP_STD_255 = (68.501, 66.632, 70.323)


def mmcv_rescale_size(height: int, width: int, long_side: int):
    factor = min(long_side / max(height, width), long_side / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def opencv_resize_linear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """cv2.resize(..., INTER_LINEAR) of an (H, W, C) uint8 image, following OpenCV's C++ code:
    coefficient tables per output column/row, horizontal pass into int rows, 8-bit vertical pass;
    an exact halving is INTER_AREA's 2×2 mean."""
    src_h, src_w, cn = image.shape
    if (new_h, new_w) == (src_h, src_w):
        return image.copy()
    inv_x, inv_y = new_w / src_w, new_h / src_h
    scale_x, scale_y = 1.0 / inv_x, 1.0 / inv_y
    if scale_x == 2.0 and scale_y == 2.0:
        s = image.astype(np.int64)
        out = np.empty((new_h, new_w, cn), np.uint8)
        for dy in range(new_h):
            for dx in range(new_w):
                total = (s[2 * dy, 2 * dx] + s[2 * dy, 2 * dx + 1] + s[2 * dy + 1, 2 * dx]
                         + s[2 * dy + 1, 2 * dx + 1])
                out[dy, dx] = (total + 2) >> 2
        return out
    xofs, ialpha, xmax = [], [], new_w
    for dx in range(new_w):
        fx = np.float32((dx + 0.5) * scale_x - 0.5)
        sx = int(np.floor(fx))
        fx = np.float32(fx - np.float32(sx))
        if sx < 0:
            fx, sx = np.float32(0), 0
        if sx + 1 >= src_w:
            xmax = min(xmax, dx)
            if sx >= src_w - 1:
                fx, sx = np.float32(0), src_w - 1
        xofs.append(sx)
        ialpha.append((int(np.rint(np.float32(np.float32(1) - fx) * np.float32(2048))),
                       int(np.rint(fx * np.float32(2048)))))
    yofs, ibeta = [], []
    for dy in range(new_h):
        fy = np.float32((dy + 0.5) * scale_y - 0.5)
        sy = int(np.floor(fy))
        fy = np.float32(fy - np.float32(sy))
        yofs.append(sy)
        ibeta.append((int(np.rint(np.float32(np.float32(1) - fy) * np.float32(2048))),
                      int(np.rint(fy * np.float32(2048)))))
    s = image.astype(np.int64)
    rows = np.zeros((src_h, new_w, cn), np.int64)   # every source row, resized horizontally
    for dx in range(new_w):
        sx = xofs[dx]
        if dx < xmax:
            rows[:, dx] = s[:, sx] * ialpha[dx][0] + s[:, sx + 1] * ialpha[dx][1]
        else:
            rows[:, dx] = s[:, sx] * 2048
    out = np.empty((new_h, new_w, cn), np.uint8)
    for dy in range(new_h):
        r0 = rows[min(max(yofs[dy], 0), src_h - 1)]
        r1 = rows[min(max(yofs[dy] + 1, 0), src_h - 1)]
        b0, b1 = ibeta[dy]
        out[dy] = (((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2) >> 2
    return out


def _positional_embedding(visual, rows: int, cols: int) -> torch.Tensor:
    """The reference's interpolate_pos_encoding: unchanged for the square training grid, else
    bicubic with scale_factor (g + 0.1) / side."""
    pos = visual.positional_embedding
    side = int(math.sqrt(pos.shape[0] - 1))
    if rows == side and cols == side:
        return pos
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side),
                         mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)])


@torch.no_grad()
def protocol_window_logits(model, text: torch.Tensor, crop: torch.Tensor,
                           bias_lambda: float = -0.3) -> torch.Tensor:
    """One normalised crop (1, 3, H, W), H and W multiples of the patch -> logits (1, Q, H, W):
    SegEarth-OV's last block (q-q + k-k + v-v attention, no residual, no MLP), cosine with the
    text, the CLS term times λ, bilinear to the crop."""
    visual = model.visual
    patch = visual.conv1.kernel_size[0]
    rows, cols = crop.shape[2] // patch, crop.shape[3] // patch
    x = visual.conv1(crop).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.reshape(1, 1, -1), x], dim=1)
    x = visual.ln_pre(x + _positional_embedding(visual, rows, cols))
    blocks = list(visual.transformer.resblocks)
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    y = last.ln_1(x)
    heads = last.attn.num_heads
    q, k, v = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = [t.reshape(1, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v)]
    scale = q.shape[-1] ** -0.5
    attention = sum(torch.softmax(scale * t @ t.transpose(-2, -1), dim=-1) for t in (q, k, v))
    x = last.attn.out_proj((attention @ v).transpose(1, 2).reshape(1, -1, y.shape[-1]))
    x = visual.ln_post(x) @ visual.proj
    x = x / x.norm(dim=-1, keepdim=True)
    logits = x[:, 1:] @ text.T + bias_lambda * (x[:, :1] @ text.T)
    logits = logits.transpose(1, 2).reshape(1, -1, rows, cols)
    return F.interpolate(logits, size=crop.shape[2:], mode="bilinear")


def protocol_pad(height: int, width: int, patch: int):
    """(left, right, top, bottom) as the reference's compute_padsize."""
    left = right = top = bottom = 0
    if width % patch:
        extra = patch - width % patch
        left, right = extra // 2, extra - extra // 2
    if height % patch:
        extra = patch - height % patch
        top, bottom = extra // 2, extra - extra // 2
    return left, right, top, bottom


@torch.no_grad()
def protocol_probabilities(image: np.ndarray, model, text: torch.Tensor,
                           query_owner: Sequence[int], logit_scale: float = 50.0,
                           long_side: Optional[int] = 448, window: int = 224, stride: int = 112,
                           threshold: float = 0.0):
    """(H, W, 3) uint8 -> (class probabilities (K, H, W), labels (H, W): 0 background, 1..K)."""
    height, width = image.shape[:2]
    working = image
    if long_side:
        working = opencv_resize_linear(image, *mmcv_rescale_size(height, width, long_side))
    mean = torch.tensor(CLIP_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD_255).view(1, 3, 1, 1)
    img = (torch.from_numpy(working).permute(2, 0, 1)[None].float() - mean) / std
    h_img, w_img = img.shape[2:]
    patch = model.visual.conv1.kernel_size[0]
    preds = torch.zeros((1, text.shape[0], h_img, w_img))
    count = torch.zeros((1, 1, h_img, w_img))
    h_grids = max(h_img - window + stride - 1, 0) // stride + 1
    w_grids = max(w_img - window + stride - 1, 0) // stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * stride + window, h_img), min(w_idx * stride + window, w_img)
            y1, x1 = max(y2 - window, 0), max(x2 - window, 0)
            crop = img[:, :, y1:y2, x1:x2]
            crop_h, crop_w = crop.shape[2:]
            pad = protocol_pad(crop_h, crop_w, patch)
            if any(pad):
                crop = F.pad(crop, pad)
            logits = protocol_window_logits(model, text, crop)
            if any(pad):
                logits = logits[:, :, pad[2]:pad[2] + crop_h, pad[0]:pad[0] + crop_w]
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    logits = F.interpolate(preds / count, size=(height, width), mode="bilinear")[0]
    probs = (logits * logit_scale).softmax(0)
    owner = torch.tensor(list(query_owner))
    num_classes = int(owner.max()) + 1
    if num_classes != len(owner):
        one_hot = F.one_hot(owner, num_classes).T.view(num_classes, len(owner), 1, 1)
        probs = (probs[None] * one_hot).max(1)[0]
    labels = probs.argmax(0) + 1
    labels[probs.max(0)[0] < threshold] = 0
    return probs.numpy(), labels.to(torch.uint8).numpy()
