"""The trained referring head: one safetensors file with the prompter's weights, the LoRA deltas
and metadata (what it was trained on), read safely and refused for other base models.

Tensors: ``prompter.<name>`` and ``lora.<clip|sam|decoder>.<weight>.lora_A|lora_B``. Metadata
(strings): ``format`` (:data:`HEAD_FORMAT`), ``config`` (JSON of PrompterConfig), the base
models' names, their weights' SHA-256 where known, and their digests (:func:`model_digest`:
shapes and a sample of every weight, cheap to compute on any loaded model), ``created`` (UTC) and
``training`` (JSON: epochs, metrics).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError
from .lora import load_lora_state, lora_state
from .prompter import PromptedSegmenter, PrompterConfig

HEAD_FORMAT = "drseg-referring-prompter/1"
_SAMPLES_PER_TENSOR = 256


def _base_name(name: str) -> str:
    # parametrized weights (LoRA) keep their base in `<module>.parametrizations.<p>.original`
    return name.replace(".parametrizations.", ".").replace(".original", "") \
        if ".parametrizations." in name else name


@torch.no_grad()
def model_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every base weight's name, shape and a fixed sample of its values: equal for
    the same architecture with the same weights, different when either changes. LoRA adapters
    (unmerged) are ignored."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        if "lora_" in name:
            continue
        tensor = state[name]
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].float().cpu().numpy()
        digest.update(_base_name(name).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(np.round(sample, 5).astype(np.float32).tobytes())
    return digest.hexdigest()


def base_metadata(clip_model, sam, clip_name: str = "", sam_name: str = "",
                  clip_sha256: str = "", sam_sha256: str = "") -> Dict[str, str]:
    """What a head records about its base models (call before adapting them)."""
    return {"clip_model": str(clip_name or ""), "sam_model": str(sam_name or ""),
            "clip_sha256": str(clip_sha256 or ""), "sam_sha256": str(sam_sha256 or ""),
            "clip_digest": model_digest(clip_model), "sam_digest": model_digest(sam)}


def head_tensors(model: PromptedSegmenter) -> Dict[str, torch.Tensor]:
    tensors = {f"prompter.{k}": v.detach() for k, v in model.prompter.state_dict().items()}
    for part, adapters in model.adapters.items():
        tensors.update(lora_state(adapters, f"lora.{part}."))
    return {k: v.float().contiguous().cpu() for k, v in tensors.items()}


def save_head(path: str, model: PromptedSegmenter, base: Dict[str, str],
              training: Optional[dict] = None) -> str:
    """Write the head (temporary file, then renamed: an existing file is replaced only whole)."""
    from safetensors.torch import save_file

    metadata = dict(base)
    metadata.update(format=HEAD_FORMAT, config=json.dumps(model.config.as_dict()),
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    training=json.dumps(training or {}))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.part")
    save_file(head_tensors(model), tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def read_head(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a head file; InputError for anything that is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not os.path.isfile(str(path)):
        raise InputError(f"Prompter head '{path}' does not exist")
    if not str(path).lower().endswith(".safetensors"):
        raise InputError(f"Prompter head '{path}' must be a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"Cannot read prompter head '{path}': {exc}") from None
    if metadata.get("format") != HEAD_FORMAT:
        raise InputError(f"'{path}' is not a DR-Seg referring prompter head "
                         f"(format {metadata.get('format')!r}, expected {HEAD_FORMAT!r})")
    return tensors, metadata


def head_config(metadata: Dict[str, str]) -> PrompterConfig:
    try:
        return PrompterConfig(**json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"The prompter head's configuration is unreadable: {exc}") from None


def check_base_models(metadata: Dict[str, str], path: str, clip_model, sam) -> None:
    """InputError when the loaded CLIP or SAM are not the models the head was trained on."""
    for key, model, what in (("clip_digest", clip_model, "CLIP"), ("sam_digest", sam, "SAM")):
        expected = metadata.get(key, "")
        if expected and model_digest(model) != expected:
            name = metadata.get(f"{what.lower()}_model") or "?"
            sha = metadata.get(f"{what.lower()}_sha256") or "unknown"
            raise InputError(f"The prompter head '{os.path.basename(path)}' was trained on another "
                             f"{what} model ({name}, weights SHA-256 {sha[:16]}…): load the same "
                             f"{what} model and weights, or train a head for these")


def load_head_into(model: PromptedSegmenter, tensors: Dict[str, torch.Tensor], path: str) -> None:
    """The head's prompter and LoRA weights into `model` (built with the head's config)."""
    prompter = {k[len("prompter."):]: v for k, v in tensors.items() if k.startswith("prompter.")}
    try:
        model.prompter.load_state_dict(prompter, strict=True)
        for part, adapters in model.adapters.items():
            load_lora_state(adapters, {k: v for k, v in tensors.items()
                                       if k.startswith(f"lora.{part}.")}, f"lora.{part}.")
        extra = {k.split(".")[1] for k in tensors if k.startswith("lora.")} - set(model.adapters)
        if extra:
            raise KeyError(f"adapters for {sorted(extra)} the configuration does not have")
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InputError(f"The prompter head '{os.path.basename(path)}' does not fit these "
                         f"models: {exc}") from None
