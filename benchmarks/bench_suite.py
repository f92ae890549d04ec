"""Speed and memory of the engine (`core.segment.run_segmentation`), in one command.

    .venv/bin/python benchmarks/bench_suite.py            # default run (< 25 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_suite.py --quick    # small sizes only (< 3 min)
    .venv/bin/python benchmarks/bench_suite.py --sizes 1024,4096 --vit-sizes 1024 --device cpu

For the engine's default settings (window 224, stride 112, block 512, batch 8, threshold 0.3,
GeoPackage + class raster outputs) it prints:

1. agreement of the engine's class map with the research-style baseline
   (benchmarks/research_baseline.py) on a small raster, with the cheap scorer and with ViT-B-16:
   identical with the engine's blend window, nearly so with the research count map;
2. ViT-B-16 (open_clip, random weights: the real architecture at its real cost) end to end:
   megapixels per second and the share of time outside the model's forward passes. The text
   encoding of the class list (80 ImageNet templates per query) is measured once and reported on
   its own; the runs then reuse its embeddings;
3. the memory curve, 1k² .. 16k² px, with a cheap colour scorer (so that the engine's own reading,
   stitching, writing and vectorizing show): time split, Mpx/s, peak RSS while segmenting and for
   the whole run (which must stay flat);
4. how time grows with area (least-squares fit time ∝ Mpx^b) and whether memory is flat;
5. the engine against the research-style baseline (whole image in memory, full-size Q×H×W
   accumulator and count map, then argmax), both writing only the class GeoTIFF from the same
   input with the same scorer: both times and both peak memories;
6. the engine with torch's default thread count against the one thread used above.

Every measurement runs in a fresh process, so each peak RSS (ru_maxrss) is that run's own. It
includes the Python/torch/GDAL libraries (and the CLIP weights in ViT rows), hence the "run adds"
column (growth of the peak during the run). "Peak seg" is the peak up to the start of vectorizing
(taken from the engine's progress messages). GDAL's block cache would grow with what is read and
written, up to 5% of RAM, so every measured process runs with GDAL_CACHEMAX=64 (MB). ViT-B-16 runs
use torch's default thread count (one per core; --threads changes it); cheap-scorer runs use one
thread (--cheap-threads), so that the engine's own work is timed the same way on a busy machine:
with one thread per core, its many small tensor operations wait for descheduled threads when
other processes load the CPU (section 6 compares). CUDA rows appear when torch sees a GPU. Test rasters are generated block by
block (the generator never holds a whole raster): a blocky 3-band scene with a road grid,
deflate-compressed, so even 16k² px takes a few MB of disk. Timings on a shared machine are
noisy (the load average is printed with every progress line); memory figures are not. The exit
status is 1 when a check fails (engine and baseline disagree, memory not flat, a run failed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from drseg.core.models.registry import DEFAULT_CLIP_MODEL

HERE = os.path.dirname(os.path.abspath(__file__))

CLASSES = "building,roof,house; road; water; barren; forest; agricultural"  # 6 classes, 8 queries
THRESHOLD = 0.3           # the engine's default
GDAL_CACHE_MB = 64
AGREEMENT_THRESHOLD = 0.0         # every pixel gets a class: the strictest comparison
AGREEMENT_SIZE = (640, 560)       # height, width of the agreement raster (cheap scorer)
AGREEMENT_SIZE_VIT = (448, 560)   # ViT-B-16 on CPU: 12 windows

DEFAULTS = dict(sizes="1024,2048,4096,8192,16384", vit_sizes="1024,2048",
                compare_sizes="1024,2048,4096", compare_vit_sizes="1024", templates="imagenet",
                threads_check=[("colour", 2048), ("vit", 512)])
QUICK = dict(sizes="512,1024,2048", vit_sizes="512", compare_sizes="512,1024",
             compare_vit_sizes="512", templates="single", threads_check=[("colour", 1024)])


# ---------------------------------------------------------------------------------------------
# Synthetic scene and cheap scorer
# ---------------------------------------------------------------------------------------------
PALETTE = np.array([[200, 60, 50], [245, 245, 245], [30, 90, 200], [160, 140, 110],
                    [40, 140, 50], [215, 205, 150], [90, 90, 90]], np.uint8)
CELL = 48      # scene cells (fields, roofs): not a multiple of the 16-px tokens or 112-px stride
ROAD = (997, 20)  # a 20 px road every 997 px, both ways


def scene_index(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Palette index of the synthetic scene at pixel coordinates (ys, xs) (broadcast): a function
    of the position only, so blocks can be made independently."""
    cell_y, cell_x = ys // CELL, xs // CELL
    key = (cell_y * 73856093) ^ (cell_x * 19349663)
    key = ((key ^ (key >> 7)) * 2654435761) & 0xFFFFFFFF
    index = (key >> 11) % len(PALETTE)
    road = ((ys % ROAD[0]) < ROAD[1]) | ((xs % ROAD[0]) < ROAD[1])
    return np.where(road, len(PALETTE) - 1, index)


def scene_block(row: int, col: int, height: int, width: int) -> np.ndarray:
    """uint8 (3, height, width) of the synthetic scene at (row, col)."""
    ys = np.arange(row, row + height, dtype=np.int64)[:, None]
    xs = np.arange(col, col + width, dtype=np.int64)[None, :]
    return np.ascontiguousarray(PALETTE[scene_index(ys, xs)].transpose(2, 0, 1))


def write_scene(path: str, height: int, width: int, block: int = 1024) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                           dtype="uint8", crs="EPSG:32633", tiled=True, blockxsize=256,
                           blockysize=256, compress="deflate", BIGTIFF="IF_SAFER",
                           transform=from_origin(500000.0, 5000000.0, 0.5, 0.5)) as dst:
            for row in range(0, height, block):
                for col in range(0, width, block):
                    h, w = min(block, height - row), min(block, width - col)
                    dst.write(scene_block(row, col, h, w), window=Window(col, row, w, h))


class ColourScorer:
    """Per-token logits from the token's mean brightness against one centre per query: nearly free,
    so what is timed is the engine (reading, stitching, writing, vectorizing)."""

    logit_scale = 50.0
    patch = 16

    def set_queries(self, queries):
        self.centres = np.linspace(0.0, 255.0, len(queries), dtype=np.float32)

    def score_windows(self, images):
        b, _, h, w = images.shape
        p = self.patch
        tokens = images.reshape(b, 3, h // p, p, w // p, p).mean(axis=(1, 3, 5), dtype=np.float32)
        return (1.0 - np.abs(tokens[:, None] - self.centres[None, :, None, None]) / 255.0
                ).astype(np.float32)


class TimedScorer:
    """Wraps a scorer: times text encoding and window forward passes apart; optionally reuses text
    embeddings computed earlier (as a cache of the class list would)."""

    def __init__(self, inner, text_features=None):
        self.inner = inner
        self.logit_scale = inner.logit_scale
        self.text_features = text_features
        self.text_s = 0.0
        self.forward_s = 0.0
        self.windows = 0

    def set_queries(self, queries):
        started = time.perf_counter()
        if self.text_features is not None:
            self.inner.text_features = self.text_features.to(self.inner.device)
        else:
            self.inner.set_queries(queries)
        self.text_s += time.perf_counter() - started

    def score_windows(self, images):
        started = time.perf_counter()
        logits = self.inner.score_windows(images)  # numpy on the CPU: a CUDA run has synchronised
        self.forward_s += time.perf_counter() - started
        self.windows += len(images)
        return logits


# ---------------------------------------------------------------------------------------------
# Workers: one measurement per fresh process
# ---------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _threads():
    import torch
    return torch.get_num_threads()


def _templates(name):
    if name == "single":
        return ["a photo of a {}."]
    return None  # DenseClip's default: the 80 ImageNet templates


def _build_scorer(spec):
    """-> (TimedScorer, queries, owner, extra dict)."""
    from drseg.core.classes import flatten_queries, parse_classes

    queries, owner = flatten_queries(parse_classes(CLASSES))
    extra = {}
    if spec["scorer"] == "colour":
        return TimedScorer(ColourScorer()), queries, owner, extra
    import torch

    from drseg.core.models.clip import load_clip
    from drseg.core.dense_clip import DenseClip
    from drseg.core.device import resolve_device

    device = resolve_device(spec["device"])
    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = load_clip(DEFAULT_CLIP_MODEL, "random", device)
    extra["load_s"] = time.perf_counter() - started
    dense = DenseClip(model, tokenizer, device, templates=_templates(spec["templates"]))
    cache = spec["text_cache"]
    if os.path.exists(cache):
        text = torch.load(cache, map_location="cpu")
    else:
        started = time.perf_counter()
        dense.set_queries(queries)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        extra["text_s"] = time.perf_counter() - started
        text = dense.text_features.cpu()
        torch.save(text, cache)
    return TimedScorer(dense, text), queries, owner, extra


def _cuda_reset(spec):
    if spec.get("device", "cpu").startswith("cuda"):
        import torch
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb(spec):
    if spec.get("device", "cpu").startswith("cuda"):
        import torch
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return None


def _engine(spec, scorer, raster, outputs, workdir, tag):
    """One run_segmentation; the progress callback marks when vectorizing starts and when its
    cross-block join starts, and ru_maxrss (monotone) taken there is the peak up to that point."""
    from drseg.core.segment import SegmentationRequest, run_segmentation

    marks = {}

    def progress(fraction, message):
        for name, prefix in (("vectorize", "Vectorizing"), ("join", "Joining")):
            if name not in marks and message.startswith(prefix):
                marks[name] = (time.perf_counter(), _peak_rss_mb())

    out_vector = os.path.join(workdir, f"{tag}.gpkg") if outputs == "both" else None
    out_raster = os.path.join(workdir, f"{tag}.tif")
    request = SegmentationRequest(raster=raster, classes=CLASSES, threshold=spec["threshold"],
                                  out_vector=out_vector, out_raster=out_raster)
    started = time.perf_counter()
    result = run_segmentation(request, scorer=scorer, progress=progress)
    ended = time.perf_counter()
    phases = dict(peak_segmenting_mb=marks.get("vectorize", (None, None))[1],
                  peak_polygonising_mb=marks.get("join", (None, None))[1],
                  join_s=ended - marks["join"][0] if "join" in marks else None)
    return result, ended - started, phases


def worker_engine(spec):
    scorer, _, _, extra = _build_scorer(spec)
    before = _peak_rss_mb()
    _cuda_reset(spec)
    result, total, phases = _engine(spec, scorer, spec["raster"], spec["outputs"], spec["workdir"],
                                    f"engine_{spec['size']}_{spec['scorer']}")
    t = result.timings
    return dict(extra, **phases, total_s=total, read_s=t.read, model_s=t.model, stitch_s=t.stitch,
                write_s=t.write, vectorize_s=t.vectorize, windows=t.windows,
                text_s_run=scorer.text_s, forward_s=scorer.forward_s,
                polygons=result.polygon_count, peak_rss_mb=_peak_rss_mb(), before_rss_mb=before,
                gpu_peak_mb=_cuda_peak_mb(spec), threads=_threads())


def worker_baseline(spec):
    sys.path.insert(0, HERE)
    from research_baseline import segment_raster

    scorer, queries, owner, extra = _build_scorer(spec)
    before = _peak_rss_mb()
    _cuda_reset(spec)
    started = time.perf_counter()
    scorer.set_queries(queries)
    result = segment_raster(spec["raster"], scorer, owner,
                            out_raster=os.path.join(spec["workdir"], f"baseline_{spec['size']}.tif"),
                            threshold=spec["threshold"], weighting="count")
    total = time.perf_counter() - started
    t = result.timings
    return dict(extra, total_s=total, read_s=t.read, model_s=t.model, accumulate_s=t.accumulate,
                classify_s=t.classify, write_s=t.write, windows=t.windows, forward_s=scorer.forward_s,
                peak_rss_mb=_peak_rss_mb(), before_rss_mb=before, gpu_peak_mb=_cuda_peak_mb(spec),
                threads=_threads())


def worker_agree(spec):
    """Engine vs baseline on one small raster, same scorer object, same process."""
    import rasterio
    sys.path.insert(0, HERE)
    from research_baseline import segment_raster

    scorer, queries, owner, extra = _build_scorer(spec)
    result, _, _ = _engine(spec, scorer, spec["raster"], "raster", spec["workdir"],
                           f"agree_{spec['scorer']}")
    with rasterio.open(result.raster_path) as src:
        engine = src.read(1)
    out = dict(extra, pixels=int(engine.size), background=float((engine == 0).mean()),
               classes_seen=int(len(np.unique(engine))))
    for weighting in ("ramp", "count"):
        scorer.set_queries(queries)
        base = segment_raster(spec["raster"], scorer, owner, threshold=spec["threshold"],
                              weighting=weighting)
        differ = int((base.classes != engine).sum())
        out[weighting] = dict(agreement=100.0 * (1.0 - differ / engine.size), differ=differ)
    return out


WORKERS = {"engine": worker_engine, "baseline": worker_baseline, "agree": worker_agree}


# ---------------------------------------------------------------------------------------------
# Parent: orchestration and printing
# ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, message):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"[{time.perf_counter() - self.start:6.0f}s, load {load:4.1f}] {message}", flush=True)


def run_worker(spec, timeout=1800):
    env = dict(os.environ, GDAL_CACHEMAX=str(GDAL_CACHE_MB), PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(line.strip() for line in tail)}
    result = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def machine_description():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    ram = int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({cpu})" + (f", {ram:.1f} GiB RAM" if ram else "")


def fit_exponent(mpx, seconds):
    """Least-squares fit of log(time) = a + b·log(Mpx): b (None with fewer than 2 sizes)."""
    if len(mpx) < 2:
        return None
    return float(np.polyfit(np.log(mpx), np.log(seconds), 1)[0])


def fit_linear(mpx, seconds):
    """time = fixed + per_mpx·Mpx (least squares) -> (fixed, per_mpx)."""
    per, fixed = np.polyfit(np.asarray(mpx, float), np.asarray(seconds, float), 1)
    return float(fixed), float(per)


def _mb(value):
    return "-" if value is None else f"{value:.0f}"


def _s(value):
    return "-" if value is None else f"{value:.1f}"


class Suite:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.clock = Clock()
        self.rasters = {}
        self.text_s = {}
        self.engine_runs = {}   # (scorer, device, size, threads, outputs) -> result, for reuse
        self.md = []            # Markdown for --markdown
        self.failures = []
        self.queries = len([q for part in CLASSES.split(";") for q in part.split(",") if q.strip()])

    # -- helpers ---------------------------------------------------------------------------------
    def out(self, line="", md=None):
        print(line, flush=True)
        if md is not None:
            self.md.append(md)

    def raster(self, height, width=None):
        width = width or height
        key = (height, width)
        if key not in self.rasters:
            free = shutil.disk_usage(self.workdir).free
            # The scene, class raster, score raster and GeoPackage stay well below 8 bytes/px
            # (a 16k² scene itself is a few MB); refuse rather than fill the disk.
            need = 8 * height * width
            if free < need:
                raise SystemExit(f"Not enough disk space in {self.workdir} for a {width}×{height} "
                                 f"px scene and its outputs: {free / 2 ** 30:.1f} GiB free, "
                                 f"{need / 2 ** 30:.1f} GiB wanted")
            path = os.path.join(self.workdir, f"scene_{width}x{height}.tif")
            started = time.perf_counter()
            write_scene(path, height, width)
            self.clock(f"generated a {width}×{height} px scene block by block: "
                       f"{os.path.getsize(path) / 2 ** 20:.1f} MB on disk, "
                       f"{time.perf_counter() - started:.0f} s")
            self.rasters[key] = path
        return self.rasters[key]

    def threads_for(self, scorer):
        """torch threads of a measured process (0: torch's default)."""
        return self.args.threads if scorer == "vit" else self.args.cheap_threads

    def spec(self, task, scorer, device="cpu", threads=None, **extra):
        spec = dict(task=task, scorer=scorer, device=device, threshold=THRESHOLD,
                    templates=self.args.templates, workdir=self.workdir,
                    threads=self.threads_for(scorer) if threads is None else threads,
                    text_cache=os.path.join(self.workdir, f"text_{device}_{self.args.templates}.pt"))
        spec.update(extra)
        return spec

    def measure(self, label, spec):
        self.clock(f"{label} ...")
        result = run_worker(spec)
        if "error" in result:
            self.failures.append(f"{label}: {result['error']}")
            self.clock(f"{label} FAILED: {result['error']}")
        elif "text_s" in result:
            self.text_s.setdefault(spec["device"], result["text_s"])
        return result

    def engine(self, scorer, device, size, threads=None, outputs="both"):
        threads = self.threads_for(scorer) if threads is None else threads
        key = (scorer, device, size, threads, outputs)
        if key not in self.engine_runs:
            what = "GeoPackage + class raster" if outputs == "both" else "class raster only"
            thread_text = (f"{threads} torch thread{'s' if threads > 1 else ''}" if threads
                           else f"torch's default threads ({self.default_threads})")
            r = self.measure(f"engine, {DEFAULT_CLIP_MODEL if scorer == 'vit' else 'cheap scorer'}, {size}² px, "
                             f"{what}, {device}, {thread_text}",
                             self.spec("engine", scorer, device, threads, raster=self.raster(size),
                                       size=size, outputs=outputs))
            if "error" not in r:
                r["size"], r["mpx"] = size, size * size / 1e6
                r["outside"] = 1.0 - (r["forward_s"] + r["text_s_run"]) / r["total_s"]
                r["adds"] = r["peak_rss_mb"] - r["before_rss_mb"]
            self.engine_runs[key] = r
        return self.engine_runs[key]

    # -- 1 ---------------------------------------------------------------------------------------
    def agreement(self, devices):
        self.out(f"\n== 1. Agreement: the engine's class map vs the research-style baseline "
                 f"(same scorer, same input, threshold {AGREEMENT_THRESHOLD}) ==",
                 md="\n**1. Agreement** of the engine's class map with the baseline's (same scorer, "
                    f"same input, threshold {AGREEMENT_THRESHOLD}: every pixel gets a class):\n")
        rows = [("cheap scorer", "cpu", AGREEMENT_SIZE,
                 self.measure("agreement, cheap scorer",
                              self.spec("agree", "colour", raster=self.raster(*AGREEMENT_SIZE),
                                        threshold=AGREEMENT_THRESHOLD)))]
        for device in devices:
            rows.append((DEFAULT_CLIP_MODEL, device, AGREEMENT_SIZE_VIT, self.measure(
                f"agreement, ViT-B-16 on {device} (encodes the class list first)",
                self.spec("agree", "vit", device, raster=self.raster(*AGREEMENT_SIZE_VIT),
                          threshold=AGREEMENT_THRESHOLD))))
        self.out(f"{'scorer':<13} {'device':<6} {'raster':>9}  {'baseline with the engine blend':>30}  "
                 f"{'research baseline (count map)':>30}",
                 md="| scorer | device | raster | baseline with the engine's blend window "
                    "| research baseline (count map) |\n|---|---|---|---|---|")
        for name, device, (h, w), r in rows:
            if "error" in r:
                continue
            ramp, count = r["ramp"], r["count"]
            self.out(f"{name:<13} {device:<6} {f'{w}×{h}':>9}  "
                     f"{ramp['agreement']:>20.4f}% {'(' + str(ramp['differ']) + ' px)':>9}  "
                     f"{count['agreement']:>20.4f}% {'(' + str(count['differ']) + ' px)':>9}",
                     md=f"| {name} | {device} | {w}×{h} px | {ramp['agreement']:.4f}% "
                        f"({ramp['differ']} px differ) | {count['agreement']:.4f}% "
                        f"({count['differ']} px differ) |")
            if ramp["differ"] > 0.0001 * r["pixels"]:
                self.failures.append(f"engine and baseline with the engine's blend differ on "
                                     f"{ramp['differ']} px ({name}, {device})")
        note = ("The engine blends overlapping windows with a smooth sin² window, research code with "
                "equal weights (a count map): with the same weights the class maps are identical, "
                "with research weights they differ only where overlapping windows disagree (with "
                "random ViT weights, windows disagree far more often than with trained ones).")
        self.out(note, md=f"\n{note}")

    # -- 2, 3 ------------------------------------------------------------------------------------
    def engine_table(self, title, scorer, sizes, device):
        self.out(f"\n== {title} ==", md=f"\n**{title}**\n")
        vit = scorer == "vit"
        if vit and device in self.text_s:
            templates = "80 prompt templates" if self.args.templates == "imagenet" else "1 prompt template"
            line = (f"Text encoding of the class list ({self.queries} queries × {templates}): {self.text_s[device]:.1f} s, once per class list; the runs below "
                    f"reuse the embeddings.")
            self.out(line, md=line + "\n")
        head = (f"{'size':>7} {'Mpx':>6} {'total s':>8} {'read':>5} {'fwd':>6} {'stitch':>6} "
                f"{'write':>6} {'vector':>6} {'(join)':>6} {'polygons':>8} {'Mpx/s':>6} "
                + (f"{'+text':>6} " if vit else "")
                + f"{'outside fwd':>11} {'peak seg MB':>11} {'peak RSS MB':>11} {'run adds':>8}"
                + (f" {'GPU MB':>7}" if device.startswith("cuda") else ""))
        self.md += ["| size | total s | forward s | stitch s | write s | vectorize s (join) | Mpx/s "
                    + ("| Mpx/s with text " if vit else "")
                    + "| outside forward | peak RSS segmenting MB | peak RSS MB | run adds MB |",
                    "|---" * (11 if vit else 10) + "|"]
        rows, printed = [], False
        for size in sizes:
            r = self.engine(scorer, device, size)
            if "error" in r:
                continue
            if not printed:
                self.out(head)
                printed = True
            text = self.text_s.get(device, 0.0)
            with_text = r["mpx"] / (r["total_s"] + text)
            self.out(f"{size:>6}² {r['mpx']:>6.1f} {r['total_s']:>8.1f} {r['read_s']:>5.1f} "
                     f"{r['forward_s']:>6.1f} {r['stitch_s']:>6.1f} {r['write_s']:>6.1f} "
                     f"{r['vectorize_s']:>6.1f} {_s(r['join_s']):>6} {r['polygons']:>8} "
                     f"{r['mpx'] / r['total_s']:>6.3f} " + (f"{with_text:>6.3f} " if vit else "")
                     + f"{100 * r['outside']:>10.1f}% {_mb(r['peak_segmenting_mb']):>11} "
                     f"{r['peak_rss_mb']:>11.0f} {r['adds']:>8.0f}"
                     + (f" {r['gpu_peak_mb'] or 0:>7.0f}" if device.startswith("cuda") else ""),
                     md=f"| {size}² | {r['total_s']:.1f} | {r['forward_s']:.1f} | {r['stitch_s']:.1f} "
                        f"| {r['write_s']:.1f} | {r['vectorize_s']:.1f} ({_s(r['join_s'])}) "
                        f"| {r['mpx'] / r['total_s']:.3f} " + (f"| {with_text:.3f} " if vit else "")
                        + f"| {100 * r['outside']:.1f}% | {_mb(r['peak_segmenting_mb'])} "
                        f"| {r['peak_rss_mb']:.0f} | {r['adds']:.0f} |")
            rows.append(r)
        return rows

    # -- 4 ---------------------------------------------------------------------------------------
    def growth(self, rows, label):
        if len(rows) < 2:
            return
        mpx = [r["mpx"] for r in rows]
        total = [r["total_s"] for r in rows]
        b = fit_exponent(mpx, total)
        fixed, per = fit_linear(mpx, total)
        line = (f"{label}: time ∝ Mpx^{b:.2f} over {rows[0]['size']}²..{rows[-1]['size']}² "
                f"(linear fit {fixed:.1f} s + {per:.2f} s/Mpx)")
        segmenting = [r["total_s"] - r["vectorize_s"] for r in rows]
        if any(r["vectorize_s"] > 0.05 * r["total_s"] for r in rows):
            line += (f"; without vectorizing Mpx^{fit_exponent(mpx, segmenting):.2f}, "
                     f"vectorizing alone Mpx^{fit_exponent(mpx, [r['vectorize_s'] for r in rows]):.2f}")
        self.out(line, md=f"- {line}")

    def flatness(self, rows):
        """Verdict from the first size ≥ 2048² on: below it the engine's fixed-size buffers
        (512-px stitch blocks, 2048-px polygonising blocks, the 64 MB GDAL cache) still grow."""
        full = [r for r in rows if r["size"] >= 2048]
        if len(full) < 2:
            if len(rows) >= 2:
                line = (f"Peak RSS {rows[0]['peak_rss_mb']:.0f} MB at {rows[0]['size']}² -> "
                        f"{rows[-1]['peak_rss_mb']:.0f} MB at {rows[-1]['size']}² (no verdict: "
                        "the engine's block buffers fill up until 2048²)")
                self.out(line, md=f"- {line}")
            return
        ref, last = full[0], full[-1]
        area = last["mpx"] / ref["mpx"]
        for key, what in (("peak_segmenting_mb", "while segmenting (read, model, stitch, write)"),
                          ("peak_rss_mb", "whole run (with vectorizing)")):
            if ref.get(key) is None or last.get(key) is None:
                continue
            grow = last[key] - ref[key]
            verdict = "flat" if grow <= 100 else "NOT FLAT"
            line = (f"Peak RSS {what}: {ref[key]:.0f} MB at {ref['size']}² -> {last[key]:.0f} MB at "
                    f"{last['size']}² ({area:.0f}× the area): {grow:+.0f} MB, {verdict}")
            self.out(line, md=f"- {line}")
            if verdict != "flat":
                self.failures.append(line)

    # -- 5 ---------------------------------------------------------------------------------------
    def comparison(self, title, scorer, sizes, device):
        self.out(f"\n== {title} ==", md=f"\n**{title}**\n")
        note = ("Both write only the class GeoTIFF, from the same file with the same scorer; each "
                "run in its own process.")
        self.out(note, md=note + "\n")
        self.out(f"{'size':>7} {'engine s':>9} {'(fwd)':>7} {'baseline s':>10} {'(fwd)':>7} "
                 f"{'baseline/engine':>15} {'engine peak MB':>14} {'baseline peak MB':>16} "
                 f"{'engine adds':>11} {'baseline adds':>13} {'Q×H×W float32 MB':>16}",
                 md="| size | engine s (forward) | baseline s (forward) | engine peak RSS MB "
                    "| baseline peak RSS MB | engine run adds MB | baseline run adds MB "
                    "| Q×H×W float32 MB |\n|---|---|---|---|---|---|---|---|")
        for size in sizes:
            engine = self.engine(scorer, device, size, outputs="raster")
            base = self.measure(f"research baseline, {DEFAULT_CLIP_MODEL if scorer == 'vit' else 'cheap scorer'}, "
                                f"{size}² px, {device}",
                                self.spec("baseline", scorer, device, raster=self.raster(size), size=size))
            if "error" in engine or "error" in base:
                continue
            b_add = base["peak_rss_mb"] - base["before_rss_mb"]
            full = self.queries * size * size * 4 / 2 ** 20
            self.out(f"{size:>6}² {engine['total_s']:>9.1f} {engine['forward_s']:>7.1f} "
                     f"{base['total_s']:>10.1f} {base['forward_s']:>7.1f} "
                     f"{base['total_s'] / engine['total_s']:>14.2f}× {engine['peak_rss_mb']:>14.0f} "
                     f"{base['peak_rss_mb']:>16.0f} {engine['adds']:>11.0f} {b_add:>13.0f} {full:>16.0f}",
                     md=f"| {size}² | {engine['total_s']:.1f} ({engine['forward_s']:.1f}) "
                        f"| {base['total_s']:.1f} ({base['forward_s']:.1f}) "
                        f"| {engine['peak_rss_mb']:.0f} | {base['peak_rss_mb']:.0f} "
                        f"| {engine['adds']:.0f} | {b_add:.0f} | {full:.0f} |")

    # -- 6 ---------------------------------------------------------------------------------------
    def threads_check(self, default_threads):
        if default_threads <= 1:
            return
        title = f"6. Torch threads: one vs torch's default ({default_threads}) on this machine"
        self.out(f"\n== {title} ==", md=f"\n**{title}**\n")
        self.out(f"{'run':<24} {'threads':>7} {'total s':>8} {'fwd':>6} {'stitch':>7}",
                 md="| run | torch threads | total s | forward s | stitch s |\n|---|---|---|---|---|")
        for scorer, size in self.args.threads_check:
            for threads in (1, 0):
                r = self.engine(scorer, "cpu", size, threads=threads)
                if "error" in r:
                    continue
                name = f"{DEFAULT_CLIP_MODEL if scorer == 'vit' else 'cheap scorer'} {size}²"
                shown = threads or default_threads
                self.out(f"{name:<24} {shown:>7} {r['total_s']:>8.1f} {r['forward_s']:>6.1f} "
                         f"{r['stitch_s']:>7.1f}",
                         md=f"| {name} | {shown} | {r['total_s']:.1f} | {r['forward_s']:.1f} "
                            f"| {r['stitch_s']:.1f} |")

    # -- the whole run ---------------------------------------------------------------------------
    def run(self):
        a = self.args
        import rasterio
        import torch

        default_threads = torch.get_num_threads()
        devices = ["cpu"]
        if a.device in ("auto", "cuda") and torch.cuda.is_available():
            devices = ["cpu", "cuda"] if a.device == "auto" else ["cuda"]
        elif a.device == "cuda":
            raise SystemExit("--device cuda: no usable CUDA GPU here")
        machine = machine_description()
        if "cuda" in devices:
            machine += f", GPU {torch.cuda.get_device_name(0)}"
        software = (f"Python {platform.python_version()}, torch {torch.__version__}, "
                    f"GDAL {rasterio.__gdal_version__}")
        self.default_threads = default_threads

        def described(n):
            return f"{n} thread{'s' if n > 1 else ''}" if n else f"torch's default ({default_threads})"

        threads = (f"torch threads: {described(a.threads)} in ViT-B-16 runs, "
                   f"{described(a.cheap_threads)} in cheap-scorer runs")
        command = " ".join(["python benchmarks/bench_suite.py"] + sys.argv[1:])
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        templates = "80 ImageNet prompt templates" if a.templates == "imagenet" else "one prompt template"
        header = [
            f"DR-Seg engine speed and memory on {machine}",
            f"{software}; {threads}; GDAL_CACHEMAX={GDAL_CACHE_MB} MB in every measured process",
            f"Command: {command}",
            f"Engine defaults: window 224, stride 112, block 512, batch 8, threshold {THRESHOLD}; "
            f"classes '{CLASSES}' ({self.queries} queries, {templates} each); devices: "
            f"{', '.join(devices)}",
            "Scene: synthetic 3-band uint8 GeoTIFF (48 px cells of 7 colours and a road grid, "
            "deflate), written block by block. ViT-B-16 = open_clip ViT-B-16 with random weights "
            "(the real architecture and cost); model loading is not timed. Cheap scorer = mean "
            "token colour (almost free, so the engine's own work shows).",
            f"Load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (a shared machine: "
            "timings are noisy, memory is not)",
        ]
        for line in header:
            self.out(line)
        self.md += [f"Measured on {machine}; {software}; {threads}; GDAL_CACHEMAX={GDAL_CACHE_MB} MB.",
                    f"Command: `{command}` (load average at start {load[0]:.1f}; the machine was "
                    "shared, so timings are noisy, memory figures are not).",
                    f"Engine defaults (window 224, stride 112, block 512, batch 8, threshold "
                    f"{THRESHOLD}), classes `{CLASSES}` ({self.queries} queries, {templates} each). "
                    "Synthetic blocky 3-band GeoTIFF scenes; ViT-B-16 with random weights (real "
                    "architecture and cost, model loading not timed); the cheap scorer is a mean "
                    "token colour, so the engine's own work shows."]

        self.agreement(devices)
        vit_rows = {}
        for device in devices:
            vit_rows[device] = self.engine_table(
                f"2. ViT-B-16 end to end (GeoPackage + class raster) on {device}", "vit",
                a.vit_sizes, device)
        cheap = self.engine_table("3. Memory curve: cheap scorer end to end (GeoPackage + class "
                                  "raster), cpu", "colour", a.sizes, "cpu")
        self.out("\n== 4. How time grows with area; is memory flat? ==", md="\n**4. Growth**\n")
        self.growth(cheap, "Cheap scorer")
        for device in devices:
            self.growth(vit_rows[device], f"ViT-B-16 on {device}")
        self.flatness(cheap)
        self.comparison("5. Engine vs research-style whole-image baseline, cheap scorer, cpu",
                        "colour", a.compare_sizes, "cpu")
        for device in devices:
            self.comparison(f"5. Engine vs research-style whole-image baseline, ViT-B-16, {device}",
                            "vit", a.compare_vit_sizes, device)
        if "cpu" in devices:
            self.threads_check(default_threads)

        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        self.out(f"\nDone in {time.perf_counter() - self.clock.start:.0f} s; load average at the end "
                 f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}.")
        if self.failures:
            self.out("PROBLEMS:", md="\nProblems found:\n")
            for failure in self.failures:
                self.out(f"  - {failure}", md=f"- {failure}")
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write("\n".join(self.md) + "\n")
            print(f"Markdown written to {a.markdown}")
        return 1 if self.failures else 0


def parse_sizes(text):
    return [int(s) for s in str(text).replace(" ", "").split(",") if s]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only (< 3 min), one "
                        "prompt template per query instead of 80")
    parser.add_argument("--sizes", help=f"memory curve, cheap scorer (default {DEFAULTS['sizes']})")
    parser.add_argument("--vit-sizes", help=f"ViT-B-16 end to end (default {DEFAULTS['vit_sizes']})")
    parser.add_argument("--compare-sizes", help="engine vs baseline, cheap scorer "
                        f"(default {DEFAULTS['compare_sizes']})")
    parser.add_argument("--compare-vit-sizes", help="engine vs baseline, ViT-B-16 "
                        f"(default {DEFAULTS['compare_vit_sizes']})")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto (default): the CPU, and CUDA too when torch sees a GPU")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in ViT-B-16 runs (default 0: torch's default, one "
                             "per core)")
    parser.add_argument("--cheap-threads", type=int, default=1,
                        help="torch threads in cheap-scorer runs (default 1, see section 6)")
    parser.add_argument("--templates", choices=["imagenet", "single"],
                        help="prompt templates per query: the 80 ImageNet ones (default) or one")
    parser.add_argument("--workdir", help="folder for scenes and outputs (default: a temporary one)")
    parser.add_argument("--markdown", help="also write the results as Markdown to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            import torch
            torch.set_num_threads(spec["threads"])
        print(json.dumps(WORKERS[spec["task"]](spec)), flush=True)
        return 0
    preset = QUICK if args.quick else DEFAULTS
    for key in ("sizes", "vit_sizes", "compare_sizes", "compare_vit_sizes"):
        setattr(args, key, parse_sizes(getattr(args, key) or preset[key]))
    args.templates = args.templates or preset["templates"]
    args.threads_check = preset["threads_check"]
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        return Suite(args, args.workdir).run()
    with tempfile.TemporaryDirectory(prefix="drseg-bench-") as workdir:
        return Suite(args, workdir).run()


if __name__ == "__main__":
    sys.exit(main())
