"""One adaptation run, the entry point every front end calls:

    result = run_adaptation(AdaptRequest(raster=..., labels=..., class_field="landuse",
                                         out="mine.safetensors", level="finetune"),
                            progress=lambda fraction, message: ..., cancelled=lambda: False)

Chips are read and split spatially; held-out IoU is measured with the base model; calibration
runs for every level; prompt and finetune then train from it, checkpointing every
`checkpoint_seconds` (and when cancelled) next to the output, so `resume=True` continues where a
run stopped. The adapter and its report (JSON + PNG) are written only when the run completes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError, RunCancelled
from ..models.catalog import base_weights_sha256
from ..models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE
from ..outputs import check_destination
from ..progress import RunMonitor
from .adapter import Adapter, save_adapter
from .data import load_chips
from .defaults import (DEFAULT_BATCH, DEFAULT_CHIP, DEFAULT_CONTEXT_TOKENS, DEFAULT_STEPS,
                       DEFAULT_VALIDATION_SHARE, LEVELS, MAX_CONTEXT_TOKENS)
from .features import iou_report
from .report import report_paths, write_report
from .train import TrainConfig, Trainer
from ..threads import all_cores

CHECKPOINT_SECONDS = 180.0
CHECKPOINT_SUFFIX = ".checkpoint"


@dataclass
class AdaptRequest:
    raster: str
    labels: object                               # polygon file, or data.LabelFeatures
    class_field: str
    out: str
    level: str = "calibrate"
    validation_share: float = DEFAULT_VALIDATION_SHARE
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH
    lr: Optional[float] = None
    chip: int = DEFAULT_CHIP
    area: Optional[Sequence[float]] = None       # xmin, ymin, xmax, ymax in the raster's CRS
    bands: Optional[Sequence[int]] = None
    synonyms: Dict[str, List[str]] = field(default_factory=dict)  # class -> extra wordings
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    device: str = DEFAULT_DEVICE
    cache_dir: Optional[str] = None
    resume: bool = False
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    seed: int = 0
    context_tokens: int = DEFAULT_CONTEXT_TOKENS   # learned prompt context (0: none)
    class_context: bool = False                    # each seen class also learns its own context


@dataclass
class AdaptResult:
    adapter_path: str
    report_path: str
    chart_path: str
    report: Dict
    resumed_from: int = 0


def checkpoint_paths(out: str):
    return out + CHECKPOINT_SUFFIX + ".safetensors", out + CHECKPOINT_SUFFIX + ".json"


def run_adaptation(request: AdaptRequest, progress=None, cancelled=None, clip=None) -> AdaptResult:
    """clip: a DenseClip to adapt in place (tests); None loads a private copy of the model."""
    all_cores()   # this thread may have been handed one torch thread (core/threads.py)
    monitor = RunMonitor(progress, cancelled)
    if request.level not in LEVELS:
        raise InputError(f"Unknown level '{request.level}'; choose {', '.join(LEVELS)}")
    out = check_destination(_destination(request), (".safetensors",))
    if request.steps < 0 or request.batch_size < 1:
        raise InputError("Steps must be >= 0 and the batch size >= 1")
    if not 0 <= request.context_tokens <= MAX_CONTEXT_TOKENS:
        raise InputError(f"The prompt context has 0 to {MAX_CONTEXT_TOKENS} tokens")
    ckpt_tensors, ckpt_json = checkpoint_paths(out)

    chips = load_chips(request.raster, request.labels, request.class_field, request.chip,
                       request.validation_share, request.area, request.bands,
                       seed=request.seed, monitor=monitor.stage(0.0, 0.1))
    names = chips.class_names
    train_images, train_labels = chips.subset("train")
    held_images, held_labels = chips.subset("validation")
    held_out = "validation"
    if len(held_images) == 0:  # no validation share: scores are on the training chips
        held_images, held_labels, held_out = train_images, train_labels, "training (no validation share)"

    monitor.report(0.1, "Loading the CLIP model")
    if clip is None:
        clip = _private_clip(request)
    from .apply import evaluate_chips
    from .calibrate import calibrate

    before = evaluate_chips(clip, None, held_images, held_labels, names)
    monitor.report(0.12, f"Before: held-out mIoU {100 * np.nanmean(before):.1f}")
    fitted = calibrate(clip, train_images, train_labels, names, request.synonyms,
                       monitor=monitor.stage(0.12, 0.2))
    sha = base_weights_sha256(request.clip_model, request.clip_weights)
    resumed_from = 0
    if request.level == "calibrate":
        adapter = Adapter("calibrate", request.clip_model, str(request.clip_weights), names,
                          fitted["prompts"], fitted["bias_lambda"], sha)
    else:
        config = TrainConfig(level=request.level, steps=request.steps,
                             batch_size=request.batch_size, lr=request.lr, seed=request.seed,
                             context_tokens=request.context_tokens,
                             class_context=request.class_context)
        trainer = Trainer(clip, train_images, train_labels, names, fitted["prompts"],
                          fitted["bias_lambda"], config)
        identity = {"level": request.level, "classes": names, "clip_model": request.clip_model,
                    "clip_weights": str(request.clip_weights), "config": asdict(config)}
        if request.resume:
            resumed_from = _load_checkpoint(trainer, identity, ckpt_tensors, ckpt_json)
        _train(trainer, config, identity, monitor.stage(0.2, 0.95), ckpt_tensors, ckpt_json,
               request.checkpoint_seconds, resumed_from)
        adapter = trainer.adapter(request.clip_model, str(request.clip_weights), sha)

    after = evaluate_chips(clip, adapter, held_images, held_labels, names)
    report = {"level": request.level, "classes": names, "held_out": held_out,
              "train_chips": len(chips.train), "validation_chips": len(chips.validation),
              "chip": request.chip, "before": iou_report(before, names),
              "after": iou_report(after, names), "steps": request.steps if request.level != "calibrate" else 0,
              "bias_lambda": adapter.bias_lambda,
              "prompts": {n: vars(p) for n, p in adapter.prompts.items()}}
    adapter.metrics = {k: report[k] for k in ("held_out", "before", "after", "train_chips",
                                               "validation_chips")}
    monitor.check()  # last chance to cancel before anything appears under the output name
    save_adapter(adapter, out)
    json_path, png_path = report_paths(out)
    write_report(report, json_path, png_path)
    for path in (ckpt_tensors, ckpt_json):
        if os.path.exists(path):
            os.remove(path)
    monitor.report(1.0, f"Held-out mIoU {report['before']['mIoU']:.1f} -> {report['after']['mIoU']:.1f}")
    return AdaptResult(out, json_path, png_path, report, resumed_from)


def _destination(request: AdaptRequest) -> str:
    """The output path; a bare name goes into the model cache's adapters (a catalog entry)."""
    from ..models.download import writable_cache
    from .catalog import destination

    out = destination(request.out, request.cache_dir)
    if out != request.out:
        writable_cache(os.path.dirname(out))
    return out


def _private_clip(request: AdaptRequest):
    """A CLIP model of our own (training changes its weights: never the shared cached one)."""
    from ..dense_clip import DenseClip
    from ..device import as_device
    from ..models.clip import load_clip

    device = as_device(request.device)
    model, tokenizer = load_clip(request.clip_model, request.clip_weights, device,
                                 cache_dir=request.cache_dir)
    return DenseClip(model, tokenizer, device)


def _train(trainer: Trainer, config: TrainConfig, identity, monitor: RunMonitor, ckpt_tensors,
           ckpt_json, every_seconds: float, start: int) -> None:
    last_save = time.monotonic()
    step = start
    try:
        for step in range(start, config.steps):
            monitor.check()
            parts = trainer.step(step)
            text = ", ".join(f"{k} {v:.4f}" for k, v in parts.items())
            monitor.report((step + 1) / max(config.steps, 1), f"Step {step + 1}/{config.steps}: {text}")
            if time.monotonic() - last_save >= every_seconds:
                _save_checkpoint(trainer, identity, ckpt_tensors, ckpt_json)
                last_save = time.monotonic()
    except (RunCancelled, KeyboardInterrupt):
        if trainer.done > start:
            _save_checkpoint(trainer, identity, ckpt_tensors, ckpt_json)
        raise


def _save_checkpoint(trainer: Trainer, identity, ckpt_tensors, ckpt_json) -> None:
    from safetensors.torch import save_file

    save_file(trainer.state(), ckpt_tensors + ".part")
    os.replace(ckpt_tensors + ".part", ckpt_tensors)
    with open(ckpt_json + ".part", "w", encoding="utf-8") as handle:
        json.dump({"done": trainer.done, **identity}, handle)
    os.replace(ckpt_json + ".part", ckpt_json)


def _load_checkpoint(trainer: Trainer, identity, ckpt_tensors, ckpt_json) -> int:
    """-> the number of steps already done (0 when there is no checkpoint to resume)."""
    from safetensors.torch import load_file

    if not (os.path.isfile(ckpt_tensors) and os.path.isfile(ckpt_json)):
        return 0
    try:
        with open(ckpt_json, encoding="utf-8") as handle:
            saved = json.load(handle)
        tensors = load_file(ckpt_tensors)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot resume: the checkpoint '{ckpt_tensors}' is damaged ({exc}); "
                         "delete it to start again") from None
    done = int(saved.pop("done", 0))
    saved["config"].pop("steps", None)
    expected = json.loads(json.dumps(identity))
    expected["config"].pop("steps", None)
    if saved != expected:
        raise InputError(f"Cannot resume: the checkpoint '{ckpt_json}' belongs to another run "
                         "(level, classes, model or settings differ); delete it to start again")
    trainer.load_state(tensors, done)
    return done
