"""SAM's mask decoder for many prompt sets on one image, with the image-side work shared.

``segment_anything``'s ``MaskDecoder`` copies the 64×64 image embedding once per prompt set and
runs every projection of those 4096 image tokens per set. The first block of its two-way
transformer, though, projects image tokens that do not depend on the prompts yet (the
embedding plus the dense prompt, the same for every set without a mask input): here they are
projected once for the whole batch and the prompt tokens of all sets attend to them together.
From the block's image-to-token attention on, the image tokens differ per set and are computed
per set, as in SAM. The up-scaling of the image tokens to 256×256 runs channels-last: its
stride-2 transposed convolutions are plain matrix products on the token rows and its channel
norm is one ``layer_norm`` (SAM's own path makes several passes over the 4·64·128² values per
set, the costliest part on a CPU). Only the masks asked for are read out. The arithmetic is
SAM's own (its layers and weights) in another order: the outputs equal ``MaskDecoder``'s to
float rounding.

    low_res, iou = decode_masks(sam.mask_decoder, features, sam.prompt_encoder.get_dense_pe(),
                                sparse, dense, multimask_output=True)
"""
from __future__ import annotations

import math
from typing import Tuple

import torch


def supports(decoder) -> bool:
    """Whether ``decoder`` has the layout of segment_anything's ``MaskDecoder`` (two-way
    transformer with ``layers``, output upscaling, hypernetwork MLPs)."""
    transformer = getattr(decoder, "transformer", None)
    layers = getattr(transformer, "layers", None)
    return (layers is not None and hasattr(transformer, "final_attn_token_to_image")
            and hasattr(decoder, "output_upscaling")
            and hasattr(decoder, "output_hypernetworks_mlps")
            and all(hasattr(layer, "cross_attn_image_to_token") for layer in layers))


def _channels_last_upscaling(upscaling):
    """The (transposed conv 2×2/2, channel norm, activation, transposed conv 2×2/2,
    activation) modules of SAM's ``output_upscaling``, or None for another layout."""
    layers = list(upscaling) if isinstance(upscaling, torch.nn.Sequential) else []
    if len(layers) != 5:
        return None
    up1, norm, act1, up2, act2 = layers
    for up in (up1, up2):
        if not (isinstance(up, torch.nn.ConvTranspose2d) and tuple(up.kernel_size) == (2, 2)
                and tuple(up.stride) == (2, 2) and tuple(up.padding) == (0, 0)
                and tuple(up.output_padding) == (0, 0) and up.groups == 1
                and tuple(up.dilation) == (1, 1)):
            return None
    if type(norm).__name__ != "LayerNorm2d" or not hasattr(norm, "eps"):
        return None
    return up1, norm, act1, up2, act2


def _up2(x: torch.Tensor, conv) -> torch.Tensor:
    """A 2×2 stride-2 transposed convolution on channels-last (b, h, w, c) -> (b, 2h, 2w, o):
    each input pixel's four output pixels are one matrix product."""
    b, h, w, c = x.shape
    out_channels = conv.weight.shape[1]
    y = x.reshape(-1, c) @ conv.weight.reshape(c, -1)          # (b·h·w, o·2·2)
    y = y.reshape(b, h, w, out_channels, 2, 2).permute(0, 1, 4, 2, 5, 3)
    y = y.reshape(b, 2 * h, 2 * w, out_channels)
    return y + conv.bias if conv.bias is not None else y


def _upscale(decoder, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``decoder.output_upscaling`` of image tokens (b, h·w, c): (b, 4h·4w, c') channels-last."""
    parts = _channels_last_upscaling(decoder.output_upscaling)
    b, _, c = tokens.shape
    if parts is None:
        out = decoder.output_upscaling(tokens.transpose(1, 2).reshape(b, c, h, w))
        return out.flatten(2).transpose(1, 2)
    up1, norm, act1, up2, act2 = parts
    x = _up2(tokens.reshape(b, h, w, c), up1)
    x = act1(torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(_up2(x, up2))
    return x.reshape(b, -1, x.shape[-1])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, c) -> (b, heads, n, c / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attend(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention.forward`` where the key/value side may be one set for the
    whole batch (batch size 1): then every set's queries attend to it in one product."""
    heads = attention.num_heads
    q, k, v = attention.q_proj(q), attention.k_proj(k), attention.v_proj(v)
    batch, n = q.shape[0], q.shape[1]
    if k.shape[0] == 1 and batch > 1:
        q = q.reshape(1, batch * n, -1)        # the sets' queries side by side
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2)
    return attention.out_proj(out.reshape(batch, n, -1))


def _attend_shared_queries(attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                           ) -> torch.Tensor:
    """segment_anything's ``Attention.forward`` for one query side (batch 1: the shared image
    tokens) against each set's keys and values (batch B): the query projection runs once."""
    heads = attention.num_heads
    q = _heads(attention.q_proj(q), heads)                    # (1, h, n, d)
    k = _heads(attention.k_proj(k), heads)                    # (B, h, t, d)
    v = _heads(attention.v_proj(v), heads)
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    return attention.out_proj((weights @ v).transpose(1, 2).flatten(2))


@torch.no_grad()
def decode_masks(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                 sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool = True
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder(image_embeddings, image_pe, sparse, dense, multimask_output)`` for one
    image (1×C×h×w) and B prompt sets (sparse B×N×C, dense B×C×h×w or 1×C×h×w): low-res mask
    logits (B×M×4h×4w) and predicted IoUs (B×M), M = 3 with ``multimask_output`` else 1."""
    if image_embeddings.shape[0] != 1:
        raise ValueError("decode_masks takes the embedding of one image")
    transformer = decoder.transformer
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
    # the prompt encoder's "no mask" dense embedding is one vector broadcast over the batch
    if dense.shape[0] == 1 or dense.stride(0) == 0:
        dense = dense[:1]
    _, c, h, w = image_embeddings.shape
    keys = (image_embeddings + dense).flatten(2).transpose(1, 2)     # (1 or B, hw, c)
    key_pe = image_pe.flatten(2).transpose(1, 2)                      # (1, hw, c)
    queries = query_pe = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        k = keys + key_pe
        queries = layer.norm2(queries + _attend(layer.cross_attn_token_to_image,
                                                queries + query_pe, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        if keys.shape[0] == 1 and batch > 1:
            update = _attend_shared_queries(layer.cross_attn_image_to_token, k, q, queries)
        else:
            update = layer.cross_attn_image_to_token(q=k, k=q, v=queries)
        keys = layer.norm4(keys + update)
    if keys.shape[0] != batch:                 # no block ran: every set sees the same image
        keys = keys.expand(batch, -1, -1)
    attn_out = _attend(transformer.final_attn_token_to_image, queries + query_pe,
                       keys + key_pe, keys)
    hs = transformer.norm_final_attn(queries + attn_out)

    wanted = slice(1, None) if multimask_output else slice(0, 1)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])[:, wanted]
    mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens, :]
    upscaled = _upscale(decoder, keys, h, w)                          # (B, 16hw, c')
    indices = range(decoder.num_mask_tokens)[wanted]
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](mask_tokens[:, i, :])
                            for i in indices], dim=1)
    masks = (hyper_in @ upscaled.transpose(1, 2)).reshape(batch, len(indices), 4 * h, 4 * w)
    return masks, iou_pred
