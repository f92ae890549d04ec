"""Seamless sliding-window inference over a raster of any size, block by block.

Windows (e.g. 224 px, stride 112) lie on one global grid over the working raster; the last
window of a row or column is shifted back to stay inside. Output is produced in blocks that
partition the raster (every pixel exactly once). Each window's logits are computed once, kept on
the coarse token grid in a cache while later blocks still need them, and blended into a block with
a weight window, so the result is identical to running the whole raster in one piece while
memory depends only on the block size and the raster width in windows.

Blends: "smooth" (the product's default) weights each window pixel by a sin² ramp, highest in the
window's centre; "mean" counts every window pixel once, the benchmark protocol's count map
(core/protocol.py). A raster smaller than a window is scored at its own size: a scorer that
declares `patch_size` pads it, centred, to a multiple of that size after normalisation (the
padding is the mean colour, not black pixels) and the pad is cut off its logits again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from rasterio.windows import Window

from .errors import ModelError
from .protocol import BLENDS, DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_STRIDE, DEFAULT_WINDOW
from .raster_io import Grid

# torch (and core.device, which imports it) are imported where used: the QGIS front ends import
# the engine's request types on the main thread, and importing torch takes seconds.

BLEND_FLOOR = 1e-3  # keeps raster-edge pixels, covered by one window's rim only, weighted


class WindowReader(Protocol):
    """Pixels of the working raster (raster_io.RasterReader, array_segment.ArrayReader)."""

    grid: Grid

    def read(self, window: Window) -> Tuple[np.ndarray, np.ndarray]:
        """(uint8 (3, h, w) image, bool (h, w) valid mask) of ``window``."""


class WindowScorer(Protocol):
    """Scores windows against text queries (DenseClip, drseg.rectify.DrSegScorer).

    A scorer with an integer `patch_size` attribute also takes crops smaller than a window (a
    raster smaller than one) and pads them itself, centred, to multiples of it (`centred_pad`);
    its logits cover the padded crop. A scorer without it gets whole windows, black-padded."""

    logit_scale: float  # multiplies the logits before the softmax over queries

    def set_queries(self, queries: Sequence[str]) -> None: ...

    def score_windows(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, 3, H, W) -> logits (B, Q, h, w) on each crop's token grid."""


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Window origins along one axis; the last one is shifted back to end at the raster edge."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def block_windows(width: int, height: int, block: int) -> List[Window]:
    """Blocks that partition the raster, row by row."""
    return [Window(col, row, min(block, width - col), min(block, height - row))
            for row in range(0, height, block) for col in range(0, width, block)]


def blend_ramp(window: int) -> np.ndarray:
    """Smooth 1-D weight (sin² ramp, highest in the centre); the 2-D weight is its outer product."""
    ramp = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2
    return np.maximum(ramp, BLEND_FLOOR).astype(np.float32)


def window_ramp(window: int, blend: str) -> np.ndarray:
    """The 1-D weight of `blend`: the sin² ramp ("smooth") or ones, a count map ("mean")."""
    if blend == "smooth":
        return blend_ramp(window)
    if blend == "mean":
        return np.ones(window, np.float32)
    raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")


def blend_weights(window: int, blend: str = DEFAULT_BLEND) -> np.ndarray:
    ramp = window_ramp(window, blend)
    return np.outer(ramp, ramp)


def centred_pad(length: int, patch: int) -> Tuple[int, int]:
    """(before, after): padding that brings `length` to a multiple of `patch`, split centred with
    the odd pixel after, as the benchmark protocol pads crops smaller than a window."""
    total = (-length) % patch
    return total // 2, total - total // 2


def class_probabilities(logits: torch.Tensor, logit_scale: float,
                        synonyms: Sequence[Sequence[int]]) -> torch.Tensor:
    """Query logits (Q, ...) -> class probabilities (K, ...): ×scale, softmax over all queries, a
    class as likely as its most likely synonym."""
    import torch

    query_probs = torch.softmax(logit_scale * logits, dim=0)
    return torch.stack([query_probs[list(queries)].amax(dim=0) for queries in synonyms])


def label_classes(class_probs: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (labels uint8: 1..K the most likely class, 0 where its probability < threshold; top)."""
    import torch

    top, arg = class_probs.max(dim=0)
    labels = (arg + 1).to(torch.uint8)
    labels[top < threshold] = 0
    return labels, top


def synonym_groups(query_owner: Sequence[int]) -> List[List[int]]:
    """For each class (0-based) the queries that belong to it."""
    owner = list(query_owner)
    return [[q for q, c in enumerate(owner) if c == k] for k in range(max(owner) + 1)]


def bilinear_matrix(size_out: int, size_in: int) -> np.ndarray:
    """(size_out, size_in) matrix R with R @ v == bilinear resize of v (align_corners=False).

    Resizing a window's token logits L to pixels is then R_y · L · R_xᵀ, which lets a block take
    just the rows and columns it needs, with the blend weights folded into R.
    """
    matrix = np.zeros((size_out, size_in), np.float32)
    source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(int), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (source - low).astype(np.float32)
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


@dataclass
class Timings:
    """Seconds spent per stage of a run (printed by the CLI and the benchmarks)."""

    read: float = 0.0
    model: float = 0.0
    stitch: float = 0.0
    write: float = 0.0
    vectorize: float = 0.0
    windows: int = 0

    def as_dict(self) -> Dict[str, float]:
        return dict(self.__dict__)


@dataclass
class BlockResult:
    window: Window            # where the block lies in the working grid
    classes: np.ndarray       # uint8 (h, w): 0 background, 1..K classes, 255 nodata
    score: np.ndarray         # float32 (h, w): probability of the chosen class (0 on nodata)
    probabilities: Optional[np.ndarray] = None  # float32 (K, h, w) when asked for
    logits: Optional[np.ndarray] = None  # float32 (Q, h, w): blended query logits, when asked for


@dataclass
class SlidingWindowSegmenter:
    """Turns a `reader` and a `scorer` (whose queries are set) into class blocks.

    query_owner: for each query the 0-based class it belongs to (synonyms share a class).
    blend: "smooth" (sin² weights) or "mean" (count map, the benchmark protocol).
    When the GPU runs out of memory the batch is halved (down to 1) and `on_batch_reduced(size,
    reason)` is told; `oom_retries` lists the reasons.
    """

    reader: WindowReader
    scorer: WindowScorer
    query_owner: Sequence[int]
    threshold: float = 0.0
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    block: int = 512
    batch_size: int = DEFAULT_BATCH_SIZE
    keep_probabilities: bool = False
    keep_logits: bool = False
    blend: str = DEFAULT_BLEND
    timings: Timings = field(default_factory=Timings)
    on_batch_reduced: Optional[Callable[[int, str], None]] = None
    # Called after each window batch with (windows scored, windows to score) of the current block,
    # so progress moves and cancel is checked inside a block.
    on_window_batch: Optional[Callable[[int, int], None]] = None
    oom_retries: List[str] = field(default_factory=list)

    def __post_init__(self):
        grid = self.reader.grid
        self.width, self.height = grid.width, grid.height
        self._xs = window_starts(self.width, self.window, self.stride)
        self._ys = window_starts(self.height, self.window, self.stride)
        self._ramp = window_ramp(self.window, self.blend)
        self._resize: Dict[Tuple[int, int], np.ndarray] = {}
        self._cache: Dict[Tuple[int, int], Optional[np.ndarray]] = {}
        self._synonyms = synonym_groups(self.query_owner)
        self.num_classes = len(self._synonyms)
        # Crops are window-sized unless the raster is smaller than a window along an axis.
        self._crop = (min(self.window, self.height), min(self.window, self.width))
        patch = getattr(self.scorer, "patch_size", None)
        self._patch = int(patch) if patch else None
        self.blocks = block_windows(self.width, self.height, self.block)

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[BlockResult]:
        for index, block in enumerate(self.blocks):
            yield self._segment_block(block)
            next_top = self.blocks[index + 1].row_off if index + 1 < len(self.blocks) else self.height
            # Windows ending above the next block's top are never needed again.
            for key in [k for k in self._cache if k[0] + self.window <= next_top]:
                del self._cache[key]

    # -- one block ------------------------------------------------------------------------------
    def _segment_block(self, block: Window) -> BlockResult:
        bx, by, bw, bh = int(block.col_off), int(block.row_off), int(block.width), int(block.height)
        xs = [x for x in self._xs if x < bx + bw and x + self.window > bx]
        ys = [y for y in self._ys if y < by + bh and y + self.window > by]
        x0, y0 = xs[0], ys[0]
        x1, y1 = min(xs[-1] + self.window, self.width), min(ys[-1] + self.window, self.height)

        started = time.perf_counter()
        image, valid = self.reader.read(Window(x0, y0, x1 - x0, y1 - y0))
        self.timings.read += time.perf_counter() - started

        self._score_missing(image, valid, x0, y0, xs, ys)

        # Dozens of small products per block: numpy, so they do not wait on torch's thread pool
        # (which stalls when QGIS or other processes share the cores).
        started = time.perf_counter()
        accumulated = None
        weight_sum = np.zeros((bh, bw), np.float32)
        for y in ys:
            for x in xs:
                logits = self._cache.get((y, x))
                if logits is None:
                    continue
                # Overlap of this window with the block, in window coordinates.
                ry0, ry1 = max(by, y) - y, min(by + bh, y + self.window, self.height) - y
                rx0, rx1 = max(bx, x) - x, min(bx + bw, x + self.window, self.width) - x
                wy, wx = self._ramp[ry0:ry1], self._ramp[rx0:rx1]
                resize_y = self._resize_matrix(self._crop[0], logits.shape[1])[ry0:ry1] * wy[:, None]
                resize_x = self._resize_matrix(self._crop[1], logits.shape[2])[rx0:rx1] * wx[:, None]
                part = np.matmul(np.matmul(resize_y, logits), resize_x.T)  # weighted, resized
                if accumulated is None:
                    accumulated = np.zeros((part.shape[0], bh, bw), np.float32)
                oy, ox = y + ry0 - by, x + rx0 - bx
                accumulated[:, oy:oy + ry1 - ry0, ox:ox + rx1 - rx0] += part
                weight_sum[oy:oy + ry1 - ry0, ox:ox + rx1 - rx0] += np.outer(wy, wx)
        block_valid = valid[by - y0:by - y0 + bh, bx - x0:bx - x0 + bw]
        result = self._classify(accumulated, weight_sum, block_valid, block)
        self.timings.stitch += time.perf_counter() - started
        return result

    def _resize_matrix(self, length: int, tokens: int) -> np.ndarray:
        """Token logits -> the crop's pixels along one axis. A scorer with `patch_size` scored the
        crop padded centred to a multiple of it: resize to the padded length, cut the pad off."""
        key = (length, tokens)
        if key not in self._resize:
            if self._patch is None:
                self._resize[key] = bilinear_matrix(self.window, tokens)
            else:
                before, after = centred_pad(length, self._patch)
                full = bilinear_matrix(length + before + after, tokens)
                self._resize[key] = np.ascontiguousarray(full[before:before + length])
        return self._resize[key]

    def _score_missing(self, image, valid, x0, y0, xs, ys) -> None:
        todo, crops = [], []
        for y in ys:
            for x in xs:
                if (y, x) in self._cache:
                    continue
                crop_valid = valid[y - y0:y - y0 + self.window, x - x0:x - x0 + self.window]
                if not crop_valid.any():
                    self._cache[(y, x)] = None  # all nodata: nothing to predict
                    continue
                crop = image[:, y - y0:y - y0 + self.window, x - x0:x - x0 + self.window]
                if self._patch is None and crop.shape[1:] != (self.window, self.window):
                    # A scorer without `patch_size` takes whole windows only: black padding.
                    padded = np.zeros((3, self.window, self.window), np.uint8)
                    padded[:, :crop.shape[1], :crop.shape[2]] = crop
                    crop = padded
                todo.append((y, x))
                crops.append(crop)
        start = 0
        while start < len(crops):
            started = time.perf_counter()

            def score(size, start=start):
                batch = crops[start:start + size]
                return len(batch), self.scorer.score_windows(np.stack(batch))

            from .device import run_with_oom_retry

            count, logits = run_with_oom_retry(score, self.batch_size, self._batch_reduced)
            if not np.isfinite(np.asarray(logits)).all():
                # NaN would silently win every softmax as one class; damaged weights, say so.
                raise ModelError("The model produced invalid scores (NaN or infinity): its weights "
                                 "are damaged or not meant for this architecture; download or "
                                 "import them again")
            self.timings.model += time.perf_counter() - started
            self.timings.windows += len(logits)
            for key, value in zip(todo[start:start + count], logits):
                self._cache[key] = np.asarray(value, dtype=np.float32)
            start += count
            if self.on_window_batch is not None:
                self.on_window_batch(start, len(crops))

    def _batch_reduced(self, size: int, reason: str) -> None:
        self.batch_size = size  # later blocks keep the smaller batch
        self.oom_retries.append(reason)
        if self.on_batch_reduced is not None:
            self.on_batch_reduced(size, reason)

    def _classify(self, accumulated, weight_sum, valid, block) -> BlockResult:
        import torch

        bh, bw = weight_sum.shape
        classes = np.full((bh, bw), 255, np.uint8)
        score = np.zeros((bh, bw), np.float32)
        if accumulated is None:
            probs = np.zeros((self.num_classes, bh, bw), np.float32) if self.keep_probabilities else None
            logits = (np.zeros((len(self.query_owner), bh, bw), np.float32)
                      if self.keep_logits else None)
            return BlockResult(block, classes, score, probs, logits)
        logits = torch.from_numpy(accumulated / np.maximum(weight_sum, 1e-12))
        class_probs = class_probabilities(logits, self.scorer.logit_scale, self._synonyms)
        label, top = label_classes(class_probs, self.threshold)
        valid = valid & (weight_sum > 0)
        classes = np.where(valid, label.numpy(), np.uint8(255)).astype(np.uint8)
        score = np.where(valid, top.numpy(), 0.0).astype(np.float32)
        probs = class_probs.numpy() * valid if self.keep_probabilities else None
        return BlockResult(block, classes, score, probs,
                           logits.numpy() if self.keep_logits else None)
