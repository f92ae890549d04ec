"""Speed and memory of the sam3 engine at the real SAM 3 size (random weights, no download).

The model is transformers' Sam3Model built from the default Sam3Config (the released
architecture, ~0.85 B parameters, 1008-px tiles), float32 on the CPU (or half precision on CUDA).
Each run goes through the engine as the front ends call it (`run_segmentation`, engine 'sam3',
class raster only), and prints:

* time per Mpx and peak memory for a 1000² px raster (one tile) and, if it fits the time limit,
  a 4000² px raster (25 tiles); otherwise the 4000² time is extrapolated from the measured
  per-tile costs and labelled as such;
* the second class list over the same area: only the text encoder and the decoders run (the image
  features are cached per tile), and its speed-up.

    .venv/bin/python benchmarks/bench_sam3.py [--device cpu] [--limit 600] [--run-4k]
    .venv/bin/python benchmarks/bench_sam3.py --sam3-model tiny.json --sizes 300 600   # smoke test

Flat memory (`--memory-only`): each raster in a fresh process (so its peak RSS is its own), one
class, the peak RSS after the model was built, after the first tile's encoder pass and at the end,
with the default per-tile feature cache and without it (`--feature-cache-mb 0`, the engine alone):

    .venv/bin/python benchmarks/bench_sam3.py --memory-only --sam3-model tiny.json \
        --memory-sizes 1000 2000 4000
    .venv/bin/python benchmarks/bench_sam3.py --memory-only --area-tiles 2   # real size, 2×2 tiles
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(ROOT))

FIRST_CLASSES = "building, roof; road; water; tree"
SECOND_CLASSES = "car; grass, lawn; bare soil; swimming pool"
NEED_FREE_GB = 8.0  # real-size float32 weights (~3.4 GB) plus one tile's activations


def available_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def write_scene(path: str, size: int) -> str:
    """A raster with blocks of colour and texture (content does not change the cost)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, (3, size, size), np.uint8)
    for _ in range(max(4, size // 100)):
        y, x = rng.integers(0, size - 60, 2)
        image[:, y:y + 60, x:x + 60] = rng.integers(0, 255, 3, np.uint8)[:, None, None]
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4100000, 0.5, 0.5),
                       tiled=True) as dst:
        dst.write(image)
    return path


def tiles_for(size: int, window: int) -> int:
    from drseg.core.models.registry import SAM3_OVERLAP
    from drseg.core.sliding import window_starts

    stride = max(1, window - int(round(window * SAM3_OVERLAP)))
    return len(window_starts(size, window, stride)) ** 2


def run(raster: str, classes: str, args, folder: str):
    from drseg.core.segment import SegmentationRequest, run_segmentation

    request = SegmentationRequest(raster=raster, classes=classes, engine="sam3",
                                  sam3_model=args.sam3_model, sam3_weights="random",
                                  device=args.device, threshold=0.3, block=args.block,
                                  out_raster=os.path.join(folder, f"out_{time.time_ns()}.tif"))
    started = time.perf_counter()
    result = run_segmentation(request)
    return time.perf_counter() - started, result


def memory_child(args) -> int:
    """One raster of `args.child_size` px in this (fresh) process: prints one JSON line."""
    import json

    from drseg.core.models.shared import sam3_scorer
    from drseg.core.sam3_engine import DEFAULT_FEATURE_CACHE_MB, FeatureCache

    scorer = sam3_scorer(args.sam3_model, "random", args.device)
    budget = DEFAULT_FEATURE_CACHE_MB if args.feature_cache_mb is None else args.feature_cache_mb
    scorer.features = FeatureCache(int(budget * 2 ** 20))
    model_rss = peak_rss_gb()
    after_pass = []
    vision = scorer._vision

    started = time.perf_counter()

    def recorded(images):
        out = vision(images)
        after_pass.append(peak_rss_gb())
        if args.verbose:   # as it goes: a run stopped early still tells its tiles' peaks
            print(f"# tile {len(after_pass)}: peak RSS {after_pass[-1]:.3f} GB after "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        return out

    scorer._vision = recorded
    with tempfile.TemporaryDirectory() as folder:
        path = write_scene(os.path.join(folder, "scene.tif"), args.child_size)
        seconds, _ = run(path, args.memory_classes, args, folder)
    print(json.dumps({"size": args.child_size, "tiles": len(after_pass), "seconds": seconds,
                      "model_rss": model_rss, "first_tile_rss": after_pass[0] if after_pass else None,
                      "peak_rss": peak_rss_gb(), "cache_mb": scorer.features.bytes / 2 ** 20,
                      "budget_mb": budget}))
    return 0


def memory_only(args) -> int:
    """Peak RSS per raster size, each in a fresh process, with and without the feature cache."""
    import json
    import subprocess

    from drseg.core.models.registry import SAM3_OVERLAP
    from drseg.core.models.sam3 import sam3_config

    window = int(sam3_config(args.sam3_model).vision_config.backbone_config.image_size)
    sizes = list(args.memory_sizes)
    if args.area_tiles:
        stride = max(1, window - int(round(window * SAM3_OVERLAP)))
        sizes = [window + (args.area_tiles - 1) * stride]   # an area of area_tiles² tiles
    budgets = [None, 0.0] if args.feature_cache_mb is None else [args.feature_cache_mb]
    print(f"SAM 3 '{args.sam3_model}' ({window}-px tiles), one class, {args.device}; free memory "
          f"{available_gb():.1f} GB. Peak RSS in GB, each raster in a fresh process.")
    print("raster px | tiles | cache budget | s | after model | after 1st tile | peak | cache held")
    for budget in budgets:
        for size in sizes:
            command = [sys.executable, os.path.abspath(__file__), "--child-size", str(size),
                       "--sam3-model", args.sam3_model, "--device", args.device,
                       "--block", str(args.block), "--memory-classes", args.memory_classes]
            if budget is not None:
                command += ["--feature-cache-mb", str(budget)]
            if args.verbose:
                command.append("--verbose")
            done = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            lines = []
            for line in done.stdout:
                lines.append(line)
                if line.startswith("#"):
                    print(line.rstrip(), flush=True)
            if done.wait() != 0 or not lines:
                print(f"{size}: failed (exit {done.returncode})")
                continue
            row = json.loads(lines[-1])
            label = "default" if budget is None else f"{budget:.0f} MB"
            print(f"{size}² | {row['tiles']} | {label} ({row['budget_mb']:.0f} MB) | "
                  f"{row['seconds']:.1f} | {row['model_rss']:.3f} | {row['first_tile_rss']:.3f} | "
                  f"{row['peak_rss']:.3f} | {row['cache_mb']:.0f} MB", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sam3-model", default="sam3", help="'sam3' (real size) or a config.json")
    parser.add_argument("--sizes", type=int, nargs=2, default=(1000, 4000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--limit", type=float, default=600.0,
                        help="run the large raster only when its estimate is below this (s)")
    parser.add_argument("--run-4k", action="store_true", help="run the large raster whatever it costs")
    parser.add_argument("--memory-only", action="store_true",
                        help="peak RSS per raster size (--memory-sizes or --area-tiles), each in a "
                             "fresh process")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=(1000, 2000, 4000))
    parser.add_argument("--area-tiles", type=int, default=0,
                        help="--memory-only: one raster of N×N SAM 3 tiles instead of the sizes")
    parser.add_argument("--memory-classes", default="building")
    parser.add_argument("--feature-cache-mb", type=float, default=None,
                        help="--memory-only: this feature-cache budget only (default: the "
                             "engine's, then none)")
    parser.add_argument("--child-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true",
                        help="--memory-only: print each tile's peak RSS as it is encoded")
    args = parser.parse_args(argv)
    if args.child_size:
        return memory_child(args)
    if args.memory_only:
        return memory_only(args)

    import torch

    from drseg.core.models.shared import sam3_scorer

    free = available_gb()
    print(f"free memory {free:.1f} GB; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.sam3_model == "sam3" and args.device == "cpu" and free < NEED_FREE_GB:
        print(f"needs ~{NEED_FREE_GB:.0f} GB free for the real-size model; not run")
        return 1

    started = time.perf_counter()
    scorer = sam3_scorer(args.sam3_model, "random", args.device)  # the engine reuses this one
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in scorer.model.parameters())
    print(f"model: {params / 1e9:.3f} B parameters, {scorer.dtype}, tile {scorer.window} px, "
          f"built in {build_s:.1f} s; peak RSS {peak_rss_gb():.2f} GB")

    small, large = args.sizes
    with tempfile.TemporaryDirectory() as folder:
        path = write_scene(os.path.join(folder, "small.tif"), small)
        calls = scorer.encoder_calls
        first_s, result = run(path, FIRST_CLASSES, args, folder)
        tiles = scorer.encoder_calls - calls
        mpx = small * small / 1e6
        print(f"\n{small}² px ({tiles} tile(s), 4 classes / 5 prompts): {first_s:.1f} s = "
              f"{first_s / mpx:.1f} s/Mpx (model {result.timings.model:.1f} s); "
              f"peak RSS {peak_rss_gb():.2f} GB")

        calls = scorer.encoder_calls
        second_s, second = run(path, SECOND_CLASSES, args, folder)
        print(f"second class list, same area (4 classes / 5 prompts): {second_s:.1f} s, "
              f"image-encoder passes {scorer.encoder_calls - calls}; speed-up "
              f"{first_s / max(second_s, 1e-9):.1f}×; peak RSS {peak_rss_gb():.2f} GB")

        per_tile_encode = max(first_s - second_s, 0.0) / max(tiles, 1)
        per_tile_decode = second_s / max(tiles, 1)
        large_tiles = tiles_for(large, scorer.window)
        estimate = large_tiles * (per_tile_encode + per_tile_decode)
        print(f"per tile: image encoder ~{per_tile_encode:.1f} s, text + decoders (5 prompts) "
              f"~{per_tile_decode:.1f} s")
        if args.run_4k or estimate <= args.limit:
            path = write_scene(os.path.join(folder, "large.tif"), large)
            scorer.features.clear()
            large_s, result = run(path, FIRST_CLASSES, args, folder)
            print(f"\n{large}² px ({large_tiles} tiles): {large_s:.1f} s = "
                  f"{large_s / (large * large / 1e6):.1f} s/Mpx; peak RSS {peak_rss_gb():.2f} GB "
                  f"(measured)")
        else:
            print(f"\n{large}² px ({large_tiles} tiles): EXTRAPOLATED, not run (estimate "
                  f"{estimate:.0f} s > limit {args.limit:.0f} s): ~{estimate:.0f} s = "
                  f"~{estimate / (large * large / 1e6):.1f} s/Mpx. Memory: the same model and one "
                  f"tile's activations as above, plus the per-tile feature cache (bounded at "
                  f"{scorer.features.budget / 2 ** 30:.1f} GiB) and the engine's row of window "
                  "maps (a few MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
