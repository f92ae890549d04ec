"""DINO weights: which checkpoint file a run uses, and loading a backbone from it.

    path = resolve_dino_weights("dinov2_vitb14", None)       # the downloaded default, or None
    dino = load_dino("dinov2_vitb14", "dinov2-vit-b14", "auto")   # -> DinoBackbone

`resolve_dino_weights` needs neither torch nor QGIS (the dock calls it while QGIS starts, perhaps
without torch); `load_dino` imports torch and timm when called. DINO weights are never downloaded
on their own: DR-Seg runs without them (plain dense CLIP) until the user downloads or names them.
"""
from __future__ import annotations

import os
from typing import Optional

from ..advice import download_advice, file_advice, import_advice
from ..errors import InputError, ModelError
from .registry import DEFAULT_DINO_MODEL, DINO_MODEL_CHOICES, DINO_MODELS

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def resolve_dino_weights(dino_model: str, weights=None, cache_dir: Optional[str] = None
                         ) -> Optional[str]:
    """The DINO checkpoint file a DR-Seg run would use, or None when none is set up.

    weights: a file, a catalog name, or empty for the catalog default of `dino_model`. A catalog
    checkpoint counts when its file is in the model cache (`cache_dir`, as resolved by the caller;
    None: `settings.resolve`) with the size the catalog or its download record gives.

    Raises InputError for an unknown model or catalog name, weights of another family or a
    missing file, and ModelError when weights other than the default were named but are not
    downloaded.
    """
    from .catalog import get_model
    from .download import cached_path, resolve_cache_dir

    if dino_model not in DINO_MODELS:
        raise InputError(f"Unknown DINO model '{dino_model}'; choose one of "
                         f"{', '.join(DINO_MODEL_CHOICES)}")
    weights = str(weights or "").strip()
    if weights and os.path.isfile(os.path.expanduser(weights)):
        return os.path.abspath(os.path.expanduser(weights))
    if weights and (os.sep in weights or "/" in weights or weights.lower().endswith(_WEIGHT_SUFFIXES)):
        raise InputError(f"DINO weights file '{weights}' does not exist")
    default = DINO_MODELS[dino_model].catalog_name
    entry = get_model(weights or default)
    if entry.family != "dino":
        raise InputError(f"'{entry.name}' is a {entry.family.upper()} model, not DINO weights")
    cache_dir = resolve_cache_dir(cache_dir)
    path = cached_path(entry, cache_dir)
    if path is None and entry.name.lower() != default.lower():
        raise ModelError(f"The DINO weights '{entry.name}' are not downloaded (not in the model cache "
                         f"{cache_dir}): {download_advice(entry.name)}, or download the file and "
                         f"{import_advice(entry.name)}")
    return path


def dino_help(dino_model: str) -> str:
    """How to set up DINO weights for `dino_model`, in one sentence."""
    arch = DINO_MODELS.get(dino_model)
    name = arch.catalog_name if arch else "a DINO checkpoint"
    return (f"download '{name}' (DR-Seg settings › Download models…) or choose a checkpoint "
            "file as DINO weights")


def load_dino(model_name: str = DEFAULT_DINO_MODEL, weights: Optional[str] = None,
              device="cpu", *, cache_dir: Optional[str] = None, mirror: Optional[str] = None,
              progress=None):
    """-> a `core.drseg.dino.DinoBackbone` in eval mode on `device` with `weights` loaded.

    weights: a checkpoint file, a catalog name, or None (the catalog default of `model_name`),
    which must be in the model cache (see `resolve_dino_weights`). mirror and progress are
    accepted for the loaders' common shape; DINO weights are not downloaded here.
    """
    from ..device import as_device
    from ..drseg.dino import load_dino_checkpoint

    path = resolve_dino_weights(model_name, weights, cache_dir)
    if path is None:
        name = DINO_MODELS[model_name].catalog_name
        raise ModelError(f"No DINO weights for {model_name} are set up: {download_advice(name)}, "
                         f"or {file_advice('--dino-weights', 'DINO weights')}")
    return load_dino_checkpoint(model_name, path, device=as_device(device))
