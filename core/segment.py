"""Open-vocabulary segmentation of a raster: the one engine entry point every front end calls.

    result = run_segmentation(SegmentationRequest(raster="scene.tif", classes="building; water",
                                                  out_vector="out.gpkg"),
                              progress=lambda fraction, message: ..., cancelled=lambda: False)

Nothing is written under the output names until the run has completed; a failed or cancelled run
leaves no file behind. With `request.dask` the blocks are computed by the workers of a Dask cluster
(core/cluster/segment.py) and the outputs are bit for bit those of a run in this process.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .classes import ClassSpec, flatten_queries, parse_classes
from .colors import class_colour
from .errors import DrSegError, InputError
from .gpkg import PolygonLayerWriter
from .interrupt import cancel_points
from .models.registry import (CLIP_LIBRARIES, DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS,
                              DEFAULT_DEVICE, DEFAULT_DINO_MODEL, DEFAULT_SAM3_MODEL, DINO_LIBRARIES,
                              ENGINE_CHOICES, SAM3_ENGINES, SAM3_LIBRARIES, SAM3_OVERLAP)
from .outputs import (ClassRasterWriter, FloatRasterWriter, WorkDir, check_destination, check_outputs,
                      publish_all, verify_raster)
from .progress import RunMonitor
from .raster_io import RasterReader
from .protocol import (BLENDS, DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_STRIDE, DEFAULT_WINDOW,
                       fast_stride)
from .sliding import SlidingWindowSegmenter, Timings
from .style import categorized_qml
from .vectorize import vectorize
from .threads import all_cores

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
    engine: Optional[str] = None           # 'drseg', 'clip', 'sam3', 'hybrid'; None: as `method` says
    sam3_model: str = DEFAULT_SAM3_MODEL   # a SAM 3 architecture or a config.json
    sam3_weights: Optional[str] = None     # safetensors file/folder or catalog name; None: 'sam3'
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
    fast: bool = False                     # fast mode: less window overlap (protocol.fast_stride)
    blend: str = DEFAULT_BLEND             # 'smooth' (sin² weights) or 'mean' (the protocol's count map)
    block: int = 512
    batch_size: int = DEFAULT_BATCH_SIZE
    simplify: float = 0.0                  # polygon simplification tolerance, in pixels
    min_area: float = 0.0                  # smallest polygon kept, m²
    layer_name: str = "segmentation"
    cache_dir: Optional[str] = None        # model cache; None: resolved from the settings here
    adapter: Optional[str] = None          # adapter file from `drseg adapt` (core/adapt)
    dask: Optional[str] = None             # local:N or tcp://HOST:PORT (core/cluster); None: here
    task_blocks: int = 0                   # Dask: k×k blocks per task; 0 chooses


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


def run_segmentation(request: SegmentationRequest, scorer=None, progress=None, cancelled=None,
                     scorer_factory=None) -> SegmentationResult:
    """Segment `request.raster` into `request.classes`.

    scorer: a window scorer (see core/sliding.py); None loads the request's engine (dense CLIP,
    DR-Seg, SAM 3 or both fused; models shared with later runs through core.models.shared).
    scorer_factory: instead of `scorer`, a picklable, hashable callable returning one; on a Dask
    cluster each worker builds it once (core/cluster/tasks.py). None: the request's models.
    """
    all_cores()   # this thread may have been handed one torch thread (core/threads.py)
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
    request = windows_of(request)
    from .cluster.spec import parse_dask_spec

    cluster = parse_dask_spec(request.dask)
    if cluster is not None and scorer is not None:
        raise InputError("A Dask run builds its scorer on each worker: pass scorer_factory")

    if request.engine is not None and request.engine not in ENGINE_CHOICES:
        raise InputError(f"Unknown engine '{request.engine}'; choose one of {', '.join(ENGINE_CHOICES)}")

    with RasterReader(request.raster, request.bands, request.extent, request.resolution) as reader, \
            cancel_points(monitor.check):
        monitor.report(0.0, "Loading models")
        queries, owner = flatten_queries(classes)
        text = monitor.stage(MODELS_SHARE, MODELS_SHARE + TEXT_SHARE)
        started = time.perf_counter()
        device_name, method, note = "custom", "custom", ""
        if cluster is not None:
            if scorer_factory is None:
                scorer_factory, method, note = cluster_recipe(request)
            from .cluster.segment import ClusterBlocks

            source = ClusterBlocks(cluster, request, reader, queries, owner, scorer_factory,
                                   keep_probabilities=out_probs is not None)
            device_name = ""
        else:
            if scorer is None and scorer_factory is not None:
                scorer = scorer_factory()
            if scorer is not None:
                check_window(request.window, scorer)
                encode_queries(scorer, queries, text)
                source = _sliding(request, reader, scorer, owner)
            else:
                source, device_name, method, note = build_segmenter(request, reader, queries,
                                                                    owner, monitor, text)
            monitor.check()
            source.keep_probabilities = out_probs is not None
            source.timings.model += time.perf_counter() - started
            source.on_batch_reduced = lambda size, reason: monitor.say(
                f"GPU memory is short: window batch reduced to {size}")
        work = WorkDir(out_vector or out_raster or out_probs)
        try:
            result = _run(request, reader, source, classes, work, out_vector, out_raster,
                          out_probs, monitor.stage(MODELS_SHARE + TEXT_SHARE, 1.0))
        finally:
            work.cleanup()
        result.device, result.method, result.note = device_name or source.device, method, note
        result.warnings = list(source.oom_retries)
        if method != "custom" and cluster is None:  # on a cluster each worker chooses its own
            from .device import describe_device_choice
            result.device_reason = describe_device_choice(request.device)[1]
        return result


def windows_of(request: SegmentationRequest) -> SegmentationRequest:
    """The request with the stride it runs at: fast mode's (``protocol.fast_stride``) when
    ``request.fast``, so every path (this process, a Dask cluster) sees one window layout."""
    if not request.fast:
        return request
    return dataclasses.replace(request, stride=fast_stride(request.window, request.stride),
                               fast=False)


def check_window(window: int, scorer) -> None:
    """A window must hold at least one patch of every model the scorer runs."""
    patches = [getattr(m, "patch_size", None) for m in
               (scorer, getattr(scorer, "clip", None), getattr(scorer, "dino", None))]
    patch = max([int(p) for p in patches if isinstance(p, (int, np.integer))] or [1])
    if window < patch:
        raise InputError(f"Window {window} px is smaller than the model's {patch}-px patch; "
                         f"use at least {patch} (default 224)")


def _sliding(request, reader, scorer, owner, **options) -> SlidingWindowSegmenter:
    settings = dict(threshold=request.threshold, window=request.window, stride=request.stride,
                    block=request.block, batch_size=request.batch_size, blend=request.blend)
    settings.update(options)
    return SlidingWindowSegmenter(reader, scorer, owner, **settings)


def encode_queries(scorer, queries, stage) -> None:
    """The class names' text embeddings, with a progress message per name. A scorer whose
    ``set_queries`` takes ``progress`` (dense CLIP, DR-Seg) encodes all names' prompts in batches
    and says when each name starts (cancel is checked between the text tower's blocks); any
    other gets one query at a time, so the bar moves and cancel is checked between queries."""
    count = len(queries)

    def report(k: int) -> None:
        stage.report(k / count, f"Encoding class names ({k + 1}/{count}: {queries[k]})")

    try:
        batched = "progress" in inspect.signature(scorer.set_queries).parameters
    except (TypeError, ValueError):        # a callable without a signature
        batched = False
    if batched:
        scorer.set_queries(queries, progress=report)
        return
    for k in range(count):
        report(k)
        scorer.set_queries(queries[:k + 1])


def clip_branch_request(request: SegmentationRequest, engine: str) -> SegmentationRequest:
    """The request the CLIP branch runs: an engine naming a CLIP method ('drseg', 'clip') is that
    method; 'auto', 'hybrid' and the rest keep the request's own method choice."""
    if engine in ("drseg", "clip"):
        return dataclasses.replace(request, method=engine)
    return request


def build_segmenter(request: SegmentationRequest, reader, queries, owner, monitor: RunMonitor,
                    text=None):
    """-> (segmenter, device name, engine used, note) for the request's engine, queries set.

    'sam3' tiles the raster at SAM 3's input size (overlap SAM3_OVERLAP); 'hybrid' runs SAM 3 and
    the CLIP engine of `request.method` over the same blocks and fuses them (core/hybrid.py).
    """
    engine = request.engine or request.method
    sam3 = None
    if engine in SAM3_ENGINES:
        from .models.download import resolve_cache_dir
        from .sam3_engine import Sam3Recipe

        def downloading(done, total):
            monitor.report(0.0, f"Downloading SAM 3 weights: {done / 2 ** 20:.0f}"
                                + (f" of {total / 2 ** 20:.0f} MB" if total else " MB"))

        recipe = Sam3Recipe.of(request, request.cache_dir or resolve_cache_dir())
        scorer = recipe(download_progress=downloading)
        encode_queries(scorer, queries, text or monitor)
        sam3 = sam3_sliding(request, reader, scorer, owner,
                            threshold=0.0 if engine == "hybrid" else request.threshold)
        if engine == "sam3":
            return sam3, str(scorer.device), "sam3", ""
    clip_request = clip_branch_request(request, engine)
    scorer, method, note = build_scorer(clip_request, monitor)
    check_window(request.window, scorer)
    encode_queries(scorer, queries, text or monitor)
    device = str(getattr(scorer, "device", None) or scorer.clip.device)
    if engine != "hybrid":
        return _sliding(request, reader, scorer, owner), device, method, note
    from .hybrid import HybridSegmenter, hybrid_note

    clip = _sliding(request, reader, scorer, owner, threshold=0.0)
    return (HybridSegmenter(sam3, clip, request.threshold), device, "hybrid",
            hybrid_note(method, note))


def sam3_sliding(settings, reader, scorer, owner, threshold: float) -> SlidingWindowSegmenter:
    """SAM 3's tiles over the blocks of `settings` (a request, or a Dask task with the same
    fields): windows of SAM 3's input size overlapping by SAM3_OVERLAP, few per batch."""
    from .sam3_engine import MAX_TILES_PER_BATCH

    tile = scorer.window
    return _sliding(settings, reader, scorer, owner, window=tile,
                    stride=max(1, tile - int(round(tile * SAM3_OVERLAP))),
                    batch_size=min(settings.batch_size, MAX_TILES_PER_BATCH), threshold=threshold)


def cluster_recipe(request: SegmentationRequest):
    """-> (picklable scorer recipe the Dask workers build from, method, note) for the request's
    engine: DR-Seg / dense CLIP (ScorerRecipe), SAM 3 (Sam3Recipe) or both (HybridRecipe)."""
    engine = request.engine or request.method
    if engine in SAM3_ENGINES:
        from .sam3_engine import Sam3Recipe

        sam3 = Sam3Recipe.of(request)
        if engine == "sam3":
            return sam3, "sam3", ""
    clip_request = clip_branch_request(request, engine)
    method, dino_path, note = choose_method(clip_request)
    recipe = ScorerRecipe.of(clip_request, method, dino_path)
    if engine != "hybrid":
        return recipe, method, note
    from .hybrid import HybridRecipe, hybrid_note

    return HybridRecipe(sam3, recipe), "hybrid", hybrid_note(method, note)


def choose_method(request: SegmentationRequest, cache_dir: Optional[str] = None):
    """-> (method 'drseg' or 'clip', DINO checkpoint file or None, note for the user)."""
    from .models.dino import resolve_dino_weights

    if request.method not in ("auto", "drseg", "clip"):
        raise InputError(f"Unknown method '{request.method}'; choose drseg, clip or auto")
    dino_path = None
    if request.method != "clip":
        dino_path = resolve_dino_weights(request.dino_model, request.dino_weights,
                                         cache_dir or request.cache_dir)
        if dino_path is None and request.method == "drseg":
            raise InputError(f"DR-Seg needs DINO weights for {request.dino_model}: download them "
                             "with `python -m drseg models download <name>` or give a file "
                             "(--dino-weights PATH), or choose the plain dense CLIP method")
    if dino_path is None:
        note = ("Plain dense CLIP: no DINO weights are set up, so DR-Seg's structure rectification "
                "was skipped" if request.method == "auto" else "")
        return "clip", None, note
    return "drseg", dino_path, ""


def model_libraries(request: SegmentationRequest):
    """-> the modules the request's models import (torch first), for a front end to import ahead
    in its worker thread. Cheap (a few file checks, nothing imported); a request the run will
    refuse names what it would need if it were fixed."""
    engine = request.engine or request.method
    libraries = list(SAM3_LIBRARIES if engine in SAM3_ENGINES else CLIP_LIBRARIES)
    if engine != "sam3":
        clip_request = clip_branch_request(request, engine)
        try:
            with_dino = choose_method(clip_request)[0] == "drseg"
        except DrSegError:  # e.g. DR-Seg without DINO weights: the run says so
            with_dino = clip_request.method == "drseg"
        if with_dino:
            libraries += DINO_LIBRARIES
    return tuple(dict.fromkeys(libraries))


def build_scorer(request: SegmentationRequest, monitor: RunMonitor):
    """-> (scorer, method used, note for the user) for the request's method and models."""
    from .models.download import resolve_cache_dir

    def downloading(done, total):
        monitor.report(0.0, f"Downloading CLIP weights: {done / 2 ** 20:.0f}"
                            + (f" of {total / 2 ** 20:.0f} MB" if total else " MB"))

    downloading.status = monitor.say  # retries are shown, not only a still progress bar

    cache_dir = request.cache_dir or resolve_cache_dir()  # once per run, for every model below
    method, dino_path, note = choose_method(request, cache_dir)
    if request.adapter:
        return _adapted_scorer(request, dino_path, cache_dir, downloading)
    recipe = ScorerRecipe.of(request, method, dino_path, cache_dir)
    return recipe(download_progress=downloading), method, note


@dataclass(frozen=True)
class ScorerRecipe:
    """The models of a request, as a picklable and hashable value: a Dask worker builds its
    scorer from it once (models through core.models.shared's cache) and keeps it."""

    method: str                        # 'clip' or 'drseg'
    clip_model: str
    clip_weights: str
    dino_model: str
    dino_path: Optional[str]           # the checkpoint file for 'drseg'
    dino_weights: Optional[str]        # as the user named them (found again where the file is not)
    device: str
    cache_dir: Optional[str] = None    # None: the settings of the process building the scorer
    semantic_ratio: float = 0.3
    graph_k: int = 8
    decouple: bool = True
    rectify: bool = True
    fusion: bool = True
    adapter: Optional[str] = None      # adapter file (core/adapt)

    @classmethod
    def of(cls, request: SegmentationRequest, method: str, dino_path: Optional[str],
           cache_dir: Optional[str] = None) -> "ScorerRecipe":
        return cls(method, request.clip_model, request.clip_weights, request.dino_model, dino_path,
                   request.dino_weights, request.device, cache_dir or request.cache_dir,
                   request.semantic_ratio, request.graph_k, request.decouple, request.rectify,
                   request.fusion, request.adapter)

    def __call__(self, download_progress=None, device: Optional[str] = None):
        from .models.shared import dense_clip_scorer, drseg_scorer

        device = device or self.device
        cache_dir = self.cache_dir if self.cache_dir and os.path.isdir(self.cache_dir) else None
        if self.adapter:
            request = SegmentationRequest(
                raster="", classes="", clip_model=self.clip_model, clip_weights=self.clip_weights,
                dino_model=self.dino_model, device=device, semantic_ratio=self.semantic_ratio,
                graph_k=self.graph_k, decouple=self.decouple, rectify=self.rectify,
                fusion=self.fusion, adapter=self.adapter)
            dino_path = self.dino_path if self.method == "drseg" else None
            return _adapted_scorer(request, dino_path, cache_dir, download_progress)[0]
        if self.method == "clip":
            return dense_clip_scorer(self.clip_model, self.clip_weights, device,
                                     download_progress=download_progress, cache_dir=cache_dir)
        dino_path = self.dino_path
        if not dino_path or not os.path.isfile(dino_path):  # another machine: its own cache
            from .models.dino import resolve_dino_weights
            dino_path = resolve_dino_weights(self.dino_model, self.dino_weights, cache_dir)
            if dino_path is None:
                raise InputError(f"DR-Seg needs DINO weights for {self.dino_model} on this machine")
        return drseg_scorer(self.clip_model, self.clip_weights, self.dino_model, dino_path,
                            device, download_progress=download_progress, cache_dir=cache_dir,
                            decouple=self.decouple, rectify=self.rectify, fusion=self.fusion,
                            semantic_ratio=self.semantic_ratio, graph_k=self.graph_k)


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


def _run(request, reader, source, classes, work, out_vector, out_raster, out_probs, monitor):
    """source: the blocks, in any order (a SlidingWindowSegmenter, or cluster.ClusterBlocks);
    `len(source)` blocks in all, `source.parts(monitor, work)` yields (BlockResult, blocks it
    covers)."""
    grid = reader.grid
    timings = source.timings
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
        predict.report(0.0, f"Segmenting {grid.width}×{grid.height} px in {len(source)} blocks")
        done = 0
        for block, covered in source.parts(predict, work):
            started = time.perf_counter()
            class_writer.write(block.window, block.classes)
            if score_writer is not None:
                score_writer.write(block.window, block.score)
            if probs_writer is not None:
                probs_writer.write(block.window, block.probabilities)
            counts += np.bincount(block.classes.ravel(), minlength=256)
            timings.write += time.perf_counter() - started
            done += covered
            predict.report(done / len(source), f"Segmented block {done}/{len(source)}")
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
