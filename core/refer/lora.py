"""LoRA adapters on the attention weights of the image encoders (RSRefSeg 2 tunes its backbones
this way): W' = W + (B·A)·alpha/rank, with A (rank × in) random and B (out × rank) zero, so an
adapted model starts as the base model.

    adapters = apply_lora(clip.visual, rank=16, alpha=16)          # qkv / projection weights
    merge(adapters)     # W += BA·scale, forward costs what the base costs
    unmerge(adapters)   # W -= BA·scale (the base weights again, to float tolerance)

The delta is a ``torch.nn.utils.parametrize`` parametrization of the weight, so it works on a
``Linear.weight`` and on ``MultiheadAttention.in_proj_weight`` (open_clip's fused q/k/v) alike.
The base weights are frozen; only A and B train.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

DEFAULT_LORA_RANK = 16
DEFAULT_LORA_ALPHA = 16.0

# The attention weights adapted in the encoders: segment_anything's `qkv`/`proj`, open_clip's
# (torch MultiheadAttention) `in_proj_weight`/`out_proj`.
ATTENTION_LINEARS = ("qkv", "proj", "out_proj", "q_proj", "k_proj", "v_proj")


class LoraDelta(nn.Module):
    """The parametrization W -> W + (B·A)·scale (W unchanged while merged)."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.rank = int(rank)
        self.scale = float(alpha) / float(rank)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return weight
        return weight + self.delta().to(weight.dtype)


def lora_targets(root: nn.Module, all_linear: bool = False
                 ) -> Iterator[Tuple[str, nn.Module, str]]:
    """(qualified parameter name, module, parameter name) of each weight to adapt: attention
    q/k/v and output projections, or every Linear with `all_linear`."""
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            yield (f"{name}.in_proj_weight" if name else "in_proj_weight", module, "in_proj_weight")
        elif isinstance(module, nn.Linear):
            leaf = name.rsplit(".", 1)[-1]
            if all_linear or leaf in ATTENTION_LINEARS:
                yield (f"{name}.weight" if name else "weight", module, "weight")


def apply_lora(root: nn.Module, rank: int = DEFAULT_LORA_RANK, alpha: float = DEFAULT_LORA_ALPHA,
               all_linear: bool = False) -> Dict[str, LoraDelta]:
    """Adapters on `root`'s target weights (see :func:`lora_targets`); freezes the base weights.
    -> {qualified weight name: its LoraDelta}."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    for p in root.parameters():
        p.requires_grad_(False)
    adapters: Dict[str, LoraDelta] = {}
    for qualified, module, pname in list(lora_targets(root, all_linear)):
        weight = getattr(module, pname)
        delta = LoraDelta(weight.shape[0], weight.shape[1], rank, alpha).to(
            device=weight.device, dtype=torch.float32)
        parametrize.register_parametrization(module, pname, delta)
        getattr(module.parametrizations, pname).original.requires_grad_(False)
        adapters[qualified] = delta
    return adapters


def _originals(root: nn.Module, adapters: Dict[str, LoraDelta]):
    for qualified, delta in adapters.items():
        module_name, _, pname = qualified.rpartition(".")
        module = root.get_submodule(module_name) if module_name else root
        yield getattr(module.parametrizations, pname).original, delta


@torch.no_grad()
def merge(root: nn.Module, adapters: Dict[str, LoraDelta]) -> None:
    """W += B·A·scale in place; the adapters then pass W through unchanged."""
    for original, delta in _originals(root, adapters):
        if not delta.merged:
            original.add_(delta.delta().to(original.dtype))
            delta.merged = True


@torch.no_grad()
def unmerge(root: nn.Module, adapters: Dict[str, LoraDelta]) -> None:
    """Undo :func:`merge`."""
    for original, delta in _originals(root, adapters):
        if delta.merged:
            original.sub_(delta.delta().to(original.dtype))
            delta.merged = False


def lora_state(adapters: Dict[str, LoraDelta], prefix: str) -> Dict[str, torch.Tensor]:
    """The adapters' A and B as flat tensors `<prefix><weight name>.lora_A|lora_B`."""
    state = {}
    for qualified, delta in adapters.items():
        state[f"{prefix}{qualified}.lora_A"] = delta.lora_A.detach()
        state[f"{prefix}{qualified}.lora_B"] = delta.lora_B.detach()
    return state


@torch.no_grad()
def load_lora_state(adapters: Dict[str, LoraDelta], state: Dict[str, torch.Tensor], prefix: str
                    ) -> None:
    """Fill the adapters from :func:`lora_state`'s layout; KeyError/ValueError on a mismatch."""
    expected = {k for q in adapters for k in (f"{prefix}{q}.lora_A", f"{prefix}{q}.lora_B")}
    present = {k for k in state if k.startswith(prefix)}
    if expected != present:
        missing, extra = sorted(expected - present)[:3], sorted(present - expected)[:3]
        raise KeyError(f"LoRA weights do not fit this model (missing {missing}, unexpected {extra})")
    for qualified, delta in adapters.items():
        for part in ("lora_A", "lora_B"):
            source = state[f"{prefix}{qualified}.{part}"]
            target = getattr(delta, part)
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(f"LoRA weight {qualified}.{part} is {tuple(source.shape)}, "
                                 f"the model needs {tuple(target.shape)}")
            target.copy_(source.to(target.dtype))


def trainable(adapters: Dict[str, LoraDelta]) -> Sequence[nn.Parameter]:
    return [p for delta in adapters.values() for p in (delta.lora_A, delta.lora_B)]
