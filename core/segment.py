"""Open-vocabulary segmentation of a raster: the one engine entry point every front end calls.

    result = run_segmentation(SegmentationRequest(raster="scene.tif", classes="building; water",
                                                  out_vector="out.gpkg"),
                              progress=lambda fraction, message: ..., cancelled=lambda: False)

Nothing is written under the output names until the run has completed; a failed or cancelled run
leaves no file behind.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .classes import ClassSpec, flatten_queries, parse_classes
from .colors import class_colour
from .errors import InputError
from .gpkg import PolygonLayerWriter
from .interrupt import cancel_points
from .models.registry import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE, DEFAULT_DINO_MODEL
from .outputs import (ClassRasterWriter, FloatRasterWriter, WorkDir, check_destination, check_outputs,
                      publish_all, verify_raster)
from .progress import RunMonitor
from .raster_io import RasterReader
from .protocol import BLENDS, DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_STRIDE, DEFAULT_WINDOW
from .sliding import SlidingWindowSegmenter, Timings
from .style import categorized_qml
from .vectorize import vectorize

DEFAULT_THRESHOLD = 0.3
# Shares of the progress bar: loading models, encoding the class names; segmenting and writing
# take the rest.
MODELS_SHARE, TEXT_SHARE = 0.02, 0.08
VECTOR_FIELDS = [("class", "str"), ("class_id", "int"), ("score", "real"), ("area_m2", "real")]


@dataclass
class SegmentationRequest:
    raster: str
    classes: object                        # "building,roof; road; water" or a list of such strings
    out_vector: Optional[str] = None       # GeoPackage of polygons
    out_raster: Optional[str] = None       # class-index GeoTIFF
    out_probabilities: Optional[str] = None  # float32 GeoTIFF, one band per class (before threshold)
    bands: Optional[Sequence[int]] = None  # 1 or 3 band numbers; None: RGB automatically
    extent: Optional[Sequence[float]] = None   # xmin, ymin, xmax, ymax in the raster's CRS
    resolution: Optional[float] = None     # working pixel size in metres; None: native
    threshold: float = DEFAULT_THRESHOLD   # below this top probability a pixel is background
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    method: str = "auto"                   # 'drseg', 'clip', or 'auto' (DR-Seg when DINO is set up)
    dino_model: str = DEFAULT_DINO_MODEL
    dino_weights: Optional[str] = None     # file or catalog name; None: the downloaded default
    semantic_ratio: float = 0.3
    graph_k: int = 8
    decouple: bool = True
    rectify: bool = True
    fusion: bool = True
    device: str = DEFAULT_DEVICE
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    blend: str = DEFAULT_BLEND             # 'smooth' (sin² weights) or 'mean' (the protocol's count map)
    block: int = 512
    batch_size: int = DEFAULT_BATCH_SIZE
    simplify: float = 0.0                  # polygon simplification tolerance, in pixels
    min_area: float = 0.0                  # smallest polygon kept, m²
    layer_name: str = "segmentation"
    cache_dir: Optional[str] = None        # model cache; None: resolved from the settings here
    adapter: Optional[str] = None          # adapter file from `drseg adapt` (core/adapt)


@dataclass
class SegmentationResult:
    vector_path: Optional[str]
    raster_path: Optional[str]
    layer_name: str
    classes: List[ClassSpec]
    polygon_count: int
    class_pixels: Dict[str, int]
    width: int
    height: int
    crs_wkt: str
    device: str
    timings: Timings = field(default_factory=Timings)
    method: str = "custom"
    note: str = ""
    device_reason: str = ""
    warnings: List[str] = field(default_factory=list)
    probabilities_path: Optional[str] = None

    def colour(self, name: str):
        return class_colour(name)


def run_segmentation(request: SegmentationRequest, scorer=None, progress=None, cancelled=None
                     ) -> SegmentationResult:
    """Segment `request.raster` into `request.classes`.

    scorer: a window scorer (see core/sliding.py); None loads dense CLIP per the request (shared
    with later runs through core.models.shared).
    """
    monitor = RunMonitor(progress, cancelled)
    classes = parse_classes(request.classes)
    if not request.out_vector and not request.out_raster and not request.out_probabilities:
        raise InputError("Choose at least one output: a GeoPackage, a class raster and/or a "
                         "probability raster")
    out_vector = check_destination(request.out_vector, (".gpkg",)) if request.out_vector else None
    out_raster = check_destination(request.out_raster, (".tif", ".tiff")) if request.out_raster else None
    out_probs = (check_destination(request.out_probabilities, (".tif", ".tiff"))
                 if request.out_probabilities else None)
    if request.blend not in BLENDS:
        raise InputError(f"Unknown blend '{request.blend}'; choose {' or '.join(BLENDS)}")
    # before any work: every folder writable, no output is the input
    check_outputs([out_vector, out_raster, out_probs], [request.raster])
    if not 0.0 <= request.threshold < 1.0:
        raise InputError(f"Threshold must be in [0, 1), got {request.threshold}")
    if request.window <= 0:
        raise InputError(f"Window must be a positive number of pixels, got {request.window}")
    if request.stride <= 0 or request.stride > request.window:
        raise InputError("Stride must be positive and not larger than the window")

    with RasterReader(request.raster, request.bands, request.extent, request.resolution) as reader, \
            cancel_points(monitor.check):
        monitor.report(0.0, "Loading models")
        device_name, method, note = "custom", "custom", ""
        if scorer is None:
            scorer, method, note = build_scorer(request, monitor)
            device_name = str(getattr(scorer, "device", None) or scorer.clip.device)
        check_window(request.window, scorer)
        queries, owner = flatten_queries(classes)
        started = time.perf_counter()
        text = monitor.stage(MODELS_SHARE, MODELS_SHARE + TEXT_SHARE)
        for count in range(1, len(queries) + 1):
            # One query at a time (a scorer encodes each once; 80 templates cost seconds on a
            # CPU), so the bar moves and cancel is checked between queries.
            text.report((count - 1) / len(queries),
                        f"Encoding class names ({count}/{len(queries)}: {queries[count - 1]})")
            scorer.set_queries(queries[:count])
        monitor.check()
        segmenter = SlidingWindowSegmenter(reader, scorer, owner, threshold=request.threshold,
                                           window=request.window, stride=request.stride,
                                           block=request.block, batch_size=request.batch_size,
                                           blend=request.blend,
                                           keep_probabilities=out_probs is not None)
        segmenter.timings.model += time.perf_counter() - started
        segmenter.on_batch_reduced = lambda size, reason: monitor.say(
            f"GPU memory is short: window batch reduced to {size}")
        work = WorkDir(out_vector or out_raster or out_probs)
        try:
            result = _run(request, reader, segmenter, classes, work, out_vector, out_raster,
                          out_probs, monitor.stage(MODELS_SHARE + TEXT_SHARE, 1.0))
        finally:
            work.cleanup()
        result.device, result.method, result.note = device_name, method, note
        result.warnings = list(segmenter.oom_retries)
        if scorer is not None and method != "custom":
            from .device import describe_device_choice
            result.device_reason = describe_device_choice(request.device)[1]
        return result


def check_window(window: int, scorer) -> None:
    """A window must hold at least one patch of every model the scorer runs."""
    patches = [getattr(m, "patch_size", None) for m in
               (scorer, getattr(scorer, "clip", None), getattr(scorer, "dino", None))]
    patch = max([int(p) for p in patches if isinstance(p, (int, np.integer))] or [1])
    if window < patch:
        raise InputError(f"Window {window} px is smaller than the model's {patch}-px patch; "
                         f"use at least {patch} (default 224)")


def build_scorer(request: SegmentationRequest, monitor: RunMonitor):
    """-> (scorer, method used, note for the user) for the request's method and models."""
    from .models.dino import resolve_dino_weights
    from .models.download import resolve_cache_dir
    from .models.shared import drseg_scorer, dense_clip_scorer

    if request.method not in ("auto", "drseg", "clip"):
        raise InputError(f"Unknown method '{request.method}'; choose drseg, clip or auto")

    def downloading(done, total):
        monitor.report(0.0, f"Downloading CLIP weights: {done / 2 ** 20:.0f}"
                            + (f" of {total / 2 ** 20:.0f} MB" if total else " MB"))

    downloading.status = monitor.say  # retries are shown, not only a still progress bar

    cache_dir = request.cache_dir or resolve_cache_dir()  # once per run, for every model below
    dino_path = None
    if request.method != "clip":
        dino_path = resolve_dino_weights(request.dino_model, request.dino_weights, cache_dir)
        if dino_path is None and request.method == "drseg":
            raise InputError(f"DR-Seg needs DINO weights for {request.dino_model}: download them "
                             "with `python -m drseg models download <name>` or give a file "
                             "(--dino-weights PATH), or choose the plain dense CLIP method")
    if request.adapter:
        return _adapted_scorer(request, dino_path, cache_dir, downloading)
    if dino_path is None:
        note = ("Plain dense CLIP: no DINO weights are set up, so DR-Seg's structure rectification "
                "was skipped" if request.method == "auto" else "")
        return (dense_clip_scorer(request.clip_model, request.clip_weights, request.device,
                                  download_progress=downloading, cache_dir=cache_dir), "clip", note)
    scorer = drseg_scorer(request.clip_model, request.clip_weights, request.dino_model, dino_path,
                          request.device, download_progress=downloading, cache_dir=cache_dir,
                          decouple=request.decouple, rectify=request.rectify, fusion=request.fusion,
                          semantic_ratio=request.semantic_ratio, graph_k=request.graph_k)
    return scorer, "drseg", ""


def _adapted_scorer(request: SegmentationRequest, dino_path, cache_dir, downloading):
    """The scorer with the request's adapter on top (DR-Seg's modules too when DINO is set up)."""
    from .adapt.apply import AdaptedScorer, adapted_dense_clip
    from .drseg.rectify import DrSegRectifier, DrSegScorer
    from .models.shared import dino_backbone

    adapter, clip = adapted_dense_clip(request.adapter, request.clip_model, request.clip_weights,
                                       request.device, cache_dir, downloading)
    note = f"Adapter '{request.adapter}' ({adapter.level}, classes: {', '.join(adapter.classes)})"
    if dino_path is None:
        return AdaptedScorer(clip, clip, adapter), "clip", note
    inner = DrSegScorer(clip, dino_backbone(request.dino_model, dino_path, request.device),
                        DrSegRectifier(decouple=request.decouple, rectify=request.rectify,
                                       fusion=request.fusion, semantic_ratio=request.semantic_ratio,
                                       graph_k=request.graph_k))
    return AdaptedScorer(inner, clip, adapter), "drseg", note


def _run(request, reader, segmenter, classes, work, out_vector, out_raster, out_probs, monitor):
    grid = reader.grid
    timings = segmenter.timings
    predict = monitor.stage(0.0, 0.85 if out_vector else 1.0)
    class_writer = ClassRasterWriter(work.file("classes.tif"), grid, classes,
                                     destination=out_raster or out_vector)
    score_writer = (FloatRasterWriter(work.file("score.tif"), grid, destination=out_vector)
                    if out_vector else None)
    probs_writer = (FloatRasterWriter(work.file("probabilities.tif"), grid, count=len(classes),
                                      descriptions=[spec.name for spec in classes],
                                      destination=out_probs)
                    if out_probs else None)
    counts = np.zeros(256, np.int64)
    try:
        predict.report(0.0, f"Segmenting {grid.width}×{grid.height} px in {len(segmenter)} blocks")
        current = {"block": 0}

        def window_batch(scored: int, total: int) -> None:  # inside a block
            index = current["block"]
            predict.report((index + scored / max(total, 1)) / len(segmenter),
                           f"Segmenting block {index + 1}/{len(segmenter)} "
                           f"({scored}/{total} windows)")

        segmenter.on_window_batch = window_batch
        for done, block in enumerate(segmenter, start=1):
            current["block"] = done
            started = time.perf_counter()
            class_writer.write(block.window, block.classes)
            if score_writer is not None:
                score_writer.write(block.window, block.score)
            if probs_writer is not None:
                probs_writer.write(block.window, block.probabilities)
            counts += np.bincount(block.classes.ravel(), minlength=256)
            timings.write += time.perf_counter() - started
            predict.report(done / len(segmenter), f"Segmented block {done}/{len(segmenter)}")
    except BaseException:
        class_writer.abort()
        if score_writer is not None:
            score_writer.abort()
        if probs_writer is not None:
            probs_writer.abort()
        raise
    class_writer.close()
    if score_writer is not None:
        score_writer.close()
    if probs_writer is not None:
        probs_writer.close()
    if counts[:255].sum() == 0:
        raise InputError(f"Raster '{request.raster}' has no valid pixels in the chosen area "
                         "(all nodata)")

    polygon_count = 0
    if out_vector:
        started = time.perf_counter()
        verify_raster(class_writer.path, out_raster or out_vector, grid)
        verify_raster(score_writer.path, out_vector, grid)
        temporary = work.file("polygons.gpkg")
        writer = PolygonLayerWriter(temporary, request.layer_name, grid.crs, VECTOR_FIELDS,
                                    style_qml=categorized_qml(classes), destination=out_vector)
        try:
            for region in vectorize(class_writer.path, score_writer.path, monitor.stage(0.85, 1.0),
                                    simplify=request.simplify, min_area_m2=request.min_area):
                spec = classes[region.class_index - 1]
                writer.add(region.geometry, **{"class": spec.name, "class_id": region.class_index,
                                               "score": round(region.score, 4),
                                               "area_m2": round(region.area_m2, 2)})
        except BaseException:
            writer.abort()
            raise
        writer.close()
        polygon_count = writer.count
        timings.vectorize += time.perf_counter() - started

    pairs = []
    if out_raster:
        if not out_vector:
            verify_raster(class_writer.path, out_raster, grid)
        pairs.append((class_writer.path, out_raster))
    if out_probs:
        verify_raster(probs_writer.path, out_probs, grid)
        pairs.append((probs_writer.path, out_probs))
    if out_vector:
        pairs.append((work.file("polygons.gpkg"), out_vector))
    monitor.check()  # last chance to cancel before anything appears under the output names
    publish_all(pairs)
    monitor.report(1.0, "Done", check=False)  # published: the run is done, too late to cancel
    class_pixels = {"background": int(counts[0])}
    class_pixels.update({spec.name: int(counts[i]) for i, spec in enumerate(classes, start=1)})
    return SegmentationResult(out_vector, out_raster, request.layer_name, classes, polygon_count,
                              class_pixels, grid.width, grid.height, grid.crs.to_wkt(), "", timings,
                              probabilities_path=out_probs)
