"""Engine 'hybrid': SAM 3 and the CLIP engine (DR-Seg or dense CLIP) fused per pixel.

Both engines run their own sliding windows (SAM 3 tiles of its input size, CLIP windows of 224 px)
over the same block partition, each keeping its class probabilities per block; per pixel the two
are fused by their confidence (`core.drseg.fusion.fuse_engines`), so the classes SAM 3 misses
(land cover, "stuff") come from the CLIP branch and SAM 3's crisp instances win where it is sure.
Background is where the fused best class is below the threshold. Each engine's result is the same
whatever the block size, so the fused one is too, and memory stays flat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .drseg.fusion import fuse_engines
from .sliding import BlockResult, SlidingWindowSegmenter, Timings

_ENGINE_STAGES = ("read", "model", "stitch", "windows")


class HybridSegmenter:
    """Iterates fused `BlockResult`s; the same interface as `SlidingWindowSegmenter`."""

    def __init__(self, sam3: SlidingWindowSegmenter, clip: SlidingWindowSegmenter,
                 threshold: float = 0.0, keep_probabilities: bool = False):
        if [tuple(b.flatten()) for b in sam3.blocks] != [tuple(b.flatten()) for b in clip.blocks]:
            raise ValueError("the two engines must share one block partition")
        for engine in (sam3, clip):
            engine.keep_probabilities = True
        self.sam3, self.clip = sam3, clip
        self.threshold = threshold
        self.keep_probabilities = keep_probabilities
        self.blocks = sam3.blocks
        self.timings = Timings()

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def oom_retries(self) -> List[str]:
        return self.sam3.oom_retries + self.clip.oom_retries

    @property
    def on_batch_reduced(self) -> Optional[Callable[[int, str], None]]:
        return self.sam3.on_batch_reduced

    @on_batch_reduced.setter
    def on_batch_reduced(self, callback) -> None:
        self.sam3.on_batch_reduced = self.clip.on_batch_reduced = callback

    def parts(self, monitor=None, work=None) -> Iterator[Tuple[BlockResult, int]]:
        """(block, 1) per block, the way core/segment.py takes blocks from any source."""
        for index, result in enumerate(self):
            if monitor is not None:
                monitor.report((index + 1) / len(self),
                               f"Segmenting block {index + 1}/{len(self)} (SAM 3 and CLIP fused)")
            yield result, 1

    def __iter__(self) -> Iterator[BlockResult]:
        return self._fused(zip(self.sam3, self.clip))

    def segment_blocks(self, indices) -> Iterator[BlockResult]:
        """The fused blocks `indices`, each equal to its block in a whole run (both engines
        score their halos; see SlidingWindowSegmenter.segment_blocks): a Dask task's part."""
        indices = list(indices)
        return self._fused(zip(self.sam3.segment_blocks(indices),
                               self.clip.segment_blocks(indices)))

    def _fused(self, pairs: Iterable[Tuple[BlockResult, BlockResult]]) -> Iterator[BlockResult]:
        # what the caller booked before the run (text encoding) stays; the engines' stages add up
        base = {name: getattr(self.timings, name) for name in _ENGINE_STAGES}
        for a, b in pairs:
            for name in _ENGINE_STAGES:
                setattr(self.timings, name, base[name] + getattr(self.sam3.timings, name)
                        + getattr(self.clip.timings, name))
            yield fuse_blocks(a, b, self.threshold, self.keep_probabilities)


def hybrid_note(method: str, note: str = "") -> str:
    """What a hybrid run tells the user about its CLIP branch."""
    branch = "DR-Seg" if method == "drseg" else "dense CLIP"
    return f"SAM 3 fused with {branch}" + (f". {note}" if note else "")


@dataclass(frozen=True)
class HybridRecipe:
    """Both engines' models as one picklable, hashable value for Dask workers: `sam3` a
    core.sam3_engine.Sam3Recipe, `clip` a core.segment.ScorerRecipe. Calling it gives
    `HybridScorers` (each scorer through the process-wide model cache)."""

    sam3: object
    clip: object
    engine = "hybrid"

    @property
    def device(self) -> str:
        return self.sam3.device

    @property
    def window(self) -> int:
        return self.sam3.window   # SAM 3's tile is the larger window: it sizes the Dask tasks

    def __call__(self, download_progress=None, device: Optional[str] = None) -> "HybridScorers":
        return HybridScorers(self.sam3(download_progress, device=device),
                             self.clip(download_progress, device=device))


@dataclass(eq=False)
class HybridScorers:
    """The two scorers of a hybrid run on one worker (each encodes its queries its own way:
    core.segment.encode_queries)."""

    sam3: object
    clip: object

    @property
    def device(self):
        return self.sam3.device


def fuse_blocks(sam3: BlockResult, clip: BlockResult, threshold: float,
                keep_probabilities: bool = False) -> BlockResult:
    """One block's class map from both engines' class probabilities (K, h, w)."""
    fused = fuse_engines(torch.from_numpy(sam3.probabilities), torch.from_numpy(clip.probabilities))
    top, arg = fused.max(dim=0)
    label = (arg + 1).to(torch.uint8).numpy()
    label[top.numpy() < threshold] = 0
    valid = (sam3.classes != 255) & (clip.classes != 255)
    classes = np.where(valid, label, np.uint8(255)).astype(np.uint8)
    score = np.where(valid, top.numpy(), 0.0).astype(np.float32)
    probs = fused.numpy() * valid if keep_probabilities else None
    return BlockResult(sam3.window, classes, score, probs)
