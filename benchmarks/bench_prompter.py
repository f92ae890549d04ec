"""The trained referring path learns: train IoU and held-out IoU, trained vs training-free.

    .venv/bin/python benchmarks/bench_prompter.py            # ~10 min on a busy 2-core CPU
    .venv/bin/python benchmarks/bench_prompter.py --quick    # fewer samples and epochs

A synthetic referring set (core/refer/synthetic.py: coloured squares and circles, expressions
such as "the large red square on the left" that single one object out) is split into a training
and a held-out part. Tiny real architectures (open_clip ViT, segment_anything ViT + decoder) with
random initial weights are trained (prompter + LoRA) on the training part; then both parts are
segmented by the trained head and by the training-free path (dense CLIP localisation + SAM
prompts + selection) on base models of the same kind: the training-free prompts live in SAM's
1024-px frame, so it gets its own tiny SAM at 1024² input (random weights too). Printed: gIoU (mean per-sample IoU) and cIoU
(cumulative I/U), in percent, for each.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np
import torch

# The benchmark's tiny CLIP: 32-px input, 8-px patches (a 4×4 token grid).
BENCH_CLIP = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                             "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1}}


def training_free_scores(samples, clip_model, tokenizer, sam):
    from drseg.core.dense_clip import DenseClip
    from drseg.core.evaluation.metrics import ReferAccumulator
    from drseg.core.refer.localize import Localizer
    from drseg.core.refer.pipeline import ReferringSession, ReferringSettings

    localizer = Localizer(DenseClip(clip_model, tokenizer, torch.device("cpu"),
                                    templates=["a photo of {}."]))
    accumulator = ReferAccumulator()
    for sample in samples:
        # region scores crop at CLIP's 224-px input; the tiny CLIP here takes 32 px
        session = ReferringSession(sample.image, sam, localizer,
                                   settings=ReferringSettings(region_scores=False))
        mask = np.zeros(sample.mask.shape, bool)
        try:
            for result in session.query(sample.expression):
                mask |= result.mask
        except Exception as error:      # a parse the rules refuse counts as nothing found
            print(f"  training-free: '{sample.expression}': {error}", file=sys.stderr)
        accumulator.update(sample.mask, mask)
    metrics = accumulator.compute()
    return metrics["gIoU"], metrics["cIoU"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", type=int, default=32, help="synthetic image side")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.held_out, args.epochs = 8, 8, 15
    torch.set_num_threads(args.threads)
    from drseg.core.refer.head import base_metadata
    from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
    from drseg.core.refer.synthetic import synthetic_set, tiny_clip, tiny_sam
    from drseg.core.refer.train import TrainConfig, evaluate_prompter, train_prompter
    from drseg.core.refer.train_data import TrainingSample

    data = synthetic_set(args.train + args.held_out, seed=7, size=args.size)
    train = [TrainingSample(s.expression, s.image, s.mask) for s in data[:args.train]]
    held = [TrainingSample(s.expression, s.image, s.mask) for s in data[args.train:]]
    clip_model, tokenizer = tiny_clip(BENCH_CLIP)
    sam = tiny_sam(2 * args.size, prompt_dim=32)
    base_clip = copy.deepcopy(clip_model)
    free_sam = tiny_sam(1024)
    base = base_metadata(clip_model, sam, "bench-tiny-clip", "bench-tiny-sam")
    torch.manual_seed(0)
    model = PromptedSegmenter(clip_model, tokenizer, sam, PrompterConfig(width=32, heads=2,
                                                                         lora_rank=4))
    print(f"synthetic set: {len(train)} train, {len(held)} held-out, {args.size}² px; e.g. "
          f"'{train[0].expression}'")
    started = time.perf_counter()

    def progress(fraction, message):
        if message.startswith("Epoch") and "IoU" in message:
            print(f"  {time.perf_counter() - started:6.0f} s  {message}", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        result = train_prompter(model, train, None,
                                TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                            lr=args.lr, eval_every=args.eval_every),
                                out_path=os.path.join(folder, "head.safetensors"), base=base,
                                progress=progress)
    seconds = time.perf_counter() - started
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    print(f"trained {args.epochs} epochs ({steps} steps) in {seconds:.0f} s; loss "
          f"{result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f}")
    size = model.sam_size
    rows = []
    for name, samples in (("train", train), ("held-out", held)):
        trained = evaluate_prompter(model, samples, size)
        free = training_free_scores(samples, base_clip, tokenizer, free_sam)
        rows.append((name, trained["gIoU"], trained["cIoU"], free[0], free[1]))
    print(f"{'split':9s} {'trained gIoU':>12s} {'trained cIoU':>12s} {'free gIoU':>10s} "
          f"{'free cIoU':>10s}")
    for name, tg, tc, fg, fc in rows:
        print(f"{name:9s} {tg:12.1f} {tc:12.1f} {fg:10.1f} {fc:10.1f}")


if __name__ == "__main__":
    main()
