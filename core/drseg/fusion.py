"""Uncertainty-guided adaptive fusion, DR-Seg's third module (README "How it works", DR-Seg).

Per pixel (token), each branch's class distribution is ``p = softmax(logit_scale · logits)`` over
the queries; its confidence is ``c = 1 − H(p)/log Q`` (one minus the normalised entropy, in
[0, 1]). The branch weights are ``w_a = (c_a^γ + ε) / (c_a^γ + c_b^γ + 2ε)`` and ``w_b = 1 − w_a``,
so the more certain branch gets the larger weight, a branch that is certain where the other is
uniform gets almost all of it, and two equally certain branches get exactly ½ each (fusing a
branch with itself returns it unchanged, bit for bit).

``mode="logits"`` returns ``w_a·a + w_b·b`` (logits, as the sliding-window engine expects);
``mode="probs"`` returns ``w_a·p_a + w_b·p_b``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

FUSION_MODES = ("logits", "probs")


def normalized_entropy(logits: torch.Tensor, logit_scale: float = 50.0, dim: int = 1) -> torch.Tensor:
    """H(softmax(s·logits))/log Q along `dim`, in [0, 1]; 0 when Q == 1."""
    q = logits.shape[dim]
    if q < 2:
        return torch.zeros_like(logits.select(dim, 0))
    logp = torch.log_softmax(logit_scale * logits.float(), dim=dim)
    h = -(logp.exp() * logp).sum(dim=dim)
    return (h / math.log(q)).clamp(0.0, 1.0)


def fusion_weights(logits_a: torch.Tensor, logits_b: torch.Tensor, logit_scale: float = 50.0,
                   dim: int = 1, power: float = 1.0, eps: float = 1e-6
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-position weights (w_a, w_b), summing to 1, from each branch's confidence."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"branches differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    conf_a = (1.0 - normalized_entropy(logits_a, logit_scale, dim)).pow(power) + eps
    conf_b = (1.0 - normalized_entropy(logits_b, logit_scale, dim)).pow(power) + eps
    w_a = conf_a / (conf_a + conf_b)
    return w_a.unsqueeze(dim), (1.0 - w_a).unsqueeze(dim)


def fuse(logits_a: torch.Tensor, logits_b: torch.Tensor, logit_scale: float = 50.0,
         mode: str = "logits", dim: int = 1, power: float = 1.0) -> torch.Tensor:
    """Fuse two branches' logits (e.g. (B,Q,h,w), queries on `dim`) by their confidence."""
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode must be one of {FUSION_MODES}, not '{mode}'")
    w_a, w_b = fusion_weights(logits_a, logits_b, logit_scale, dim, power)
    if mode == "probs":
        p_a = torch.softmax(logit_scale * logits_a.float(), dim=dim)
        p_b = torch.softmax(logit_scale * logits_b.float(), dim=dim)
        return w_a * p_a + w_b * p_b
    return (w_a.to(logits_a.dtype) * logits_a + w_b.to(logits_b.dtype) * logits_b)
