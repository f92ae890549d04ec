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


# ----------------------------------------------------------------------------- two engines

def engine_confidence(probs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """An engine's confidence per pixel from its class probabilities `probs` (in [0, 1], classes on
    `dim`, not necessarily summing to 1: SAM 3 scores each class on its own).

    ``c = max_k p_k · (1 − H(p/Σp)/log K)``: the normalised-entropy confidence of the branches
    above, times the engine's belief in its best class, so an engine that finds nothing at a pixel
    (all p ≈ 0: a class SAM 3 misses) has no say there, whatever the shape of its near-zero
    scores. In [0, 1]; with one class it is that class's probability.
    """
    probs = probs.float().clamp(0.0, 1.0)
    peak = probs.amax(dim=dim)
    k = probs.shape[dim]
    if k < 2:
        return peak
    shares = probs / probs.sum(dim=dim, keepdim=True).clamp_min(1e-12)
    entropy = -(shares * shares.clamp_min(1e-12).log()).sum(dim=dim)
    return peak * (1.0 - entropy / math.log(k)).clamp(0.0, 1.0)


def fuse_engines(probs_a: torch.Tensor, probs_b: torch.Tensor, dim: int = 0, power: float = 1.0,
                 eps: float = 1e-6) -> torch.Tensor:
    """Fuse two engines' class probabilities per pixel by their confidence (`engine_confidence`),
    with the branch weights above: ``w_a = (c_a^γ + ε)/(c_a^γ + c_b^γ + 2ε)``, ``w_b = 1 − w_a``.
    Identical inputs come back unchanged; where one engine is sure and the other finds nothing,
    the sure one decides."""
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"engines differ in shape: {tuple(probs_a.shape)} vs {tuple(probs_b.shape)}")
    conf_a = engine_confidence(probs_a, dim).pow(power) + eps
    conf_b = engine_confidence(probs_b, dim).pow(power) + eps
    w_a = (conf_a / (conf_a + conf_b)).unsqueeze(dim)
    return w_a * probs_a.float() + (1.0 - w_a) * probs_b.float()
