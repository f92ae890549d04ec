"""The adapter: what adaptation learned, in one safetensors file (no pickle).

Tensors: `text_offset` (K,D) added to the seen classes' text embeddings (levels prompt and
finetune) and `vision.<name>` for the vision tower's fine-tuned attention weights (finetune).
Metadata (strings): format version, base model and weights (and the weights' SHA-256 when
known), classes, level, λ, per-class prompt and bias, metrics (JSON), date.
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
TEXT_OFFSET = "text_offset"


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

    def offset_of(self, name: str) -> Optional[torch.Tensor]:
        if self.text_offset is None or name not in self.classes:
            return None
        return self.text_offset[self.classes.index(name)]


def save_adapter(adapter: Adapter, path: str) -> str:
    """Write atomically (a temporary file renamed over `path`)."""
    from safetensors.torch import save_file

    if adapter.level not in LEVELS:
        raise InputError(f"Unknown adaptation level '{adapter.level}'; choose {', '.join(LEVELS)}")
    tensors = {VISION_PREFIX + k: v.detach().cpu().contiguous() for k, v in adapter.vision_state.items()}
    if adapter.text_offset is not None:
        tensors[TEXT_OFFSET] = adapter.text_offset.detach().cpu().float().contiguous()
    if not tensors:  # safetensors needs a tensor; calibration has none of its own
        tensors["empty"] = torch.zeros(1)
    created = adapter.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    metadata = {
        "format": ADAPTER_FORMAT, "level": adapter.level, "base_model": adapter.base_model,
        "base_weights": adapter.base_weights, "base_sha256": adapter.base_sha256,
        "classes": json.dumps(adapter.classes), "bias_lambda": repr(float(adapter.bias_lambda)),
        "prompts": json.dumps({k: vars(v) for k, v in adapter.prompts.items()}),
        "metrics": json.dumps(adapter.metrics), "created": created,
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
                          created=metadata.get("created", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"Adapter file '{path}' has damaged metadata ({exc})") from None
    if adapter.text_offset is not None and adapter.text_offset.shape[0] != len(classes):
        raise InputError(f"Adapter file '{path}' is damaged: {adapter.text_offset.shape[0]} text "
                         f"offsets for {len(classes)} classes")
    return adapter
