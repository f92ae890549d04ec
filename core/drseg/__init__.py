"""DR-Seg's method core (README "How it works"): decoupling, graph rectification, fusion, DINO.

numpy/torch/timm only. Public API:

* decouple: `decouple`, `channel_scores`, `split_channels`, `apply_structural`, `ChannelSplit`,
  `CRITERIA` ("text_variance", "laplacian", "combined").
* graph: `build_knn_graph` -> `KnnGraph` (indices/weights (N,k), `matmul`, `to_sparse`,
  `laplacian_energy`), `propagate` (diffuse | anchored | closed), `proxy_attention`.
* fusion: `fuse`, `fusion_weights`, `normalized_entropy`.
* dino: `make_dino`, `load_dino_checkpoint`, `DinoBackbone`, `align_to_grid` (the model names:
  `core.models.registry.DINO_MODELS`).
* rectify: `DrSegRectifier`, `DrSegScorer`, `clip_logits`.
"""
from .decouple import CRITERIA, ChannelSplit, apply_structural, channel_scores, decouple, split_channels
from .dino import DinoBackbone, align_to_grid, load_dino_checkpoint, make_dino
from .fusion import fuse, fusion_weights, normalized_entropy
from .graph import KnnGraph, build_knn_graph, propagate, proxy_attention
from .rectify import DrSegRectifier, DrSegScorer, RectifyInfo, clip_logits

__all__ = [
    "CRITERIA", "ChannelSplit", "apply_structural", "channel_scores", "decouple", "split_channels",
    "DinoBackbone", "align_to_grid", "load_dino_checkpoint", "make_dino",
    "fuse", "fusion_weights", "normalized_entropy",
    "KnnGraph", "build_knn_graph", "propagate", "proxy_attention",
    "DrSegRectifier", "DrSegScorer", "RectifyInfo", "clip_logits",
]
