"""What the dock's forms remember between QGIS sessions (classes, threshold, weights typed in):
a small JSON file beside the plugin's settings file, so tests and DRSEG_CONFIG keep it apart."""
from __future__ import annotations

import json
import os
from typing import Dict

from ..core.settings import config_path

FILE_NAME = "dock_state.json"


def state_path() -> str:
    return os.path.join(os.path.dirname(config_path()), FILE_NAME)


def load_state() -> Dict:
    """The remembered values; {} when there are none or the file is unreadable."""
    try:
        with open(state_path(), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def save_state(values: Dict) -> None:
    """Merge `values` into the remembered ones (a failure to write is not worth an error)."""
    state = load_state()
    state.update(values)
    path = state_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1)
        os.replace(temporary, path)
    except OSError:
        pass
