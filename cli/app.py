"""`python -m drseg COMMAND ...`: the parser of every command, and errors mapped to exit codes.

Exit codes (exit_codes.py): 0 success, 2 bad input or missing weights (one-line message),
130 cancelled; `models verify` exits 1 when a file is damaged.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import List, Optional

from ..core.errors import DrSegError, RunCancelled
from ..core.evaluation.predictors import PredictorFactory, engine_predictor
from . import adapt, cache, evaluate, models, refer, segment, segment_batch, train_referring
from .exit_codes import EXIT_BAD_INPUT, EXIT_CANCELLED


def build_parser(predictor_factory: Optional[PredictorFactory] = engine_predictor
                 ) -> argparse.ArgumentParser:
    """Every command; `evaluate` runs the method ``predictor_factory`` builds (None: only saved
    predictions can be scored)."""
    parser = argparse.ArgumentParser(prog="python -m drseg",
                                     description="DR-Seg: segment remote sensing rasters from text")
    subparsers = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(subparsers)
    segment_batch.add_parser(subparsers)
    models.add_parser(subparsers)
    refer.add_parser(subparsers)
    train_referring.add_parser(subparsers)
    evaluate.add_parser(subparsers, predictor_factory)
    adapt.add_parser(subparsers)
    cache.add_parser(subparsers)
    return parser


def stop_on_termination_signals() -> dict:
    """SIGTERM and SIGHUP (a closed terminal, `kill`, a batch system's time limit) stop a run like
    Ctrl-C: the work folder is removed, older outputs are left as they were, exit code 130.
    -> the previous handlers, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            number = getattr(signal, name)
            previous[number] = signal.signal(number, interrupt)
    return previous


def main(argv: Optional[List[str]] = None,
         predictor_factory: Optional[PredictorFactory] = engine_predictor) -> int:
    args = build_parser(predictor_factory).parse_args(argv)
    previous = stop_on_termination_signals()
    try:
        return args.run(args)
    except DrSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RunCancelled, KeyboardInterrupt):
        note = getattr(args, "cancel_note", None)
        print(f"cancelled; {note}" if note else "cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
