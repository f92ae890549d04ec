"""Tiny models of the real architectures (random weights): no weights can be downloaded in tests,
so open_clip's CLIP, timm's DINO and segment_anything's SAM are built at small widths."""
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


def build_tiny_sam(embed_dim: int = 32, depth: int = 1):
    """segment_anything's real architecture with small dimensions (random weights); `depth`
    image encoder blocks."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    encoder = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=embed_dim, depth=depth,
                              num_heads=2, mlp_ratio=2.0, out_chans=256, window_size=4,
                              global_attn_indexes=())
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                           input_image_size=(1024, 1024), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=256, num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=256,
                                                        num_heads=8),
                          iou_head_depth=3, iou_head_hidden_dim=64)
    return Sam(encoder, prompt, decoder).eval()
