"""The training-free benchmark protocol's fixed settings, torch-free.

The protocol is SegEarth-OV's (CVPR 2025) training-free evaluation on mmseg: the image resized
to a 448-pixel long side, then 224-pixel windows at a 112-pixel stride, each pixel averaging the
windows over it.

The engine's defaults for rasters differ on purpose (smooth blend, no resize); `evaluate` uses
these, per data set from core/data/datasets/*.json ("protocol"), and writes them into its report.
"""
from __future__ import annotations

BLENDS = ("smooth", "mean")       # sin² weights / count map
BLEND_LABELS = {"smooth": "Smooth (sin² weights, no seams)",
                "mean": "Mean (count map, as the benchmark protocol)"}
DEFAULT_BLEND = "smooth"          # the product's: no visible window seams
# The product's sliding-window defaults (engine, localizer, saved settings), in working pixels.
DEFAULT_WINDOW = 224              # CLIP ViT-B/16's input size
DEFAULT_STRIDE = 112              # window step; overlap = window - stride
DEFAULT_BATCH_SIZE = 8            # windows per model call (halved on GPU out-of-memory)
# Fast mode (CLI --fast, Processing's FAST, the dock's settings): windows overlap by this share
# of a window instead of the default's half, so a large raster needs about (0.75/0.5)² = 2.25×
# fewer windows; the smooth blend still has a 56-px band (224-px windows) to hide the seams.
# benchmarks/bench_fast_mode.py prints its speed-up and its agreement with the default.
FAST_OVERLAP = 0.25
PROTOCOL_BLEND = "mean"           # the benchmark's: plain average of overlapping windows
PROTOCOL_LONG_SIDE = 448
PROTOCOL_WINDOW = 224
PROTOCOL_STRIDE = 112

# What every OVSS evaluation states beside the per-data-set values.
PROTOCOL_STEPS = (
    "input: long side resized with mmcv imrescale (OpenCV INTER_LINEAR on uint8, new size "
    "int(x * scale + 0.5)), then CLIP mean/std normalisation",
    "windows: window/stride px, the last one shifted back inside; a crop smaller than a window is "
    "padded after normalisation with zeros, centred, to a multiple of the patch, the positional "
    "embedding interpolated bicubically with scale_factor (g + 0.1) / side, the pad cut off again",
    "stitching: each window's patch logits resized bilinearly to the window and averaged with a "
    "count map",
    "output: logits resized bilinearly to the original size, then x logit scale (50), softmax over "
    "all queries, a class takes its most likely synonym, argmax; pixels whose top probability is "
    "below prob_thd become the background class",
)


def fast_stride(window: int, stride: int) -> int:
    """The stride fast mode uses for `window`: the larger of `stride` and the stride that leaves
    FAST_OVERLAP of the window overlapping (224 -> 168)."""
    return max(int(stride), int(window) - int(int(window) * FAST_OVERLAP))
