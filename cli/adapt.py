"""`python -m drseg adapt RASTER --labels LAYER --class-field FIELD --out ADAPTER.safetensors`:
adapt the CLIP segmenter to labelled polygons and report held-out IoU before and after."""
from __future__ import annotations

from .arguments import SETTINGS_HELP, extent_argument, positive_int, resolve_settings
from .progress import ProgressBar

SETTINGS = ("clip_model", "clip_weights", "device", "cache_dir")


def add_parser(subparsers) -> None:
    from ..core.adapt.defaults import (BACKBONE_MULTIPLIER, DEFAULT_BATCH, DEFAULT_CHIP,
                                       DEFAULT_CONTEXT_TOKENS, DEFAULT_LR, DEFAULT_STEPS,
                                       DEFAULT_VALIDATION_SHARE, LEVELS)
    from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                        DEVICE_CHOICES)

    p = subparsers.add_parser(
        "adapt", help="adapt the model to your labelled polygons (one adapter file)",
        description="Learn from a polygon layer whose FIELD holds class names: calibrate (seconds, "
                    "no training), prompt (learned prompt context and class-text offsets) or "
                    "finetune (soft-guided: attention weights at a small learning rate, kept close "
                    "to a frozen copy, and a cost-map upsampling decoder). "
                    "Writes ADAPTER.safetensors, a .report.json and a .iou.png chart; use it with "
                    "`segment --adapter`.")
    p.add_argument("raster", help="input raster (GeoTIFF or any GDAL format)")
    p.add_argument("--labels", required=True, help="polygon layer (GeoPackage, shapefile, any OGR "
                                                   "format, any CRS)")
    p.add_argument("--class-field", required=True, help="the layer's field holding class names")
    p.add_argument("--out", required=True, help="adapter file to write (.safetensors), or a bare "
                                                "NAME: written into the model cache and listed "
                                                "by 'models list' (then --adapter NAME)")
    p.add_argument("--level", choices=LEVELS, default="calibrate",
                   help="calibrate (default), prompt or finetune")
    p.add_argument("--validation-share", type=float, default=DEFAULT_VALIDATION_SHARE,
                   help="share of chips held out, by blocks of neighbouring chips (default "
                        f"{DEFAULT_VALIDATION_SHARE})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps of prompt/finetune (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH,
                   help=f"chips per training step (default {DEFAULT_BATCH})")
    p.add_argument("--lr", type=float, help="base learning rate (default: "
                   + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
                   + f"; finetune trains the attention weights at {BACKBONE_MULTIPLIER:g}× of it)")
    p.add_argument("--context-tokens", type=int, default=DEFAULT_CONTEXT_TOKENS,
                   help="learned prompt context words before each class name (prompt/finetune; "
                        f"0: none; default {DEFAULT_CONTEXT_TOKENS})")
    p.add_argument("--class-context", action="store_true",
                   help="each labelled class also learns context of its own (the shared context "
                        "is what class names you did not label get)")
    p.add_argument("--chip", type=positive_int, default=DEFAULT_CHIP,
                   help=f"chip size in pixels (default {DEFAULT_CHIP})")
    p.add_argument("--area", type=extent_argument, help="xmin,ymin,xmax,ymax in the raster's CRS")
    p.add_argument("--bands", help="band numbers, 1 (grey) or 3 (RGB), e.g. 4,3,2; default: RGB")
    p.add_argument("--synonyms", help="extra wordings calibration may choose, e.g. "
                                      "'building=roof,house;water=lake'")
    p.add_argument("--clip-model", help="open_clip model name or JSON config"
                   + SETTINGS_HELP.format(DEFAULT_CLIP_MODEL))
    p.add_argument("--clip-weights", help="CLIP weights: tag, catalog name or file"
                   + SETTINGS_HELP.format(DEFAULT_CLIP_WEIGHTS))
    p.add_argument("--device", choices=DEVICE_CHOICES, help="device" + SETTINGS_HELP.format(DEFAULT_DEVICE))
    p.add_argument("--cache-dir", help="model cache folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint an interrupted run left next to --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_adapt_command)


def parse_synonyms(text):
    from ..core.errors import InputError

    synonyms = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        name, sep, words = part.partition("=")
        if not sep or not name.strip():
            raise InputError(f"Synonyms must look like 'class=word,word;class=word', got '{part}'")
        synonyms[name.strip()] = [w.strip() for w in words.split(",") if w.strip()]
    return synonyms


def run_adapt_command(args) -> int:
    from ..core.adapt.run import AdaptRequest, checkpoint_paths, run_adaptation
    from ..core.raster_io import parse_bands

    settings = resolve_settings(args, SETTINGS)
    request = AdaptRequest(
        raster=args.raster, labels=args.labels, class_field=args.class_field, out=args.out,
        level=args.level, validation_share=args.validation_share, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, chip=args.chip, area=args.area,
        bands=parse_bands(args.bands), synonyms=parse_synonyms(args.synonyms),
        clip_model=settings["clip_model"], clip_weights=settings["clip_weights"],
        device=settings["device"], cache_dir=settings["cache_dir"], resume=args.resume,
        context_tokens=args.context_tokens, class_context=args.class_context)
    from ..core.adapt.catalog import destination

    out = destination(args.out, settings["cache_dir"])
    args.cancel_note = (f"training progress is checkpointed in {checkpoint_paths(out)[0]}; "
                        "run again with --resume to continue")
    with ProgressBar(args.quiet) as bar:
        result = run_adaptation(request, progress=bar.update)
    report = result.report
    if result.resumed_from:
        print(f"resumed after step {result.resumed_from}")
    print(f"{report['train_chips']} training chips, {report['validation_chips']} validation chips; "
          f"held-out mIoU {report['before']['mIoU']:.1f} -> {report['after']['mIoU']:.1f}")
    for name in report["classes"]:
        b, a = report["before"]["per_class"][name], report["after"]["per_class"][name]
        print(f"  {name}: {'-' if b is None else f'{b:.1f}'} -> {'-' if a is None else f'{a:.1f}'}")
    for path in (result.adapter_path, result.report_path, result.chart_path):
        print(f"wrote {path}")
    return 0
