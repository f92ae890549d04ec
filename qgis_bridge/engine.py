"""The engine gate: lazy access to the engine, so the plugin loads (and shows a clear message)
without torch, and the dependency check the dock, the dialogs and Processing share.

Nothing here imports torch, open_clip or QGIS. The defaults below mirror the engine's; a test keeps
them equal, and they live here because Processing parameters and the dock are built at QGIS
start-up, when importing torch would be slow or, on a machine without it, fail.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from typing import List, Optional

DEFAULT_THRESHOLD = 0.3            # core.segment.DEFAULT_THRESHOLD
DEVICE_CHOICES = ("auto", "cpu", "cuda")   # core.device.DEVICE_CHOICES
DEFAULT_CLIP_MODEL = "ViT-B-16"    # core.clip_models.DEFAULT_CLIP_MODEL
DEFAULT_CLIP_WEIGHTS = "openai"    # core.clip_models.DEFAULT_CLIP_WEIGHTS

# Segmentation methods: the engine's SegmentationRequest.method values and their names for users.
METHOD_LABELS = {"drseg": "DR-Seg", "clip": "dense CLIP", "custom": "custom scorer"}
# DINO architectures and the catalog checkpoint each uses by default (core.model_cache.DINO_MODELS).
DINO_DEFAULT_WEIGHTS = {"dino_vits8": "dino-vit-s8", "dino_vitb8": "dino-vit-b8",
                        "dinov2_vits14": "dinov2-vit-s14", "dinov2_vitb14": "dinov2-vit-b14"}
DINO_MODEL_CHOICES = tuple(DINO_DEFAULT_WEIGHTS)
DEFAULT_DINO_MODEL = "dino_vitb8"  # core.segment.SegmentationRequest.dino_model
DEFAULT_SEMANTIC_RATIO = 0.3       # core.segment.SegmentationRequest.semantic_ratio
DEFAULT_GRAPH_K = 8                # core.segment.SegmentationRequest.graph_k
RECORD_SUFFIX = ".verified.json"   # core.download.RECORD_SUFFIX
# SAM architectures and the catalog checkpoint each uses by default (core.sam_models.CATALOG_FOR_TYPE).
SAM_DEFAULT_WEIGHTS = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h"}
SAM_MODEL_CHOICES = tuple(SAM_DEFAULT_WEIGHTS)   # core.sam_models.SAM_TYPES
DEFAULT_MAX_SIZE = 1024            # core.refer.run.DEFAULT_MAX_SIZE

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
    `import_model_libraries()`.
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


# What the models need, imported in a task's worker thread (QGIS's event loop keeps running).
SEGMENT_LIBRARIES = ("torch", "open_clip")
REFER_LIBRARIES = ("torch", "open_clip", "segment_anything")


def import_model_libraries(modules=SEGMENT_LIBRARIES) -> None:
    """Worker thread: import the model libraries; a broken installation (present but failing to
    import) as MissingDependencies with the install advice."""
    keep_triton_out()
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencies(dependency_message([], f"{type(exc).__name__}: {exc}")) from None


def prepare_packages() -> List[str]:
    """Put the plugin-owned packages folder (pip --target) on sys.path, before any engine import;
    -> the pip names of the packages that are still missing (nothing is imported)."""
    from ..core import dependencies

    dependencies.add_packages_dir_to_path()
    return [requirement.package for requirement in dependencies.find_missing()]


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def find_dino_weights(dino_model: str, weights=None, cache_dir: Optional[str] = None
                      ) -> Optional[str]:
    """The DINO checkpoint file a DR-Seg run would use, or None when none is set up.

    Like core.model_cache.resolve_dino_weights, but without importing torch (the dock calls it
    while QGIS starts, perhaps without torch) and with the model cache folder of the settings:
    `weights` is a file, a catalog name, or empty for the catalog default of `dino_model`. A
    catalog checkpoint counts when its file is in `cache_dir` (default: DRSEG_CACHE_DIR, else the
    platform's cache) with the size the catalog or its download record gives.

    Raises InputError for an unknown model, catalog name or a missing file, and ModelError when
    weights other than the default were named but are not downloaded.
    """
    from ..core.catalog import get_model
    from ..core.errors import InputError, ModelError

    if dino_model not in DINO_DEFAULT_WEIGHTS:
        raise InputError(f"Unknown DINO model '{dino_model}'; choose one of "
                         f"{', '.join(DINO_MODEL_CHOICES)}")
    weights = str(weights or "").strip()
    if weights and os.path.isfile(os.path.expanduser(weights)):
        return os.path.abspath(os.path.expanduser(weights))
    if weights and (os.sep in weights or "/" in weights
                    or weights.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))):
        raise InputError(f"DINO weights file '{weights}' does not exist")
    default = DINO_DEFAULT_WEIGHTS[dino_model]
    entry = get_model(weights or default)
    if entry.family != "dino":
        raise InputError(f"'{entry.name}' is a {entry.family.upper()} model, not DINO weights")
    if cache_dir is None:
        from ..core.settings import Settings

        cache_dir = Settings().effective_cache_dir()
    path = os.path.join(cache_dir, entry.file)
    if _cached_file_ok(path, entry):
        return path
    if entry.name.lower() != default.lower():
        raise ModelError(f"The DINO weights '{entry.name}' are not downloaded (model cache: "
                         f"{cache_dir}); download them in DR-Seg settings › Download models…, "
                         "or add a downloaded file there with Import file…")
    return None


def _cached_file_ok(path: str, entry) -> bool:
    """A cheap check like core.download.cached_path's: present, with the known size."""
    if not os.path.isfile(path):
        return False
    size = os.path.getsize(path)
    if entry.size is not None and not entry.archive_member and size != entry.size:
        return False
    try:
        with open(path + RECORD_SUFFIX, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return True
    return not isinstance(record, dict) or record.get("size") in (None, size)


def dino_help(dino_model: str) -> str:
    """How to set up DINO weights for `dino_model`, in one sentence."""
    name = DINO_DEFAULT_WEIGHTS.get(dino_model, "a DINO checkpoint")
    return (f"download '{name}' (DR-Seg settings › Download models…) or choose a checkpoint "
            "file as DINO weights")

