"""SAM 3 as a window scorer for the sliding-window engine (engine 'sam3'; README "Engines").

Every class name and synonym is a SAM 3 concept prompt. Per tile (a window of SAM 3's input size
on the engine's global grid) SAM 3 returns, for each prompt, instance masks with scores, a
presence score (is the concept in the tile at all) and a semantic map. They are combined into one
probability map per prompt (`combine_concept`):

    p = max( max_i σ(score_i)·σ(presence)·σ(mask_i),  σ(presence)·σ(semantic) )

so an instance counts as much as SAM 3 believes in it, and the semantic head fills what the
instances leave out ("stuff" such as water or grass) only where the concept is present.
The scorer says it returns probabilities (`outputs = "probabilities"`): the sliding engine blends
them across overlapping tiles as they are and takes the background where the best class is below
the threshold, without a softmax across classes (SAM 3 scores each concept on its own).

Text features are computed once per class list (`set_queries`); the image encoder's features are
kept per tile (keyed by the tile's pixels) within a memory budget, so a second class list over the
same area runs only the text encoder and the decoders (`encoder_calls` counts encoder passes).
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SAM3_MEAN = 0.5   # transformers' Sam3ImageProcessor: (x/255 − 0.5)/0.5 per channel
SAM3_STD = 0.5
TEXT_LENGTH = 32  # SAM 3's text context (max_position_embeddings of its CLIP text tower)
DEFAULT_FEATURE_CACHE_MB = 2048
PROMPTS_PER_PASS = 8  # concept prompts decoded together against one tile
MAX_TILES_PER_BATCH = 2  # SAM 3 tiles are 20× a CLIP window: the engine batches few at once


def combine_concept(mask_logits: torch.Tensor, score_logits: torch.Tensor,
                    presence_logit: torch.Tensor, semantic_logits: torch.Tensor) -> torch.Tensor:
    """One prompt's probability map (h, w) from SAM 3's outputs for one tile.

    mask_logits (N, h, w) instance masks, score_logits (N,) their scores, presence_logit () or
    (1,), semantic_logits (h', w') (resized to (h, w) when it differs).
    """
    presence = torch.sigmoid(presence_logit.float().reshape(()))
    instances = torch.sigmoid(score_logits.float())[:, None, None] * torch.sigmoid(mask_logits.float())
    best = instances.amax(dim=0) * presence if len(instances) else torch.zeros(mask_logits.shape[1:])
    semantic = semantic_logits.float()
    if semantic.shape != best.shape:
        semantic = F.interpolate(semantic[None, None], size=best.shape, mode="bilinear",
                                 align_corners=False)[0, 0]
    return torch.maximum(best, presence * torch.sigmoid(semantic))


class FeatureCache:
    """Image-encoder outputs per tile, least recently used first out, within a byte budget."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self._items: "OrderedDict[str, Tuple[tuple, int]]" = OrderedDict()
        self.bytes = 0

    def get(self, key: str):
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, features: tuple) -> None:
        """features: (levels, position encodings); only the levels count against the budget: the
        position encodings depend on the shape alone and are one set shared by every tile."""
        size = sum(t.numel() * t.element_size() for t in features[0])
        if size > self.budget:
            return
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        while self._items and self.bytes + size > self.budget:
            self.bytes -= self._items.popitem(last=False)[1][1]
        self._items[key] = (features, size)
        self.bytes += size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


class Sam3Scorer:
    """`score_windows(uint8 (B,3,S,S)) -> probabilities (B,Q,h,w)` with a transformers Sam3Model.

    S is the model's input size (`window`); h×w its mask resolution (S/3.5 for the released model).
    """

    outputs = "probabilities"
    logit_scale = 1.0  # unused with probabilities; kept for code that reads it

    def __init__(self, model, device=None, feature_cache_mb: float = DEFAULT_FEATURE_CACHE_MB,
                 prompts_per_pass: int = PROMPTS_PER_PASS):
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model.eval()
        parameter = next(model.parameters())
        self.device = torch.device(device) if device is not None else parameter.device
        self.dtype = parameter.dtype
        self.window = int(model.config.vision_config.backbone_config.image_size)
        # SAM 3's tokenizer is CLIP's byte-pair encoding; open_clip ships its vocabulary, so no
        # tokenizer files need downloading next to the gated weights.
        self.tokenizer = SimpleTokenizer(context_length=TEXT_LENGTH)
        self.prompts_per_pass = max(1, int(prompts_per_pass))
        self.features = FeatureCache(int(feature_cache_mb * 2 ** 20))
        self.encoder_calls = 0      # image-encoder passes (tiles), for tests and benchmarks
        self.queries: List[str] = []
        self._text: Optional[torch.Tensor] = None
        self._text_mask: Optional[torch.Tensor] = None
        self._phrases: dict = {}  # phrase -> (text features, attention mask)
        self._positions: dict = {}  # shapes -> the position encodings every tile shares

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def set_queries(self, queries: Sequence[str]) -> None:
        """Encode the concept prompts; each phrase once per scorer (the engine sets the list one
        query at a time, and later runs reuse phrases)."""
        self.queries = [str(q) for q in queries]
        missing = [q for q in dict.fromkeys(self.queries) if q not in self._phrases]
        if missing:
            ids = self.tokenizer(missing).to(self.device)
            mask = (ids != 0).long()
            out = self.model.get_text_features(input_ids=ids, attention_mask=mask)
            for i, phrase in enumerate(missing):
                self._phrases[phrase] = (out.pooler_output[i], mask[i])
        self._text = torch.stack([self._phrases[q][0] for q in self.queries])
        self._text_mask = torch.stack([self._phrases[q][1] for q in self.queries])

    # -- images -------------------------------------------------------------------------------
    @torch.no_grad()
    def score_windows(self, images: np.ndarray) -> np.ndarray:
        if self._text is None:
            raise RuntimeError("set_queries must be called before score_windows")
        images = np.ascontiguousarray(images)
        keys = [hashlib.sha1(image.tobytes()).hexdigest() + str(image.shape) for image in images]
        features = [self.features.get(key) for key in keys]
        missing = [i for i, f in enumerate(features) if f is None]
        if missing:
            encoded = self._encode(images[missing])
            for i, tile_features in zip(missing, encoded):
                features[i] = tile_features
                self.features.put(keys[i], tile_features)
        return np.stack([self._decode(f) for f in features]).astype(np.float32)

    def _vision(self, images: np.ndarray):
        pixels = torch.from_numpy(images).to(self.device).float().div_(255.0)
        pixels = ((pixels - SAM3_MEAN) / SAM3_STD).to(self.dtype)
        self.encoder_calls += len(images)
        return self.model.get_vision_features(pixel_values=pixels)

    def _encode(self, images: np.ndarray) -> List[tuple]:
        """Image-encoder features per tile: ((fpn levels), (their position encodings)).

        One tile per pass: a tile's features then depend on its pixels alone, not on which tiles
        shared its batch or were already cached, so a Dask task (which scores the halo of its
        blocks again) and a run in one process give the same bits. SAM 3's 1008-px tile fills a
        GPU on its own, so batching tiles gained little."""
        encoded = []
        for i in range(len(images)):
            out = self._vision(images[i:i + 1])
            positions = tuple(out.fpn_position_encoding)
            positions = self._positions.setdefault(tuple(tuple(t.shape) for t in positions),
                                                   positions)
            encoded.append((tuple(out.fpn_hidden_states), positions))
        return encoded

    @torch.no_grad()
    def encode_tile(self, tile: np.ndarray) -> Tuple[tuple, torch.Tensor]:
        """One tile (1, 3, S, S): its features as `_encode` gives them, and the backbone's tokens
        (1, n, C) that SAM 3's click head reads (core/models/sam3_clicks.py)."""
        out = self._vision(tile)
        return ((tuple(t[0:1] for t in out.fpn_hidden_states),
                 tuple(t[0:1] for t in out.fpn_position_encoding)), out.last_hidden_state[0:1])

    def _decode(self, tile_features: tuple) -> np.ndarray:
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        levels, positions = tile_features
        maps = []
        for start in range(0, len(self.queries), self.prompts_per_pass):
            text = self._text[start:start + self.prompts_per_pass]
            mask = self._text_mask[start:start + self.prompts_per_pass]
            n = len(text)
            vision = Sam3VisionEncoderOutput(
                fpn_hidden_states=tuple(t.expand(n, *t.shape[1:]) for t in levels),
                fpn_position_encoding=tuple(t.expand(n, *t.shape[1:]) for t in positions))
            out = self.model(vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(
                pooler_output=text), attention_mask=mask)
            for q in range(n):
                maps.append(combine_concept(out.pred_masks[q], out.pred_logits[q],
                                            out.presence_logits[q], out.semantic_seg[q, 0]))
        return torch.stack(maps).cpu().numpy()


@dataclass(frozen=True)
class Sam3Recipe:
    """The SAM 3 model of a request as a picklable, hashable value: a Dask worker builds its
    scorer from it once (through core.models.shared's cache) and keeps it for later tasks."""

    sam3_model: str
    sam3_weights: Optional[str]
    device: str
    cache_dir: Optional[str] = None     # None: the settings of the process building the scorer
    engine = "sam3"                     # which block source a worker builds (core/cluster/tasks.py)

    @property
    def window(self) -> int:
        """SAM 3's tile, from the architecture alone (no weights): sizes the Dask tasks."""
        from .models.sam3 import sam3_config

        return int(sam3_config(self.sam3_model).vision_config.backbone_config.image_size)

    @classmethod
    def of(cls, request, cache_dir: Optional[str] = None) -> "Sam3Recipe":
        return cls(request.sam3_model, request.sam3_weights, request.device,
                   cache_dir or request.cache_dir)

    def __call__(self, download_progress=None, device: Optional[str] = None) -> Sam3Scorer:
        from .models.shared import sam3_scorer

        cache_dir = self.cache_dir if self.cache_dir and os.path.isdir(self.cache_dir) else None
        return sam3_scorer(self.sam3_model, self.sam3_weights, device or self.device,
                           download_progress=download_progress, cache_dir=cache_dir)
