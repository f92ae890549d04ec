"""Using an adapter at inference: the vision tower's fine-tuned weights, λ, and for each seen
class its chosen prompt, learned text offset and bias. Queries the adapter never saw are encoded
as without it (bias 0), so new class names still work."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .adapter import Adapter
from .features import prompt_embedding


def apply_vision(model: torch.nn.Module, adapter: Adapter) -> None:
    """Load the adapter's vision weights into `model.visual` (names and shapes must match)."""
    if not adapter.vision_state:
        return
    own = dict(model.visual.named_parameters())
    for name, value in adapter.vision_state.items():
        if name not in own or own[name].shape != value.shape:
            raise InputError(f"The adapter was made for another CLIP model ({adapter.base_model}): "
                             f"its weight '{name}' does not fit this one")
        with torch.no_grad():
            own[name].copy_(value.to(own[name].dtype))


def adapted_text(clip, adapter: Optional[Adapter], queries: Sequence[str]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (normalised text embeddings (Q,D), logit bias per query (Q,)) on the clip's device."""
    rows, biases = [], []
    for query in queries:
        prompt = adapter.prompts.get(query) if adapter is not None else None
        if prompt is None:  # a class the adapter never saw: as without it
            rows.append(prompt_embedding(clip, query))
            biases.append(0.0)
            continue
        embedding = prompt_embedding(clip, prompt.text, prompt.templates)
        offset = adapter.offset_of(query)
        if offset is not None:
            embedding = F.normalize(embedding + offset.to(embedding), dim=-1)
        rows.append(embedding)
        biases.append(prompt.bias)
    return torch.stack(rows), torch.tensor(biases, device=clip.device, dtype=torch.float32)


class AdaptedScorer:
    """A window scorer (core/sliding.py) with an adapter on top of `inner`.

    inner: a DenseClip, or a scorer duck-typed on it whose `clip` is one (DR-Seg's), built on a
    CLIP model that already carries the adapter's vision weights (`apply_vision`)."""

    def __init__(self, inner, clip, adapter: Adapter):
        self.inner, self.clip, self.adapter = inner, clip, adapter
        self.logit_scale = inner.logit_scale
        self.device = clip.device
        self._bias = None
        clip.bias_lambda = adapter.bias_lambda

    def set_queries(self, queries: Sequence[str]) -> None:
        text, self._bias = adapted_text(self.clip, self.adapter, list(queries))
        self.clip.text_features = text

    def score_windows(self, images: np.ndarray) -> np.ndarray:
        logits = self.inner.score_windows(images)
        return logits + self._bias.cpu().numpy()[None, :, None, None].astype(np.float32)


def evaluate_chips(clip, adapter: Optional[Adapter], images: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str]) -> np.ndarray:
    """Per-class IoU on labelled chips with `clip` (carrying the adapter's vision weights when it
    has any) and the adapter's prompts, λ and biases; adapter None: the engine's defaults."""
    from .features import LABEL_GRID, chip_features, class_iou, class_logits, labels_at

    text, bias = adapted_text(clip, adapter, list(class_names))
    lam = adapter.bias_lambda if adapter is not None else clip.bias_lambda
    with torch.no_grad():
        patches, cls = chip_features(clip, images)
        logits = class_logits(patches, cls, text, lam, bias)
    return class_iou(logits, labels_at(labels, LABEL_GRID).to(logits.device), len(class_names))


def check_base(adapter: Adapter, clip_model: str, clip_weights: str) -> None:
    """One clear error when the adapter was made for another base model or other weights."""
    import os

    if str(clip_model) != adapter.base_model:
        raise InputError(f"The adapter was made for CLIP model '{adapter.base_model}', not "
                         f"'{clip_model}': choose that model (--clip-model)")
    if adapter.base_sha256 and os.path.isfile(str(clip_weights)):
        from ..models.download import sha256_of

        if sha256_of(str(clip_weights)) != adapter.base_sha256:
            raise InputError(f"The adapter was made for other CLIP weights than "
                             f"'{clip_weights}' (SHA-256 differs)")
    elif os.path.basename(str(clip_weights)) != os.path.basename(adapter.base_weights):
        raise InputError(f"The adapter was made for CLIP weights '{adapter.base_weights}', not "
                         f"'{clip_weights}': choose those weights (--clip-weights)")


def adapted_dense_clip(adapter_path: str, clip_model: str, clip_weights: str, device,
                       cache_dir: Optional[str] = None, download_progress=None):
    """-> (adapter, DenseClip of a private model carrying the adapter's vision weights), loaded
    once per adapter file (and its modification time) and kept in the model cache.
    adapter_path: a file, or the name of an adapter in the model cache (core/adapt/catalog.py)."""
    import os

    from ..dense_clip import DenseClip
    from ..device import as_device
    from ..models.cache import cached
    from ..models.clip import load_clip
    from .adapter import load_adapter
    from .catalog import resolve_adapter

    adapter_path = resolve_adapter(adapter_path, cache_dir)
    adapter = load_adapter(adapter_path)
    check_base(adapter, clip_model, clip_weights)
    torch_device = as_device(device)

    def build():
        model, tokenizer = load_clip(clip_model, clip_weights, torch_device, cache_dir=cache_dir,
                                     progress=download_progress)
        apply_vision(model, adapter)
        return DenseClip(model, tokenizer, torch_device, bias_lambda=adapter.bias_lambda)

    key = ("adapted_clip", str(clip_model), str(clip_weights), str(torch_device),
           os.path.abspath(adapter_path), os.path.getmtime(adapter_path))
    return adapter, cached(key, build)
