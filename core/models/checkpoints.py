"""One safe way to read model weights: safetensors or `torch.load(weights_only=True)`.

A checkpoint file must never be able to run code, so pickles that hold anything but tensors and
plain containers are refused with a clear message, and so are TorchScript archives. Files that are
not weights at all (an HTML error page saved by a failed download, an empty or truncated file, a
zip archive around the real checkpoint) are recognised before torch sees them (`formats`, which
the downloader uses without torch), so the user reads what is wrong and what to do instead of a
pickle traceback.

`load_into(model, state, what)` puts a state dict into a module and turns missing, unexpected and
wrongly shaped keys into one short `ModelError`.

Reading and loading check the cancel of the run going on in the thread (`interrupt.check_cancel`)
between tensors and between modules: a ViT-H's weights take seconds to read and copy.
"""
from __future__ import annotations

import argparse
import os
import pickle
import pickletools
import warnings
import zipfile
from typing import Dict, Iterable, List, Optional

import torch

from ..errors import ModelError, RunCancelled
from ..interrupt import check_cancel
from .formats import SAFETENSORS, UNKNOWN, is_torchscript, probe_format, refuse_non_weights

# Top-level keys that wrap the real state dict in training checkpoints (open_clip training runs
# save {'state_dict': ...}, many repositories {'model': ...}, DINO training runs {'teacher': ...}).
_WRAPPERS = ("state_dict", "model", "teacher")

# Modules a plain weights pickle may name; anything else in a refused pickle is reported as code.
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")


def load_state_dict(path: str, key: Optional[str] = None,
                    strip_prefixes: Iterable[str] = ("module.",)) -> Dict[str, torch.Tensor]:
    """Read a state dict from `path` on the CPU.

    key: a sub-dictionary to take (e.g. 'teacher'); 'state_dict', 'model' and 'teacher' wrappers
    are unwrapped automatically. strip_prefixes: prefixes removed from every key, in the order
    given (DataParallel's 'module.', then e.g. DINO's 'backbone.').
    """
    path = os.fspath(path)
    strip_prefixes = tuple(strip_prefixes)
    if not os.path.isfile(path):
        raise ModelError(f"Checkpoint file not found: '{path}'")
    kind = probe_format(path)
    refuse_non_weights(path, kind)
    check_cancel()
    if kind == SAFETENSORS or (kind == UNKNOWN and str(path).endswith(".safetensors")):
        obj = read_safetensors(path)
    else:
        obj = _torch_load(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise ModelError(f"Checkpoint '{path}' has no '{key}' entry{_keys_hint(obj)}")
        obj = obj[key]
    for wrapper in _WRAPPERS:
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"Checkpoint '{path}' holds no weights (no tensors found){_keys_hint(obj)}")
    check_cancel()
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(name)
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = value
    return state


def load_into(model: torch.nn.Module, state: Dict[str, torch.Tensor], what: str,
              ignore_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = ()
              ) -> torch.nn.Module:
    """Load `state` into `model`, or raise one short `ModelError` saying why it does not fit.

    what: how to name the weights in the message ('DINO ViT-B/8', 'SAM vit_b', a file name).
    ignore_missing / ignore_unexpected: key prefixes that may be absent from the file / present
    in the file without a place in the model (e.g. a text tower the run does not use).
    Returns the model.
    """
    check_fit(model, state, what, ignore_missing, ignore_unexpected)
    expected = model.state_dict()
    filtered = {k: v for k, v in state.items() if k in expected}
    try:
        load_piecewise(model, filtered)  # every key fits: check_fit said so
    except RuntimeError as exc:  # dtype or other problems torch finds that the checks above do not
        raise ModelError(f"The {what} weights do not fit the model ({_first_line(exc)}); "
                         "choose the architecture that matches this checkpoint") from None
    return model


def load_piecewise(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """`model.load_state_dict(state, strict=False)` one module at a time, checking the run's cancel
    before each module; keys of `state` are the model's (checked by the caller)."""
    done = set()
    for prefix, module in model.named_modules():
        check_cancel()
        dotted = f"{prefix}." if prefix else ""
        own = {}
        for name, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if dotted + name in state:
                own[name] = state[dotted + name]
                done.add(dotted + name)
        if own:
            module.load_state_dict(own, strict=False)
    rest = {key: value for key, value in state.items() if key not in done}  # e.g. extra states
    if rest:
        model.load_state_dict(rest, strict=False)


def check_fit(model: torch.nn.Module, state: Dict[str, torch.Tensor], what: str,
              ignore_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = ()) -> None:
    """Raise one short ModelError unless `state` has exactly `model`'s keys and shapes. Nothing is
    loaded, so `model` may live on the meta device (built without memory or initialisation)."""
    ignore_missing = tuple(ignore_missing)
    ignore_unexpected = tuple(ignore_unexpected)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(ignore_missing)]
    unexpected = [k for k in state if k not in expected and not k.startswith(ignore_unexpected)]
    mismatched = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ModelError(_mismatch_message(model, state, expected, what, missing, unexpected, mismatched))


# How a damaged safetensors file is reported ({path}, {detail}); SAM 3 says what its file must be.
DAMAGED_SAFETENSORS = ("Checkpoint '{path}' is a corrupt or truncated safetensors file ({detail}); "
                       "download it again")


def read_safetensors(path: str, damaged: str = DAMAGED_SAFETENSORS) -> Dict[str, torch.Tensor]:
    """Every tensor of a safetensors file on the CPU, read one at a time with the run's cancel
    checked before each (a cancelled read stops within one tensor). A damaged file raises
    ModelError(damaged.format(path=..., detail=...))."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModelError("Reading safetensors files needs the 'safetensors' package; "
                         "install the plugin's dependencies") from None
    try:
        state = {}
        with safe_open(path, framework="pt", device="cpu") as handle:
            for name in handle.keys():
                check_cancel()
                state[name] = handle.get_tensor(name)
        return state
    except (KeyboardInterrupt, SystemExit, RunCancelled):
        raise
    except BaseException as exc:  # also the Rust side's PanicException, not an Exception
        raise ModelError(damaged.format(path=path, detail=_first_line(exc))) from None


def _torch_load(path: str):
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not support; the outcome is reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # DINO's released checkpoints keep their training arguments as an argparse.Namespace:
            # plain data, allowed; anything else that is not a tensor or container is refused.
            with torch.serialization.safe_globals([argparse.Namespace]):
                try:  # mapped, not read: the bytes are read as load_into copies them, cancellably
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # a legacy (non-zip) file cannot be mapped; a damaged one
                    pass              # fails again just below, with its own error
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if is_torchscript(path):
            raise ModelError(f"Checkpoint '{path}' is a TorchScript archive, which can run code; "
                             "use a plain state-dict or safetensors file instead") from None
        code = _code_globals(path)
        if code or _mentions_global(str(exc)):
            named = f" (it would import {', '.join(code[:3])})" if code else ""
            raise ModelError(f"Refusing to load '{path}': it contains objects other than weights, "
                             f"which could run code when loaded{named}. Use a plain state-dict or "
                             "safetensors file from a source you trust") from None
        raise ModelError(f"Checkpoint '{path}' is corrupt or not a PyTorch weights file "
                         "(it could not be read as plain weights); download it again") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError,
            MemoryError) as exc:
        detail = _first_line(exc) or type(exc).__name__
        raise ModelError(f"Checkpoint '{path}' is corrupt or truncated ({detail}); "
                         "download it again") from None


def _mentions_global(message: str) -> bool:
    lowered = message.lower()
    return "unsupported global" in lowered or ("global" in lowered and "blocked" in lowered)


def _code_globals(path: str) -> List[str]:
    """Names a refused pickle would import, found by reading its opcodes (nothing is executed)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as handle:
                blobs = [handle.read(64 * 1024 * 1024)]
    except (zipfile.BadZipFile, OSError, KeyError):
        return []
    found: List[str] = []
    for blob in blobs:
        for name in _pickle_globals(blob):
            if not name.startswith(_SAFE_GLOBAL_PREFIXES) and name not in found:
                found.append(name)
    return found


def _pickle_globals(blob: bytes) -> List[str]:
    """Every module.name a pickle stream (or several concatenated ones) refers to."""
    names: List[str] = []
    offset = 0
    while offset < len(blob):
        strings: List[str] = []
        memo: Dict[int, str] = {}
        end = None
        try:
            for op, arg, pos in pickletools.genops(blob[offset:]):
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    names.append(".".join(arg.split(" ", 1)))
                elif isinstance(arg, str) and op.name.endswith("UNICODE"):
                    strings.append(arg)
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                if op.name == "STOP":
                    end = pos + 1
        except (ValueError, IndexError, TypeError):
            break
        if end is None:
            break
        offset += end
    return names


def _mismatch_message(model, state, expected, what, missing, unexpected, mismatched) -> str:
    arch = type(model).__name__
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if mismatched:
        shown = ", ".join(f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
                          for k in mismatched[:2])
        parts.append(f"{len(mismatched)} with another shape ({shown}{', ...' if len(mismatched) > 2 else ''})")
    hint = ""
    if state and not set(state) & set(expected):
        hint = (f"; no key matches at all (file: '{next(iter(state))}', model: "
                f"'{next(iter(expected), '')}'), so the keys may carry a prefix to strip")
    return (f"The {what} weights do not fit the {arch} model: {'; '.join(parts)}{hint}. "
            "This checkpoint is for another architecture or size; choose the matching model")


def _few(keys: List[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _keys_hint(obj) -> str:
    if isinstance(obj, dict) and obj:
        keys = [str(k) for k in list(obj)[:6]]
        return f"; its top-level entries are: {', '.join(keys)}{', ...' if len(obj) > 6 else ''}"
    return ""


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, short enough for a message bar."""
    text = str(exc).strip()
    if not text:
        return ""
    line = text.splitlines()[0]
    if ". " in line:
        line = line.split(". ", 1)[0]
    return line[:200].rstrip(".")
