"""Models loaded once per process and shared by later runs (dock, Processing, referring queries).

Each function resolves what it can cheaply (device, weights file), then asks the model cache
(`cache.MODELS`, one lock per model) for the loaded model, loading it on the first call:

    dense_clip_scorer(clip_model, clip_weights, device)   # DenseClip around `load_clip`
    dino_backbone(dino_model, weights_path, device)       # `load_dino`
    drseg_scorer(..., **rectifier_options)               # both, plus a light rectifier per call
    sam_model(sam_model, sam_weights, device)             # `load_sam`
    sam3_scorer(sam3_model, sam3_weights, device)         # `load_sam3` in a Sam3Scorer (its
                                                          # per-tile image features live on)
    sam3_click_head(sam3_model, sam3_weights, device)     # SAM 3's tracker head for clicks

cache_dir / mirror: the model cache folder and mirror as the front end resolved them once per
run (`settings.resolve`); None resolves them here.

Every load checks the run's cancel at a fine grain (`interrupt.cancellable_loading`); a cancelled
load raises RunCancelled and leaves nothing in the cache.
"""
from __future__ import annotations

from typing import Optional

from ..interrupt import cancellable_loading
from .cache import MODELS
from .registry import DEFAULT_DEVICE, DEFAULT_SAM3_MODEL, DEFAULT_SAM_MODEL


def cached(key, build):
    """The model cached under `key`, else `build()`'s, built cancellably and then cached."""
    def cancellable_build():
        with cancellable_loading():
            return build()

    return MODELS.get(key, cancellable_build)


def dense_clip_scorer(model_name: str, weights: str, device: str = DEFAULT_DEVICE,
                      attention: str = "segearth", download_progress=None,
                      cache_dir: Optional[str] = None, mirror: Optional[str] = None):
    """download_progress(bytes_done, bytes_total) is called while weights are downloaded."""
    from ..dense_clip import DenseClip
    from ..device import as_device
    from .clip import load_clip

    torch_device = as_device(device)

    def build():
        model, tokenizer = load_clip(model_name, weights, torch_device, cache_dir=cache_dir,
                                     mirror=mirror, progress=download_progress)
        return DenseClip(model, tokenizer, torch_device, attention=attention)

    return cached(("dense_clip", model_name, str(weights), str(torch_device), attention), build)


def dino_backbone(dino_model: str, weights_path: str, device: str = DEFAULT_DEVICE):
    """The DINO backbone of `dino_model` with the checkpoint file `weights_path`."""
    from ..device import as_device
    from .dino import load_dino

    torch_device = as_device(device)
    return cached(("dino", dino_model, str(weights_path), str(torch_device)),
                  lambda: load_dino(dino_model, weights_path, torch_device))


def drseg_scorer(clip_model: str, clip_weights: str, dino_model: str, dino_weights_path: str,
                 device: str = DEFAULT_DEVICE, download_progress=None,
                 cache_dir: Optional[str] = None, mirror: Optional[str] = None,
                 **rectifier_options):
    """DR-Seg: dense CLIP + DINO structure, with the modules switched by `rectifier_options`
    (decouple, rectify, fusion, semantic_ratio, graph_k, ...). Backbones are shared via the cache;
    the light rectifier is built per call."""
    from ..drseg.rectify import DrSegRectifier, DrSegScorer

    clip = dense_clip_scorer(clip_model, clip_weights, device, download_progress=download_progress,
                             cache_dir=cache_dir, mirror=mirror)
    dino = dino_backbone(dino_model, dino_weights_path, device)
    return DrSegScorer(clip, dino, DrSegRectifier(**rectifier_options))


def sam_model(model_type: Optional[str] = DEFAULT_SAM_MODEL, weights: Optional[str] = None,
              device: str = DEFAULT_DEVICE, download_progress=None,
              cache_dir: Optional[str] = None, mirror: Optional[str] = None):
    """`load_sam` through the process-wide model cache (one load per process and device)."""
    from ..device import as_device
    from .sam import load_sam, resolve_sam_weights

    torch_device = as_device(device)
    key_type, path = resolve_sam_weights(model_type, weights, cache_dir, download_progress, mirror)
    return cached(("sam", key_type, str(path), str(torch_device)),
                  lambda: load_sam(key_type, path, torch_device))


def sam3_scorer(model_name: Optional[str] = DEFAULT_SAM3_MODEL, weights: Optional[str] = None,
                device: str = DEFAULT_DEVICE, download_progress=None,
                cache_dir: Optional[str] = None, mirror: Optional[str] = None):
    """The SAM 3 window scorer, one per process, model and device: later runs over the same area
    reuse the image features it keeps per tile."""
    from ..device import as_device
    from ..sam3_engine import Sam3Scorer
    from .sam3 import load_sam3, resolve_sam3_weights

    torch_device = as_device(device)
    name, path = resolve_sam3_weights(model_name, weights, cache_dir, download_progress, mirror)
    return cached(("sam3", name, str(path), str(torch_device)),
                  lambda: Sam3Scorer(load_sam3(name, path, torch_device), torch_device))


def sam3_click_head(model_name: Optional[str] = DEFAULT_SAM3_MODEL, weights: Optional[str] = None,
                    device: str = DEFAULT_DEVICE, download_progress=None,
                    cache_dir: Optional[str] = None, mirror: Optional[str] = None):
    """SAM 3's click head (tracker neck, prompt encoder, mask decoder) from the same weights as
    `sam3_scorer`; None when those weights have no tracker part."""
    from ..device import as_device
    from .sam3 import resolve_sam3_weights
    from .sam3_clicks import load_sam3_clicks

    torch_device = as_device(device)
    name, path = resolve_sam3_weights(model_name, weights, cache_dir, download_progress, mirror)
    return cached(("sam3-clicks", name, str(path), str(torch_device)),
                  lambda: load_sam3_clicks(name, path, torch_device))
