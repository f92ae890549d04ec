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

# What a segmentation run cannot start without (import names of core.dependencies.REQUIREMENTS,
# the one list of packages; a referring run also needs segment_anything).
ENGINE_MODULES = ("torch", "torchvision", "open_clip", "rasterio", "shapely")
INSTALL_ADVICE = ("Install them with the Install… button of DR-Seg's warning in the message bar: "
                  "it shows what goes where, then runs pip for the Python QGIS runs")


class MissingDependencies(Exception):
    """The engine's Python packages are not importable in QGIS's Python."""


def missing_packages(modules=ENGINE_MODULES) -> List[str]:
    """pip names of every missing package DR-Seg uses (the list the start-up warning shows) when
    one of `modules` is missing, else []. Nothing is imported."""
    from ..core import dependencies

    missing = dependencies.find_missing()
    if not any(requirement.module in modules for requirement in missing):
        return []
    return [requirement.package for requirement in missing]


def dependency_message(missing: List[str], detail: str = "") -> str:
    from ..core import dependencies

    names = ", ".join(missing or dependencies.missing_package_names()
                      or [r.package for r in dependencies.REQUIREMENTS if r.module in ENGINE_MODULES])
    text = f"DR-Seg needs the Python packages {names} in the Python that QGIS runs. {INSTALL_ADVICE}"
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
    """Main thread: `core.segment`, or MissingDependencies with the install advice.

    Checks that the packages are there without importing torch or open_clip (seconds that would
    freeze QGIS on the first Run); the task's worker thread imports them with
    `import_model_libraries(segment.model_libraries(request))`.
    """
    missing = missing_packages()
    if missing:
        raise MissingDependencies(dependency_message(missing))
    keep_triton_out()  # before anything imports torch, in any thread
    try:
        from ..core import segment
    except ImportError as exc:  # present but broken, e.g. an ABI clash with QGIS's numpy
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None
    return segment


def load_refer_engine():
    """Main thread: `core.refer.run`, or MissingDependencies with the install advice; like
    load_engine(), nothing heavy is imported here."""
    load_engine()
    missing = missing_packages(("segment_anything",))
    if missing:
        raise MissingDependencies(dependency_message(missing))
    try:
        from ..core.refer import run
    except ImportError as exc:
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None
    return run


def import_model_libraries(modules) -> None:
    """Worker thread: import the model libraries a run needs (`core.segment.model_libraries`,
    `core.refer.run.model_libraries`) while QGIS's event loop keeps running; a broken
    installation (present but failing to import) as MissingDependencies with the install advice."""
    from ..core.background_imports import background_imports

    keep_triton_out()
    if all(sys.modules.get(module) is not None for module in modules):
        return  # later runs: nothing to import (and nothing new to freeze out of collections)
    with background_imports():  # without stopping QGIS's event loop
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                if module.partition(".")[0] in ENGINE_MODULES:
                    raise MissingDependencies(
                        dependency_message([], f"{type(exc).__name__}: {exc}")) from None
                # a model's own library (timm, SAM 3's transformers): the run says what is wrong


def prepare_packages() -> List[str]:
    """Put the plugin-owned packages folder (pip --target) on sys.path, before any engine import;
    -> the pip names of the packages that are still missing (nothing is imported)."""
    from ..core import dependencies

    dependencies.add_packages_dir_to_path()
    return [requirement.package for requirement in dependencies.find_missing()]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)
