"""Cost of DR-Seg's modules against the backbone forward passes they come with.

For each CLIP token grid g (default 28, 56, 112) one window of 16·g px is scored:

* backbones (random weights, real architectures): open_clip ViT-B-16 dense forward
  (core/dense_clip.DenseClip.dense_features: g² tokens) and DINO ViT-B/8 via timm (the same window:
  (2g)² tokens);
* modules on the CLIP grid (C=512 CLIP features, Cd=768 DINO features, Q queries): aligning DINO
  to the grid, decoupling (text_variance; laplacian for reference), kNN graph build (k, radius),
  propagation of the structural channels, fusion, and the whole DrSegRectifier call; the
  ProxyCLIP-style baseline (O(N²)) for reference.

Each measurement runs in a fresh subprocess so that its peak memory (CUDA: max allocated; CPU:
growth of the peak resident set over the inputs) is its own. Backbone passes that would take
minutes or more memory than a CPU machine has are skipped, and the table says so.

    .venv/bin/python benchmarks/bench_drseg_modules.py [--grids 28 56 112] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CPU limits: DenseClip's last block materialises 3 attention maps (heads·N² floats each), so
# 12544 CLIP tokens would need ~22 GB; DINO ViT-B/8 at 50176 tokens would take many minutes.
CPU_MAX_CLIP_TOKENS = 56 * 56
CPU_MAX_DINO_TOKENS = 112 * 112


def _peak_mb(device, base_rss_kb=None):
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - (base_rss_kb or 0)) / 1024


def _timed(fn, device, repeat):
    import torch

    best = float("inf")
    out = None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def worker(kind: str, grid: int, device_name: str, repeat: int, queries: int) -> dict:
    import resource

    import torch

    from drseg.core.device import resolve_device

    device = resolve_device(device_name)
    torch.manual_seed(0)
    window = 16 * grid
    with torch.no_grad():
        if kind == "clip":
            import open_clip

            from drseg.core.dense_clip import DenseClip
            from drseg.core.models.registry import DEFAULT_CLIP_MODEL

            model = open_clip.create_model(DEFAULT_CLIP_MODEL, pretrained=None)
            clip = DenseClip(model, open_clip.get_tokenizer(DEFAULT_CLIP_MODEL), device)
            pixels = torch.randn(1, 3, window, window, device=device)
            clip.dense_features(pixels[..., :32, :32])  # warm up
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, _ = _timed(lambda: clip.dense_features(pixels), device, repeat)
            return dict(seconds=seconds, peak_mb=_peak_mb(device, base), tokens=grid * grid)
        if kind == "dino":
            from drseg.core.drseg import make_dino
            from drseg.core.models.registry import DEFAULT_DINO_MODEL

            dino = make_dino(DEFAULT_DINO_MODEL).to(device)
            images = torch.randint(0, 256, (1, 3, window, window), dtype=torch.uint8)
            dino(images[..., :32, :32])
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, out = _timed(lambda: dino(images), device, repeat)
            return dict(seconds=seconds, peak_mb=_peak_mb(device, base), tokens=out.shape[-2] * out.shape[-1])
        return _modules(grid, device, repeat, queries)


def _modules(grid, device, repeat, queries):
    import resource

    import torch
    import torch.nn.functional as F

    from drseg.core.drseg import (DrSegRectifier, align_to_grid, build_knn_graph, channel_scores,
                                  clip_logits, decouple, fuse, propagate, proxy_attention)
    from drseg.core.drseg.decouple import apply_structural

    rect = DrSegRectifier()
    c, cd = 512, 768
    patch = torch.randn(1, c, grid, grid, device=device)
    cls = torch.randn(1, c, device=device)
    text = F.normalize(torch.randn(queries, c, device=device), dim=1)
    dino_native = torch.randn(1, cd, 2 * grid, 2 * grid, device=device)
    small = grid // 4  # warm up every kernel on a small grid
    rect(patch[..., :small, :small], cls, text, dino_native[..., :2 * small, :2 * small])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {}
    times["align"], dino = _timed(lambda: align_to_grid(dino_native, (grid, grid)), device, repeat)
    tokens = patch[0].reshape(c, -1).T
    times["decouple"], split = _timed(
        lambda: decouple(tokens, text, rect.semantic_ratio, "text_variance"), device, repeat)
    times["graph_build"], graph = _timed(
        lambda: build_knn_graph(dino[0], k=rect.graph_k, radius=rect.spatial_prior), device, repeat)
    times["propagation"], rectified = _timed(lambda: apply_structural(
        tokens, split, lambda x: propagate(graph, x, rect.alpha, rect.steps), channel_dim=1),
        device, repeat)
    branch_a = clip_logits(patch, cls, text)
    branch_b = clip_logits(rectified.T.reshape(1, c, grid, grid), cls, text)
    times["fusion"], _ = _timed(lambda: fuse(branch_a, branch_b), device, repeat)
    times["rectifier_total"], _ = _timed(lambda: rect(patch, cls, text, dino_native), device, repeat)
    peak = _peak_mb(device, base)
    times["laplacian_criterion"], _ = _timed(
        lambda: channel_scores(tokens, text, "laplacian", graph), device, repeat)
    if grid * grid <= 112 * 112:
        times["proxy_baseline"], _ = _timed(
            lambda: proxy_attention(dino[0], patch[0]), device, max(1, repeat // 2))
    return dict(seconds=times, peak_mb=peak, tokens=grid * grid)


def _run_worker(kind, grid, args):
    repeat = args.repeat if kind == "modules" else args.backbone_repeat
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--grids", str(grid),
           "--device", args.device, "--repeat", str(repeat), "--queries", str(args.queries)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[28, 56, 112])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each module timing (best)")
    parser.add_argument("--backbone-repeat", type=int, default=1, help="repeats of backbone passes")
    parser.add_argument("--queries", type=int, default=10, help="text queries (classes+synonyms)")
    parser.add_argument("--all-backbones", action="store_true",
                        help="run backbone passes even where the CPU limits would skip them")
    parser.add_argument("--worker", choices=["clip", "dino", "modules"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.grids[0], args.device, args.repeat, args.queries)))
        return 0

    import torch

    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    print(f"device: {'cuda' if cuda else 'cpu'} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"modules best of {args.repeat}, backbones best of {args.backbone_repeat}; Q={args.queries}, C=512, Cd=768; rectifier defaults "
          "(rho=0.3, k=8, radius=5, alpha=0.8, 10 steps)")
    for g in args.grids:
        print(f"\n== CLIP grid {g}x{g} = {g * g} tokens (window {16 * g} px; DINO grid {2 * g}x{2 * g})")
        backbone = {}
        for kind, limit in (("clip", CPU_MAX_CLIP_TOKENS), ("dino", CPU_MAX_DINO_TOKENS)):
            tokens = g * g if kind == "clip" else 4 * g * g
            if not cuda and not args.all_backbones and tokens > limit:
                print(f"  {kind:5s} forward: skipped on CPU ({tokens} tokens > {limit}; "
                      "--all-backbones forces it)")
                continue
            r = _run_worker(kind, g, args)
            if "error" in r:
                print(f"  {kind:5s} forward: failed ({r['error']})")
                continue
            backbone[kind] = r["seconds"]
            print(f"  {kind:5s} forward: {r['seconds']:8.3f} s  peak {r['peak_mb']:8.1f} MB  ({r['tokens']} tokens)")
        m = _run_worker("modules", g, args)
        if "error" in m:
            print(f"  modules: failed ({m['error']})")
            continue
        s = m["seconds"]
        for name in ("align", "decouple", "graph_build", "propagation", "fusion", "rectifier_total",
                     "laplacian_criterion", "proxy_baseline"):
            if name in s:
                print(f"  {name:20s} {s[name]:8.4f} s")
        print(f"  modules peak memory: {m['peak_mb']:.1f} MB")
        total = s["rectifier_total"]
        if len(backbone) == 2:
            both = backbone["clip"] + backbone["dino"]
            print(f"  RATIO modules / (CLIP + DINO forward) = {total:.3f} / {both:.3f} = {total / both:.3f}")
        for kind, secs in backbone.items():
            print(f"  ratio modules / {kind} forward = {total / secs:.3f}")
        if not backbone:
            print("  ratio: no backbone pass measured at this grid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
