"""Semantic-preserving subspace decoupling, DR-Seg's first module (README "How it works").

The dense CLIP feature channels are split into a semantics-dominated subset (a fraction
`semantic_ratio` = ρ of the channels) and a structure-dominated rest. The paper's own criterion
is not public; these training-free criteria are offered, each computed per call (per window):

``"text_variance"`` (default)
    How much channel c can separate the query texts in the logits ``x̂·t̂_q``:
    ``score_c = Var_q(t̂_qc) · mean_i |x̂_ic|`` with t̂ the L2-normalised text embeddings and x̂
    the L2-normalised patch tokens. A channel on which all texts agree, or which the image barely
    activates, cannot move the class decision and counts as structural. (A single query has no
    variance; its second moment ``t̂_c²`` is used instead.)

``"laplacian"``
    Smoothness over the DINO kNN graph: ``E_c = ½Σᵢⱼ Wᵢⱼ(xᵢ−xⱼ)² / Σᵢ(xᵢ−x̄)²`` on the raw
    channel x (scale- and shift-invariant, about 1 for white noise, near 0 when smooth). A channel
    that is already smooth along the image structure DINO sees (low E) is structure-dominated;
    a channel that varies independently of that structure (high E) is kept as semantic. Needs the
    graph (one image at a time).

``"combined"``
    Mean of the two rankings (each channel's rank under either criterion, scaled to [0, 1]).

Higher score = more semantic. The top ⌊ρ·C⌉ channels are semantic; `apply_structural` changes only
the rest, so the semantic channels leave bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .graph import KnnGraph

CRITERIA = ("text_variance", "laplacian", "combined")


@dataclass
class ChannelSplit:
    """Which channels are semantic (kept) and which structural (rectified); indices sorted."""

    semantic: torch.Tensor
    structural: torch.Tensor
    scores: torch.Tensor
    criterion: str

    @property
    def num_channels(self) -> int:
        return int(self.scores.numel())


def _tokens(features: torch.Tensor) -> torch.Tensor:
    """(N, C), (C, h, w) or (B, C, h, w) -> (tokens, C) float."""
    if features.dim() == 2:
        return features.float()
    if features.dim() == 3:
        return features.reshape(features.shape[0], -1).T.float()
    if features.dim() == 4:
        b, c = features.shape[:2]
        return features.reshape(b, c, -1).permute(0, 2, 1).reshape(-1, c).float()
    raise ValueError(f"expected features (N,C), (C,h,w) or (B,C,h,w), got {tuple(features.shape)}")


def text_variance_scores(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Var over queries of the normalised text embedding on each channel x mean |activation|."""
    x = F.normalize(_tokens(features), dim=1)
    if text.dim() != 2 or text.shape[1] != x.shape[1]:
        raise ValueError(f"text embeddings must be (Q, {x.shape[1]}), got {tuple(text.shape)}")
    t = F.normalize(text.float().to(x.device), dim=1)
    spread = t.var(dim=0, unbiased=False) if t.shape[0] > 1 else t[0] ** 2
    return spread * x.abs().mean(dim=0)


def laplacian_scores(features: torch.Tensor, graph: KnnGraph) -> torch.Tensor:
    """Laplacian energy of each channel over the graph: high = semantic.

    Computed on the raw channels (each channel's energy is already scale-invariant); normalising
    the tokens first would mix every channel's noise into every other through the token norm."""
    x = _tokens(features)
    if x.shape[0] != graph.num_nodes:
        raise ValueError("the 'laplacian' criterion needs one image's features on the graph's grid")
    return graph.laplacian_energy(x)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each entry in ascending order, scaled to [0, 1]."""
    order = torch.argsort(scores, stable=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(scores.numel(), dtype=scores.dtype, device=scores.device)
    return ranks / max(scores.numel() - 1, 1)


def channel_scores(features: torch.Tensor, text: Optional[torch.Tensor] = None,
                   criterion: str = "text_variance", graph: Optional[KnnGraph] = None) -> torch.Tensor:
    """Semantic score per channel (C,) under the named criterion (see the module docstring)."""
    if criterion not in CRITERIA:
        raise ValueError(f"decoupling criterion must be one of {CRITERIA}, not '{criterion}'")
    if criterion in ("text_variance", "combined") and text is None:
        raise ValueError(f"criterion '{criterion}' needs the text embeddings")
    if criterion in ("laplacian", "combined") and graph is None:
        raise ValueError(f"criterion '{criterion}' needs the DINO graph")
    if criterion == "text_variance":
        return text_variance_scores(features, text)
    if criterion == "laplacian":
        return laplacian_scores(features, graph)
    return 0.5 * (_ranks(text_variance_scores(features, text))
                  + _ranks(laplacian_scores(features, graph)))


def split_channels(scores: torch.Tensor, semantic_ratio: float, criterion: str = "custom"
                   ) -> ChannelSplit:
    """Top round(ρ·C) channels by score are semantic (ties: lower index first)."""
    if not 0.0 <= semantic_ratio <= 1.0:
        raise ValueError("semantic_ratio must be in [0, 1]")
    c = scores.numel()
    n_sem = int(round(semantic_ratio * c))
    order = torch.argsort(-scores, stable=True)
    semantic = torch.sort(order[:n_sem]).values
    structural = torch.sort(order[n_sem:]).values
    return ChannelSplit(semantic=semantic, structural=structural, scores=scores, criterion=criterion)


def decouple(features: torch.Tensor, text: Optional[torch.Tensor] = None,
             semantic_ratio: float = 0.3, criterion: str = "text_variance",
             graph: Optional[KnnGraph] = None) -> ChannelSplit:
    """Rank the channels of `features` (N,C | C,h,w | B,C,h,w) and split them at ρ."""
    scores = channel_scores(features, text, criterion, graph)
    return split_channels(scores, semantic_ratio, criterion)


def apply_structural(features: torch.Tensor, split: ChannelSplit,
                     fn: Callable[[torch.Tensor], torch.Tensor], channel_dim: int = 0) -> torch.Tensor:
    """Return a copy of `features` whose structural channels are replaced by fn(those channels).

    The semantic channels are copied, never computed on: they come out bit-identical.
    channel_dim: where the channels are (0 for (C,h,w), 1 for (N,C) or (B,C,h,w)).
    """
    if features.shape[channel_dim] != split.num_channels:
        raise ValueError(f"split is for {split.num_channels} channels, features have "
                         f"{features.shape[channel_dim]}")
    out = features.clone()
    if split.structural.numel() == 0:
        return out
    idx = split.structural.to(features.device)
    changed = fn(features.index_select(channel_dim, idx))
    return out.index_copy_(channel_dim, idx, changed.to(features.dtype))
