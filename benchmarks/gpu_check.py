"""GPU readiness check: the numbers to take when a GPU machine is at hand, in one run (< 8 min).

    benchmarks/gpu_check.sh              # on the GPU machine (the .sh picks the Python, see there)
    benchmarks/gpu_check.sh --dry-run    # every stage on the CPU, tiny architectures, < 1 min

All models are the real architectures with random weights (nothing is downloaded): open_clip
ViT-B-16, DINO ViT-B/8 (timm), SAM ViT-B (segment_anything). One line per stage, each starting
with its tag:

  [env]        Python, torch, device
  [dense-clip] the engine end to end (class raster) at 4096² px with dense CLIP: Mpx/s and peak
               GPU memory (torch.cuda.max_memory_allocated; peak RSS on the CPU), per precision:
               fp32, and fp16 / bf16 autocast of the image encoders (the rest stays float32)
  [drseg]      the same with DR-Seg (dense CLIP + DINO ViT-B/8 + decouple/rectify/fusion)
  [agreement]  fraction of pixels whose class equals the fp32 class map, per model and precision
  [refer]      referring: first query (encodes the area) and cached queries on a 1024² px area
  [prompter]   the trained referring path (cascaded prompter, LoRA rank 16): one training step
               (batch of 2 at SAM's 1024² input, float16 autocast + GradScaler on CUDA) and
               inference per image (both adapted encoders + prompter + decoder), peak memory
  [sam3]       one SAM 3 tile, when a SAM 3 implementation is installed; else why it is skipped
  [done]       total time

A stage that fails prints its tag with 'FAILED' and the error; the others still run. Stages
after the time budget are skipped with a line saying so. Exit status 1 when a stage failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_refer  # noqa: E402
import bench_suite  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")
FULL = dict(size=4096, refer_size=1024, budget_s=450, expressions=bench_refer.EXPRESSIONS[:3])
DRY = dict(size=320, refer_size=256, budget_s=50, expressions=bench_refer.EXPRESSIONS[:2])


def tests_module(name):
    """A module of tests/ (tiny architectures of the real models), for the dry run only."""
    import importlib

    folder = os.path.join(os.path.dirname(HERE), "tests")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


class Check:
    def __init__(self, args):
        import torch

        self.args = args
        self.dry = args.dry_run
        self.sizes = DRY if self.dry else FULL
        self.device = torch.device("cpu" if self.dry or not torch.cuda.is_available() else "cuda")
        self.started = time.perf_counter()
        self.failed = []

    # -- helpers ----------------------------------------------------------------------------
    def line(self, tag, text):
        print(f"[{tag}] {text}", flush=True)

    def stage(self, tag, fn, *args):
        if time.perf_counter() - self.started > self.sizes["budget_s"]:
            self.line(tag, f"skipped: past the {self.sizes['budget_s']} s time budget")
            return None
        try:
            return fn(*args)
        except Exception as error:  # one failed stage must not hide the others' numbers
            self.failed.append(tag)
            self.line(tag, f"FAILED: {type(error).__name__}: {error}")
            traceback.print_exc(limit=3, file=sys.stdout)
            return None

    def synchronize(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self):
        """-> text: peak GPU memory since reset_peak, or the process's peak RSS on the CPU."""
        import torch
        if self.device.type == "cuda":
            return f"peak GPU memory {torch.cuda.max_memory_allocated(self.device) / 2 ** 20:.0f} MB"
        return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"

    def precisions(self):
        import torch
        usable = ["fp32", "fp16"]
        if self.device.type != "cuda" or torch.cuda.is_bf16_supported():
            usable.append("bf16")
        return usable

    # -- models -----------------------------------------------------------------------------
    def clip(self):
        import torch

        from drseg.core.dense_clip import DenseClip
        from drseg.core.models.clip import load_clip
        from drseg.core.models.registry import DEFAULT_CLIP_MODEL, RANDOM_WEIGHTS

        torch.manual_seed(0)
        name = DEFAULT_CLIP_MODEL
        if self.dry:
            name = os.path.join(self.work, "tiny_clip.json")
            with open(name, "w") as f:
                json.dump(tests_module("support.tiny_models").TINY_CLIP_CONFIG, f)
        model, tokenizer = load_clip(name, RANDOM_WEIGHTS, self.device)
        return DenseClip(model, tokenizer, self.device, templates=["a photo of a {}."])

    def drseg(self, clip):
        from drseg.core.drseg.dino import make_dino
        from drseg.core.drseg.rectify import DrSegRectifier, DrSegScorer
        from drseg.core.models.registry import DEFAULT_DINO_MODEL

        dims = tests_module("support.tiny_models").TINY_DINO_DIMS if self.dry else {}
        dino = make_dino(DEFAULT_DINO_MODEL, **dims).to(self.device).eval()
        return DrSegScorer(clip, dino, DrSegRectifier())

    def sam(self):
        if self.dry:
            return tests_module("support.tiny_models").build_tiny_sam().to(self.device)
        from drseg.core.models.registry import DEFAULT_SAM_MODEL, RANDOM_WEIGHTS
        from drseg.core.models.sam import load_sam
        return load_sam(DEFAULT_SAM_MODEL, RANDOM_WEIGHTS, self.device)

    @contextlib.contextmanager
    def precision(self, scorer, mode):
        """The engine's own precision switch (core/device.py): fp32 no autocast; fp16/bf16 the CLIP
        and DINO image encoders of dense CLIP and DR-Seg alike under torch.autocast of that type."""
        clip = getattr(scorer, "clip", scorer)
        saved = clip.precision
        clip.precision = mode
        try:
            yield
        finally:
            clip.precision = saved

    # -- stages -----------------------------------------------------------------------------
    def env(self):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
        mode = "dry run (CPU, tiny architectures)" if self.dry else "full"
        self.line("env", f"{mode}; Python {platform.python_version()}, torch {torch.__version__}, "
                         f"device {self.device}, {gpu}, {bench_suite.machine_description()}")

    def segment(self, tag, scorer, raster, mode):
        """-> class map of one engine run at the check's size, and prints its speed line."""
        import rasterio

        from drseg.core.segment import SegmentationRequest, run_segmentation

        out = os.path.join(self.work, f"{tag}_{mode}.tif")
        request = SegmentationRequest(raster=raster, classes=bench_suite.CLASSES,
                                      threshold=bench_suite.THRESHOLD, out_raster=out,
                                      device=str(self.device))
        self.reset_peak()
        with self.precision(scorer, mode):
            self.synchronize()
            started = time.perf_counter()
            result = run_segmentation(request, scorer=scorer)
            self.synchronize()
            seconds = time.perf_counter() - started
        mpx = result.width * result.height / 1e6
        self.line(tag, f"{mode}: {result.width}×{result.height} px in {seconds:.3f} s, "
                       f"{mpx / seconds:.3f} Mpx/s (model {result.timings.model:.2f} s, "
                       f"{result.timings.windows} windows), {self.peak()}")
        with rasterio.open(out) as src:
            return src.read(1)

    def models_and_agreement(self):
        size = self.sizes["size"]
        raster = os.path.join(self.work, f"scene_{size}.tif")
        bench_suite.write_scene(raster, size, size)
        clip = self.stage("dense-clip", self.clip)
        if clip is None:
            return
        maps = {}
        for tag, build in (("dense-clip", lambda: clip), ("drseg", lambda: self.drseg(clip))):
            scorer = self.stage(tag, build)
            if scorer is None:
                continue
            for mode in self.precisions():
                found = self.stage(tag, self.segment, tag, scorer, raster, mode)
                if found is not None:
                    maps[tag, mode] = found
        for tag in ("dense-clip", "drseg"):
            reference = maps.get((tag, "fp32"))
            for mode in self.precisions()[1:]:
                if reference is None or (tag, mode) not in maps:
                    self.line("agreement", f"{tag} {mode}: skipped (a class map is missing)")
                    continue
                equal = float((maps[tag, mode] == reference).mean())
                self.line("agreement", f"{tag} {mode} vs fp32: {100 * equal:.3f}% of pixels "
                                       "have the same class")

    def refer(self):
        sam, clip = self.sam(), self.clip()
        size = self.sizes["refer_size"]
        with tempfile.TemporaryDirectory(dir=self.work) as work:
            rows, _ = bench_refer.run_queries(sam, clip, size, self.device,
                                              self.sizes["expressions"], work)
        first = rows[0][1]
        cached = [row[1].total for row in rows[1:]]
        models = ("tiny SAM + tiny CLIP" if self.dry else "SAM ViT-B + CLIP ViT-B-16")
        self.line("refer", f"{models}, {size}² px area: first query {first.total:.2f} s "
                           f"(SAM encode {first.sam_encode:.2f} s, CLIP encode "
                           f"{first.clip_encode:.2f} s), cached queries "
                           f"{min(cached):.2f}-{max(cached):.2f} s "
                           f"(mean {np.mean(cached):.2f} s), in the precision the engine uses "
                           f"on {self.device.type}")

    def prompter(self):
        import torch

        from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
        from drseg.core.refer.synthetic import tiny_sam
        from drseg.core.refer.train import TrainConfig, mask_loss

        clip = self.clip()
        sam = tiny_sam(128) if self.dry else self.sam()
        model = PromptedSegmenter(clip.model, clip.tokenizer, sam.to(self.device),
                                  PrompterConfig())
        size, batch = model.sam_size, (1 if self.dry else 2)
        images = torch.rand(batch, 3, size, size, device=self.device) * 255
        masks = (torch.rand(batch, 1, size, size, device=self.device) > 0.5).float()
        texts = ["the large red roof on the left"] * batch
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=TrainConfig().lr)
        cuda = self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)

        def step():
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=cuda):
                loss = mask_loss(model(images, texts), masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            self.synchronize()

        model.train()
        step()                                   # warm-up (allocations, kernels)
        self.reset_peak()
        tick = time.perf_counter()
        step()
        train_s = time.perf_counter() - tick
        train_peak = self.peak()
        model.eval()
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=torch.float16,
                                             enabled=cuda):
            model(images[:1], texts[:1])
            self.synchronize()
            tick = time.perf_counter()
            model(images[:1], texts[:1])
            self.synchronize()
            infer_s = time.perf_counter() - tick
        trainable = sum(p.numel() for p in model.trainable_parameters())
        models = "tiny SAM + tiny CLIP" if self.dry else "SAM ViT-B + CLIP ViT-B-16"
        self.line("prompter", f"{models}, {size}² px, {trainable / 1e6:.2f} M trainable: training "
                              f"step {train_s:.3f} s for {batch} image(s) ({train_peak}), "
                              f"inference {infer_s:.3f} s per image")

    def sam3(self):
        import importlib.util

        if importlib.util.find_spec("sam3") is None:
            self.line("sam3", "skipped: no SAM 3 implementation installed (package 'sam3'), "
                              "and DR-Seg has no SAM 3 loader yet")
            return
        self.line("sam3", "skipped: the 'sam3' package is installed, but DR-Seg has no SAM 3 "
                          "loader yet to time a tile with")

    def run(self):
        with tempfile.TemporaryDirectory(prefix="drseg-gpu-check-") as work:
            self.work = work
            self.stage("env", self.env)
            self.models_and_agreement()
            self.stage("refer", self.refer)
            self.stage("prompter", self.prompter)
            self.stage("sam3", self.sam3)
        self.line("done", f"{time.perf_counter() - self.started:.1f} s"
                  + (f"; FAILED stages: {', '.join(self.failed)}" if self.failed else ""))
        return 1 if self.failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="every stage on the CPU with tiny architectures and small areas")
    args = parser.parse_args(argv)
    if args.dry_run:
        import torch
        torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
