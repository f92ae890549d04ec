"""`python -m drseg evaluate ovss|refer ...`: score the engine or saved predictions on a benchmark.

The method comes from the ``PredictorFactory`` the main command line hands to `add_parser`
(core/evaluation/predictors.py: ``factory(task, dataset, settings) -> predict``); with none, only
saved predictions (--predictions DIR) can be scored.
"""
from __future__ import annotations

import functools
import sys
from typing import Optional

from ..core.errors import InputError, OutputError
from ..core.evaluation.predictors import EngineSettings, PredictorFactory
from .arguments import add_actions, positive_int
from .progress import ProgressBar


def _dataset_help(task: str) -> str:
    try:
        from ..core.evaluation.datasets import list_datasets

        names = ", ".join(list_datasets(task))
    except Exception:                        # a broken JSON file must not break --help
        names = "see core/data/datasets"
    return f"benchmark name ({names}) or the path of a data set JSON file"


def add_parser(subparsers, predictor_factory: Optional[PredictorFactory] = None):
    """Add `evaluate ovss` and `evaluate refer`; ``predictor_factory`` runs the method."""
    run = functools.partial(run_evaluate_command, predictor_factory=predictor_factory)
    parser = subparsers.add_parser(
        "evaluate", help="score the engine or saved predictions on a standard benchmark",
        description="Evaluate on a benchmark split exactly as papers do: confusion-matrix mIoU, "
                    "mACC, aAcc and per-class IoU (ovss); gIoU, cIoU and Pr@0.5..0.9 (refer).")
    for task, p in add_actions(parser, "eval_task", "{ovss,refer}",
                               (("ovss", "open-vocabulary semantic segmentation benchmarks"),
                                ("refer", "referring segmentation benchmarks")),
                               description="Evaluate on {}."):
        p.add_argument("--dataset", required=True, help=_dataset_help(task))
        p.add_argument("--root", required=True, help="folder holding the data set")
        p.add_argument("--split", help="split to score (default: the set's evaluation split, "
                                       "e.g. val for LoveDA, test for RRSIS-D)")
        p.add_argument("--limit", type=positive_int, help="score only the first N samples")
        p.add_argument("--predictions", metavar="DIR",
                       help="score saved masks instead of running the engine" +
                            (" (same file names and label values as the ground truth)"
                             if task == "ovss" else " (<sample key>.png, non-zero = target)"))
        p.add_argument("--json", metavar="PATH", help="write the metrics as JSON to PATH")
        p.add_argument("--out", metavar="DIR",
                       help="folder for the results JSON, CSV and confusion-matrix PNG "
                            "(default: the folder of --json, else ./drseg-eval)")
        if task == "ovss":
            p.add_argument("--layout", help="force a folder layout of the data set "
                                            "(e.g. released, converted) instead of detecting it")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        _engine_options(p, task)
        p.set_defaults(run=run)
    parser.set_defaults(run=run)
    return parser


def _engine_options(parser, task: str) -> None:
    """The engine's models and options (read only when the engine runs)."""
    from ..core.models.registry import (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_WEIGHTS, DEFAULT_DEVICE,
                                        DEFAULT_SAM_MODEL, SAM_MODELS)

    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL)
    parser.add_argument("--clip-weights", default=DEFAULT_CLIP_WEIGHTS)
    parser.add_argument("--device", default=DEFAULT_DEVICE)
    if task == "refer":
        parser.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, choices=list(SAM_MODELS))
        parser.add_argument("--sam-weights", help="SAM checkpoint file or catalog name")
    else:
        parser.add_argument("--long-side", type=int,
                            help="resize images to this long side (0: keep the size); default: "
                                 "the data set's protocol (448)")


def engine_settings(args) -> EngineSettings:
    return EngineSettings(clip_model=args.clip_model, clip_weights=args.clip_weights,
                          device=args.device, long_side=getattr(args, "long_side", None),
                          sam_model=getattr(args, "sam_model", None),
                          sam_weights=getattr(args, "sam_weights", None))


def _predict_fn(task: str, dataset, args, predictor_factory: Optional[PredictorFactory]):
    if predictor_factory is None:
        raise InputError("Running the engine for evaluation needs the segmentation engine, and "
                         "none is given to this command line; score saved masks with "
                         "--predictions DIR instead")
    predict_fn = predictor_factory(task, dataset, engine_settings(args))
    if not callable(predict_fn):
        raise InputError("The predictor factory did not return a predict function")
    return predict_fn


def _check_output_places(out_dir, json_path) -> None:
    """The results folder (created later if missing) and the --json file's folder can be written."""
    import os

    from ..core.outputs import check_writable_folder

    folders = [os.path.abspath(os.path.expanduser(str(out_dir)))]
    if json_path:
        folders.append(os.path.dirname(os.path.abspath(os.path.expanduser(str(json_path)))))
    for folder in folders:
        existing = folder
        while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
            if os.path.exists(existing):
                raise OutputError(f"Cannot write the evaluation results in '{folder}': "
                                  f"'{existing}' is a file, not a folder")
            existing = os.path.dirname(existing)
        check_writable_folder(existing)
    if json_path and os.path.isdir(os.path.expanduser(str(json_path))):
        raise OutputError(f"--json '{json_path}' is a folder, not a file name")


def run_evaluate_command(args, predictor_factory: Optional[PredictorFactory] = None) -> int:
    """Run `evaluate ovss|refer`; prints a table, writes the files, returns the exit code 0.

    Problems the user can fix raise `InputError` (the main command line shows them, exit 2).
    """
    from pathlib import Path

    from ..core.evaluation.datasets import get_dataset
    from ..core.evaluation.loops import evaluate_ovss, evaluate_refer
    from ..core.evaluation.reports import format_ovss_table, format_refer_table
    from ..core.evaluation.writers import DEFAULT_OUT_DIR, write_ovss_outputs, write_refer_outputs

    task = getattr(args, "eval_task", None)
    if task not in ("ovss", "refer"):
        raise InputError("Choose what to evaluate: 'evaluate ovss ...' or 'evaluate refer ...'")
    dataset = get_dataset(args.dataset, args.root, args.split, getattr(args, "layout", None))
    if dataset.task != task:
        other = "refer" if dataset.task == "refer" else "ovss"
        raise InputError(f"{dataset.name} is a{' referring' if other == 'refer' else 'n OVSS'} "
                         f"benchmark; use 'evaluate {other}'")
    if args.out:
        out_dir = Path(args.out)
    elif args.json:
        out_dir = Path(args.json).expanduser().resolve().parent
    else:
        out_dir = Path(DEFAULT_OUT_DIR)
    _check_output_places(out_dir, args.json)  # before scoring: the results must have a place
    predict_fn = None if args.predictions else _predict_fn(task, dataset, args, predictor_factory)
    progress = ProgressBar(getattr(args, "quiet", False), leave=False)
    try:
        if task == "ovss":
            report = evaluate_ovss(dataset, predict_fn=predict_fn,
                                   predictions_dir=args.predictions, limit=args.limit,
                                   progress=progress, engine=getattr(predict_fn, "settings", None))
        else:
            report = evaluate_refer(dataset, predict_fn=predict_fn,
                                    predictions_dir=args.predictions, limit=args.limit,
                                    progress=progress)
    finally:
        progress.close()
    print(format_ovss_table(report) if task == "ovss" else format_refer_table(report))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    writer = write_ovss_outputs if task == "ovss" else write_refer_outputs
    try:
        written = writer(report, out_dir, json_path=args.json)
    except OSError as exc:
        raise OutputError(f"Cannot write the evaluation results in '{out_dir}' "
                          f"({exc.strerror or exc})") from None
    for path in written.values():
        print(f"wrote {path}")
    return 0
