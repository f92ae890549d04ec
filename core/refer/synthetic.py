"""A synthetic referring set with known answers, and tiny real architectures to train on it.

Each image holds a few coloured shapes (square / circle, red / green / blue, large / small) on a
plain or lightly textured background; the expression names one of them by its size, colour,
shape and position ("the large red rectangular shape on the left", "the small blue round shape
at the bottom"),
and is generated only when that description singles it out in the image. The proof that the
trained path learns (benchmarks/bench_prompter.py, tests) and the GPU check use these.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .sam_frames import SAM_LONG_SIDE

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210)}
SHAPES = ("square", "circle")
# How an expression names each shape: words the training-free path's parser knows (an attribute
# and a noun), so both paths read the same text.
SHAPE_WORDS = {"square": "rectangular shape", "circle": "round shape"}
SIZES = {"small": 0.16, "large": 0.30}        # side / diameter as a share of the image side
# Image thirds: where an object's centre must lie for each position word.
POSITIONS = {"on the left": (0, (0.0, 1 / 3)), "on the right": (0, (2 / 3, 1.0)),
             "at the top": (1, (0.0, 1 / 3)), "at the bottom": (1, (2 / 3, 1.0))}


@dataclass
class SyntheticSample:
    image: np.ndarray          # H×W×3 uint8
    mask: np.ndarray           # H×W bool, the referred object
    expression: str

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """(image, mask): what a training sample (train_data.TrainingSample) gives."""
        return self.image, self.mask


def _shape_mask(size: int, shape: str, cx: float, cy: float, extent: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] + 0.5
    half = extent / 2.0
    if shape == "square":
        return (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= half ** 2


def _position_words(cx: float, cy: float, size: int) -> List[str]:
    words = []
    for phrase, (axis, (lo, hi)) in POSITIONS.items():
        value = (cx if axis == 0 else cy) / size
        if lo <= value < hi:
            words.append(phrase)
    return words


def synthetic_sample(rng: np.random.Generator, size: int = 64, objects: int = 3
                     ) -> Optional[SyntheticSample]:
    """One image and one expression that singles out one of its objects (None when this draw
    has no object that a size-colour-shape-position description singles out)."""
    background = np.array(rng.integers(150, 230, 3), np.float32)
    image = np.empty((size, size, 3), np.float32)
    image[:] = background
    image += rng.normal(0, 6, image.shape)
    occupied = np.zeros((size, size), bool)
    placed = []
    for _ in range(objects * 6):
        if len(placed) == objects:
            break
        size_word = str(rng.choice(list(SIZES)))
        extent = SIZES[size_word] * size
        cx, cy = rng.uniform(extent / 2 + 1, size - extent / 2 - 1, 2)
        shape = str(rng.choice(SHAPES))
        mask = _shape_mask(size, shape, cx, cy, extent)
        grown = _shape_mask(size, "square", cx, cy, extent + 4)
        if (grown & occupied).any():
            continue
        colour = str(rng.choice(list(COLOURS)))
        occupied |= mask
        image[mask] = np.array(COLOURS[colour], np.float32) + rng.normal(0, 4, 3)
        placed.append((size_word, colour, shape, cx, cy, mask))
    order = rng.permutation(len(placed))
    for index in order:
        size_word, colour, shape, cx, cy, mask = placed[index]
        words = _position_words(cx, cy, size)
        if not words:
            continue
        others = [p for i, p in enumerate(placed) if i != index]
        for phrase in rng.permutation(words):
            rivals = [p for p in others if p[:3] == (size_word, colour, shape)
                      and phrase in _position_words(p[3], p[4], size)]
            if not rivals:
                text = f"the {size_word} {colour} {SHAPE_WORDS[shape]} {phrase}"
                return SyntheticSample(np.clip(image, 0, 255).astype(np.uint8), mask, text)
    return None


class SyntheticSet(Sequence):
    """`count` samples drawn on demand: sample i comes from its own generator (seed, i), so the
    set can be as large as wanted (a fresh sample per training step) without holding it, and
    index i is the same sample every time it is read (an evaluation on the training split
    scores what was trained on). Another seed gives other layouts: a held-out split."""

    def __init__(self, count: int, seed: int = 0, size: int = 64, objects: int = 3):
        self.count, self.seed, self.size, self.objects = int(count), int(seed), int(size), objects

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not -self.count <= index < self.count:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index) % self.count])
        while True:
            sample = synthetic_sample(rng, self.size, self.objects)
            if sample is not None:
                return sample


def synthetic_set(count: int, seed: int = 0, size: int = 64, objects: int = 3
                  ) -> List[SyntheticSample]:
    """A small set in memory, drawn in sequence from one generator (the tests' fixtures)."""
    rng = np.random.default_rng(seed)
    samples: List[SyntheticSample] = []
    while len(samples) < count:
        sample = synthetic_sample(rng, size, objects)
        if sample is not None:
            samples.append(sample)
    return samples


# -- tiny real architectures (random weights) ---------------------------------------------------
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(config: Optional[dict] = None, seed: int = 0):
    """-> (open_clip CLIP of the real architecture at tiny widths, tokenizer)."""
    import open_clip
    import torch

    config = dict(config or TINY_CLIP)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**config).eval()
    context = config.get("text_cfg", {}).get("context_length", 77)
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=context)


def tiny_sam(image_size: int = SAM_LONG_SIDE, embed_dim: int = 32, depth: int = 1,
             prompt_dim: int = 256, seed: Optional[int] = 0):
    """segment_anything's Sam (real architecture) with a small ViT (`depth` blocks of width
    `embed_dim`) for an `image_size`² input (a multiple of 16; the published models' 1024 by
    default), random weights drawn after torch.manual_seed(seed) (None: the current state)."""
    import torch
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    if seed is not None:
        torch.manual_seed(seed)
    grid = image_size // 16
    encoder = ImageEncoderViT(img_size=image_size, patch_size=16, embed_dim=embed_dim,
                              depth=depth, num_heads=2, mlp_ratio=2.0, out_chans=prompt_dim,
                              window_size=4, global_attn_indexes=())
    prompt = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=prompt_dim, num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim,
                                                        mlp_dim=prompt_dim, num_heads=8),
                          iou_head_depth=3, iou_head_hidden_dim=64)
    return Sam(encoder, prompt, decoder).eval()
