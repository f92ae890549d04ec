"""Speed-up of a segmentation on 1, 2 and 4 local Dask workers, and the scheduler's cost per task.

    python benchmarks/bench_dask.py            # 1536×1536 px, 3×3 blocks, a small CLIP ViT
    python benchmarks/bench_dask.py --quick    # 1024×1024 px, 2×2 blocks

Prints, per worker count: the wall time of a cold run (starting a local cluster, loading the
model on every worker, the run) and of a second run on the same, warm workers, each against the
same run in one process made just before, the windows scored (with the halo) against the
one-process count, and whether the class raster is identical. Then the scheduler overhead
per task: a scorer that does nothing, small tasks, one warm worker; (Dask time − one-process
time) / tasks.

The numbers depend on the machine: each worker gets cores // N torch threads (at least 1), so
beyond the core count workers share cores and only add halo windows and overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from drseg.core.cluster.client import dask_client  # noqa: E402
from drseg.core.cluster.spec import DaskSpec  # noqa: E402
from drseg.core.segment import SegmentationRequest, run_segmentation  # noqa: E402

# A small CLIP of the real architecture: big enough that the model dominates, quick on a laptop.
SMALL_CLIP = {"embed_dim": 256,
              "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 16,
                             "head_width": 64},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4,
                           "layers": 2}}
CLASSES = "building; road; water; tree; field"


@dataclass(frozen=True)
class NoopFactory:
    """A scorer that does nothing: what is left of a run is reading, stitching and scheduling."""

    def __call__(self):
        return NoopScorer()


class NoopScorer:
    logit_scale = 1.0
    device = "cpu"

    def set_queries(self, queries):
        self.count = len(queries)

    def score_windows(self, images):
        return np.zeros((len(images), self.count, 4, 4), np.float32)


def scene(path: str, size: int) -> str:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (3, size // 32 + 1, size // 32 + 1), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :size, :size]
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4100000, 0.5, 0.5)) as dst:
        dst.write(image)
    return path


def small_clip(folder: str):
    import open_clip
    import torch

    config = os.path.join(folder, "small_clip.json")
    with open(config, "w") as handle:
        json.dump(SMALL_CLIP, handle)
    torch.manual_seed(0)
    weights = os.path.join(folder, "small_clip.pt")
    torch.save(open_clip.CLIP(**SMALL_CLIP).state_dict(), weights)
    return config, weights


def timed(request, **kw):
    started = time.perf_counter()
    result = run_segmentation(request, **kw)
    return time.perf_counter() - started, result


def classes_of(path):
    import rasterio
    with rasterio.open(path) as src:
        return src.read(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1024 px scene")
    parser.add_argument("--size", type=int, default=1536, help="scene size, px")
    parser.add_argument("--block", type=int, default=512, help="block size, px")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to try")
    args = parser.parse_args()
    size = 1024 if args.quick else args.size
    counts = [int(n) for n in args.workers.split(",")]
    folder = tempfile.mkdtemp(prefix="drseg-bench-dask-")
    raster = scene(os.path.join(folder, "scene.tif"), size)
    config, weights = small_clip(folder)
    cores = os.cpu_count() or 1
    print(f"Machine: {cores} CPU core(s) as the OS reports them"
          + (" (shared with other work here: expect noise)" if cores <= 4 else "")
          + f"; scene {size}×{size} px, blocks {args.block} px, windows 224/112, CLIP ViT "
            f"{SMALL_CLIP['vision_cfg']['layers']}×{SMALL_CLIP['vision_cfg']['width']} on CPU")

    def request(name, dask=None, **kw):
        kw.setdefault("block", args.block)
        return SegmentationRequest(raster=raster, classes=CLASSES, method="clip",
                                   clip_model=config, clip_weights=weights, device="cpu",
                                   out_raster=os.path.join(folder, name + ".tif"), dask=dask, **kw)

    timed(request("warmup"))  # the model loaded and cached in this process
    print(f"one process: {torch_threads()} torch threads; each row's speed-up is against a "
          "one-process run made just before it (the load of a shared machine drifts)")
    print(f"{'workers':>7} {'alone s':>7} {'windows':>7} {'cold s':>7} {'speed-up':>8} "
          f"{'warm s':>7} {'speed-up':>8}  identical")
    for count in counts:
        alone, result = timed(request(f"alone{count}"))
        reference = classes_of(result.raster_path)
        started = time.perf_counter()
        with dask_client(DaskSpec(local_workers=count)) as client:
            address = client.scheduler.address
            cold_result = run_segmentation(request(f"cold{count}", dask=address))
            cold = time.perf_counter() - started  # cluster start, model loads, the run
            warm, warm_result = timed(request(f"warm{count}", dask=address))
        same = (np.array_equal(classes_of(cold_result.raster_path), reference)
                and np.array_equal(classes_of(warm_result.raster_path), reference))
        windows = f"{warm_result.timings.windows}/{result.timings.windows}"
        print(f"{count:>7} {alone:>7.1f} {windows:>7} "
              f"{cold:>7.1f} {alone / cold:>7.2f}× {warm:>7.1f} {alone / warm:>7.2f}×  "
              f"{'yes' if same else 'NO'}")

    # Scheduler overhead: no model, 64 px blocks, one block per task, one warm worker.
    noop = dict(scorer_factory=NoopFactory())
    small = dict(block=64, task_blocks=1)
    plain, _ = timed(request("noop", **small), scorer=NoopFactory()())
    with dask_client(DaskSpec(local_workers=1)) as client:
        address = client.scheduler.address
        timed(request("noop-warm", dask=address, **small), **noop)
        started = time.perf_counter()
        runs = 3
        for _ in range(runs):
            run_segmentation(request("noop-dask", dask=address, **small), **noop)
        spread = (time.perf_counter() - started) / runs
    tasks = (-(-size // 64)) ** 2
    print(f"scheduler overhead: {tasks} one-block tasks with a no-op scorer: {spread:.2f} s on one "
          f"warm worker vs {plain:.2f} s in one process: {(spread - plain) / tasks * 1000:.1f} ms "
          f"per task (submitting, scheduling, the part file, the result)")


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


if __name__ == "__main__":
    main()
