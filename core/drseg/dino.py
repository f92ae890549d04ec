"""DINO / DINOv2 backbones (timm ViT definitions, weights from local files) and grid alignment.

Supported names (`core.models.registry.DINO_MODELS`) and the release formats their loader accepts:

* ``dino_vits8``, ``dino_vitb8`` — DINO (Caron et al. 2021) ViT-S/8, ViT-B/8: the plain backbone
  state dicts the authors release (``cls_token``, ``pos_embed`` for 28x28 patches + cls,
  ``blocks.N.attn.qkv`` ... ``norm``: the names timm uses too), and full training checkpoints,
  like the RS-pretrained ViT-B/8 used by GSNet/RSKT-Seg, whose weights sit under a ``teacher`` key
  with ``backbone.`` prefixes next to a projection head (``head.*``, ignored).
* ``dinov2_vits14``, ``dinov2_vitb14`` — DINOv2 ViT-S/14, ViT-B/14 without registers: plain state
  dicts with layer scale (``blocks.N.ls1.gamma``), a 37x37+1 ``pos_embed`` (518 px) and a
  ``mask_token`` (dropped); checkpoints with chunked blocks (``blocks.0.N.``) are flattened.

Any `module.` prefix is stripped; a `state_dict`/`model` wrapper is unwrapped
(core/models/checkpoints.py).
Positional embeddings are resampled (bicubic) when a checkpoint was trained at another size, and
interpolated per input at run time (timm ``dynamic_img_size``), so any tile size works.
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..interrupt import install_cancel_points
from ..models.checkpoints import load_piecewise, load_state_dict
from ..models.registry import DINO_MODELS, DinoArch

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # on the 0..255 scale
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


FEATURE_KINDS = ("tokens", "keys")

# Keys of a DINO checkpoint that are not part of the backbone and are dropped.
_IGNORED = re.compile(r"^(head\.|mask_token$|fc_norm\.|student\.|optimizer)")


def _arch(name: str) -> DinoArch:
    if name not in DINO_MODELS:
        raise ModelError(f"Unknown DINO model '{name}'; choose one of {', '.join(DINO_MODELS)}")
    return DINO_MODELS[name]


def build_timm_vit(name: str, **dims):
    """The timm VisionTransformer for a DINO model name, random weights (never downloads).

    dims: embed_dim, depth, num_heads other than the release's (same definition, patch size and
    token layout; e.g. small widths for tests and benchmarks)."""
    import timm

    arch = _arch(name)
    sizes = dict(embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads)
    sizes.update(dims)
    return timm.create_model(arch.timm_name, pretrained=False, num_classes=0,
                             dynamic_img_size=True, img_size=arch.img_size, **sizes)


class DinoBackbone(torch.nn.Module):
    """A DINO ViT returning last-layer patch features (B, C, h, w), h = round(H / patch).

    Input: RGB images (B, 3, H, W) on the 0..255 scale (uint8 or float, numpy or torch), like the
    windows the sliding engine hands to a scorer; normalised here with the ImageNet mean/std.
    A side that is not a multiple of the patch size is resized to the nearest multiple, so the
    token grid always covers the whole window (what `align_to_grid` assumes).

    feature: "tokens" — output tokens of the last block after the final LayerNorm (default);
             "keys" — keys of the last block's attention (heads concatenated), a common choice
             for affinities.
    """

    def __init__(self, name: str, model: torch.nn.Module, feature: str = "tokens"):
        super().__init__()
        if feature not in FEATURE_KINDS:
            raise ValueError(f"feature must be one of {FEATURE_KINDS}")
        self.name = name
        self.model = model.eval()
        install_cancel_points(self.model)  # a cancelled run stops between transformer blocks
        self.feature = feature
        self.patch_size = int(_arch(name).patch_size)
        self.embed_dim = int(model.embed_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def grid_for(self, height: int, width: int) -> Tuple[int, int]:
        p = self.patch_size
        return max(1, int(round(height / p))), max(1, int(round(width / p)))

    @torch.no_grad()
    def forward(self, images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B,3,H,W), got {tuple(images.shape)}")
        device = self.mean.device
        x = (images.to(device).float() - self.mean) / self.std
        h, w = self.grid_for(*x.shape[-2:])
        size = (h * self.patch_size, w * self.patch_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = x.to(next(self.model.parameters()).dtype)
        if self.feature == "keys":  # no hooks: safe when several threads share the backbone
            depth = len(self.model.blocks)
            (before_last,) = self.model.forward_intermediates(
                x, indices=[depth - 2], stop_early=True, output_fmt="NLC", intermediates_only=True)
            last = self.model.blocks[-1]
            c = self.embed_dim
            qkv = last.attn.qkv
            bias = qkv.bias[c:2 * c] if qkv.bias is not None else None
            tokens = F.linear(last.norm1(before_last), qkv.weight[c:2 * c], bias).float()
        else:
            tokens = self.model.forward_features(x)
            tokens = tokens[:, self.model.num_prefix_tokens:].float()
        b = tokens.shape[0]
        return tokens.permute(0, 2, 1).reshape(b, -1, h, w)


def make_dino(name: str, feature: str = "tokens", **dims) -> DinoBackbone:
    """A DINO backbone with random weights (tests, benchmarks); dims as in `build_timm_vit`."""
    return DinoBackbone(name, build_timm_vit(name, **dims), feature=feature)


def _guess_arch(state: Dict[str, torch.Tensor]) -> str:
    patch = state.get("patch_embed.proj.weight")
    if patch is None or patch.dim() != 4:
        return "not a ViT backbone (no 'patch_embed.proj.weight')"
    width, p = int(patch.shape[0]), int(patch.shape[-1])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    scale = any(k.endswith("ls1.gamma") for k in state)
    for name, arch in DINO_MODELS.items():
        if (arch.patch_size, arch.embed_dim, arch.depth, arch.layer_scale) == (p, width, depth, scale):
            return f"it looks like '{name}'"
    return (f"it holds a ViT with {p}px patches, width {width}, {depth} blocks"
            f"{', layer scale' if scale else ''}")


def convert_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official DINO / DINOv2 / teacher-checkpoint keys -> timm VisionTransformer keys."""
    out = {}
    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.")
    flat = any(re.match(r"^blocks\.\d+\.norm1\.", k) for k in state)
    for name, value in state.items():
        if name.startswith("backbone."):
            name = name[len("backbone."):]
        if _IGNORED.match(name):
            continue
        if not flat:
            name = chunked.sub(r"blocks.\1.", name)
        out[name] = value
    return out


def _check_and_fit(name: str, path: str, state: Dict[str, torch.Tensor], model) -> Dict[str, torch.Tensor]:
    from timm.layers import resample_abs_pos_embed

    if "register_tokens" in state:
        raise ModelError(f"Checkpoint '{path}' is a DINOv2 model with registers; "
                         f"'{name}' expects the register-free release")
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    for key in sorted(set(expected) & set(state)):
        want, got = expected[key].shape, state[key].shape
        if want == got:
            continue
        if key == "pos_embed" and got[-1] == want[-1]:
            old = int(round((got[1] - 1) ** 0.5))
            new = int(round((want[1] - 1) ** 0.5))
            if old * old + 1 == got[1]:
                state[key] = resample_abs_pos_embed(state[key], new_size=(new, new),
                                                    old_size=(old, old), num_prefix_tokens=1)
                continue
        problems.append(f"'{key}' is {tuple(got)}, expected {tuple(want)}")
    if missing:
        problems.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    if problems:
        raise ModelError(f"Checkpoint '{path}' does not match DINO model '{name}' "
                         f"({_guess_arch(state)}): " + "; ".join(problems[:3]))
    return state


def load_dino_checkpoint(name: str, path: str, device: Union[str, torch.device] = "cpu",
                         feature: str = "tokens", key: Optional[str] = "auto",
                         **dims) -> DinoBackbone:
    """Build `name` with timm (no download) and load the weights in the file `path`.

    key: "auto" reads a plain state dict and, if the file holds a training checkpoint, its
    'teacher' entry; None or "teacher" force one of them. Raises ModelError with a readable
    message for missing files, unreadable files and weights of another architecture.
    dims: other widths of the same definition (`build_timm_vit`). The loader with the models'
    common shape (catalog names, the cache) is `core.models.dino.load_dino`.
    """
    _arch(name)
    prefixes = ("module.", "backbone.")
    if key == "auto":
        try:
            state = load_state_dict(path, strip_prefixes=prefixes)
        except ModelError as plain_error:
            try:
                state = load_state_dict(path, key="teacher", strip_prefixes=prefixes)
            except ModelError:
                raise plain_error from None
    else:
        state = load_state_dict(path, key=key, strip_prefixes=prefixes)
    model = build_timm_vit(name, **dims)
    state = _check_and_fit(name, path, convert_state_dict(state), model)
    load_piecewise(model, state)  # every key fits: _check_and_fit said so
    return DinoBackbone(name, model, feature=feature).to(device)


def align_to_grid(features: torch.Tensor, size: Sequence[int], mode: str = "auto") -> torch.Tensor:
    """Resample token features (B, C, h, w) or (C, h, w) to grid `size` = (H, W).

    Both grids cover the same window, so this is a resampling of the extent (align_corners=False).
    mode "auto": area averaging when shrinking on both axes (e.g. DINO /8 onto CLIP /16),
    bilinear otherwise (e.g. CLIP /16 onto DINO /8, or /14 <-> /16 mixes that grow an axis).
    """
    size = (int(size[0]), int(size[1]))
    squeeze = features.dim() == 3
    x = features.unsqueeze(0) if squeeze else features
    if x.dim() != 4:
        raise ValueError(f"expected features (B,C,h,w) or (C,h,w), got {tuple(features.shape)}")
    if tuple(x.shape[-2:]) == size:
        out = x
    else:
        if mode == "auto":
            mode = "area" if size[0] <= x.shape[-2] and size[1] <= x.shape[-1] else "bilinear"
        if mode == "area":
            out = F.adaptive_avg_pool2d(x, size)
        elif mode in ("bilinear", "bicubic"):
            out = F.interpolate(x, size=size, mode=mode, align_corners=False)
        else:
            raise ValueError("align mode must be 'auto', 'area', 'bilinear' or 'bicubic'")
    return out[0] if squeeze else out
