"""Building open_clip models and loading their weights safely.

`model_name` is an open_clip architecture ('ViT-B-16', 'ViT-L-14-quickgelu', ...) or a JSON file
with an open_clip model config (embed_dim, vision_cfg, text_cfg). `weights` is an open_clip
pretrained tag ('openai', downloaded by open_clip on first use), a local checkpoint file, or
'random' (untrained weights, for tests and speed measurements only).
"""
from __future__ import annotations

import json
import os
import socket
from urllib.parse import urlparse
from typing import Optional, Tuple

import torch

from .checkpoints import load_state_dict
from .errors import InputError, ModelError

DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_WEIGHTS = "openai"
RANDOM_WEIGHTS = "random"


def load_clip(model_name: str = DEFAULT_CLIP_MODEL, weights: Optional[str] = DEFAULT_CLIP_WEIGHTS,
              device: torch.device = torch.device("cpu")) -> Tuple[torch.nn.Module, object]:
    """-> (open_clip CLIP model in eval mode on `device`, tokenizer)."""
    import open_clip

    weights = weights or DEFAULT_CLIP_WEIGHTS
    local_file = os.path.isfile(str(weights))
    if str(model_name).endswith(".json"):
        path = weights if local_file or weights == RANDOM_WEIGHTS else None
        if path is None:
            raise InputError(f"A CLIP model built from a config file needs a weights file, got '{weights}'")
        model, tokenizer = _model_from_config_file(model_name)
    else:
        if model_name not in open_clip.list_models():
            raise InputError(f"Unknown CLIP model '{model_name}'. Known ViT models include: "
                             + ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-")
                                         and "-" not in m[6:]))
        quick_gelu = False
        path = weights
        if not local_file and weights != RANDOM_WEIGHTS:
            # Fetch (or find in the cache) before building: an offline failure should be quick.
            path = _download_pretrained(model_name, weights)
            quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, weights).get("quick_gelu"))
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        tokenizer = open_clip.get_tokenizer(model_name)
    if path != RANDOM_WEIGHTS:
        load_weights(model, path, f"CLIP {model_name}")
    return model.to(device).eval(), tokenizer


def load_weights(model: torch.nn.Module, path: str, what: str) -> None:
    state = load_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ModelError(f"'{path}' does not fit {what}: {detail[:200]}; check the model name") from None
    missing = [k for k in result.missing_keys if not k.endswith("logit_bias")]
    if missing or result.unexpected_keys:
        raise ModelError(f"'{path}' does not fit {what}: {len(missing)} missing and "
                         f"{len(result.unexpected_keys)} unexpected weights (e.g. "
                         f"{(missing + result.unexpected_keys)[:3]}); check the model name")


def _model_from_config_file(path: str):
    import open_clip

    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        model = open_clip.model.CLIP(**config)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"Cannot build a CLIP model from config '{path}': {exc}") from None
    context = config.get("text_cfg", {}).get("context_length", 77)
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=context)


def _download_pretrained(model_name: str, tag: str) -> str:
    import open_clip
    from open_clip.pretrained import download_pretrained

    config = open_clip.get_pretrained_cfg(model_name, tag)
    if not config:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise InputError(f"'{tag}' is neither a file nor a pretrained tag of {model_name} "
                         f"(tags: {', '.join(tags) or 'none'})")
    hub = config.get("hf_hub", "")
    source = (f"https://huggingface.co/{hub.rstrip('/')}/resolve/main/open_clip_model.safetensors"
              if hub and hub.endswith("/") else config.get("url") or hub or "?")
    advice = (f"Download {source} on a connected machine and pass the file with --clip-weights PATH "
              "(QGIS: the 'CLIP weights' field)")
    try:
        path = _cached_hub_file(hub)
        if path is None:
            host = urlparse(config["url"]).hostname if config.get("url") and not hub else "huggingface.co"
            if not _reachable(host):
                raise ModelError(f"Cannot reach {host} to download the CLIP weights {model_name}/{tag} "
                                 f"(no network?). {advice}")
            path = download_pretrained(config)
    except ModelError:
        raise
    except Exception as exc:  # network errors come in many types from huggingface_hub/urllib
        raise ModelError(f"Could not download the CLIP weights {model_name}/{tag} "
                         f"({type(exc).__name__}). {advice}") from None
    if not path or not os.path.isfile(path):
        raise ModelError(f"CLIP weights {model_name}/{tag} were not found after download ({source})")
    return path


def _cached_hub_file(hub: str) -> Optional[str]:
    """A file open_clip downloaded before, found without touching the network."""
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _reachable(host: str, timeout: float = 5.0) -> bool:
    """A quick check, so an offline machine gets the message at once rather than after retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
