"""The adapter: what adaptation learned, in one safetensors file (no pickle).

Tensors: `text_offset` (K,D) added to the seen classes' text embeddings, `context` and
`context_init` (M,W) the learned prompt context and where it started, `class_context` (K,M,W)
when each seen class has its own (levels prompt and finetune; core/adapt/context.py);
`vision.<name>` for the vision tower's fine-tuned attention weights and `decoder.<name>` for the
cost-map upsampling decoder (finetune; core/adapt/decoder.py).
Metadata (strings): format version, base model and weights (and the weights' SHA-256 when
known), classes, level, λ, per-class prompt and bias, the decoder's shape (JSON), metrics (JSON),
date.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from ..errors import InputError
from .defaults import ADAPTER_FORMAT, LEVELS

VISION_PREFIX = "vision."
DECODER_PREFIX = "decoder."
TEXT_OFFSET = "text_offset"
CONTEXT, CONTEXT_INIT, CLASS_CONTEXT = "context", "context_init", "class_context"


@dataclass
class ClassPrompt:
    """How a seen class is asked for: the text (one of its synonyms) in a template set, and a
    bias added to its logits (cosine units, before the engine's logit scale)."""

    text: str
    templates: str = "default"
    bias: float = 0.0


@dataclass
class Adapter:
    level: str
    base_model: str
    base_weights: str
    classes: List[str]
    prompts: Dict[str, ClassPrompt]
    bias_lambda: float
    base_sha256: str = ""
    text_offset: Optional[torch.Tensor] = None          # (K, D), rows in `classes` order
    vision_state: Dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str = ""
    context: Optional[torch.Tensor] = None              # (M, W) learned prompt context
    context_init: Optional[torch.Tensor] = None         # (M, W) where it started
    class_context: Optional[torch.Tensor] = None        # (K, M, W) per seen class, or None
    decoder_state: Dict[str, torch.Tensor] = field(default_factory=dict)
    decoder_config: str = ""                            # CostDecoder's shape (JSON)

    def offset_of(self, name: str) -> Optional[torch.Tensor]:
        if self.text_offset is None or name not in self.classes:
            return None
        return self.text_offset[self.classes.index(name)]

    def class_context_of(self, name: str) -> Optional[torch.Tensor]:
        if self.class_context is None or name not in self.classes:
            return None
        return self.class_context[self.classes.index(name)]

    def decoder(self):
        """The cost-map decoder (core/adapt/decoder.py), or None when the adapter has none."""
        if not self.decoder_state:
            return None
        from .decoder import CostDecoder

        return CostDecoder.from_state(self.decoder_config, self.decoder_state)

    def text_digest(self) -> str:
        """SHA-256 of everything that decides the adapted text embeddings (prompts, offsets,
        context): the key of their cache (core/disk_cache.py)."""
        import hashlib

        digest = hashlib.sha256(json.dumps(
            [self.base_model, self.base_weights, self.base_sha256, self.classes,
             {k: vars(v) for k, v in sorted(self.prompts.items())}], sort_keys=True).encode())
        for tensor in (self.text_offset, self.context, self.context_init, self.class_context):
            digest.update(b"|" if tensor is None else
                          tensor.detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()


def save_adapter(adapter: Adapter, path: str) -> str:
    """Write atomically (a temporary file renamed over `path`)."""
    from safetensors.torch import save_file

    if adapter.level not in LEVELS:
        raise InputError(f"Unknown adaptation level '{adapter.level}'; choose {', '.join(LEVELS)}")
    tensors = {VISION_PREFIX + k: v.detach().cpu().contiguous() for k, v in adapter.vision_state.items()}
    tensors.update({DECODER_PREFIX + k: v.detach().cpu().contiguous()
                    for k, v in adapter.decoder_state.items()})
    for key, value in ((TEXT_OFFSET, adapter.text_offset), (CONTEXT, adapter.context),
                       (CONTEXT_INIT, adapter.context_init), (CLASS_CONTEXT, adapter.class_context)):
        if value is not None:
            tensors[key] = value.detach().cpu().float().contiguous()
    if not tensors:  # safetensors needs a tensor; calibration has none of its own
        tensors["empty"] = torch.zeros(1)
    created = adapter.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    metadata = {
        "format": ADAPTER_FORMAT, "level": adapter.level, "base_model": adapter.base_model,
        "base_weights": adapter.base_weights, "base_sha256": adapter.base_sha256,
        "classes": json.dumps(adapter.classes), "bias_lambda": repr(float(adapter.bias_lambda)),
        "prompts": json.dumps({k: vars(v) for k, v in adapter.prompts.items()}),
        "metrics": json.dumps(adapter.metrics), "created": created,
        "decoder": adapter.decoder_config if adapter.decoder_state else "",
    }
    temporary = f"{path}.part"
    save_file(tensors, temporary, metadata=metadata)
    os.replace(temporary, path)
    return path


def load_adapter(path: str) -> Adapter:
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(str(path)):
        raise InputError(f"Adapter file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"'{path}' is not a DR-Seg adapter (safetensors) file: {exc}") from None
    if metadata.get("format") != ADAPTER_FORMAT:
        raise InputError(f"'{path}' is not a DR-Seg adapter file (format "
                         f"'{metadata.get('format', 'none')}', expected '{ADAPTER_FORMAT}')")
    try:
        classes = json.loads(metadata["classes"])
        prompts = {k: ClassPrompt(**v) for k, v in json.loads(metadata["prompts"]).items()}
        adapter = Adapter(level=metadata["level"], base_model=metadata["base_model"],
                          base_weights=metadata["base_weights"], classes=classes, prompts=prompts,
                          bias_lambda=float(metadata["bias_lambda"]),
                          base_sha256=metadata.get("base_sha256", ""),
                          text_offset=tensors.get(TEXT_OFFSET),
                          vision_state={k[len(VISION_PREFIX):]: v for k, v in tensors.items()
                                        if k.startswith(VISION_PREFIX)},
                          metrics=json.loads(metadata.get("metrics") or "{}"),
                          created=metadata.get("created", ""),
                          context=tensors.get(CONTEXT), context_init=tensors.get(CONTEXT_INIT),
                          class_context=tensors.get(CLASS_CONTEXT),
                          decoder_state={k[len(DECODER_PREFIX):]: v for k, v in tensors.items()
                                         if k.startswith(DECODER_PREFIX)},
                          decoder_config=metadata.get("decoder", ""))
        if adapter.decoder_state:
            adapter.decoder()          # a decoder that does not load is a damaged file
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"Adapter file '{path}' has damaged metadata ({exc})") from None
    if adapter.text_offset is not None and adapter.text_offset.shape[0] != len(classes):
        raise InputError(f"Adapter file '{path}' is damaged: {adapter.text_offset.shape[0]} text "
                         f"offsets for {len(classes)} classes")
    if (adapter.context is None) != (adapter.context_init is None) or (
            adapter.class_context is not None and adapter.class_context.shape[0] != len(classes)):
        raise InputError(f"Adapter file '{path}' is damaged: its prompt context is incomplete")
    return adapter
