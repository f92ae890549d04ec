"""Building segment_anything (SAM v1) models and loading their weights safely.

    sam = load_sam("vit_l", "sam-vit-l")          # catalog name: cached, or downloaded once
    sam = load_sam("vit_l", "/data/sam_vit_l_0b3195.pth")
    sam = shared.sam_model("vit_l", None, "auto") # the same, shared by later runs of the process

The model is built with `sam_model_registry[model_type](checkpoint=None)` (segment_anything's own
loader calls `torch.load` without `weights_only`, which can run code from a pickle) and the weights
go in through `checkpoints.load_state_dict` + `load_into`, which refuse code-running pickles,
recognise damaged files and name the architecture a wrong checkpoint does not fit.

weights: a checkpoint file (.pth state dict or .safetensors), a catalog name ('sam-vit-b', see
`python -m drseg models list`), None (the catalog checkpoint of `model_type`), or 'random'
(untrained weights: tests and speed measurements only).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Union

import torch

from ..errors import InputError, ModelError
from .checkpoints import load_into, load_state_dict
from .download import ensure_cached
from .registry import DEFAULT_SAM_MODEL, RANDOM_WEIGHTS, SAM_CATALOG, SAM_MODELS

_EXTRA_ARCHITECTURES: Dict[str, Callable[[], torch.nn.Module]] = {}


def register_sam_architecture(name: str, build: Callable[[], torch.nn.Module]) -> None:
    """Make `name` a model_type built by `build()` (a `segment_anything.modeling.Sam` with random
    weights). For tests (tiny models of the real architecture) and company-specific variants."""
    _EXTRA_ARCHITECTURES[str(name)] = build


def sam_architectures() -> Dict[str, Callable[[], torch.nn.Module]]:
    from segment_anything import sam_model_registry

    builders = {name: (lambda build=build: build(checkpoint=None))
                for name, build in sam_model_registry.items() if name != "default"}
    builders.update(_EXTRA_ARCHITECTURES)
    return builders


def load_sam(model_name: Optional[str] = DEFAULT_SAM_MODEL, weights: Optional[str] = None,
             device: Union[str, torch.device] = "cpu", *, cache_dir: Optional[str] = None,
             mirror: Optional[str] = None, progress=None) -> torch.nn.Module:
    """-> segment_anything `Sam` in eval mode on `device` with `weights` loaded.

    model_name: a SAM_MODELS type (None: the architecture of the catalog weights).
    Weights are resolved (and, for catalog names, downloaded when reachable) *before* the model
    is built, so a missing file fails at once. progress(bytes_done, bytes_total) follows a download.
    """
    from ..device import as_device

    torch_device = as_device(device)
    model_type, path = resolve_sam_weights(model_name, weights, cache_dir, progress, mirror)
    builders = sam_architectures()
    model = builders[model_type]()
    if path != RANDOM_WEIGHTS:
        state = load_state_dict(path)
        load_into(model, state, f"SAM {model_type} ('{os.path.basename(str(path))}')")
    return model.to(torch_device).eval()


def resolve_sam_weights(model_type: Optional[str], weights: Optional[str],
                        cache_dir: Optional[str] = None, progress=None, mirror: Optional[str] = None):
    """-> (model_type, checkpoint path or 'random'); raises InputError / ModelError with advice."""
    builders = sam_architectures()
    if model_type is not None:
        model_type = str(model_type).strip().lower().replace("-", "_")
        if model_type not in builders:
            raise InputError(f"Unknown SAM model '{model_type}'; choose one of {', '.join(SAM_MODELS)}")
    if weights is not None and str(weights).strip() == "":
        weights = None
    if weights == RANDOM_WEIGHTS:
        return model_type or DEFAULT_SAM_MODEL, RANDOM_WEIGHTS
    if weights is not None and os.path.isfile(os.fspath(weights)):
        return model_type or DEFAULT_SAM_MODEL, os.fspath(weights)
    entry = _catalog_entry(model_type, weights)
    if model_type is not None and entry.architecture != model_type:
        raise InputError(f"The SAM weights '{entry.name}' are for {entry.architecture}, not "
                         f"{model_type}; choose --sam-model {entry.architecture} or other weights")
    return entry.architecture, ensure_cached(entry, "SAM", "--sam-weights", "SAM weights",
                                             cache_dir, progress, mirror)


def _catalog_entry(model_type: Optional[str], weights: Optional[str]):
    from .catalog import entry_for_weights

    model = model_type or DEFAULT_SAM_MODEL
    return entry_for_weights("sam", "SAM", "--sam-weights", SAM_CATALOG.get(model), model,
                             weights, (".pth", ".pt", ".bin", ".safetensors"))
