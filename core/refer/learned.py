"""Inference with a trained prompter head (``refer --prompter FILE``): the learned prompts
replace the training-free ones in a :class:`~.pipeline.ReferringSession`.

    prompter = LearnedPrompter.from_file("head.safetensors", clip_model, tokenizer, sam)
    session = ReferringSession(image, sam, localizer, prompter=prompter)

The head's LoRA deltas are merged into private copies of the two models (the shared, cached
models keep serving the training-free path unchanged; the copies cost their memory once per
head). A session encodes its area once with the adapted encoders; each query then runs the
prompter and SAM's mask decoder only.
"""
from __future__ import annotations

import copy
import os
import threading
import time
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .head import check_base_models, head_config, load_head_into, read_head
from .lora import merge
from .prompter import PromptedSegmenter

MASK_THRESHOLD = 0.5          # probability above which a pixel belongs to the referred object


class LearnedPrompter:
    """A loaded head on (copies of) its base models; thread-safe."""

    def __init__(self, model: PromptedSegmenter, metadata: Dict[str, str], path: str = ""):
        self.model = model.eval()
        self.metadata = metadata
        self.path = path
        self._lock = threading.RLock()

    @classmethod
    def from_file(cls, path: str, clip_model, tokenizer, sam) -> "LearnedPrompter":
        """InputError for an unreadable head or one trained on other base models."""
        tensors, metadata = read_head(path)
        check_base_models(metadata, path, clip_model, sam)
        model = PromptedSegmenter(copy.deepcopy(clip_model), tokenizer, copy.deepcopy(sam),
                                  head_config(metadata))
        load_head_into(model, tensors, path)
        for part, root in model.adapter_roots().items():
            if part in model.adapters:
                merge(root, model.adapters[part])
        return cls(model, metadata, os.path.abspath(path))

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """H×W×3 uint8 -> the encoders' outputs for :meth:`probabilities`."""
        with self._lock:
            pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
            return self.model.encode_images(pixels.unsqueeze(0).to(self.model.device))

    @torch.no_grad()
    def probabilities(self, features, expression: str, shape: Tuple[int, int]) -> np.ndarray:
        """The referred object's probability per pixel (H×W float32)."""
        with self._lock:
            patches, embeddings = features
            low = self.model.decode(patches, embeddings, self.model.encode_text([expression]))
            full = F.interpolate(low, size=tuple(shape), mode="bilinear", align_corners=False)
            return torch.sigmoid(full)[0, 0].float().cpu().numpy()


def learned_query(session, text: str) -> List:
    """A :class:`~.pipeline.ReferringSession` query through its learned prompter: one result,
    the thresholded mask, scored by its mean probability (empty when nothing passes)."""
    from .pipeline import QueryTimings, ReferringResult

    timings = QueryTimings()
    started = time.perf_counter()
    cached = session._learned_features is not None
    if not cached:
        session._learned_features = session.prompter.encode(session.image)
        session.clip_encoder_calls += 1
        session.sam_encoder_calls += 1
        timings.clip_encode = time.perf_counter() - started
    tick = time.perf_counter()
    probability = session.prompter.probabilities(session._learned_features, text,
                                                 (session.height, session.width))
    session.decoder_calls += 1
    mask = (probability > MASK_THRESHOLD) & session.valid
    timings.decode = time.perf_counter() - tick
    results = []
    if mask.any():
        results.append(ReferringResult(mask=mask, score=float(probability[mask].mean()),
                                       expression=text, target_score=float(probability.max()),
                                       source="prompter"))
    timings.candidates = len(results)
    timings.cached = cached
    timings.total = time.perf_counter() - started
    session.last_timings = timings
    session.last_activation = probability
    session.queries += 1
    return results
