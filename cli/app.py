"""`python -m drseg COMMAND ...`: the parser of every command, and errors mapped to exit codes.

Exit codes (exit_codes.py): 0 success, 2 bad input or missing weights (one-line message),
130 cancelled; `models verify` exits 1 when a file is damaged.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..core.errors import DrSegError, RunCancelled
from ..core.evaluation.predictors import PredictorFactory, engine_predictor
from . import evaluate, models, refer, segment, train_referring
from .exit_codes import EXIT_BAD_INPUT, EXIT_CANCELLED


def build_parser(predictor_factory: Optional[PredictorFactory] = engine_predictor
                 ) -> argparse.ArgumentParser:
    """Every command; `evaluate` runs the method ``predictor_factory`` builds (None: only saved
    predictions can be scored)."""
    parser = argparse.ArgumentParser(prog="python -m drseg",
                                     description="DR-Seg: segment remote sensing rasters from text")
    subparsers = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(subparsers)
    models.add_parser(subparsers)
    refer.add_parser(subparsers)
    train_referring.add_parser(subparsers)
    evaluate.add_parser(subparsers, predictor_factory)
    return parser


def main(argv: Optional[List[str]] = None,
         predictor_factory: Optional[PredictorFactory] = engine_predictor) -> int:
    args = build_parser(predictor_factory).parse_args(argv)
    try:
        return args.run(args)
    except DrSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RunCancelled, KeyboardInterrupt):
        note = getattr(args, "cancel_note", None)
        print(f"cancelled; {note}" if note else "cancelled", file=sys.stderr)
        return EXIT_CANCELLED
