"""Training-free dense CLIP on any open_clip ViT (the SegEarth-OV recipe; README "How it works").

The last transformer block is replaced by self-self attention without residual or MLP
(`softmax(qqᵀ)+softmax(kkᵀ)+softmax(vvᵀ)` for SegEarth-OV), which localises patch tokens; the
global bias shared by all patches is reduced with `patch·Tᵀ + λ·cls·Tᵀ`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast_context
from .disk_cache import USE_DEFAULT, model_fingerprint, resolve_cache
from .errors import ModelError
from .interrupt import install_cancel_points
from .protocol import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW
from .sliding import centred_pad

CLIP_MEAN = (122.771, 116.746, 104.094)  # on the 0..255 scale
CLIP_STD = (68.501, 66.632, 70.323)

# Which self-self terms the last block's attention sums: SegEarth-OV qqᵀ+kkᵀ+vvᵀ, SCLIP qqᵀ+kkᵀ,
# ClearCLIP qqᵀ only.
ATTENTION_VARIANTS = {
    "segearth": ("q", "k", "v"),
    "sclip": ("q", "k"),
    "clearclip": ("q",),
}


def imagenet_templates() -> List:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def interpolate_positional_embedding(pos: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """CLIP's (1 + side², D) positional embedding for a grid_h × grid_w token grid.

    Bicubic with `scale_factor=(g + 0.1) / side` per axis, as the reference implementation does
    (DINO's guard against a floor rounding one short); the scale, not just the output size,
    decides where the samples fall. The square training grid is returned unchanged.
    """
    cls_pos, patch_pos = pos[:1], pos[1:]
    side = int(round(patch_pos.shape[0] ** 0.5))
    if (side, side) == (grid_h, grid_w):
        return pos
    grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
                         mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):
        raise ModelError(f"Positional embedding interpolated to {tuple(grid.shape[-2:])}, "
                         f"expected {(grid_h, grid_w)}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


# Prompts (names × templates) per text-tower call: all class names go through in batches of
# this many, not one name (80 prompts) at a time.
TEXT_BATCH = 256


@torch.no_grad()
def encode_prompts(model, tokenizer, device, names: Sequence[str], templates: Sequence,
                   batch_size: Optional[int] = None,
                   started: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Each name in every template (a format string or a callable), embeddings normalised,
    averaged over the templates, normalised: (len(names), D). The prompts go through the text
    tower name after name, ``batch_size`` prompts at a time (None: all at once); ``started(k)``
    is called for each name k as the batch holding its first prompt begins (progress; a cancel
    is checked between the tower's blocks)."""
    names = list(names)
    prompts = [t(name) if callable(t) else t.format(name) for name in names for t in templates]
    per_name = len(templates)
    step = batch_size or max(1, len(prompts))
    chunks = []
    for start in range(0, len(prompts), step):
        if started is not None:
            for k in range(-(-start // per_name), min(len(names), -(-(start + step) // per_name))):
                started(k)
        tokens = tokenizer(prompts[start:start + step]).to(device)
        chunks.append(F.normalize(encode_text(model, tokens).float(), dim=-1))
    emb = torch.cat(chunks).reshape(len(names), per_name, -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def encode_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, for open_clip's plain CLIP on only the tokens up to the
    longest prompt's end-of-text token. Exact: the text tower's attention is causal and the
    embedding is read at the end-of-text token, so the padding after it changes nothing (a
    short prompt is a few of the 77 positions: several times less work)."""
    from open_clip.model import CLIP

    if (type(model).encode_text is not CLIP.encode_text or model.text_pool_type != "argmax"
            or model.attn_mask is None or tokens.ndim != 2):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1          # the end-of-text token is the largest id
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


def dense_logits(patches: torch.Tensor, cls: Optional[torch.Tensor], text: torch.Tensor,
                 bias_lambda: float) -> torch.Tensor:
    """The dense CLIP logits (B,Q,h,w) = patch·Tᵀ + λ·cls·Tᵀ from L2-normalised patch features
    (B,D,h,w), CLS features (B,D) and text embeddings (Q,D). λ < 0 removes the bias every patch
    shares with the image's global token; ``cls=None`` or λ = 0 leaves it."""
    logits = torch.einsum("bdhw,qd->bqhw", patches, text)
    if cls is not None and bias_lambda:
        logits = logits + bias_lambda * (cls @ text.T)[:, :, None, None]
    return logits


class DenseClip:
    """Per-window class logits from an open_clip CLIP model.

    Implements the scorer interface the sliding-window engine uses: `set_queries(texts)` once per
    run, then `score_windows(uint8 images (B,3,H,W)) -> logits (B,Q,⌈H/p⌉,⌈W/p⌉)`; the engine
    multiplies by `logit_scale` before its softmax over queries. Images of any size are padded
    after normalisation, centred, to a multiple of the patch size `patch_size` (see
    core/sliding.centred_pad); the logits cover the padded image.
    """

    logit_scale = 50.0

    def __init__(self, model, tokenizer, device: torch.device, attention: str = "segearth",
                 bias_lambda: float = -0.3, templates: Optional[Sequence] = None,
                 window_size: int = DEFAULT_WINDOW, batch_size: int = DEFAULT_BATCH_SIZE):
        visual = getattr(model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if visual is None or blocks is None or not hasattr(visual, "conv1"):
            raise ModelError("Dense CLIP needs an open_clip Vision Transformer (ViT) model; "
                             f"'{type(visual).__name__}' is not supported")
        if getattr(visual, "attn_pool", None) is not None:
            raise ModelError("CLIP models with attentional pooling (e.g. CoCa) are not supported")
        if not isinstance(getattr(blocks[-1], "attn", None), torch.nn.MultiheadAttention):
            raise ModelError("This CLIP model's attention blocks are not supported for dense "
                             "prediction (expected torch MultiheadAttention)")
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {sorted(ATTENTION_VARIANTS)}")
        self.model = model.to(device).eval()
        install_cancel_points(self.model)  # a cancelled run stops between transformer blocks
        self.tokenizer = tokenizer
        self.device = device
        self.attention = attention
        self.bias_lambda = bias_lambda
        self.templates = list(templates) if templates is not None else imagenet_templates()
        self.window_size = window_size
        self.batch_size = batch_size
        self.patch_size = int(visual.conv1.kernel_size[0])
        self._mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        self._pos_cache: Dict[Tuple[int, int], torch.Tensor] = {}
        self.text_features: Optional[torch.Tensor] = None
        self._text_cache: Dict[str, torch.Tensor] = {}
        self.forward_calls = 0
        self.text_encodes = 0
        self.disk_cache = USE_DEFAULT      # query embeddings on disk (core/disk_cache.py)
        self.precision = "auto"            # image encoders' autocast (core/device.py PRECISIONS)

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, names: Sequence[str],
                     started: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """Each name in every template, embeddings normalised, averaged, normalised: (Q, D);
        all names' prompts in batches of ``TEXT_BATCH`` (``started`` as in encode_prompts)."""
        return encode_prompts(self.model, self.tokenizer, self.device, names, self.templates,
                              batch_size=TEXT_BATCH, started=started)

    def set_queries(self, queries: Sequence[str],
                    progress: Optional[Callable[[int], None]] = None) -> None:
        """Text embeddings for this run; each query is encoded once per model (80 templates of a
        ViT text tower cost seconds per query on a CPU) and reused by later runs. The missing
        ones are encoded together in batches; ``progress(k)`` is called with the index in
        `queries` of each one as its encoding starts."""
        queries = list(queries)
        missing = [q for q in dict.fromkeys(queries) if q not in self._text_cache]
        disk = None
        if missing:
            self.disk_cache = disk = resolve_cache(self.disk_cache)
        if disk is not None:
            for query in list(missing):
                stored = disk.get("dense-text", self._text_key(query))
                if stored is not None and "embedding" in stored:
                    self._text_cache[query] = stored["embedding"].to(self.device)
                    missing.remove(query)
        if missing:
            if progress is None:
                encoded = self.encode_texts(missing)
            else:
                encoded = self.encode_texts(
                    missing, lambda k: progress(queries.index(missing[k])))
            self.text_encodes += len(missing)
            for query, vector in zip(missing, encoded):
                self._text_cache[query] = vector
                if disk is not None:
                    disk.put("dense-text", self._text_key(query), {"embedding": vector})
        self.text_features = torch.stack([self._text_cache[q] for q in queries])

    def _text_key(self, query: str) -> Dict[str, object]:
        # callables (open_clip's templates are lambdas) are known by what they make of '{}'
        templates = [t("{}") if callable(t) else t for t in self.templates]
        return {"clip": model_fingerprint(self.model), "templates": templates, "query": query}

    # -- image --------------------------------------------------------------------------------
    def _positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        key = (grid_h, grid_w)
        if key not in self._pos_cache:
            self._pos_cache[key] = interpolate_positional_embedding(
                self.model.visual.positional_embedding, grid_h, grid_w)
        return self._pos_cache[key]

    @torch.no_grad()
    def dense_features(self, pixels: torch.Tensor, vanilla: bool = False
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels (B,3,H,W) -> (patch features (B,D,h,w), cls feature (B,D)), unnormalised.

        vanilla=True runs the unmodified last block (for checking against open_clip itself).
        """
        return self.forward_features(pixels, vanilla)

    def forward_features(self, pixels: torch.Tensor, vanilla: bool = False,
                         hidden: Optional[List[torch.Tensor]] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`dense_features` with gradients (for adaptation, core/adapt). ``hidden``, when given,
        receives the tokens (B,L,W) after each block but the last."""
        visual = self.model.visual
        self.forward_calls += 1
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
        batch, width, grid_h, grid_w = x.shape
        x = x.reshape(batch, width, -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
        x = torch.cat([cls, x], dim=1) + self._positional_embedding(grid_h, grid_w).to(x.dtype)
        x = visual.ln_pre(x)
        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        blocks = transformer.resblocks
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
            if hidden is not None:
                hidden.append(x if batch_first else x.transpose(0, 1))
        if vanilla:
            x = blocks[-1](x)
        if not batch_first:
            x = x.transpose(0, 1)
        if not vanilla:
            x = self._self_self_attention(blocks[-1], x)
        x = visual.ln_post(x)
        if visual.proj is not None:
            x = x @ visual.proj
        x = x.float()
        patches = x[:, 1:].permute(0, 2, 1).reshape(batch, -1, grid_h, grid_w)
        return patches, x[:, 0]

    def _self_self_attention(self, block, x: torch.Tensor) -> torch.Tensor:
        """The last block's attention with self-self terms; its output replaces the block."""
        attn = block.attn
        y = block.ln_1(x)
        batch, length, width = y.shape
        heads = attn.num_heads
        head_dim = width // heads
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        split = {name: t.reshape(batch, length, heads, head_dim).transpose(1, 2)
                 for name, t in (("q", q), ("k", k), ("v", v))}
        scale = head_dim ** -0.5
        weights = sum(torch.softmax(scale * split[n] @ split[n].transpose(-2, -1), dim=-1)
                      for n in ATTENTION_VARIANTS[self.attention])
        out = (weights @ split["v"]).transpose(1, 2).reshape(batch, length, width)
        return attn.out_proj(out)

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).float()
        return (pixels - self._mean) / self._std

    def normalise_padded(self, images: np.ndarray) -> torch.Tensor:
        """Normalised pixels padded with zeros (the mean colour), centred, to patch multiples."""
        pixels = self.normalise(images)
        top, bottom = centred_pad(pixels.shape[-2], self.patch_size)
        left, right = centred_pad(pixels.shape[-1], self.patch_size)
        if top or bottom or left or right:
            pixels = F.pad(pixels, (left, right, top, bottom))
        return pixels

    @torch.no_grad()
    def score_windows(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B,3,H,W) -> logits (B,Q,⌈H/p⌉,⌈W/p⌉): cosine(patch, text) + λ·cosine(cls, text)."""
        if self.text_features is None:
            raise RuntimeError("set_queries() must be called before score_windows()")
        outputs = []
        for start in range(0, len(images), self.batch_size):
            with autocast_context(self.device, precision=self.precision):  # fp16 on CUDA
                patches, cls = self.dense_features(
                    self.normalise_padded(images[start:start + self.batch_size]))
            patches, cls = patches.float(), cls.float()
            logits = dense_logits(F.normalize(patches, dim=1), F.normalize(cls, dim=-1),
                                  self.text_features, self.bias_lambda)
            outputs.append(logits.cpu().numpy().astype(np.float32))
        return np.concatenate(outputs, axis=0)
