"""Models loaded once per process and shared by later runs (dock, Processing, referring queries).

Loading ViT weights takes seconds; keeping them makes the second run interactive. A lock makes
concurrent Processing runs load a model once.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

from .device import resolve_device

MAX_MODELS = 3
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
