"""DR-Seg: decouple, rectify, fuse (README "How it works"), as one switchable module.

For each image of a batch of windows:

1. DINO features are brought onto the working token grid (`grid="clip"`: CLIP's grid, the
   default; `grid="dino"`: CLIP features are upsampled to DINO's finer grid instead).
2. Decouple (`decouple=True`): the CLIP channels are ranked by `criterion` and the top
   `semantic_ratio` of them are kept as they are; otherwise every channel is structural.
3. Rectify (`rectify=True`): a kNN graph (`graph_k`, spatial window `spatial_prior` tokens, see
   graph.py) over the DINO tokens; the structural channels are propagated over it
   (`alpha`, `steps`, `propagation`), or, with `variant="proxy"`, replaced by ProxyCLIP-style
   DINO attention (O(N²): small grids only).
4. Both branches are scored like dense CLIP, ``normalize(patch)·Tᵀ + λ·normalize(cls)·Tᵀ``, and,
   with `fusion=True`, fused per token by their confidence (fusion.py); with `fusion=False` the
   rectified branch is returned. `rectify=False` returns the original branch (plain dense CLIP).

Defaults are reasonable starting values, not tuned on any benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..dense_clip import dense_logits
from ..device import autocast_context
from ..errors import InputError
from .decouple import CRITERIA, ChannelSplit, apply_structural, decouple, split_channels
from .dino import align_to_grid
from .fusion import fuse, fusion_weights
from .graph import PROPAGATION_MODES, build_knn_graph, propagate, proxy_attention

VARIANTS = ("graph", "proxy")
GRIDS = ("clip", "dino")


@dataclass
class RectifyInfo:
    """What the rectifier decided for each image (for ablations and diagnostics)."""

    splits: List[ChannelSplit] = field(default_factory=list)
    fusion_weight_original: Optional[torch.Tensor] = None  # (B,1,h,w): weight of the CLIP branch


def clip_logits(patch: torch.Tensor, cls: Optional[torch.Tensor], text: torch.Tensor,
                bias_lambda: float = -0.3) -> torch.Tensor:
    """Dense CLIP logits (B,Q,h,w) of raw features: ``dense_logits`` on normalize(patch) and
    normalize(cls); text normalised."""
    cls = F.normalize(cls, dim=-1) if cls is not None and bias_lambda else None
    return dense_logits(F.normalize(patch, dim=1), cls, text, bias_lambda)


class DrSegRectifier:
    """Decouple / rectify / fuse, each switchable. Stateless between calls (thread-safe)."""

    def __init__(self, decouple: bool = True, rectify: bool = True, fusion: bool = True,
                 semantic_ratio: float = 0.3, graph_k: int = 8, alpha: float = 0.8,
                 steps: int = 10, spatial_prior: Optional[int] = 5,
                 spatial_sigma: Optional[float] = None, criterion: str = "text_variance",
                 propagation: str = "diffuse", variant: str = "graph", grid: str = "clip",
                 temperature: Optional[float] = None, logit_scale: float = 50.0,
                 fusion_power: float = 1.0, proxy_beta: float = 1.2, proxy_gamma: float = 3.0):
        if criterion not in CRITERIA:
            raise InputError(f"Unknown decoupling criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
        if propagation not in PROPAGATION_MODES:
            raise InputError(f"Unknown propagation '{propagation}'; choose one of {', '.join(PROPAGATION_MODES)}")
        if variant not in VARIANTS:
            raise InputError(f"Unknown rectification variant '{variant}'; choose one of {', '.join(VARIANTS)}")
        if grid not in GRIDS:
            raise InputError(f"Unknown grid '{grid}'; choose one of {', '.join(GRIDS)}")
        if not 0.0 <= semantic_ratio <= 1.0:
            raise InputError(f"The semantic ratio must be between 0 and 1, not {semantic_ratio}")
        if int(graph_k) < 1:
            raise InputError(f"The graph sparsity k must be at least 1, not {graph_k}")
        if not 0.0 <= alpha < 1.0:
            raise InputError(f"alpha must be in [0, 1), not {alpha}")
        if spatial_prior is not None and int(spatial_prior) < 1:
            raise InputError("The spatial prior (window radius in tokens) must be at least 1, or None")
        self.decouple = decouple
        self.rectify = rectify
        self.fusion = fusion
        self.semantic_ratio = float(semantic_ratio)
        self.graph_k = int(graph_k)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.spatial_prior = None if spatial_prior is None else int(spatial_prior)
        self.spatial_sigma = spatial_sigma
        self.criterion = criterion
        self.propagation = propagation
        self.variant = variant
        self.grid = grid
        self.temperature = temperature
        self.logit_scale = float(logit_scale)
        self.fusion_power = float(fusion_power)
        self.proxy_beta = float(proxy_beta)
        self.proxy_gamma = float(proxy_gamma)

    @property
    def needs_dino(self) -> bool:
        return bool(self.rectify)

    # -- one image ------------------------------------------------------------------------
    def rectify_features(self, patch: torch.Tensor, text: torch.Tensor, dino: torch.Tensor
                         ):
        """One image: CLIP features (C,h,w), DINO features (Cd,h,w) on the same grid ->
        (rectified features (C,h,w), ChannelSplit). Semantic channels come out bit-identical."""
        c, h, w = patch.shape
        if tuple(dino.shape[-2:]) != (h, w):
            raise ValueError(f"DINO grid {tuple(dino.shape[-2:])} differs from CLIP grid {(h, w)}")
        tokens = patch.reshape(c, h * w).T
        graph = None
        if self.variant == "graph" or (self.decouple and self.criterion != "text_variance"):
            graph = build_knn_graph(dino, k=self.graph_k, radius=self.spatial_prior,
                                    sigma=self.spatial_sigma, temperature=self.temperature)
        if self.decouple:
            split = decouple(tokens, text, self.semantic_ratio, self.criterion, graph)
        else:
            split = split_channels(torch.zeros(c, device=patch.device), 0.0, "none")
        if self.variant == "graph":
            def fn(x):
                return propagate(graph, x.float(), self.alpha, self.steps, self.propagation)
        else:
            def fn(x):
                return proxy_attention(dino, x.float(), beta=self.proxy_beta, gamma=self.proxy_gamma)
        out = apply_structural(tokens, split, fn, channel_dim=1)
        return out.T.reshape(c, h, w), split

    # -- a batch of windows ---------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, patch: torch.Tensor, cls: Optional[torch.Tensor], text: torch.Tensor,
                 dino: Optional[torch.Tensor] = None, bias_lambda: float = -0.3,
                 return_info: bool = False):
        """CLIP patch features (B,C,h,w), CLS (B,C), normalised text (Q,C), DINO features
        (B,Cd,h',w') -> logits (B,Q,h,w) (on DINO's grid with grid="dino")."""
        if patch.dim() != 4:
            raise ValueError(f"expected CLIP features (B,C,h,w), got {tuple(patch.shape)}")
        text = text.to(patch.device, patch.dtype)
        info = RectifyInfo()
        if self.rectify and dino is None:
            raise InputError("DR-Seg rectification needs DINO features: configure DINO weights, "
                             "or turn rectification off (plain dense CLIP)")
        if self.rectify:
            dino = dino.to(patch.device).float()
            if dino.dim() != 4 or dino.shape[0] != patch.shape[0]:
                raise ValueError(f"DINO features must be (B,Cd,h,w) with B={patch.shape[0]}, "
                                 f"got {tuple(dino.shape)}")
            if self.grid == "clip":
                dino = align_to_grid(dino, patch.shape[-2:])
            else:
                patch = align_to_grid(patch, dino.shape[-2:], mode="bilinear")
        original = clip_logits(patch, cls, text, bias_lambda)
        if not self.rectify:
            return (original, info) if return_info else original
        rectified = []
        for b in range(patch.shape[0]):
            feats, split = self.rectify_features(patch[b], text, dino[b])
            rectified.append(feats)
            info.splits.append(split)
        logits = clip_logits(torch.stack(rectified), cls, text, bias_lambda)
        if self.fusion:
            fused = fuse(original, logits, self.logit_scale, power=self.fusion_power)
            if return_info:
                info.fusion_weight_original = fusion_weights(
                    original, logits, self.logit_scale, power=self.fusion_power)[0]
            logits = fused
        return (logits, info) if return_info else logits


class DrSegScorer:
    """The sliding-window scorer for DR-Seg: a dense-CLIP scorer + a DINO backbone + a rectifier.

    `clip` is duck-typed on core/dense_clip.DenseClip: `set_queries`, `normalise(uint8 images)`,
    `dense_features(pixels) -> (patch (B,C,h,w), cls (B,C))`, `text_features`, `bias_lambda`,
    `batch_size`, `logit_scale`. `score_windows(uint8 (B,3,H,W)) -> logits (B,Q,h,w)` as numpy.
    Like dense CLIP, it takes crops of any size (`patch_size`): CLIP sees them padded after
    normalisation (`normalise_padded`), DINO sees the crop itself, resampled onto CLIP's grid.
    """

    def __init__(self, clip, dino, rectifier: DrSegRectifier):
        self.clip = clip
        self.dino = dino
        self.rectifier = rectifier
        self.logit_scale = getattr(clip, "logit_scale", 50.0)
        self.batch_size = getattr(clip, "batch_size", 8)
        if hasattr(clip, "normalise_padded") and getattr(clip, "patch_size", None):
            self.patch_size = clip.patch_size

    def set_queries(self, queries, progress=None) -> None:
        self.clip.set_queries(queries, progress=progress)

    @property
    def text_features(self):
        return self.clip.text_features

    @torch.no_grad()
    def score_windows(self, images: np.ndarray) -> np.ndarray:
        if self.clip.text_features is None:
            raise RuntimeError("set_queries() must be called before score_windows()")
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            pixels = (self.clip.normalise_padded(batch) if hasattr(self, "patch_size")
                      else self.clip.normalise(batch))
            # the image encoders under the same autocast as dense CLIP's (fp16 on CUDA by default)
            with autocast_context(pixels.device, precision=getattr(self.clip, "precision", "auto")):
                patch, cls = self.clip.dense_features(pixels)
                dino = self.dino(batch) if self.rectifier.needs_dino else None
            patch, cls = patch.float(), cls.float()
            dino = dino.float() if dino is not None else None
            logits = self.rectifier(patch, cls, self.clip.text_features, dino,
                                    bias_lambda=self.clip.bias_lambda)
            outputs.append(logits.float().cpu().numpy())
        return np.concatenate(outputs, axis=0)
