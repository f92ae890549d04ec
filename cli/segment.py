"""`python -m drseg segment RASTER --classes "building;water" --out result.gpkg`: open-vocabulary
segmentation of a raster into polygons and/or a class raster."""
from __future__ import annotations

from ..core.errors import DrSegError
from .arguments import SETTINGS_HELP, extent_argument, positive_int, resolve_settings
from .progress import ProgressBar

# Options that fall back on the saved settings when not given.
SETTINGS = ("clip_model", "clip_weights", "device", "dino_model", "dino_weights", "window",
            "stride", "fast", "block", "batch_size", "cache_dir", "dask")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="open-vocabulary segmentation of a raster into classes",
                              description="Segment RASTER into the classes typed with --classes and "
                                          "write polygons (GeoPackage) and/or a class raster.")
    p.add_argument("raster", help="input raster (GeoTIFF or any GDAL format)")
    p.add_argument("--out", help="output GeoPackage of polygons (.gpkg)")
    p.add_argument("--raster-out", help="output class-index GeoTIFF (.tif)")
    p.add_argument("--probabilities-out", metavar="FILE.tif",
                   help="output per-class probabilities before the threshold (float32 GeoTIFF, "
                        "one band per class, named after it)")
    add_request_arguments(p)
    add_dask_arguments(p, tasks=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_segment_command)


def add_request_arguments(p) -> None:
    """The classes, models and options of a segmentation (segment and segment-batch)."""
    from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                        DEFAULT_DINO_MODEL, DEFAULT_SAM3_MODEL, DEVICE_CHOICES,
                                        DINO_MODEL_CHOICES, ENGINE_CHOICES)
    from ..core.protocol import BLENDS, DEFAULT_BLEND, FAST_OVERLAP
    from ..core.segment import DEFAULT_THRESHOLD
    from ..core.settings import Settings

    p.add_argument("--classes", required=True,
                   help="classes separated by ';', synonyms by ',', e.g. 'building,roof;road;water'")
    p.add_argument("--clip-model", help="open_clip model name or JSON config"
                   + SETTINGS_HELP.format(DEFAULT_CLIP_MODEL))
    p.add_argument("--clip-weights",
                   help="open_clip pretrained tag (downloaded on first use), catalog name or "
                        "checkpoint file" + SETTINGS_HELP.format(DEFAULT_CLIP_WEIGHTS))
    p.add_argument("--device", choices=DEVICE_CHOICES, help="device"
                   + SETTINGS_HELP.format(DEFAULT_DEVICE))
    p.add_argument("--method", default="auto", choices=["auto", "drseg", "clip"],
                   help="drseg: dense CLIP rectified with DINO structure; clip: plain dense CLIP; "
                        "auto (default): drseg when DINO weights are set up")
    p.add_argument("--engine", choices=ENGINE_CHOICES,
                   help="drseg | clip (as --method); sam3: SAM 3 concept prompts (gated weights, "
                        "SAM License); hybrid: SAM 3 fused per pixel with the --method engine. "
                        "Default: as --method says")
    p.add_argument("--sam3-model", default=DEFAULT_SAM3_MODEL,
                   help="SAM 3 architecture or a transformers config.json")
    p.add_argument("--sam3-weights", help="SAM 3 model.safetensors file or folder, or catalog name "
                                          "(default: the imported 'sam3' checkpoint)")
    p.add_argument("--dino-model", choices=sorted(DINO_MODEL_CHOICES),
                   help="DINO backbone" + SETTINGS_HELP.format(DEFAULT_DINO_MODEL))
    p.add_argument("--dino-weights", help="DINO checkpoint file or catalog name (default: the "
                                           "saved settings', else the downloaded catalog "
                                           "checkpoint, if any)")
    p.add_argument("--semantic-ratio", type=float, default=0.3,
                   help="share of CLIP channels kept as semantic (DR-Seg ρ)")
    p.add_argument("--graph-k", type=int, default=8, help="neighbours per token in the DINO graph")
    p.add_argument("--no-decouple", action="store_true", help="rectify all channels (ablation)")
    p.add_argument("--no-rectify", action="store_true", help="skip graph rectification (ablation)")
    p.add_argument("--no-fusion", action="store_true",
                   help="use the rectified branch alone instead of uncertainty-guided fusion")
    p.add_argument("--bands", help="band numbers, 1 (grey) or 3 (RGB), e.g. 4,3,2; default: RGB")
    p.add_argument("--extent", type=extent_argument, help="xmin,ymin,xmax,ymax in the raster's CRS")
    p.add_argument("--resolution", type=float, help="working pixel size in metres (default: native)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="pixels whose top class probability is below this become background")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification, in pixels")
    p.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this, m²")
    p.add_argument("--window", type=int, help="sliding window, working pixels"
                   + SETTINGS_HELP.format(Settings.window))
    p.add_argument("--stride", type=int, help="sliding window stride, working pixels"
                   + SETTINGS_HELP.format(Settings.stride))
    p.add_argument("--fast", action="store_true", default=None,
                   help=f"fast mode: neighbouring windows overlap by {FAST_OVERLAP:.0%} of a "
                        "window instead of half (224-px windows: stride 168, about 2.25x fewer "
                        "windows on large rasters; class maps close to the default's)"
                        + SETTINGS_HELP.format("off"))
    p.add_argument("--block", type=positive_int, help="output block, working pixels; the result "
                   "does not depend on it" + SETTINGS_HELP.format(Settings.block))
    p.add_argument("--blend", default=DEFAULT_BLEND, choices=BLENDS,
                   help="how overlapping windows combine: smooth (sin² weights, default) or mean "
                        "(every window pixel counts once, as the benchmark protocol does)")
    p.add_argument("--cache-dir", help="model cache folder (default: DRSEG_CACHE_DIR, else the "
                                        "saved settings, else the platform's cache folder)")
    p.add_argument("--adapter", help="adapter made by `python -m drseg adapt`: a .safetensors file "
                                      "or the name of one in the model cache ('models list'); "
                                      "needs the CLIP model and weights it was made for")


def add_dask_arguments(p, tasks: bool) -> None:
    from ..core.cluster.spec import HELP

    p.add_argument("--dask", metavar="CLUSTER",
                   help=f"run on a Dask cluster: {HELP}; default: DRSEG_DASK, else the saved "
                        "settings, else this process")
    if tasks:
        p.add_argument("--task-blocks", type=positive_int, metavar="K",
                       help="Dask: K×K blocks per task; default: chosen from the raster, the "
                            "window and the number of workers")


def request_from_args(args, raster, settings, out_vector=None, out_raster=None,
                      out_probabilities=None):
    """The engine request of the options, with `settings` as resolve_settings(args, SETTINGS)."""
    from ..core.raster_io import parse_bands
    from ..core.segment import SegmentationRequest

    return SegmentationRequest(
        raster=raster, classes=args.classes, out_vector=out_vector, out_raster=out_raster,
        out_probabilities=out_probabilities, blend=args.blend,
        bands=parse_bands(args.bands), extent=args.extent, resolution=args.resolution,
        threshold=args.threshold, clip_model=settings["clip_model"],
        clip_weights=settings["clip_weights"], device=settings["device"],
        window=settings["window"], stride=settings["stride"], fast=bool(settings["fast"]),
        block=settings["block"],
        batch_size=settings["batch_size"], cache_dir=settings["cache_dir"],
        simplify=args.simplify, min_area=args.min_area, method=args.method, engine=args.engine,
        sam3_model=args.sam3_model, sam3_weights=args.sam3_weights,
        dino_model=settings["dino_model"], dino_weights=settings.chosen("dino_weights"),
        semantic_ratio=args.semantic_ratio, graph_k=args.graph_k,
        decouple=not args.no_decouple, rectify=not args.no_rectify, fusion=not args.no_fusion,
        adapter=args.adapter, dask=settings["dask"] or None,
        task_blocks=getattr(args, "task_blocks", None) or 0)


def say_cluster(settings) -> None:
    """Check the cluster's address, then say where the run goes."""
    from ..core.cluster.spec import parse_dask_spec

    if parse_dask_spec(settings["dask"]) is not None:
        print(f"Dask cluster: {settings['dask']} ({settings.sources['dask']})")


def run_segment_command(args) -> int:
    from ..core.segment import run_segmentation

    if not args.out and not args.raster_out and not args.probabilities_out:
        raise DrSegError("Give an output: --out result.gpkg, --raster-out classes.tif and/or "
                         "--probabilities-out probabilities.tif")
    settings = resolve_settings(args, SETTINGS)
    say_cluster(settings)
    request = request_from_args(args, args.raster, settings, args.out, args.raster_out,
                                args.probabilities_out)
    with ProgressBar(args.quiet) as bar:
        result = run_segmentation(request, progress=bar.update)
    t = result.timings
    if result.note:
        print(f"note: {result.note}")
    print(f"{result.width}×{result.height} px, {result.method} on {result.device}: "
          f"{result.polygon_count} polygons; "
          f"read {t.read:.1f}s, model {t.model:.1f}s, stitch {t.stitch:.1f}s, "
          f"vectorize {t.vectorize:.1f}s")
    for name, pixels in result.class_pixels.items():
        print(f"  {name}: {pixels} px")
    for path in (result.vector_path, result.raster_path, result.probabilities_path):
        if path:
            print(f"wrote {path}")
    return 0
