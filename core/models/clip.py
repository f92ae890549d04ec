"""Building open_clip models and loading their weights safely.

    clip = load_clip(model_name, weights, device)      # -> LoadedClip(model, tokenizer)

`model_name` is an open_clip architecture (the registry's DEFAULT_CLIP_MODEL, 'ViT-L-14-quickgelu',
...) or a JSON file with an open_clip model config (embed_dim, vision_cfg, text_cfg). `weights`
is a checkpoint file, a model-catalog name, an open_clip pretrained tag (DEFAULT_CLIP_WEIGHTS),
or 'random' (untrained weights, for tests and speed measurements only).

OpenAI's CLIP weights were trained with QuickGELU; built with plain GELU they run, but wrongly.
Catalog entries say which need it (`quick_gelu`); a checkpoint *file* whose SHA-256 is the one an
entry publishes gets that entry's settings too, and `<model>-quickgelu` names force it, as in
open_clip.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from urllib.parse import urlparse
from typing import NamedTuple, Optional, Union

import torch

from ..advice import file_advice, in_qgis
from ..errors import InputError, ModelError
from ..interrupt import check_cancel
from .checkpoints import load_into, load_state_dict
from .download import ensure_cached, server_reachable, sha256_of
from .registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, QUICKGELU_SUFFIX, RANDOM_WEIGHTS


class LoadedClip(NamedTuple):
    """An open_clip CLIP model in eval mode and its tokenizer (unpacks as `model, tokenizer`)."""

    model: torch.nn.Module
    tokenizer: object


def load_clip(model_name: str = DEFAULT_CLIP_MODEL, weights: Optional[str] = DEFAULT_CLIP_WEIGHTS,
              device: Union[str, torch.device] = "cpu", *, cache_dir: Optional[str] = None,
              mirror: Optional[str] = None, progress=None) -> LoadedClip:
    """-> LoadedClip(open_clip CLIP model in eval mode on `device`, tokenizer).

    weights: a checkpoint file, a catalog name ('remoteclip-vit-b-32', see `python -m drseg
    models list`), an open_clip pretrained tag of `model_name`, or 'random'; None: the default.
    Catalog weights are downloaded once into the model cache, verified, and reused.
    device: a torch.device or a name ('auto', 'cpu', 'cuda', ...). cache_dir, mirror: as resolved
    by the caller (None: `settings.resolve`). progress(bytes_done, bytes_total) follows a download.
    """
    import open_clip

    from ..device import as_device

    torch_device = as_device(device)
    weights = weights or DEFAULT_CLIP_WEIGHTS
    is_file = os.path.isfile(str(weights))
    if not is_file and looks_like_path(str(weights)):
        raise InputError(f"CLIP weights file not found: {weights}")
    key, prefixes, quick_gelu = None, ("module.",), False
    known_file = identify_checkpoint(weights) if is_file else None
    if known_file is not None:
        key, prefixes = known_file.key, tuple(known_file.strip_prefixes)
        quick_gelu = bool(known_file.quick_gelu)
    if str(model_name).endswith(".json"):
        if not (is_file or weights == RANDOM_WEIGHTS):
            raise InputError(f"A CLIP model built from a config file needs a weights file, got '{weights}'")
        path = weights
        model, tokenizer = _model_from_config_file(model_name, quick_gelu)
    else:
        quick_gelu = quick_gelu or str(model_name).endswith(QUICKGELU_SUFFIX)
        entry = None if is_file or weights == RANDOM_WEIGHTS else catalog_entry(model_name, weights)
        if entry is None and known_file is not None:
            model_name = known_file.architecture  # the file is known: build what it holds
        if entry is not None:
            model_name, key, prefixes = entry.architecture, entry.key, tuple(entry.strip_prefixes)
            quick_gelu = quick_gelu or bool(entry.quick_gelu)
        if model_name not in open_clip.list_models():
            raise InputError(f"Unknown CLIP model '{model_name}'. Known ViT models include: "
                             + ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-")
                                         and "-" not in m[6:]))
        path = weights
        if entry is not None:
            path = ensure_cached(entry, "CLIP weights", "--clip-weights", "CLIP weights",
                                 cache_dir, progress, mirror)
        elif not is_file and weights != RANDOM_WEIGHTS:
            # Fetch (or find in the cache) before building: an offline failure should be quick.
            path = _download_pretrained(model_name, weights)
            quick_gelu = quick_gelu or bool(
                open_clip.get_pretrained_cfg(model_name, weights).get("quick_gelu"))
        with quiet_open_clip():  # we load the weights ourselves, right after
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
        tokenizer = open_clip.get_tokenizer(model_name)
    if path != RANDOM_WEIGHTS:
        state = load_state_dict(path, key=key, strip_prefixes=prefixes)
        load_into(model, state, f"CLIP {model_name} ('{os.path.basename(str(path))}')",
                  ignore_missing=("logit_bias",))
    return LoadedClip(model.to(torch_device).eval(), tokenizer)


class _NoPretrainedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def quiet_open_clip():
    """Hide open_clip's 'No pretrained weights loaded ... initialized randomly' warning, which it
    logs on the root logger whenever a model is built without its own download."""
    quiet = _NoPretrainedWarning()
    loggers = [logging.getLogger(), logging.getLogger("open_clip")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


# Endings of checkpoint files: a weights value with one of these (or a folder in it) is a path.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(weights: str) -> bool:
    """A weights value meant as a file (not a pretrained tag or catalog name)."""
    return ("/" in weights or os.sep in weights or weights.startswith("~")
            or weights.lower().endswith(CHECKPOINT_SUFFIXES))


def catalog_entry(model_name: str, weights: str):
    """The catalog entry meant by `weights`: its own name, or 'clip-<model>-<tag>' (an open_clip
    tag the catalog mirrors); `<model>-quickgelu` means the same weights as `<model>`."""
    from .catalog import list_models

    entries = {entry.name.lower(): entry for entry in list_models("clip")}
    architecture = str(model_name).lower()
    if architecture.endswith(QUICKGELU_SUFFIX):
        architecture = architecture[:-len(QUICKGELU_SUFFIX)]
    for candidate in (str(weights).lower(), f"clip-{architecture}-{str(weights).lower()}"):
        if candidate in entries:
            return entries[candidate]
    return None


_FILE_DIGESTS = {}


def identify_checkpoint(path: str):
    """The CLIP catalog entry whose published SHA-256 the file at `path` has, else None.

    Hashing reads the whole file (seconds for ViT-B weights), so digests are remembered per
    (path, size, modification time), and nothing is read while no entry publishes a hash."""
    from .catalog import list_models

    known = [entry for entry in list_models("clip") if entry.sha256]
    if not known:
        return None
    stat = os.stat(path)
    stamp = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if stamp not in _FILE_DIGESTS:
        # check_cancel raises when the run is cancelled; else None, i.e. not cancelled
        _FILE_DIGESTS[stamp] = sha256_of(path, cancelled=lambda: check_cancel() or False)
    digest = _FILE_DIGESTS[stamp]
    return next((entry for entry in known if entry.sha256.lower() == digest), None)


def _model_from_config_file(path: str, quick_gelu: bool = False):
    import open_clip

    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        if quick_gelu:
            config = dict(config, quick_gelu=True)
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
    if config.get("quick_gelu") and not model_name.endswith(QUICKGELU_SUFFIX):
        # A plain file is built with GELU; these weights need QuickGELU, so say how to keep it.
        if in_qgis():
            advice = (f"Download {source} on a connected machine, choose it as 'CLIP weights' and "
                      f"{model_name}{QUICKGELU_SUFFIX} as 'CLIP model' (these weights need "
                      "QuickGELU)")
        else:
            advice = (f"Download {source} on a connected machine and pass it with --clip-model "
                      f"{model_name}{QUICKGELU_SUFFIX} --clip-weights PATH (these weights need "
                      "QuickGELU)")
    else:
        advice = (f"Download {source} on a connected machine and "
                  f"{file_advice('--clip-weights', 'CLIP weights')}")
    try:
        path = _cached_hub_file(hub)
        if path is None:
            url = config["url"] if config.get("url") and not hub else "https://huggingface.co"
            host = urlparse(url).hostname
            if not server_reachable(url):
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
