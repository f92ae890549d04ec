"""`python -m drseg segment-batch INPUTS... --classes "building;water" --out-dir DIR`: many
rasters, one output pair each (NAME.gpkg, NAME_classes.tif) and DIR/summary.csv; inputs already
done with the same options are skipped; exit code 1 when an input failed."""
from __future__ import annotations

from .arguments import resolve_settings
from .exit_codes import EXIT_FAILED, EXIT_OK
from .progress import ProgressBar
from .segment import (SETTINGS, add_dask_arguments, add_request_arguments, request_from_args,
                      say_cluster)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "segment-batch", help="segment many rasters: one GeoPackage and class raster each",
        description="Segment every input into the classes of --classes: files, folders (their "
                    "rasters), glob patterns ('tiles/*.tif') or @list.txt (one per line). Writes "
                    "NAME.gpkg and NAME_classes.tif per input into --out-dir, and summary.csv / "
                    "summary.json. Inputs whose outputs are complete are skipped, so the same "
                    "command resumes a stopped batch.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raster, folder, glob or @list.txt")
    p.add_argument("--out-dir", required=True, help="folder for the outputs and the summary")
    add_request_arguments(p)
    add_dask_arguments(p, tasks=False)  # one task per input
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_batch_command)


def run_batch_command(args) -> int:
    from ..core.batch import FAILED, run_batch

    args.cancel_note = "summary.csv lists the inputs done so far; run again to resume"
    settings = resolve_settings(args, SETTINGS)
    say_cluster(settings)
    template = request_from_args(args, "", settings)
    with ProgressBar(args.quiet) as bar:
        rows = run_batch(template, args.inputs, args.out_dir, progress=bar.update)
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        detail = row["error"] if row["status"] == FAILED else f"{row['polygons']} polygons"
        print(f"{row['status']:9} {row['input']}: {detail}")
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
          + f"; summary in {args.out_dir}")
    return EXIT_FAILED if counts.get(FAILED) else EXIT_OK
