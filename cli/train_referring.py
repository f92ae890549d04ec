"""`python -m drseg train-referring --dataset RRSIS-D|RefSegRS|RISBench|labels --root DIR
--out head.safetensors [--raster R --labels L] [--epochs N] [--resume] [--device D]`.

Trains the referring prompter and LoRA adapters on the base models of the saved settings (or the
options) and writes one head file for `refer --prompter`. Prints gIoU and cIoU after each epoch.
"""
from __future__ import annotations

import argparse

from .arguments import SETTINGS_HELP, resolve_settings
from .progress import ProgressBar

SETTINGS = ("sam_model", "sam_weights", "clip_model", "clip_weights", "device", "cache_dir")


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..core.models.registry import DEFAULT_DEVICE, DEVICE_CHOICES, SAM_MODELS
    from ..core.refer.prompter import DEFAULT_PROMPT_TOKENS, DEFAULT_TEXT_QUERIES
    from ..core.refer.lora import DEFAULT_LORA_RANK
    from ..core.refer.train import DEFAULT_LEARNING_RATE, SCHEDULES, TrainConfig
    from ..core.refer.train_run import TRAINING_SOURCES

    defaults = TrainConfig()
    p = subparsers.add_parser(
        "train-referring", help="train a referring prompter head (for refer --prompter)",
        description="Train the cascaded prompter and LoRA adapters on a referring data set or "
                    "on QGIS labels (a raster and a polygon layer with an 'expression' field).")
    p.add_argument("--dataset", required=True, choices=TRAINING_SOURCES)
    p.add_argument("--root", help="the data set's folder")
    p.add_argument("--split", default="train", help="training split (default train)")
    p.add_argument("--val-split", default="val",
                   help="split scored after each epoch (default val; the training samples when "
                        "it does not exist)")
    p.add_argument("--raster", help="labels: the raster")
    p.add_argument("--labels", help="labels: a polygon layer with an 'expression' field")
    p.add_argument("--out", required=True, help="the head file to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATE)
    p.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule,
                   help="learning rate: constant, or cosine decay to zero over the run")
    p.add_argument("--text-queries", type=int, default=DEFAULT_TEXT_QUERIES)
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    p.add_argument("--lora-rank", type=int, default=DEFAULT_LORA_RANK, help="0: no adapters")
    p.add_argument("--resume", action="store_true",
                   help="continue from the state saved next to --out after the last epoch")
    p.add_argument("--sam-model", choices=SAM_MODELS, help="SAM architecture" + SETTINGS_HELP.format("saved"))
    p.add_argument("--sam-weights", help="SAM checkpoint file or catalog name")
    p.add_argument("--clip-model", help="open_clip model name or JSON config")
    p.add_argument("--clip-weights", help="open_clip pretrained tag, catalog name or checkpoint file")
    p.add_argument("--device", choices=DEVICE_CHOICES, help="device" + SETTINGS_HELP.format(DEFAULT_DEVICE))
    p.add_argument("--cache-dir", help="model cache folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train_command, cancel_note="the last finished epoch can be resumed "
                                                      "with --resume")
    return p


def run_train_command(args) -> int:
    from ..core.refer.prompter import PrompterConfig
    from ..core.refer.train import TrainConfig
    from ..core.refer.train_run import TrainingRequest, run_training

    settings = resolve_settings(args, SETTINGS)
    request = TrainingRequest(
        dataset=args.dataset, out=args.out, root=args.root, split=args.split,
        val_split=args.val_split or None, raster=args.raster, labels=args.labels,
        sam_model=settings["sam_model"], sam_weights=settings.chosen("sam_weights"),
        clip_model=settings["clip_model"], clip_weights=settings["clip_weights"],
        device=settings["device"], cache_dir=settings["cache_dir"], resume=args.resume,
        prompter=PrompterConfig(text_queries=args.text_queries, prompt_tokens=args.prompt_tokens,
                                lora_rank=args.lora_rank),
        train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          schedule=args.schedule))
    with ProgressBar(args.quiet) as bar:
        result = run_training(request, progress=bar.update)
    for record in result.history[-(result.epochs_run or 1):]:
        print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, gIoU {record['gIoU']:.2f}, "
              f"cIoU {record['cIoU']:.2f} ({record['scored_on']})")
    print(f"wrote {result.head_path}")
    return 0
