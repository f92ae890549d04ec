"""Does a checkpoint file fit a catalog entry's architecture? Checked before `models import`
records a file under the entry's name.

The file is read the one safe way (core/checkpoints: safetensors or weights-only torch.load, so a
pickle that would run code is refused without being run) and compared key by key and shape by
shape with the entry's architecture, built on PyTorch's meta device (no memory, no initialisation).
"""
from __future__ import annotations

import os

import torch

from .checkpoints import check_fit, load_state_dict
from ..errors import ModelError


def check_entry_fits(entry, path: str) -> None:
    """Raise ModelError unless `path` holds plain weights that fit `entry` (a catalog ModelEntry)."""
    what = f"'{os.path.basename(path)}' for {entry.name} ({entry.architecture})"
    state = load_state_dict(path, key=entry.key, strip_prefixes=tuple(entry.strip_prefixes or ("module.",)))
    if entry.family == "clip":
        check_fit(build_meta_model(entry), state, what, ignore_missing=("logit_bias",))
    elif entry.family == "dino":
        from ..drseg.dino import _check_and_fit, convert_state_dict

        name = dino_name(entry.architecture)
        _check_and_fit(name, path, convert_state_dict(state), build_meta_model(entry))
    elif entry.family == "sam":
        check_fit(build_meta_model(entry), state, what)
    else:
        raise ModelError(f"Cannot check weights of the model family '{entry.family}'")


def build_meta_model(entry) -> torch.nn.Module:
    """The entry's architecture with shapes only (meta device)."""
    with torch.device("meta"):
        if entry.family == "clip":
            import open_clip

            from .clip import quiet_open_clip
            with quiet_open_clip():
                return open_clip.create_model(entry.architecture, pretrained=None, device="meta")
        if entry.family == "dino":
            from ..drseg.dino import build_timm_vit
            return build_timm_vit(dino_name(entry.architecture))
        if entry.family == "sam":
            from .sam import sam_architectures
            return sam_architectures()[entry.architecture]()
    raise ModelError(f"Unknown model family '{entry.family}'")


def dino_name(architecture: str) -> str:
    """'vit_base_patch8_224.dino' (timm name with tag) -> 'dino_vitb8' (our DINO arch name)."""
    from .registry import DINO_MODELS

    timm_name = architecture.split(".")[0]
    for name, arch in DINO_MODELS.items():
        if arch.timm_name == timm_name:
            return name
    raise ModelError(f"No DINO architecture matches '{architecture}'")
