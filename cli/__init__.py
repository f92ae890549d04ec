"""The command line, `python -m drseg COMMAND ...` (console script `drseg`).

app.py builds the parser and maps errors to exit codes (exit_codes.py); each command has its own
module (segment, refer, models, evaluate) that parses its options and calls the engine in core/;
progress.py is the one terminal progress bar, arguments.py the shared argument types.
"""
from .app import main

__all__ = ["main"]
