"""The collapse experiment: does adapting to a few labelled classes keep the open vocabulary?

1. A tiny CLIP of the real open_clip architecture gets an open vocabulary on synthetic concept
   data: mosaics of textured colour regions, each region's patches pulled towards the text
   embedding of its colour word ("a photo of red.") against all other words (both towers
   trained, a few hundred steps on a CPU).
2. "The user's imagery" is the same world seen by another sensor (tinted, darker, noisier); its
   labels cover only SEEN classes, other regions are unlabelled.
3. Adaptation on those labels, then per-class IoU on held-out mosaics of the new sensor holding
   every class, the argmax over all class names: no adaptation; direct fine-tuning (every vision
   weight at the base rate, no guidance); soft-guided fine-tuning (attention weights only at
   0.01× the base rate, frozen-copy guidance at every depth, the cost-map upsampling decoder;
   core/adapt/train.py), the same without the decoder, and prompt tuning (learned prompt
   context and class offsets, both encoders frozen), once as by default and once with the
   context at the base rate without its guidance.

    python benchmarks/bench_collapse.py [--quick] [--pretrain-steps 150] [--adapt-steps 40]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from drseg.core.adapt.adapter import ClassPrompt
from drseg.core.adapt.apply import evaluate_chips
from drseg.core.adapt.defaults import CONTEXT_GUIDANCE, CONTEXT_MULTIPLIER
from drseg.core.adapt.train import TrainConfig, Trainer
from drseg.core.dense_clip import DenseClip
from drseg.core.evaluation.metrics import IGNORE_INDEX

WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
RGB = {"red": (210, 40, 40), "green": (40, 160, 50), "blue": (40, 70, 210), "yellow": (230, 220, 50),
       "purple": (130, 40, 160), "orange": (240, 140, 30), "white": (235, 235, 235),
       "black": (25, 25, 25)}
SEEN = ("red", "green", "blue", "yellow")
TEMPLATE = "a photo of {}."
SIZE = 64
CONFIG = {"embed_dim": 64,
          "vision_cfg": {"image_size": SIZE, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def mosaics(count, rng, sensor="source", words=WORDS):
    """(images uint8 (N,3,S,S), labels (N,S,S) word index) of 2×2 mosaics with a random split
    point; 'target' tints, darkens and adds more noise (another sensor)."""
    images = np.zeros((count, 3, SIZE, SIZE), np.float32)
    labels = np.zeros((count, SIZE, SIZE), np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(count):
        cy, cx = rng.integers(16, SIZE - 16, size=2)
        quads = [(yy < cy) & (xx < cx), (yy < cy) & (xx >= cx), (yy >= cy) & (xx < cx), (yy >= cy) & (xx >= cx)]
        for quad in quads:
            word = words[rng.integers(len(words))]
            labels[i][quad] = WORDS.index(word)
            period = rng.integers(3, 9)
            stripes = 12 * np.sin(2 * np.pi * (xx if rng.integers(2) else yy) / period)
            for c in range(3):
                images[i, c][quad] = RGB[word][c] + stripes[quad]
    noise = 10 if sensor == "source" else 25
    images += rng.normal(0, noise, images.shape)
    if sensor == "target":
        images = images * 0.7 + np.array([10, 25, 60])[None, :, None, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels


def pretrain(clip, steps, rng, log):
    """Dense contrastive pretraining: patch-word cross-entropy against every word."""
    model = clip.model
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    tokens = clip.tokenizer([TEMPLATE.format(w) for w in WORDS])
    for step in range(steps):
        images, labels = mosaics(16, rng)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        patches, _ = clip.forward_features(clip.normalise(images))
        patches = F.normalize(patches, dim=1)
        logits = 30 * torch.einsum("bdhw,qd->bqhw", patches, text)
        target = torch.from_numpy(labels[:, 4::8, 4::8].astype(np.int64))  # patch centres
        loss = F.cross_entropy(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  pretrain step {step}: loss {loss.item():.3f}")
    for p in params:
        p.requires_grad_(False)
    model.eval()


def seen_only_labels(labels):
    """The user's polygons: only SEEN classes labelled (as 0..len(SEEN)-1), the rest ignored."""
    out = np.full(labels.shape, IGNORE_INDEX, np.uint8)
    for i, word in enumerate(SEEN):
        out[labels == WORDS.index(word)] = i
    return out


def scores(clip, adapter, images, labels):
    per_class = evaluate_chips(clip, adapter, images, labels, list(WORDS))
    seen = [per_class[WORDS.index(w)] for w in SEEN]
    unseen = [per_class[i] for i, w in enumerate(WORDS) if w not in SEEN]
    return 100 * np.nanmean(seen), 100 * np.nanmean(unseen), 100 * np.nanmean(per_class)


def main(argv=None):
    import copy

    import open_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--adapt-steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3, help="base learning rate of both fine-tunings")
    parser.add_argument("--direct-low-lr", type=float, default=1e-4,
                        help="a second direct fine-tuning at this lower rate (0: none), so the "
                             "comparison is not only about the learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.adapt_steps = 60, 20
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    base = DenseClip(open_clip.CLIP(**CONFIG), open_clip.get_tokenizer("ViT-B-32"),
                     torch.device("cpu"), bias_lambda=0.0, templates=[TEMPLATE], window_size=SIZE)
    print(f"pretraining a tiny CLIP ({sum(p.numel() for p in base.model.parameters()) / 1e6:.1f} M "
          f"parameters) for {args.pretrain_steps} steps")
    pretrain(base, args.pretrain_steps, rng, print)
    source_images, source_labels = mosaics(48, rng)
    print(f"  open vocabulary on its own sensor: mIoU {scores(base, None, source_images, source_labels)[2]:.1f}")

    train_images, train_all = mosaics(48, rng, "target")
    train_labels = seen_only_labels(train_all)
    test_images, test_labels = mosaics(48, rng, "target")
    names = list(SEEN)
    prompts = {w: ClassPrompt(w) for w in names}
    rows = [("no adaptation", *scores(base, None, test_images, test_labels))]
    runs = [(f"direct fine-tuning (lr {args.lr:g})", True, args.lr)]
    if args.direct_low_lr:
        runs.append((f"direct fine-tuning (lr {args.direct_low_lr:g})", True, args.direct_low_lr))
    runs.append((f"soft-guided fine-tuning (lr {args.lr:g}, attention ×0.01)", False, args.lr))
    runs.append(("soft-guided fine-tuning, no decoder", False, args.lr))
    runs.append((f"prompt tuning (learned context at ×{CONTEXT_MULTIPLIER:g}, guidance "
                 f"{CONTEXT_GUIDANCE:g}; lr {args.lr:g})", None, args.lr))
    runs.append(("prompt tuning, context at the base rate, no guidance", None, args.lr))
    for label, direct, lr in runs:
        clip = DenseClip(copy.deepcopy(base.model), base.tokenizer, base.device, bias_lambda=0.0,
                         templates=[TEMPLATE], window_size=SIZE)
        free = "no guidance" in label
        config = TrainConfig(level="finetune" if direct is not None else "prompt",
                             steps=args.adapt_steps, batch_size=8, lr=lr, direct=bool(direct),
                             seed=args.seed, decoder="no decoder" not in label,
                             context_multiplier=1.0 if free else CONTEXT_MULTIPLIER,
                             context_guidance=0.0 if free else CONTEXT_GUIDANCE)
        trainer = Trainer(clip, train_images, train_labels, names, prompts, 0.0, config)
        for step in range(args.adapt_steps):
            parts = trainer.step(step)
        print(f"  {label}: last loss " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items()))
        rows.append((label, *scores(clip, trainer.adapter("bench", "bench"), test_images, test_labels)))

    print(f"\nheld-out IoU (%) on the new sensor; seen = {', '.join(SEEN)}; unseen = "
          f"{', '.join(w for w in WORDS if w not in SEEN)}; {args.pretrain_steps} pretraining "
          f"steps, {args.adapt_steps} adaptation steps of 8 chips")
    print(f"| method | seen mIoU | unseen mIoU | all mIoU |\n|---|---|---|---|")
    for label, seen, unseen, overall in rows:
        print(f"| {label} | {seen:.1f} | {unseen:.1f} | {overall:.1f} |")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
