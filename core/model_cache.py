"""Models loaded once per process and shared by later runs (dock, Processing, referring queries).

Loading ViT weights takes seconds; keeping them makes the second run interactive. A lock makes
concurrent Processing runs load a model once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

from .device import resolve_device

MAX_MODELS = 4  # CLIP, DINO and SAM together, plus one more
_lock = threading.RLock()
_models: "OrderedDict[Hashable, object]" = OrderedDict()


def cached(key: Hashable, build: Callable[[], object]) -> object:
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        model = build()
        _models[key] = model
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return model


def clear() -> None:
    with _lock:
        _models.clear()


def dense_clip_scorer(model_name: str, weights: str, device: str = "auto", attention: str = "segearth",
                      download_progress=None):
    """download_progress(bytes_done, bytes_total) is called while weights are downloaded."""
    from .clip_models import load_clip
    from .dense_clip import DenseClip

    torch_device = resolve_device(device)

    def build():
        model, tokenizer = load_clip(model_name, weights, torch_device, progress=download_progress)
        return DenseClip(model, tokenizer, torch_device, attention=attention)

    return cached(("dense_clip", model_name, str(weights), str(torch_device), attention), build)


# DINO architectures the CLI and the dock offer, and the catalog entry each downloads by default.
DINO_MODELS = {"dino_vits8": "dino-vit-s8", "dino_vitb8": "dino-vit-b8",
               "dinov2_vits14": "dinov2-vit-s14", "dinov2_vitb14": "dinov2-vit-b14"}


def resolve_dino_weights(dino_model: str, weights):
    """A local file for `weights` (a path or a catalog name), or for None the default catalog
    checkpoint of `dino_model` when it has been downloaded; None when DINO is not configured."""
    import os

    from .catalog import get_model
    from .download import cached_path

    if dino_model not in DINO_MODELS:
        from .errors import InputError
        raise InputError(f"Unknown DINO model '{dino_model}'; choose one of {', '.join(DINO_MODELS)}")
    if weights and os.path.isfile(str(weights)):
        return str(weights)
    name = weights or DINO_MODELS[dino_model]
    path = cached_path(get_model(name))
    if path is None and weights:
        from .errors import ModelError
        raise ModelError(f"The DINO weights '{name}' are not in the model cache; run "
                         f"`python -m drseg models download {name}` (or `models import {name} FILE`)")
    return path


def dino_backbone(dino_model: str, weights_path: str, device: str = "auto"):
    from .drseg.dino import load_dino

    torch_device = resolve_device(device)
    return cached(("dino", dino_model, str(weights_path), str(torch_device)),
                  lambda: load_dino(dino_model, weights_path, device=torch_device))


def drseg_scorer(clip_model: str, clip_weights: str, dino_model: str, dino_weights_path: str,
                 device: str = "auto", download_progress=None, **rectifier_options):
    """DR-Seg: dense CLIP + DINO structure, with the modules switched by `rectifier_options`
    (decouple, rectify, fusion, semantic_ratio, graph_k, ...). Backbones are shared via the cache;
    the light rectifier is built per call."""
    from .drseg.rectify import DrSegRectifier, DrSegScorer

    clip = dense_clip_scorer(clip_model, clip_weights, device, download_progress=download_progress)
    dino = dino_backbone(dino_model, dino_weights_path, device)
    return DrSegScorer(clip, dino, DrSegRectifier(**rectifier_options))
