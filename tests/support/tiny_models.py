"""Tiny models of the real architectures (random weights): no weights can be downloaded in tests,
so open_clip's CLIP, timm's DINO and segment_anything's SAM are built at small widths (the tiny
SAM: drseg.core.refer.synthetic.tiny_sam, which the benchmarks use too)."""
from __future__ import annotations

import json
import os

# An open_clip model configuration: ViT-B-16's layout at small widths.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

# Tiny widths of the real DINO definitions (same timm model, patch size and token layout), passed
# to make_dino / load_dino_checkpoint as dims.
TINY_DINO_DIMS = dict(embed_dim=32, depth=2, num_heads=2)


def write_tiny_clip_config(folder, name: str = "tiny_clip.json") -> str:
    """Write TINY_CLIP_CONFIG as `folder/name`, a model config path load_clip accepts."""
    path = os.path.join(str(folder), name)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(TINY_CLIP_CONFIG, handle)
    return path


def load_tiny_clip(folder, seed: int = 0, name: str = "tiny.json"):
    """(model, tokenizer, config path) of a tiny CLIP with random weights drawn after
    torch.manual_seed(seed)."""
    import torch

    from drseg.core.models.clip import load_clip

    config = write_tiny_clip_config(folder, name)
    torch.manual_seed(seed)
    model, tokenizer = load_clip(config, "random")
    return model, tokenizer, config


# The real SAM 3 architecture (transformers Sam3Model) at tiny widths: 112-px tiles (8×8 patches of
# 14 px, windowed and global attention), one layer per transformer, 8 object queries, 32×32 masks.
TINY_SAM3_SIZE = 112
TINY_SAM3_WIDTH = 32


def tiny_sam3_config():
    from transformers import Sam3Config

    h, ffn = TINY_SAM3_WIDTH, 64
    small = dict(hidden_size=h, num_attention_heads=2, intermediate_size=ffn)
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", num_hidden_layers=2, image_size=TINY_SAM3_SIZE,
                                 patch_size=14, window_size=4, global_attn_indexes=[1],
                                 pretrain_image_size=56, **small),
            fpn_hidden_size=h, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]),
        text_config=dict(model_type="clip_text_model", num_hidden_layers=1, projection_dim=h,
                         max_position_embeddings=32, vocab_size=49408, **small),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))
