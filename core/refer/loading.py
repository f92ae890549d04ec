"""The models of a referring run: SAM and the dense CLIP localizer, given by the caller or
loaded through the shared loaders and their process-wide cache."""
from __future__ import annotations

import weakref
from typing import Optional

from ..models.registry import CLIP_LIBRARIES, SAM3_LIBRARIES, SAM_LIBRARIES
from ..progress import RunMonitor
from .request import ReferringRequest

_LOCALIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def localizer_for(clip):
    """One ``Localizer`` per dense CLIP model (it keeps the text-embedding cache); an object that
    already localises (``localize`` method) is returned as is."""
    if hasattr(clip, "localize"):
        return clip
    from .localize import Localizer

    try:
        localizer = _LOCALIZERS.get(clip)
        if localizer is None:
            localizer = _LOCALIZERS[clip] = Localizer(clip)
        return localizer
    except TypeError:                        # not weak-referenceable
        return Localizer(clip)


def model_libraries(request: ReferringRequest):
    """-> the modules the request's models import (torch first), for a front end to import ahead
    in its worker thread (nothing is imported here)."""
    if request.engine == "sam3":
        return SAM3_LIBRARIES
    return CLIP_LIBRARIES + SAM_LIBRARIES


def load_models(request: ReferringRequest, sam=None, clip=None, monitor: Optional[RunMonitor] = None):
    """-> (sam, localizer, device name): the given ones, or the request's through the model cache.
    For request.engine 'sam3', `sam` is the SAM 3 scorer and the second model is not a localizer
    but SAM 3's click head (`clip` when given, else loaded with the scorer; for weights without a
    tracker part, `Sam1Clicks` with the request's SAM, loaded at the first click; None when a
    given scorer comes without one)."""
    from ..device import resolve_device
    from ..errors import InputError
    from ..models.registry import REFER_ENGINE_CHOICES

    device = resolve_device(request.device)
    if request.engine not in REFER_ENGINE_CHOICES:
        raise InputError(f"Unknown referring engine '{request.engine}'; choose one of "
                         f"{', '.join(REFER_ENGINE_CHOICES)}")

    def downloading(what):
        def report(done, total):
            if monitor is not None:
                monitor.report(0.0, f"Downloading {what} weights: {done / 2 ** 20:.0f}"
                                    + (f" of {total / 2 ** 20:.0f} MB" if total else " MB"))
        return report

    cache_dir = request.cache_dir
    if cache_dir is None and (sam is None or clip is None):
        from ..models.download import resolve_cache_dir

        cache_dir = resolve_cache_dir()  # once for both models
    if request.engine == "sam3":
        if sam is None:
            from ..models.shared import sam3_click_head, sam3_scorer

            sam = sam3_scorer(request.sam3_model, request.sam3_weights, str(device),
                              download_progress=downloading("SAM 3"), cache_dir=cache_dir)
            if clip is None:
                clip = sam3_click_head(request.sam3_model, request.sam3_weights, str(device),
                                       cache_dir=cache_dir)
            if clip is None:                 # weights without the tracker: SAM decodes clicks
                from ..models.shared import sam_model
                from .sam3_refer import Sam1Clicks

                from ..models.cache import cached

                clip = cached(("sam1-clicks", request.sam_model, request.sam_weights, str(device),
                               cache_dir),      # one object: the session cache keys on it
                              lambda: Sam1Clicks(lambda: sam_model(
                                  request.sam_model, request.sam_weights, str(device),
                                  cache_dir=cache_dir)))
        return sam, clip, str(device)
    if sam is None:
        from ..models.shared import sam_model

        sam = sam_model(request.sam_model, request.sam_weights, str(device),
                        download_progress=downloading("SAM"), cache_dir=cache_dir)
    if clip is None:
        from ..models.shared import dense_clip_scorer

        clip = dense_clip_scorer(request.clip_model, request.clip_weights, str(device),
                                 download_progress=downloading("CLIP"), cache_dir=cache_dir)
    return sam, localizer_for(clip), str(device)


_PROMPTERS: dict = {}


def learned_prompter(request: ReferringRequest, sam, localizer):
    """The request's trained head on these models (cached per head file and models), or None
    without ``request.prompter``."""
    if not request.prompter:
        return None
    import os

    from ..errors import InputError
    from .learned import LearnedPrompter

    if request.engine == "sam3":
        raise InputError("A trained prompter head works with the CLIP + SAM engine, not SAM 3: "
                         "choose one or the other")
    clip = getattr(localizer, "clip", localizer)
    clip_model, tokenizer = getattr(clip, "model", None), getattr(clip, "tokenizer", None)
    if clip_model is None or tokenizer is None or not hasattr(sam, "image_encoder"):
        raise InputError("A prompter head needs an open_clip CLIP model and a segment_anything SAM")
    path = os.path.abspath(request.prompter)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None
    key = (path, stamp, id(clip_model), id(sam))
    if key not in _PROMPTERS:
        _PROMPTERS.clear()                   # one head at a time: each holds model copies
        _PROMPTERS[key] = LearnedPrompter.from_file(path, clip_model, tokenizer, sam)
    return _PROMPTERS[key]
