"""The trained referring path generalises: train and held-out IoU, trained head vs training-free.

    .venv/bin/python benchmarks/bench_prompter.py            # 16 min on one core of a loaded machine
    .venv/bin/python benchmarks/bench_prompter.py --quick    # fewer layouts and steps, smaller splits

A procedurally large synthetic referring set (core/refer/synthetic.py: coloured squares and
circles on a textured background, expressions such as "the large red square on the left" that
single one object out; each sample drawn from its own seed, so the training split holds
`--train` different layouts) trains the prompter and its LoRA adapters on tiny real
architectures with random initial weights (open_clip ViT, segment_anything ViT + decoder). The
held-out split is drawn from another seed: layouts the head never saw.

Then both splits are segmented by the trained head and by the training-free path (dense CLIP
localisation + SAM prompts + selection, ReferringSession) on the same base models, SAM at the
same input size (256² for 64² images: one low-res mask pixel per image pixel). Printed: gIoU (mean per-sample IoU) and cIoU (cumulative I/U), in percent; the
training split is scored on its first `--scored` samples.

Threads: one by default. On a CPU that other processes share, two OpenMP threads were measured
~50x slower than one (they spin waiting for each other).
"""
import argparse
import copy
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

# The benchmark's tiny CLIP: 64-px input, 8-px patches (an 8×8 token grid).
BENCH_CLIP = {"embed_dim": 32,
              "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 8,
                             "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1}}
TRAIN_SEED, HELD_OUT_SEED = 1, 2


def training_free_scores(samples, clip_model, tokenizer, sam):
    from drseg.core.dense_clip import DenseClip
    from drseg.core.evaluation.metrics import ReferAccumulator
    from drseg.core.refer.localize import Localizer
    from drseg.core.refer.pipeline import ReferringSession, ReferringSettings

    clip_side = int(clip_model.visual.image_size[0])
    localizer = Localizer(DenseClip(clip_model, tokenizer, torch.device("cpu"),
                                    templates=["a photo of {}."], window_size=clip_side))
    accumulator = ReferAccumulator()
    refused = 0
    for sample in samples:
        # region scores crop at CLIP's 224-px input; the tiny CLIP here takes 64 px
        session = ReferringSession(sample.image, sam, localizer, disk_cache=None,
                                   settings=ReferringSettings(region_scores=False))
        mask = np.zeros(sample.mask.shape, bool)
        try:
            for result in session.query(sample.expression):
                mask |= result.mask
        except Exception:          # a parse the rules refuse counts as nothing found
            refused += 1
        accumulator.update(sample.mask, mask)
    if refused:
        print(f"  training-free: {refused} expression(s) refused", file=sys.stderr)
    metrics = accumulator.compute()
    return metrics["gIoU"], metrics["cIoU"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=4000, help="training layouts")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--scored", type=int, default=200, help="training samples scored")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", type=int, default=64, help="synthetic image side")
    parser.add_argument("--sam-size", type=int, default=256, help="the tiny SAM's input side")
    parser.add_argument("--prompt-dim", type=int, default=32, help="the tiny SAM's prompt width")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.held_out, args.scored, args.steps = 1000, 100, 100, 600
    torch.set_num_threads(args.threads)
    from drseg.core.refer.head import base_metadata
    from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
    from drseg.core.refer.synthetic import SyntheticSet, tiny_clip, tiny_sam
    from drseg.core.refer.train import TrainConfig, evaluate_prompter, train_prompter

    train = SyntheticSet(args.train, TRAIN_SEED, args.size)
    held = SyntheticSet(args.held_out, HELD_OUT_SEED, args.size)
    clip_model, tokenizer = tiny_clip(BENCH_CLIP)
    sam = tiny_sam(args.sam_size, prompt_dim=args.prompt_dim)
    base_clip, base_sam = copy.deepcopy(clip_model), copy.deepcopy(sam)   # the training-free path's
    base = base_metadata(clip_model, sam, "bench-tiny-clip", "bench-tiny-sam")
    torch.manual_seed(0)
    model = PromptedSegmenter(clip_model, tokenizer, sam, PrompterConfig(width=32, heads=2,
                                                                         lora_rank=4))
    per_epoch = math.ceil(len(train) / args.batch_size)
    epochs = max(1, round(args.steps / per_epoch))
    print(f"synthetic set: {len(train)} training layouts, {len(held)} held-out (another seed), "
          f"{args.size}² px, SAM input {args.sam_size}²; e.g. '{train[0].expression}'")
    started = time.perf_counter()

    def progress(fraction, message):
        if message.startswith("Epoch") and "IoU" in message:
            print(f"  {time.perf_counter() - started:6.0f} s  {message} (held-out)", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        result = train_prompter(model, train, held,
                                TrainConfig(epochs=epochs, batch_size=args.batch_size,
                                            lr=args.lr, size=args.size, schedule="cosine",
                                            eval_every=max(1, epochs // 4)),
                                out_path=os.path.join(folder, "head.safetensors"), base=base,
                                progress=progress)
    seconds = time.perf_counter() - started
    print(f"trained {epochs} epochs ({epochs * per_epoch} steps of {args.batch_size}) in "
          f"{seconds:.0f} s; loss {result.history[0]['loss']:.3f} -> "
          f"{result.history[-1]['loss']:.3f}")
    rows = []
    for name, samples in (("train", train[:args.scored]), ("held-out", held[:])):
        tick = time.perf_counter()
        trained = evaluate_prompter(model, samples, args.size)
        free = training_free_scores(samples, base_clip, tokenizer, base_sam)
        rows.append((name, len(samples), trained["gIoU"], trained["cIoU"], free[0], free[1],
                     time.perf_counter() - tick))
    print(f"{'split':9s} {'samples':>7s} {'trained gIoU':>12s} {'trained cIoU':>12s} "
          f"{'free gIoU':>10s} {'free cIoU':>10s}")
    for name, count, tg, tc, fg, fc, _ in rows:
        print(f"{name:9s} {count:7d} {tg:12.1f} {tc:12.1f} {fg:10.1f} {fc:10.1f}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
