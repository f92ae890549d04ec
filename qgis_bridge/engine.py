"""The engine gate: lazy access to the engine, so the plugin loads (and shows a clear message)
without torch, and the dependency check the dock, the dialogs and Processing share.

Nothing here imports torch, open_clip or QGIS. Model names and defaults come from the torch-free
`core.models.registry`; the few run defaults below mirror `core.segment` and `core.refer` (a test
keeps them equal), because Processing parameters and the dock are built at QGIS start-up, when
importing the engine would be slow or, on a machine without torch, fail.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import List

DEFAULT_THRESHOLD = 0.3            # core.segment.DEFAULT_THRESHOLD
DEFAULT_SEMANTIC_RATIO = 0.3       # core.segment.SegmentationRequest.semantic_ratio
DEFAULT_GRAPH_K = 8                # core.segment.SegmentationRequest.graph_k
DEFAULT_MAX_SIZE = 1024            # core.refer.request.DEFAULT_MAX_SIZE

# Segmentation methods: the engine's SegmentationRequest.method values and their names for users.
METHOD_LABELS = {"drseg": "DR-Seg", "clip": "dense CLIP", "sam3": "SAM 3",
                 "hybrid": "SAM 3 + CLIP hybrid", "custom": "custom scorer"}

# Import name -> pip name of what the engine needs beyond what QGIS ships.
REQUIREMENTS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "open_clip": "open_clip_torch",
    "rasterio": "rasterio",
    "shapely": "shapely",
}


class MissingDependencies(Exception):
    """The engine's Python packages are not importable in QGIS's Python."""


def missing_packages() -> List[str]:
    """pip names of required packages that cannot be found (nothing is imported)."""
    missing = []
    for module, package in REQUIREMENTS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


def dependency_message(missing: List[str], detail: str = "") -> str:
    names = ", ".join(missing) if missing else "torch, torchvision, open_clip_torch"
    text = (f"DR-Seg needs the Python packages {names} in the Python that QGIS uses. "
            f"Install them with: python3 -m pip install {' '.join(missing or REQUIREMENTS.values())} "
            "(see the README for the exact versions)")
    if detail:
        text += f" [{detail}]"
    return text


def keep_triton_out() -> bool:
    """Stop torch from importing triton inside QGIS; True when triton is now blocked.

    torch imports triton (through torchvision) only to offer compiled GPU kernels, which DR-Seg
    does not use. triton's library carries its own LLVM, and in a QGIS desktop process that has
    the system's LLVM loaded (Mesa OpenGL drivers) loading it crashes QGIS (SIGSEGV in LLVM's
    static initialisers). Set DRSEG_ALLOW_TRITON=1 to let it load anyway.
    """
    if os.environ.get("DRSEG_ALLOW_TRITON") == "1" or "triton" in sys.modules:
        return sys.modules.get("triton", 0) is None
    sys.modules["triton"] = None  # `import triton` raises ImportError; torch handles that
    return True


def load_engine():
    """Import and return `core.segment`, or raise MissingDependencies with an install hint.

    Call it on the main thread before starting a run, so the first (slow) import of torch does not
    happen inside a worker thread and a missing package is reported before anything starts.
    """
    missing = missing_packages()
    if missing:
        raise MissingDependencies(dependency_message(missing))
    keep_triton_out()
    try:
        from ..core import segment
        importlib.import_module("open_clip")
    except ImportError as exc:  # present but broken, e.g. an ABI clash with QGIS's numpy
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None
    return segment


def load_refer_engine():
    """Main thread: import the referring engine (torch, open_clip, segment_anything) and return
    `core.refer.run`, or raise MissingDependencies with an install hint. Call it before starting a
    task, so the first, slow import of torch never happens in a worker thread."""
    load_engine()
    try:
        found = importlib.util.find_spec("segment_anything") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencies(dependency_message(["segment-anything"]))
    try:
        importlib.import_module("segment_anything")
        from ..core.refer import run
    except ImportError as exc:
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None
    return run


def prepare_packages() -> List[str]:
    """Put the plugin-owned packages folder (pip --target) on sys.path, before any engine import;
    -> the pip names of the packages that are still missing (nothing is imported)."""
    from ..core import dependencies

    dependencies.add_packages_dir_to_path()
    return [requirement.package for requirement in dependencies.find_missing()]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)
