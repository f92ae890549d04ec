"""How a user gets a model file onto this machine, said for the front end that runs the engine:
command lines (`python -m drseg models …`, --clip-weights PATH) or QGIS (DR-Seg settings ›
Download models… / Import file…, the weights fields).

The front end is per thread: QGIS tasks and Processing algorithms run the engine inside
`speaking_to(QGIS)`; anything else gets command-line advice.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

CLI, QGIS = "cli", "qgis"
SETTINGS_MODELS = "DR-Seg settings › Download models…"


class _Current(threading.local):
    front_end = CLI


_current = _Current()


@contextmanager
def speaking_to(front_end: str):
    previous = _current.front_end
    _current.front_end = front_end
    try:
        yield
    finally:
        _current.front_end = previous


def in_qgis() -> bool:
    return _current.front_end == QGIS


def download_advice(name: str) -> str:
    """How to download catalog model `name` on a connected machine."""
    if in_qgis():
        return f"download '{name}' in {SETTINGS_MODELS}"
    return f"run `python -m drseg models download {name}`"


def import_advice(name: str) -> str:
    """How to add a downloaded file of catalog model `name` to the model cache."""
    if in_qgis():
        return f"add it with Import file… in {SETTINGS_MODELS} (as '{name}')"
    return f"add it with `python -m drseg models import {name} FILE`"


def file_advice(option: str, field: str) -> str:
    """How to use a checkpoint file directly: the CLI `option` or the QGIS `field`."""
    if in_qgis():
        return f"choose the file as '{field}'"
    return f"pass the file with {option} PATH"
