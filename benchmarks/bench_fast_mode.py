"""Fast mode against the default window layout on a real aerial scene: speed-up and agreement.

    .venv/bin/python benchmarks/bench_fast_mode.py                     # Köln tile, tiny CLIP
    .venv/bin/python benchmarks/bench_fast_mode.py --model vit-b-16    # real size, minutes on a CPU
    .venv/bin/python benchmarks/bench_fast_mode.py --compare 448/336 224/196

The scene is the OpenEarthMap tile of Köln (1000² px, 0.5 m) that lies in ``shared/data/``
beside the checkout (``--raster`` for another one); the classes are OpenEarthMap's eight. The
engine runs end to end (``run_segmentation``, class raster only, threshold 0) with dense CLIP:
once with the default windows (224/112), once in fast mode (``--fast``: the windows overlap by
``protocol.FAST_OVERLAP`` of a window), and once per ``--compare`` window/stride pair (e.g.
larger windows, whose positional embedding is interpolated). The class names are encoded before
the timed runs. Printed per layout: windows scored, seconds, speed-up against the default, and
the class map's agreement with the default's: pixels with the same class and the mean IoU over
the classes either map uses (the default's map as the reference).

The models are the real architectures with random weights (nothing is downloaded): the timing is
that of the real model; the agreement is that of a model whose features vary across the image
like a trained one's do not, so it shows how much the window layout alone moves the map.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KOELN = os.path.join(os.path.dirname(ROOT), "shared", "data", "oem_koeln_50.tif")
DATASET = os.path.join(ROOT, "core", "data", "datasets", "openearthmap.json")


def openearthmap_classes() -> str:
    """OpenEarthMap's land-cover classes (not its 'background') as a class prompt."""
    with open(DATASET, encoding="utf-8") as handle:
        names = json.load(handle)["classes"]
    return "; ".join(name for name in names if name != "background")


def agreement(reference: np.ndarray, other: np.ndarray):
    """(share of pixels with the same class, mean IoU over the classes either map uses) on the
    pixels both maps have data for (255 = nodata)."""
    valid = (reference != 255) & (other != 255)
    a, b = reference[valid], other[valid]
    ious = []
    for value in np.union1d(np.unique(a), np.unique(b)):
        union = np.count_nonzero((a == value) | (b == value))
        ious.append(np.count_nonzero((a == value) & (b == value)) / union)
    return float(np.mean(a == b)), float(np.mean(ious))


def build_scorer(model_name: str, device):
    import torch

    from drseg.core.dense_clip import DenseClip

    if model_name == "tiny":
        from drseg.core.refer.synthetic import tiny_clip

        model, tokenizer = tiny_clip()
        label = "tiny CLIP (real architecture, 8-px patches)"
    else:
        from drseg.core.models.clip import load_clip

        torch.manual_seed(0)
        model, tokenizer = load_clip("ViT-B-16", "random", device)
        label = "CLIP ViT-B-16"
    return DenseClip(model, tokenizer, device), label


def layout(text: str):
    try:
        window, stride = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WINDOW/STRIDE, e.g. 448/336, got '{text}'")
    if not 0 < stride <= window:
        raise argparse.ArgumentTypeError(f"the stride must be in 1..window, got '{text}'")
    return window, stride


def main(argv=None):
    sys.path.insert(0, os.path.dirname(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raster", default=KOELN, help="scene (default: shared/data's Köln tile)")
    parser.add_argument("--model", choices=["tiny", "vit-b-16"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", default=None, help="default: OpenEarthMap's eight classes")
    parser.add_argument("--compare", nargs="*", type=layout, default=[],
                        metavar="WINDOW/STRIDE", help="other layouts to compare as well")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.raster):
        print(f"The scene {args.raster} is not on this machine: give one with --raster",
              file=sys.stderr)
        return 2

    import rasterio
    import torch

    from drseg.core.classes import flatten_queries, parse_classes
    from drseg.core.device import resolve_device
    from drseg.core.protocol import DEFAULT_STRIDE, DEFAULT_WINDOW, FAST_OVERLAP, fast_stride
    from drseg.core.segment import SegmentationRequest, run_segmentation

    device = resolve_device(args.device)
    scorer, label = build_scorer(args.model, device)
    classes = args.classes or openearthmap_classes()
    scorer.set_queries(flatten_queries(parse_classes(classes))[0])   # not part of the timing
    with rasterio.open(args.raster) as src:
        size = f"{src.width}×{src.height} px"
    print(f"{label}, random weights, on {device} ({torch.get_num_threads()} threads); "
          f"{os.path.basename(args.raster)} {size}; classes: {classes}")

    runs = [("default", DEFAULT_WINDOW, DEFAULT_STRIDE, False),
            ("fast", DEFAULT_WINDOW, DEFAULT_STRIDE, True)]
    runs += [(f"{w}/{s}", w, s, False) for w, s in args.compare]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, window, stride, fast in runs:
            out = os.path.join(work, f"{len(rows)}.tif")
            request = SegmentationRequest(raster=args.raster, classes=classes, out_raster=out,
                                          threshold=0.0, window=window, stride=stride, fast=fast,
                                          device=str(device))
            started = time.perf_counter()
            result = run_segmentation(request, scorer=scorer)
            seconds = time.perf_counter() - started
            with rasterio.open(out) as src:
                class_map = src.read(1)
            if fast:
                stride = fast_stride(window, stride)
            rows.append((name, window, stride, result.timings.windows, seconds, class_map))

    reference = rows[0]
    header = (f"{'layout':8s} {'window/stride':>13s} {'windows':>7s} {'seconds':>8s} "
              f"{'speed-up':>8s} {'same class':>10s} {'mIoU':>6s}")
    print(header)
    print("-" * len(header))
    for name, window, stride, windows, seconds, class_map in rows:
        equal, miou = agreement(reference[5], class_map)
        print(f"{name:8s} {f'{window}/{stride}':>13s} {windows:7d} {seconds:8.2f} "
              f"{reference[4] / seconds:7.2f}x {100 * equal:9.2f}% {100 * miou:5.1f}%")
    fast = rows[1]
    equal, miou = agreement(reference[5], fast[5])
    print(f"\nfast mode (windows overlapping by {FAST_OVERLAP:.0%}): {reference[4] / fast[4]:.2f}x "
          f"faster ({reference[3]} -> {fast[3]} windows), {100 * equal:.2f}% of pixels with the "
          f"default's class, mIoU {100 * miou:.1f}% against the default's map")
    return 0


if __name__ == "__main__":
    sys.exit(main())
