"""Training the referring prompter and LoRA adapters (RSRefSeg 2's recipe on our models).

    result = train_prompter(model, train_samples, val_samples, TrainConfig(epochs=10),
                            out_path="head.safetensors", base=base_metadata(...),
                            progress=lambda f, msg: ..., cancelled=lambda: False)

Loss: BCE + Dice on the mask logits (+ a small penalty keeping the K text queries'
subspaces complementary). AdamW (lr 1e-4, constant or cosine-decayed) on the prompter and the
adapters only. On CUDA the forward runs under float16 autocast with a GradScaler; on the CPU in
float32.

After each epoch the samples of `val` (else of `train`) are segmented and scored with both IoU
conventions (gIoU: mean per-sample IoU; cIoU: cumulative I/U), and the resume state is written
next to the output: ``<out>.resume.safetensors`` (trainable weights and the optimizer's tensors)
and ``<out>.resume.json`` (epoch, history, optimizer and scaler settings). ``resume=True``
continues from it. The head file is written (whole, then renamed) when training ends; a
cancelled run (RunCancelled) leaves the last epoch's resume state and no head.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..progress import RunMonitor
from .head import head_tensors, load_head_into, save_head
from .prompter import PromptedSegmenter
from .train_data import TrainingSample, make_batch

DEFAULT_LEARNING_RATE = 1e-4
RESUME_FORMAT = "drseg-referring-resume/1"


@dataclass
class TrainConfig:
    """size: the batches' square side (None: SAM's input size); orthogonality: weight of the
    text-query penalty; eval_limit: at most this many samples scored per epoch; schedule:
    "constant" learning rate, or "cosine" decay from `lr` to zero over all the steps."""

    epochs: int = 10
    batch_size: int = 4
    lr: float = DEFAULT_LEARNING_RATE
    weight_decay: float = 0.01
    size: Optional[int] = None
    orthogonality: float = 0.01
    seed: int = 0
    eval_limit: int = 500
    eval_every: int = 1            # epochs between evaluations (the last epoch is always scored)
    schedule: str = "constant"


@dataclass
class TrainResult:
    head_path: str
    history: List[Dict] = field(default_factory=list)   # per epoch: loss, gIoU, cIoU, seconds
    epochs_run: int = 0
    resumed_from: int = 0


SCHEDULES = ("constant", "cosine")


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of global step `step` (0-based) of `total` (a function of the step
    alone, so a resumed run continues the same curve)."""
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    return config.lr


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice, both averaged over the batch."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    prob = torch.sigmoid(logits).flatten(1)
    target = masks.flatten(1)
    dice = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(1) + target.sum(1) + 1)
    return bce + dice.mean()


@torch.no_grad()
def evaluate_prompter(model: PromptedSegmenter, samples: Sequence[TrainingSample],
                      size: int, batch_size: int = 8) -> Dict:
    """gIoU and cIoU (percent) of the model's masks (probability > 0.5) on `samples`, each
    compared at its own resolution."""
    from ..evaluation.metrics import ReferAccumulator
    from .learned import MASK_THRESHOLD

    was_training = model.training
    model.eval()
    accumulator = ReferAccumulator()
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        images, _, texts = make_batch(chunk, size, model.device)
        with _autocast(model.device):
            logits = model(images, texts)
        for sample, logit in zip(chunk, logits):
            _, mask = sample.load()
            prob = torch.sigmoid(F.interpolate(logit[None].float(), size=mask.shape,
                                               mode="bilinear", align_corners=False))[0, 0]
            accumulator.update(mask, (prob > MASK_THRESHOLD).cpu().numpy())
    model.train(was_training)
    metrics = accumulator.compute()
    return {"gIoU": metrics["gIoU"], "cIoU": metrics["cIoU"]}


def _autocast(device: torch.device):
    enabled = torch.device(device).type == "cuda"
    return torch.autocast(device_type="cuda" if enabled else "cpu", dtype=torch.float16,
                          enabled=enabled)


def resume_paths(out_path: str):
    return out_path + ".resume.safetensors", out_path + ".resume.json"


def _save_resume(out_path, model, optimizer, scaler, epoch, history, config):
    from safetensors.torch import save_file

    tensors_path, json_path = resume_paths(out_path)
    tensors = {f"model.{k}": v for k, v in head_tensors(model).items()}
    params = list(model.trainable_parameters())
    index = {id(p): i for i, p in enumerate(params)}
    scalars = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            name = f"optim.{index[id(p)]}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().float().contiguous().cpu()
            else:
                scalars[name] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state = {"format": RESUME_FORMAT, "epoch": epoch, "history": history,
             "train_config": asdict(config), "prompter_config": model.config.as_dict(),
             "param_groups": groups, "optimizer_scalars": scalars,
             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
             "parameters": len(params)}
    for path, write in ((tensors_path, lambda tmp: save_file(tensors, tmp)),
                        (json_path, lambda tmp: open(tmp, "w", encoding="utf-8").write(
                            json.dumps(state, indent=1)))):
        tmp = path + ".part"
        write(tmp)
        os.replace(tmp, path)


def _load_resume(out_path, model, optimizer, scaler):
    from safetensors.torch import load_file

    tensors_path, json_path = resume_paths(out_path)
    if not (os.path.isfile(tensors_path) and os.path.isfile(json_path)):
        raise InputError(f"Nothing to resume: {os.path.basename(json_path)} and "
                         f"{os.path.basename(tensors_path)} are not next to '{out_path}'")
    try:
        with open(json_path, encoding="utf-8") as handle:
            state = json.load(handle)
        tensors = load_file(tensors_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot read the resume state of '{out_path}': {exc}") from None
    if state.get("format") != RESUME_FORMAT:
        raise InputError(f"'{json_path}' is not a DR-Seg training state")
    if state.get("prompter_config") != model.config.as_dict():
        raise InputError("The resume state was made with another prompter configuration "
                         f"({state.get('prompter_config')}); start a new training instead")
    load_head_into(model, {k[len("model."):]: v for k, v in tensors.items()
                           if k.startswith("model.")}, tensors_path)
    params = list(model.trainable_parameters())
    if state.get("parameters") != len(params):
        raise InputError("The resume state does not fit this model's trainable parameters")
    for group, saved in zip(optimizer.param_groups, state.get("param_groups", [])):
        group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})
    per_param: Dict[int, Dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            # AdamW keeps its step count on the CPU
            where = "cpu" if key == "step" else params[int(i)].device
            per_param.setdefault(int(i), {})[key] = value.to(where)
    for name, value in state.get("optimizer_scalars", {}).items():
        _, i, key = name.split(".", 2)
        per_param.setdefault(int(i), {})[key] = value
    for i, values in per_param.items():
        optimizer.state[params[i]] = values
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), list(state.get("history", []))


def train_prompter(model: PromptedSegmenter, train: Sequence[TrainingSample],
                   val: Optional[Sequence[TrainingSample]] = None,
                   config: TrainConfig = TrainConfig(), *, out_path: str,
                   base: Optional[Dict[str, str]] = None, resume: bool = False,
                   progress=None, cancelled=None) -> TrainResult:
    """Train `model`'s prompter and adapters (module doc); -> TrainResult with the head's path."""
    if not train:
        raise InputError("No training samples")
    if config.epochs < 1 or config.batch_size < 1:
        raise InputError("epochs and batch size must be at least 1")
    if config.schedule not in SCHEDULES:
        raise InputError(f"Unknown learning-rate schedule '{config.schedule}'; choose "
                         f"{' or '.join(SCHEDULES)}")
    monitor = RunMonitor(progress, cancelled)
    device = model.device
    size = int(config.size or model.sam_size)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    start_epoch, history = 0, []
    if resume:
        start_epoch, history = _load_resume(out_path, model, optimizer, scaler)
    source = val if val else train   # indexed, never listed whole: a lazy set may be large
    scored = [source[i] for i in range(min(len(source), config.eval_limit))]
    steps_per_epoch = (len(train) + config.batch_size - 1) // config.batch_size
    total = max(1, (config.epochs - start_epoch) * steps_per_epoch)
    done = 0
    model.train()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order = np.random.default_rng(config.seed + epoch).permutation(len(train))
        losses = []
        for step in range(steps_per_epoch):
            monitor.check()
            chunk = [train[i] for i in order[step * config.batch_size:(step + 1) * config.batch_size]]
            images, masks, texts = make_batch(chunk, size, device)
            with _autocast(device):
                logits = model(images, texts)
            loss = mask_loss(logits, masks)
            if config.orthogonality > 0:
                loss = loss + config.orthogonality * model.prompter.orthogonality()
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + step,
                                            config.epochs * steps_per_epoch)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            done += 1
            monitor.report(done / total, f"Epoch {epoch + 1}/{config.epochs}, step {step + 1}/"
                                         f"{steps_per_epoch}: loss {losses[-1]:.3f}")
        metrics = {"gIoU": None, "cIoU": None}
        if (epoch + 1) % max(1, config.eval_every) == 0 or epoch + 1 == config.epochs:
            metrics = evaluate_prompter(model, scored, size, max(config.batch_size, 8))
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics,
                  "scored_on": "val" if val else "train",
                  "seconds": round(time.perf_counter() - started, 2)}
        history.append(record)
        scores = (f", gIoU {metrics['gIoU']:.1f}, cIoU {metrics['cIoU']:.1f}"
                  if metrics["gIoU"] is not None else "")
        monitor.say(f"Epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.3f}{scores}")
        _save_resume(out_path, model, optimizer, scaler, epoch + 1, history, config)
    model.eval()
    save_head(out_path, model, base or {}, {"epochs": config.epochs, "history": history,
                                            "train_samples": len(train)})
    return TrainResult(out_path, history, config.epochs - start_epoch, start_epoch)
