"""Building the transformers SAM 3 detector and loading its weights safely (safetensors only).

    model = load_sam3("sam3", "sam3")                    # catalog name: cached, or downloaded once
    model = load_sam3("sam3", "/data/sam3/model.safetensors")
    model = load_sam3("sam3", "/data/sam3")              # a folder holding model.safetensors
    model = load_sam3("sam3", "random")                  # untrained: tests and speed only

The model is `transformers.Sam3Model` built from its configuration (the released one is
transformers' default `Sam3Config`); the weights go in from a safetensors file, never through
pickle. The released weights are gated (SAM License): the messages for a missing file say how to
download them by hand and import them with `python -m drseg models import sam3 FILE`.
Architectures other than the released one (tiny test models) are registered with
`register_sam3_architecture(name, make_config)`.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from ..errors import InputError, ModelError
from .checkpoints import load_into, read_safetensors
from .download import ensure_cached
from .registry import DEFAULT_SAM3_MODEL, RANDOM_WEIGHTS, SAM3_CATALOG, SAM3_LICENCE

WEIGHTS_FILE = "model.safetensors"   # the file name in a Hugging Face model folder
# Keys of the video tracker, which the image detector does not have.
_TRACKER_PREFIXES = ("tracker_model.", "tracker_neck.")

_EXTRA_ARCHITECTURES: Dict[str, Callable[[], object]] = {}


def register_sam3_architecture(name: str, make_config: Callable[[], object]) -> None:
    """Make `name` an architecture whose `Sam3Config` is `make_config()` (tests: tiny sizes)."""
    _EXTRA_ARCHITECTURES[str(name)] = make_config


def sam3_architectures() -> Dict[str, Callable[[], object]]:
    def released():
        from transformers import Sam3Config

        return Sam3Config()

    builders = {name: released for name in SAM3_CATALOG}
    builders.update(_EXTRA_ARCHITECTURES)
    return builders


def is_config_file(model_name: Optional[str]) -> bool:
    """A model name that is a transformers config.json of a SAM 3 architecture (as for CLIP, a
    JSON file stands for an architecture: a Hugging Face folder's config or a tiny test model)."""
    return bool(model_name) and str(model_name).lower().endswith(".json") and os.path.isfile(str(model_name))


def sam3_config(model_name: str = DEFAULT_SAM3_MODEL):
    """The `Sam3Config` of a registered architecture or of a config.json file."""
    if is_config_file(model_name):
        from transformers import Sam3Config

        try:
            return Sam3Config.from_json_file(str(model_name))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(f"'{model_name}' is not a SAM 3 configuration ({exc})") from None
    builders = sam3_architectures()
    if model_name not in builders:
        raise InputError(f"Unknown SAM 3 model '{model_name}'; choose one of {', '.join(builders)} "
                         "or a config.json")
    return builders[model_name]()


def build_sam3(model_name: str = DEFAULT_SAM3_MODEL):
    """An untrained `Sam3Model` of the architecture `model_name`, in eval mode on the CPU."""
    from transformers import Sam3Model

    return Sam3Model(sam3_config(model_name)).eval()


def sam3_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA where supported, else float16 there; float32 on the CPU and MPS."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_sam3(model_name: Optional[str] = DEFAULT_SAM3_MODEL, weights: Optional[str] = None,
              device: Union[str, torch.device] = "cpu", *, cache_dir: Optional[str] = None,
              mirror: Optional[str] = None, progress=None):
    """-> `transformers.Sam3Model` in eval mode on `device` (half precision on CUDA).

    weights: a .safetensors file, a folder with model.safetensors, a catalog name ('sam3'), None
    (the catalog checkpoint of `model_name`) or 'random'. Resolved before the model is built, so
    a missing file fails at once.
    """
    from ..device import as_device

    torch_device = as_device(device)
    name, path = resolve_sam3_weights(model_name, weights, cache_dir, progress, mirror)
    model = build_sam3(name)
    if path != RANDOM_WEIGHTS:
        load_into(model, read_sam3_weights(path), f"SAM 3 ('{os.path.basename(path)}')",
                  ignore_unexpected=_TRACKER_PREFIXES)
    return model.to(device=torch_device, dtype=sam3_dtype(torch_device)).eval()


def read_sam3_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of a safetensors file, with the `detector_model.` prefix of the released
    (video) checkpoint removed. Anything but safetensors is refused: no pickle is ever read.
    Read tensor by tensor with the run's cancel checked before each (3.4 GB take seconds)."""
    state = read_safetensors(path, damaged="'{path}' is not a readable safetensors file ({detail}); "
                                           "SAM 3 weights must be the model.safetensors file of "
                                           "facebook/sam3")
    prefix = "detector_model."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def resolve_sam3_weights(model_name: Optional[str], weights: Optional[str],
                         cache_dir: Optional[str] = None, progress=None,
                         mirror: Optional[str] = None) -> Tuple[str, str]:
    """-> (architecture, safetensors path or 'random'); InputError / ModelError with advice."""
    if is_config_file(model_name):
        name = os.fspath(model_name)
    else:
        name = str(model_name or DEFAULT_SAM3_MODEL).strip().lower()
        if name not in sam3_architectures():
            raise InputError(f"Unknown SAM 3 model '{model_name}'; choose one of "
                             f"{', '.join(sam3_architectures())} or a config.json")
    if weights is not None and str(weights).strip() == "":
        weights = None
    if weights == RANDOM_WEIGHTS:
        return name, RANDOM_WEIGHTS
    if weights is not None:
        given = os.fspath(weights)
        if os.path.isdir(given):
            path = os.path.join(given, WEIGHTS_FILE)
            if not os.path.isfile(path):
                raise ModelError(f"The folder '{given}' has no {WEIGHTS_FILE}; give the SAM 3 "
                                 "safetensors file itself or the downloaded facebook/sam3 folder")
            return name, path
        if os.path.isfile(given):
            if not given.lower().endswith(".safetensors"):
                raise ModelError(f"SAM 3 weights must be a .safetensors file, not '{given}' "
                                 "(pickled checkpoints are refused)")
            return name, given
    if is_config_file(name):
        raise InputError("A SAM 3 configuration file needs its weights: --sam3-weights PATH "
                         "(a .safetensors file) or 'random'")
    entry = _catalog_entry(name, weights)
    try:
        return name, ensure_cached(entry, "SAM 3 weights", "--sam3-weights", "SAM 3 weights",
                                   cache_dir, progress, mirror)
    except ModelError as exc:
        raise ModelError(f"{exc}. SAM 3 weights are gated ({SAM3_LICENCE}): accept the licence at "
                         f"{entry.homepage} while logged in, download {os.path.basename(entry.url)} "
                         f"there and run `python -m drseg models import {entry.name} FILE`") from None


def _catalog_entry(model_name: str, weights: Optional[str]):
    from .catalog import entry_for_weights

    return entry_for_weights("sam3", "SAM 3", "--sam3-weights",
                             SAM3_CATALOG.get(model_name), model_name, weights, (".safetensors",))
