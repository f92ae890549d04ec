"""`python -m drseg segment RASTER --classes "building;water" --out result.gpkg`: open-vocabulary
segmentation of a raster into polygons and/or a class raster."""
from __future__ import annotations

from ..core.errors import DrSegError
from .arguments import extent_argument, positive_int
from .progress import ProgressBar


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="open-vocabulary segmentation of a raster into classes",
                              description="Segment RASTER into the classes typed with --classes and "
                                          "write polygons (GeoPackage) and/or a class raster.")
    p.add_argument("raster", help="input raster (GeoTIFF or any GDAL format)")
    p.add_argument("--out", help="output GeoPackage of polygons (.gpkg)")
    p.add_argument("--raster-out", help="output class-index GeoTIFF (.tif)")
    add_request_arguments(p)
    add_dask_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_segment_command)


def add_request_arguments(p) -> None:
    """The classes, models and options of a segmentation (segment and segment-batch)."""
    from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                        DEFAULT_DINO_MODEL, DEVICE_CHOICES, DINO_MODEL_CHOICES)
    from ..core.segment import DEFAULT_THRESHOLD, SegmentationRequest

    p.add_argument("--classes", required=True,
                   help="classes separated by ';', synonyms by ',', e.g. 'building,roof;road;water'")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="open_clip model name or JSON config")
    p.add_argument("--clip-weights", default=DEFAULT_CLIP_WEIGHTS,
                   help="open_clip pretrained tag (downloaded on first use) or checkpoint file")
    p.add_argument("--device", default=DEFAULT_DEVICE, choices=DEVICE_CHOICES)
    p.add_argument("--method", default="auto", choices=["auto", "drseg", "clip"],
                   help="drseg: dense CLIP rectified with DINO structure; clip: plain dense CLIP; "
                        "auto (default): drseg when DINO weights are set up")
    p.add_argument("--dino-model", default=DEFAULT_DINO_MODEL, choices=sorted(DINO_MODEL_CHOICES))
    p.add_argument("--dino-weights", help="DINO checkpoint file or catalog name "
                                           "(default: the downloaded catalog checkpoint, if any)")
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
    p.add_argument("--window", type=int, default=224, help="sliding window, working pixels")
    p.add_argument("--stride", type=int, default=112, help="sliding window stride, working pixels")
    p.add_argument("--block", type=positive_int, default=SegmentationRequest.block,
                   help="output block size, working pixels (results do not depend on it)")


def add_dask_arguments(p) -> None:
    from ..core.cluster.spec import HELP

    p.add_argument("--dask", metavar="CLUSTER",
                   help=f"run on a Dask cluster: {HELP}; default: $DRSEG_DASK, else the saved "
                        "setting, else this process")
    p.add_argument("--task-blocks", type=positive_int, metavar="K",
                   help="Dask: blocks per task side (K×K blocks per task); default: chosen from "
                        "the raster and the number of workers")


def resolve_dask(args) -> str:
    """The cluster: --dask, else $DRSEG_DASK, else the saved setting; '' runs here."""
    from ..core.settings import resolve

    value, source = resolve("dask", args.dask)
    if value:
        print(f"Dask cluster: {value} ({source})")
    return value or ""


def request_from_args(args, raster, out_vector, out_raster, dask):
    from ..core.raster_io import parse_bands
    from ..core.segment import SegmentationRequest

    return SegmentationRequest(
        raster=raster, classes=args.classes, out_vector=out_vector, out_raster=out_raster,
        bands=parse_bands(args.bands), extent=args.extent, resolution=args.resolution,
        threshold=args.threshold, clip_model=args.clip_model, clip_weights=args.clip_weights,
        device=args.device, window=args.window, stride=args.stride, block=args.block,
        simplify=args.simplify, min_area=args.min_area, method=args.method, dino_model=args.dino_model,
        dino_weights=args.dino_weights, semantic_ratio=args.semantic_ratio, graph_k=args.graph_k,
        decouple=not args.no_decouple, rectify=not args.no_rectify, fusion=not args.no_fusion,
        dask=dask or None, task_blocks=args.task_blocks or 0)


def run_segment_command(args) -> int:
    from ..core.segment import run_segmentation

    if not args.out and not args.raster_out:
        raise DrSegError("Give an output: --out result.gpkg and/or --raster-out classes.tif")
    request = request_from_args(args, args.raster, args.out, args.raster_out, resolve_dask(args))
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
    for path in (result.vector_path, result.raster_path):
        if path:
            print(f"wrote {path}")
    return 0
