"""Time split and peak memory of `run_segmentation` on synthetic rasters of growing size.

    .venv/bin/python benchmarks/bench_segment.py                 # cheap scorer, 1k² .. 8k² px
    .venv/bin/python benchmarks/bench_segment.py --model vit-b-16 --sizes 1024,2048

Each size runs in a fresh process so its peak RSS is its own. The cheap 'colour' scorer isolates
the engine (reading, stitching, writing, vectorizing); 'vit-b-16' is open_clip's ViT-B-16 with
random weights, to show how the model forward dominates a real run.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


class ColourScorer:
    """Per-token logits from mean colour: costs almost nothing, so the engine's own time shows."""

    logit_scale = 50.0

    def set_queries(self, queries):
        self.centres = np.linspace(0, 255, len(queries), dtype=np.float32)

    def score_windows(self, images):
        b, _, h, w = images.shape
        pooled = images.reshape(b, 3, h // 16, 16, w // 16, 16).mean(axis=(1, 3, 5))
        return np.stack([1 - np.abs(pooled - c) / 255 for c in self.centres], axis=1).astype(np.float32)


def write_synthetic(path, size, block=1024):
    """A blocky scene written block by block (the generator never holds the raster either)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5),
                       tiled=True, compress="deflate") as dst:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                cells = rng.integers(0, 4, (h // 64 + 1, w // 64 + 1)) * 80
                tile = np.kron(cells, np.ones((64, 64)))[:h, :w].astype(np.uint8)
                dst.write(np.stack([tile] * 3), window=Window(col, row, w, h))


def run_one(size, model, workdir):
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from drseg.core.segment import SegmentationRequest, run_segmentation

    raster = os.path.join(workdir, f"scene_{size}.tif")
    write_synthetic(raster, size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scorer = ColourScorer()
    if model == "vit-b-16":
        import torch
        from drseg.core.dense_clip import DenseClip
        from drseg.core.models.clip import load_clip
        from drseg.core.models.registry import DEFAULT_CLIP_MODEL
        clip, tokenizer = load_clip(DEFAULT_CLIP_MODEL, "random")
        scorer = DenseClip(clip, tokenizer, torch.device("cpu"), templates=["a photo of {}."])
    started = time.perf_counter()
    result = run_segmentation(SegmentationRequest(
        raster=raster, classes="a; b; c; d", threshold=0.0,
        out_vector=os.path.join(workdir, f"out_{size}.gpkg"),
        out_raster=os.path.join(workdir, f"out_{size}.tif")), scorer=scorer)
    total = time.perf_counter() - started
    t = result.timings
    return dict(size=size, megapixels=size * size / 1e6, total_s=total, read_s=t.read, model_s=t.model,
                stitch_s=t.stitch, write_s=t.write, vectorize_s=t.vectorize, windows=t.windows,
                polygons=result.polygon_count,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                before_run_rss_mb=base_rss / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--model", default="colour", choices=["colour", "vit-b-16"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.workdir)))
        return
    print(f"model={args.model}; each size in a fresh process")
    print(f"{'size':>6} {'Mpx':>6} {'total s':>8} {'read':>6} {'model':>7} {'stitch':>7} {'write':>6} "
          f"{'vector':>7} {'windows':>8} {'Mpx/s':>6} {'peak RSS MB':>12} {'run adds MB':>12}")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as workdir:
            out = subprocess.run([sys.executable, __file__, "--one", str(size), "--model", args.model,
                                  "--workdir", workdir], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>6} {r['megapixels']:>6.1f} {r['total_s']:>8.1f} {r['read_s']:>6.1f} "
              f"{r['model_s']:>7.1f} {r['stitch_s']:>7.1f} {r['write_s']:>6.1f} {r['vectorize_s']:>7.1f} "
              f"{r['windows']:>8} {r['megapixels'] / r['total_s']:>6.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] - r['before_run_rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
