"""One safe way to read model weights: safetensors or `torch.load(weights_only=True)`.

A checkpoint file must never be able to run code, so pickles that hold anything but tensors and
plain containers are refused with a clear message.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Dict, Iterable, Optional

import torch

from .errors import ModelError


def load_state_dict(path: str, key: Optional[str] = None,
                    strip_prefixes: Iterable[str] = ("module.",)) -> Dict[str, torch.Tensor]:
    """Read a state dict from `path` on the CPU.

    key: a sub-dictionary to take (e.g. 'teacher'); 'state_dict' and 'model' wrappers are
    unwrapped automatically. strip_prefixes: prefixes removed from every key (DataParallel's
    'module.').
    """
    if not os.path.isfile(path):
        raise ModelError(f"Checkpoint file not found: '{path}'")
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        except Exception as exc:
            raise ModelError(f"Checkpoint '{path}' is not a readable safetensors file ({exc})") from None
    else:
        obj = _torch_load(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ModelError(f"Checkpoint '{path}' has no '{key}' entry")
        obj = obj[key]
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"Checkpoint '{path}' holds no weights (no tensors found)")
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = value
    return state


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _is_torchscript(path):
            raise ModelError(f"Checkpoint '{path}' is a TorchScript archive, which can run code; "
                             "use a plain state-dict or safetensors file instead") from None
        raise ModelError(f"Refusing to load '{path}': it contains objects other than weights, "
                         f"which could run code when loaded ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"Checkpoint '{path}' is corrupt or truncated ({str(exc).splitlines()[0]}); "
                         "download it again") from None


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
