"""How vectorizing (`core.vectorize.vectorize`) grows with the raster's area.

    .venv/bin/python benchmarks/bench_vectorize.py                  # 1k² .. 16k² px
    .venv/bin/python benchmarks/bench_vectorize.py --sizes 1024,2048,4096 --block 512

The class raster is the benchmark suite's synthetic scene (benchmarks/bench_suite.py: 48-px cells
of 7 colours and a 20-px road grid every 997 px), with edges made wavy, read as classes: a road class made of the road
grid and the gravel cells that touch it (one connected region spanning the whole raster, the
costliest case for joining pieces across blocks), buildings, water and forest in clusters of
cells, and background fields. Class and score rasters are written block by block (tiled,
deflate). Each size is vectorized in its own process with the engine's default block; the script
prints wall and CPU time (the process's own: steadier on a shared machine), polygon and output
vertex counts and peak RSS per size, then the least-squares exponents b of time ∝ Mpx^b.
"""
from __future__ import annotations

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
sys.path.insert(0, HERE)

from bench_suite import GDAL_CACHE_MB, PALETTE, fit_exponent, scene_index  # noqa: E402

# Palette index of bench_suite's scene -> class (0 background): 1 building (two roof colours),
# 2 road (the road grid and gravel cells), 3 water, 4 forest, fields background.
PALETTE_CLASS = np.array([1, 1, 3, 2, 4, 0, 2], np.uint8)
assert len(PALETTE_CLASS) == len(PALETTE)
ROAD_CLASS = 2
DEFAULT_SIZES = "1024,2048,4096,8192,16384"


def _wiggle(t: np.ndarray) -> np.ndarray:
    """A few pixels of smooth offset: class edges become staircases with many vertices, as in the
    engine's class maps (blended token logits), instead of straight cell edges."""
    return np.rint(5.0 * np.sin(t / 9.0) + 3.0 * np.sin(t / 3.7)).astype(np.int64)


def class_block(row: int, col: int, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) classes of the scene at (row, col), a function of position only."""
    ys = np.arange(row, row + height, dtype=np.int64)[:, None]
    xs = np.arange(col, col + width, dtype=np.int64)[None, :]
    return PALETTE_CLASS[scene_index(ys + _wiggle(xs), xs + _wiggle(ys))]


def score_block(row: int, col: int, height: int, width: int) -> np.ndarray:
    ys = np.arange(row, row + height)[:, None]
    xs = np.arange(col, col + width)[None, :]
    return (((ys * 7 + xs * 3) % 101) / 100.0).astype(np.float32)


def write_rasters(folder: str, size: int, block: int = 1024):
    """-> (class path, score path) of a size² px scene, written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    paths = (os.path.join(folder, f"classes_{size}.tif"), os.path.join(folder, f"scores_{size}.tif"))
    common = dict(driver="GTiff", width=size, height=size, count=1, crs="EPSG:32633", tiled=True,
                  blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER",
                  transform=from_origin(500000.0, 5000000.0, 0.5, 0.5))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), \
            rasterio.open(paths[0], "w", dtype="uint8", nodata=255, **common) as classes, \
            rasterio.open(paths[1], "w", dtype="float32", **common) as scores:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                window = Window(col, row, w, h)
                classes.write(class_block(row, col, h, w), 1, window=window)
                scores.write(score_block(row, col, h, w), 1, window=window)
    return paths


def worker(spec):
    import shapely

    from drseg.core.vectorize import vectorize

    started, cpu_started = time.perf_counter(), time.process_time()
    count, road_pixels, vertices = 0, 0, 0
    for region in vectorize(spec["classes"], spec["scores"], block=spec["block"]):
        count += 1
        vertices += int(shapely.get_num_coordinates(region.geometry))
        if region.class_index == ROAD_CLASS:
            road_pixels = max(road_pixels, region.pixels)
    seconds = time.perf_counter() - started
    return dict(seconds=seconds, cpu_s=time.process_time() - cpu_started, vertices=vertices, polygons=count, largest_road_px=road_pixels,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"square sizes in px ({DEFAULT_SIZES})")
    parser.add_argument("--block", type=int, default=0,
                        help="vectorizing block (default: the engine's, core.vectorize.VECTOR_BLOCK)")
    parser.add_argument("--workdir", help="folder for the rasters (default: a temporary one)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    from drseg.core.vectorize import VECTOR_BLOCK

    block = args.block or VECTOR_BLOCK
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="drseg-vec-", dir=args.workdir) as folder:
        print(f"Vectorizing the road-grid scene, block {block} px, one process per size "
              f"(GDAL_CACHEMAX={GDAL_CACHE_MB} MB)")
        print(f"{'size':>7} {'Mpx':>6} {'seconds':>8} {'CPU s':>7} {'CPU s/Mpx':>9} {'polygons':>9} "
              f"{'vertices':>10} {'largest road px':>15} {'peak RSS MB':>11}", flush=True)
        mpx, seconds, cpu, vertices = [], [], [], []
        for size in sizes:
            classes, scores = write_rasters(folder, size)
            env = dict(os.environ, GDAL_CACHEMAX=str(GDAL_CACHE_MB))
            spec = dict(classes=classes, scores=scores, block=block)
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                   json.dumps(spec)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{size:>6}² FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            m = size * size / 1e6
            mpx.append(m)
            seconds.append(r["seconds"])
            cpu.append(r["cpu_s"])
            vertices.append(r["vertices"])
            print(f"{size:>6}² {m:>6.1f} {r['seconds']:>8.2f} {r['cpu_s']:>7.2f} {r['cpu_s'] / m:>9.3f} "
                  f"{r['polygons']:>9} {r['vertices']:>10} {r['largest_road_px']:>15} {r['peak_rss_mb']:>11.0f}",
                  flush=True)
            for path in (classes, scores):
                os.remove(path)
        if len(mpx) > 1:
            print(f"over {sizes[0]}²..{sizes[-1]}²: CPU time ∝ Mpx^{fit_exponent(mpx, cpu):.2f}, "
                  f"wall time ∝ Mpx^{fit_exponent(mpx, seconds):.2f} (goal ≤ 1.05); CPU time ∝ "
                  f"output vertices^{fit_exponent(vertices, cpu):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
