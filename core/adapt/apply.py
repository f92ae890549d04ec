"""Using an adapter at inference: the vision tower's fine-tuned weights, λ, the learned prompt
context, for each seen class its chosen prompt, learned text offset and bias, and the cost-map
decoder. Queries the adapter never saw are encoded from their own name with the learned context
(bias 0; as without the adapter when it has no context), so new class names still work."""
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
    """-> (normalised text embeddings (Q,D), logit bias per query (Q,)) on the clip's device.

    A seen class: its chosen prompt, learned offset and bias; every query, seen or not: the
    change the learned prompt context makes (core/adapt/context.py)."""
    rows, biases, offsets, texts = [], [], [], []
    for query in queries:
        prompt = adapter.prompts.get(query) if adapter is not None else None
        if prompt is None:  # a class the adapter never saw: its own name, no bias
            rows.append(prompt_embedding(clip, query))
            biases.append(0.0)
            texts.append(query)
            offsets.append(None)
            continue
        rows.append(prompt_embedding(clip, prompt.text, prompt.templates))
        biases.append(prompt.bias)
        texts.append(prompt.text)
        offsets.append(adapter.offset_of(query))
    text = torch.stack(rows)
    if adapter is not None and adapter.context is not None:
        text = text + _context_delta(clip, adapter, list(queries), texts)
    for i, offset in enumerate(offsets):
        if offset is not None:
            text[i] = text[i] + offset.to(text)
    changed = adapter is not None and (adapter.context is not None
                                       or any(o is not None for o in offsets))
    if changed:
        text = F.normalize(text, dim=-1)
    return text, torch.tensor(biases, device=clip.device, dtype=torch.float32)


@torch.no_grad()
def _context_delta(clip, adapter: Adapter, queries, texts) -> torch.Tensor:
    from .context import context_delta

    class_context = None
    if adapter.class_context is not None:  # seen classes add their own; unseen ones zeros
        own = [adapter.class_context_of(q) for q in queries]
        class_context = torch.stack([o if o is not None else torch.zeros_like(adapter.context)
                                     for o in own])
    device = clip.device
    return context_delta(clip.model, clip.tokenizer, texts, adapter.context.to(device),
                         adapter.context_init.to(device),
                         None if class_context is None else class_context.to(device))


class AdaptedScorer:
    """A window scorer (core/sliding.py) with an adapter on top of `inner`.

    inner: a DenseClip, or a scorer duck-typed on it whose `clip` is one (DR-Seg's), built on a
    CLIP model that already carries the adapter's vision weights (`apply_vision`). The adapted
    text embeddings are kept per model and adapter, in memory and in the embedding cache on disk
    (core/disk_cache.py), so a later run encodes no prompt again. With the adapter's cost-map
    decoder, the logits come back on a grid 4× finer than the patches."""

    CACHE_KIND = "adapted-text"

    def __init__(self, inner, clip, adapter: Adapter):
        self.inner, self.clip, self.adapter = inner, clip, adapter
        self.logit_scale = inner.logit_scale
        self.device = clip.device
        if getattr(inner, "patch_size", None):   # crops of any size, padded like the inner's
            self.patch_size = inner.patch_size
        self._bias = None
        self._digest = adapter.text_digest()
        self.decoder = adapter.decoder()
        if self.decoder is not None:
            self.decoder.to(clip.device)
        clip.bias_lambda = adapter.bias_lambda

    def set_queries(self, queries: Sequence[str]) -> None:
        from ..disk_cache import model_fingerprint, resolve_cache

        queries = list(queries)
        # per model object (the adapted one is private to its adapter): keys name the adapter
        memory = self.clip.__dict__.setdefault("_adapted_text_cache", {})
        missing = [q for q in dict.fromkeys(queries) if (self._digest, q) not in memory]
        disk = None
        if missing:
            disk = resolve_cache(getattr(self.clip, "disk_cache", None))
            self.clip.disk_cache = disk
        key = {"clip": model_fingerprint(self.clip.model), "adapter": self._digest,
               "templates": [t("{}") if callable(t) else t for t in self.clip.templates]}
        for query in list(missing):
            stored = disk.get(self.CACHE_KIND, dict(key, query=query)) if disk is not None else None
            if stored is not None and "embedding" in stored:
                memory[(self._digest, query)] = stored["embedding"].to(self.device)
                missing.remove(query)
        if missing:
            encoded, _ = adapted_text(self.clip, self.adapter, missing)
            self.clip.text_encodes = getattr(self.clip, "text_encodes", 0) + len(missing)
            for query, vector in zip(missing, encoded):
                memory[(self._digest, query)] = vector
                if disk is not None:
                    disk.put(self.CACHE_KIND, dict(key, query=query), {"embedding": vector})
        self.clip.text_features = torch.stack([memory[(self._digest, q)] for q in queries])
        self._bias = torch.tensor([self.adapter.prompts[q].bias if q in self.adapter.prompts
                                   else 0.0 for q in queries], dtype=torch.float32)

    def score_windows(self, images: np.ndarray) -> np.ndarray:
        logits = self.inner.score_windows(images)
        logits = logits + self._bias.numpy()[None, :, None, None].astype(np.float32)
        if self.decoder is None:
            return logits
        out = []
        step = max(1, int(getattr(self.clip, "batch_size", 4)))
        with torch.no_grad():
            for start in range(0, len(images), step):
                batch = images[start:start + step]
                pixels = (self.clip.normalise_padded(batch) if hasattr(self, "patch_size")
                          else self.clip.normalise(batch))
                decoded = self.decoder(torch.from_numpy(logits[start:start + step]).to(self.device),
                                       pixels)
                out.append(decoded.cpu().numpy().astype(np.float32))
        return np.concatenate(out)


def evaluate_chips(clip, adapter: Optional[Adapter], images: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str]) -> np.ndarray:
    """Per-class IoU on labelled chips with `clip` (carrying the adapter's vision weights when it
    has any) and the adapter's prompts, λ, biases and decoder; adapter None: the engine's
    defaults."""
    from .features import (LABEL_GRID, chip_features, class_iou, class_logits,
                           decoded_chip_logits, labels_at)

    text, bias = adapted_text(clip, adapter, list(class_names))
    lam = adapter.bias_lambda if adapter is not None else clip.bias_lambda
    decoder = adapter.decoder() if adapter is not None else None
    with torch.no_grad():
        if decoder is not None:
            logits = decoded_chip_logits(clip, images, text, lam, bias, decoder)
        else:
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
    from ..models.shared import cached
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
