"""Training a referring head from a data set or QGIS labels: the engine entry point the CLI uses.

    result = run_training(TrainingRequest(dataset="RefSegRS", root="/data/RefSegRS",
                                          out="head.safetensors", epochs=20),
                          progress=..., cancelled=...)

The base models are loaded fresh (not through the shared cache: training adapts them in place),
their identity is recorded in the head (``head.base_metadata``), and ``train.train_prompter``
runs. ``dataset="labels"`` reads a raster and a polygon layer with an ``expression`` field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import InputError
from ..models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                               DEFAULT_SAM_MODEL)
from .prompter import PromptedSegmenter, PrompterConfig
from .train import TrainConfig, TrainResult, train_prompter
from ..threads import all_cores

LABELS_SOURCE = "labels"
TRAINING_SOURCES = ("RRSIS-D", "RefSegRS", "RISBench", LABELS_SOURCE)


@dataclass
class TrainingRequest:
    dataset: str                               # one of TRAINING_SOURCES
    out: str                                   # the head file (.safetensors)
    root: Optional[str] = None                 # the data set's folder
    split: str = "train"
    val_split: Optional[str] = "val"           # scored after each epoch when it exists
    raster: Optional[str] = None               # labels: the raster ...
    labels: Optional[str] = None               # ... and the polygon layer
    sam_model: str = DEFAULT_SAM_MODEL
    sam_weights: Optional[str] = None
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    device: str = DEFAULT_DEVICE
    cache_dir: Optional[str] = None
    resume: bool = False
    prompter: PrompterConfig = field(default_factory=PrompterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def training_samples(request: TrainingRequest):
    """(train samples, validation samples or None)."""
    from .train_data import samples_from_dataset, samples_from_labels

    if request.dataset == LABELS_SOURCE:
        if not request.raster or not request.labels:
            raise InputError("Training from labels needs --raster and --labels")
        return samples_from_labels(request.raster, request.labels), None
    if request.dataset not in TRAINING_SOURCES:
        raise InputError(f"Unknown training source '{request.dataset}'; expected one of "
                         f"{', '.join(TRAINING_SOURCES)}")
    if not request.root:
        raise InputError(f"Training on {request.dataset} needs --root (the data set's folder)")
    train = samples_from_dataset(request.dataset, request.root, request.split)
    val = None
    if request.val_split:
        try:
            val = samples_from_dataset(request.dataset, request.root, request.val_split)
        except InputError:                   # no validation split: score the training samples
            val = None
    return train, val


def run_training(request: TrainingRequest, progress=None, cancelled=None, clip=None, sam=None
                 ) -> TrainResult:
    """clip: (open_clip model, tokenizer) and sam: a segment_anything Sam, given (tests, the
    GPU check) or None: loaded from the request."""
    all_cores()   # this thread may have been handed one torch thread (core/threads.py)
    from ..device import resolve_device
    from ..models.catalog import base_weights_sha256
    from ..outputs import check_destination
    from .head import base_metadata

    out = check_destination(request.out, (".safetensors",))
    train, val = training_samples(request)
    device = resolve_device(request.device)
    if clip is None:
        from ..models.clip import load_clip

        clip = load_clip(request.clip_model, request.clip_weights, device,
                         cache_dir=request.cache_dir)
    if sam is None:
        from ..models.sam import load_sam

        sam = load_sam(request.sam_model, request.sam_weights, device, cache_dir=request.cache_dir)
    clip_model, tokenizer = clip
    base = base_metadata(clip_model, sam, request.clip_model, request.sam_model,
                         base_weights_sha256(request.clip_model, request.clip_weights),
                         base_weights_sha256(request.sam_model, request.sam_weights, "sam"))
    base.update(clip_weights=str(request.clip_weights or ""),
                sam_weights=str(request.sam_weights or ""))
    model = PromptedSegmenter(clip_model.to(device), tokenizer, sam.to(device), request.prompter)
    return train_prompter(model, train, val, request.train, out_path=out, base=base,
                          resume=request.resume, progress=progress, cancelled=cancelled)
