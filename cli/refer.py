"""`python -m drseg refer RASTER --expression TEXT [--expression TEXT ...] --out out.gpkg`.

Every expression goes into one GeoPackage layer (field `expression`);
the timings printed per expression show what the cache saves: the first expression on an area
runs both image encoders, the next ones reuse them.
"""
from __future__ import annotations

import argparse

from .arguments import SETTINGS_HELP, extent_argument, resolve_settings

# Options that fall back on the saved settings when not given.
SETTINGS = ("sam_model", "sam_weights", "clip_model", "clip_weights", "device", "cache_dir")
from .progress import ProgressBar


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                        DEFAULT_REFER_ENGINE, DEFAULT_SAM3_MODEL, DEFAULT_SAM_MODEL,
                                        DEVICE_CHOICES, REFER_ENGINE_CHOICES, SAM_MODELS)
    from ..core.refer.run import DEFAULT_MAX_SIZE, DEFAULT_TILE_SIZE

    p = subparsers.add_parser(
        "refer", help="referring segmentation: the object(s) an expression names, as polygons",
        description="Find what each --expression refers to in RASTER ('the largest pond north of "
                    "the road', 'all the storage tanks') and write polygons with fields "
                    "expression, score and area_m2 to one GeoPackage layer.")
    p.add_argument("raster", help="input raster (GeoTIFF or any GDAL format)")
    p.add_argument("--expression", "-e", action="append", required=True, metavar="TEXT",
                   help="a referring expression; repeat for several")
    p.add_argument("--out", required=True, help="output GeoPackage (.gpkg)")
    p.add_argument("--engine", choices=REFER_ENGINE_CHOICES, default=DEFAULT_REFER_ENGINE,
                   help="sam (default): dense CLIP finds, SAM delineates; sam3: the target is a SAM 3 "
                        "concept prompt (gated weights, SAM License)")
    p.add_argument("--sam3-model", default=DEFAULT_SAM3_MODEL,
                   help="SAM 3 architecture or a transformers config.json (--engine sam3)")
    p.add_argument("--sam3-weights", help="SAM 3 model.safetensors file or folder, or catalog name")
    p.add_argument("--sam-model", choices=SAM_MODELS,
                   help="SAM architecture" + SETTINGS_HELP.format(DEFAULT_SAM_MODEL))
    p.add_argument("--sam-weights",
                   help="SAM checkpoint file or catalog name (default: the saved settings', else "
                        "the catalog's checkpoint of --sam-model, e.g. sam-vit-b; see 'models list')")
    p.add_argument("--clip-model", help="open_clip model name or JSON config"
                   + SETTINGS_HELP.format(DEFAULT_CLIP_MODEL))
    p.add_argument("--clip-weights", help="open_clip pretrained tag, catalog name or checkpoint "
                                           "file" + SETTINGS_HELP.format(DEFAULT_CLIP_WEIGHTS))
    p.add_argument("--device", choices=DEVICE_CHOICES,
                   help="device" + SETTINGS_HELP.format(DEFAULT_DEVICE))
    p.add_argument("--cache-dir", help="model cache folder (default: DRSEG_CACHE_DIR, else the "
                                        "saved settings, else the platform's cache folder)")
    p.add_argument("--bands", help="band numbers, 1 (grey) or 3 (RGB), e.g. 4,3,2; default: RGB")
    p.add_argument("--extent", type=extent_argument, help="xmin,ymin,xmax,ymax in the raster's CRS")
    p.add_argument("--resolution", type=float,
                   help="working pixel size in metres (default: native, reduced so the long "
                        "side is at most --max-size)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"longest side of the working area in pixels without --resolution "
                        f"(default {DEFAULT_MAX_SIZE}; 0: native resolution, tiled)")
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE,
                   help="areas larger than this (working pixels) are tiled")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="drop results whose score is below this")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification, in pixels")
    p.add_argument("--prompter", metavar="FILE",
                   help="a trained prompter head (.safetensors, from train-referring) used "
                        "instead of the training-free prompts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_refer_command)
    return p


def run_refer_command(args) -> int:
    from ..core.raster_io import parse_bands
    from ..core.refer.run import ReferringRequest, run_referring

    settings = resolve_settings(args, SETTINGS)
    request = ReferringRequest(
        raster=args.raster, expressions=list(args.expression), out_vector=args.out,
        extent=args.extent, resolution=args.resolution, max_size=args.max_size or None,
        bands=parse_bands(args.bands), sam_model=settings["sam_model"],
        sam_weights=settings["sam_weights"], clip_model=settings["clip_model"],
        clip_weights=settings["clip_weights"], device=settings["device"],
        cache_dir=settings["cache_dir"], engine=args.engine, sam3_model=args.sam3_model,
        sam3_weights=args.sam3_weights,
        threshold=args.threshold, tile_size=args.tile_size, simplify=args.simplify,
        prompter=args.prompter)
    with ProgressBar(args.quiet) as bar:
        result = run_referring(request, progress=bar.update)
    print(f"{result.width}×{result.height} px ({result.resolution_m:.3g} m/px) in {result.tiles} "
          f"tile(s) on {result.device}; models ready in {result.model_seconds:.1f}s")
    for item in result.expressions:
        t = item.timing
        kind = "cached" if t.cached else "first"
        found = (f"{item.polygon_count} polygon(s), best score {max(item.scores):.3f}"
                 if item.scores else "nothing found")
        print(f"  '{item.expression}': {found}; {t.total:.2f}s {kind} "
              f"(CLIP encode {t.clip_encode:.2f}s, SAM encode {t.sam_encode:.2f}s, "
              f"prompting+decoding+selection {t.prompting:.2f}s, vectorize {t.vectorize:.2f}s)")
    print(f"wrote {result.vector_path}")
    return 0


