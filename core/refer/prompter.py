"""The trainable referring path (RSRefSeg 2's recipe on our models): CLIP localises, a cascaded
second-order prompter turns the expression into SAM prompts, SAM's mask decoder delineates.

    model = PromptedSegmenter(clip_model, tokenizer, sam, PrompterConfig())
    logits = model(images, ["the large red square on the left", ...])   # (B, 1, S, S)

1. The expression's CLIP text embedding is decomposed into K text queries by K learned
   projections (K = 3); a penalty (:meth:`CascadedPrompter.orthogonality`) keeps their subspaces
   complementary.
2. First order: the K queries cross-attend the dense CLIP image features (patch tokens in CLIP's
   joint space, with a fixed 2-D sine position code, so "left" and "bottom" can be learned).
3. Second order: N learned prompt tokens (N = 9), seeded from the attended queries, attend the
   queries and the image features again and become SAM sparse prompt embeddings.
4. The dense prompt: CLIP's activation map (cosine of every patch with the text) and the
   text-modulated features, a small conv to SAM's dense-embedding shape, added to SAM's own
   "no mask" embedding (the last conv starts at zero, so it starts as "no dense prompt").
5. SAM's image encoder and mask decoder take them; LoRA adapters (``lora.py``) tune the CLIP
   vision tower, the SAM image encoder and the decoder's linear layers, the bases stay frozen.

Images are stretched to SAM's square input (and CLIP's) and logits stretched back, the same in
training and inference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..dense_clip import CLIP_MEAN, CLIP_STD, interpolate_positional_embedding
from .lora import DEFAULT_LORA_ALPHA, DEFAULT_LORA_RANK, apply_lora, trainable

DEFAULT_TEXT_QUERIES = 3
DEFAULT_PROMPT_TOKENS = 9


@dataclass(frozen=True)
class PrompterConfig:
    """text_queries K, prompt_tokens N, width of the prompter, attention heads, LoRA rank and
    alpha (rank 0: no adapters), which parts get adapters."""

    text_queries: int = DEFAULT_TEXT_QUERIES
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    width: int = 256
    heads: int = 8
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float = DEFAULT_LORA_ALPHA
    lora_clip: bool = True
    lora_sam: bool = True
    lora_decoder: bool = True

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)


def sine_positions(h: int, w: int, channels: int, device=None) -> torch.Tensor:
    """A fixed 2-D sine/cosine code of each cell's centre: (h*w, channels)."""
    bands = max(1, channels // 4)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    freqs = (2.0 ** torch.arange(bands, device=device, dtype=torch.float32)) * math.pi
    parts = []
    for coord in (xx.reshape(-1, 1), yy.reshape(-1, 1)):
        parts += [torch.sin(coord * freqs), torch.cos(coord * freqs)]
    code = torch.cat(parts, dim=1)
    if code.shape[1] < channels:
        code = F.pad(code, (0, channels - code.shape[1]))
    return code


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention + MLP, residual."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, queries, keys, values):
        kv = self.norm_kv(values)
        k = self.norm_kv(keys) if keys is not values else kv
        q = self.norm_q(queries)
        queries = queries + self.attn(q, k, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class CascadedPrompter(nn.Module):
    """Text embedding + dense CLIP features -> (sparse prompts (B,N,P), dense prompt (B,P,h',w'),
    activation (B,1,h,w)); P = SAM's prompt width, (h', w') SAM's image-embedding size."""

    def __init__(self, text_dim: int, image_dim: int, prompt_dim: int,
                 dense_size: Tuple[int, int], config: PrompterConfig = PrompterConfig()):
        super().__init__()
        c, k, n = config.width, config.text_queries, config.prompt_tokens
        if k < 1 or n < 1:
            raise ValueError("The prompter needs at least one text query and one prompt token")
        self.config = config
        self.dense_size = tuple(dense_size)
        self.text_proj = nn.Linear(text_dim, k * c)           # K projections, one block each
        self.image_proj = nn.Linear(image_dim + 1, c)         # features + activation
        self.pos_proj = nn.Linear(c, c)
        self.first = _CrossBlock(c, config.heads)
        self.tokens = nn.Parameter(torch.randn(n, c) * 0.02)
        self.seed = nn.Linear(k * c, n * c)
        self.second_text = _CrossBlock(c, config.heads)
        self.second_image = _CrossBlock(c, config.heads)
        self.to_sparse = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, prompt_dim))
        self.dense_in = nn.Sequential(nn.Conv2d(c + 1, c, 3, padding=1), nn.GELU())
        self.dense_out = nn.Conv2d(c, prompt_dim, 1)
        nn.init.zeros_(self.dense_out.weight)
        nn.init.zeros_(self.dense_out.bias)

    def orthogonality(self) -> torch.Tensor:
        """‖Q̂ᵀQ̂ − I‖² over the K projections' (normalised, flattened) weights: small when the
        text queries read complementary subspaces of the text embedding."""
        k = self.config.text_queries
        w = F.normalize(self.text_proj.weight.reshape(k, -1), dim=1)
        gram = w @ w.t()
        return ((gram - torch.eye(k, device=w.device)) ** 2).sum() / max(1, k * (k - 1))

    def forward(self, patches: torch.Tensor, text: torch.Tensor):
        """patches: (B, D, h, w) CLIP features in the joint space; text: (B, D)."""
        b, _, h, w = patches.shape
        c, k = self.config.width, self.config.text_queries
        activation = torch.einsum("bdhw,bd->bhw", F.normalize(patches, dim=1),
                                  F.normalize(text, dim=1)).unsqueeze(1)
        flat = torch.cat([patches, activation], dim=1).flatten(2).transpose(1, 2)   # (B,hw,D+1)
        image = self.image_proj(flat)
        pos = self.pos_proj(sine_positions(h, w, c, patches.device)).unsqueeze(0)
        keys = image + pos
        queries = self.text_proj(text).reshape(b, k, c)
        queries = self.first(queries, keys, image)                                 # first order
        tokens = self.tokens.unsqueeze(0) + self.seed(queries.reshape(b, k * c)).reshape(b, -1, c)
        tokens = self.second_text(tokens, queries, queries)                       # second order
        tokens = self.second_image(tokens, keys, image)
        sparse = self.to_sparse(tokens)
        mean_query = queries.mean(dim=1)                                            # (B, C)
        modulated = (image * mean_query.unsqueeze(1)).transpose(1, 2).reshape(b, c, h, w)
        dense = self.dense_in(torch.cat([modulated, activation], dim=1))
        dense = F.interpolate(dense, size=self.dense_size, mode="bilinear", align_corners=False)
        return sparse, self.dense_out(dense), activation


class PromptedSegmenter(nn.Module):
    """CLIP + prompter + SAM, end to end (module doc). The base models are frozen; trainable:
    the prompter and the LoRA adapters (:meth:`trainable_parameters`)."""

    def __init__(self, clip_model: nn.Module, tokenizer, sam: nn.Module,
                 config: PrompterConfig = PrompterConfig()):
        super().__init__()
        visual = getattr(clip_model, "visual", None)
        if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            from ..errors import ModelError

            raise ModelError("The trained referring path needs an open_clip ViT CLIP model")
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.sam = sam
        self.config = config
        for p in list(clip_model.parameters()) + list(sam.parameters()):
            p.requires_grad_(False)
        self.adapters: Dict[str, Dict] = {}
        if config.lora_rank > 0:
            parts = {"clip": (config.lora_clip, visual, False),
                     "sam": (config.lora_sam, sam.image_encoder, False),
                     "decoder": (config.lora_decoder, sam.mask_decoder, True)}
            for name, (wanted, root, all_linear) in parts.items():
                if wanted:
                    self.adapters[name] = apply_lora(root, config.lora_rank, config.lora_alpha,
                                                     all_linear)
        embed_dim = int(clip_model.text_projection.shape[-1]) if getattr(
            clip_model, "text_projection", None) is not None else int(visual.output_dim)
        pe = sam.prompt_encoder
        self.prompter = CascadedPrompter(embed_dim, embed_dim, int(pe.embed_dim),
                                         tuple(pe.image_embedding_size), config)
        self.sam_size = int(sam.image_encoder.img_size)
        image_size = visual.image_size
        self.clip_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.prompter.to(next(sam.parameters()).device)

    # -- parts ----------------------------------------------------------------------------------
    def adapter_roots(self) -> Dict[str, nn.Module]:
        return {"clip": self.clip.visual, "sam": self.sam.image_encoder,
                "decoder": self.sam.mask_decoder}

    def trainable_parameters(self) -> List[nn.Parameter]:
        params = list(self.prompter.parameters())
        for adapters in self.adapters.values():
            params += list(trainable(adapters))
        return params

    @property
    def device(self) -> torch.device:
        return self.prompter.tokens.device

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, D) CLIP text embeddings; the text tower is frozen and gets no adapters."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.clip.encode_text(tokens).float()

    def clip_patches(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) float on 0..255 -> patch features (B, D, h, w) in the joint space."""
        visual = self.clip.visual
        x = F.interpolate(images, size=(self.clip_size, self.clip_size), mode="bilinear",
                          align_corners=False)
        x = (x - self.clip_mean) / self.clip_std
        x = visual.conv1(x.to(visual.conv1.weight.dtype))
        b, width, gh, gw = x.shape
        x = x.reshape(b, width, -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + interpolate_positional_embedding(
            visual.positional_embedding, gh, gw).to(x.dtype)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in visual.transformer.resblocks:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        x = visual.ln_post(x)
        if visual.proj is not None:
            x = x @ visual.proj
        return x[:, 1:].float().permute(0, 2, 1).reshape(b, -1, gh, gw)

    def sam_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) float on 0..255 -> SAM image embeddings (B, P, h', w')."""
        x = F.interpolate(images, size=(self.sam_size, self.sam_size), mode="bilinear",
                          align_corners=False)
        x = (x - self.sam.pixel_mean) / self.sam.pixel_std
        return self.sam.image_encoder(x)

    def encode_images(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two image encoders (what an inference session caches)."""
        return self.clip_patches(images), self.sam_embedding(images)

    def decode(self, patches: torch.Tensor, embeddings: torch.Tensor, text: torch.Tensor
               ) -> torch.Tensor:
        """Cached encoder outputs + text embeddings -> SAM low-res mask logits (B, 1, 4h', 4w')."""
        with parametrize.cached():     # each LoRA weight W + BA once per call, not per image
            return self._decode(patches, embeddings, text)

    def _decode(self, patches, embeddings, text):
        sparse, dense, _ = self.prompter(patches, text)
        pe = self.sam.prompt_encoder
        dense = dense + pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        image_pe = pe.get_dense_pe()
        out = []
        # segment_anything's decoder repeats one image embedding per prompt set: one image a call
        for i in range(embeddings.shape[0]):
            low, _ = self.sam.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=image_pe,
                                           sparse_prompt_embeddings=sparse[i:i + 1],
                                           dense_prompt_embeddings=dense[i:i + 1],
                                           multimask_output=False)
            out.append(low[:, :1])
        return torch.cat(out, dim=0).float()

    def forward(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """images (B,3,S,S) float 0..255 (any size: stretched), texts -> logits (B,1,H,W) at the
        images' size."""
        with parametrize.cached():
            patches, embeddings = self.encode_images(images)
            low = self.decode(patches, embeddings, self.encode_text(texts))
        return F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)
