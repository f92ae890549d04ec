"""Test session set-up (environment, QGIS's `processing` unshadowed) and shared fixtures.

The helpers themselves live in `tests/support/` (rasters, oracles, tiny models, output readers).
"""
from __future__ import annotations

import os
import sys
import tempfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The tests run inside a QGIS application, as the plugin does: under a display (Xvfb) Mesa's LLVM
# is loaded, and triton's (imported by torchvision) would crash the process; keep it out likewise.
from drseg.qgis_bridge.engine import keep_triton_out  # noqa: E402 (imports neither torch nor QGIS)

keep_triton_out()
# The user's own DR-Seg settings file (cache folder, mirror, models) must not change test results.
os.environ["DRSEG_CONFIG"] = os.path.join(tempfile.mkdtemp(prefix="drseg-test-config-"), "settings.json")
# Nor may embeddings another test (or the user) stored on disk: tests that use the disk cache
# name their own folder.
os.environ["DRSEG_EMBEDDING_CACHE"] = "off"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unshadow_qgis_processing() -> None:
    """Let `import processing` find QGIS's Processing plugin, not this repository's `processing/`.

    When the repository root gets onto sys.path (`python -m pytest` without -P, or pytest's own
    path handling), our plugin's `processing/` package (imported by QGIS as
    `<plugin>.processing`, never top level) hides QGIS's `processing`. `drseg` itself is
    importable through its editable install.
    """
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO_ROOT]
    module = sys.modules.get("processing")
    location = os.path.abspath(getattr(module, "__file__", None) or os.curdir) if module else ""
    if location.startswith(REPO_ROOT + os.sep):
        for name in [n for n in sys.modules if n == "processing" or n.startswith("processing.")]:
            del sys.modules[name]


unshadow_qgis_processing()


@pytest.fixture(scope="session", autouse=True)
def qgis_processing_not_shadowed():
    """Again before the first test: pytest imports the repository root's `__init__.py` as a test
    package when the first test is set up and, when the folder's name is not a Python identifier
    (a clone in 'drseg-main'), puts the root itself on sys.path. Autouse session fixtures run
    before pytest-qgis's `qgis_processing`, which imports QGIS's processing."""
    unshadow_qgis_processing()


# Re-exported for compatibility: test modules (also on branches not yet merged) import these
# names from conftest; new code imports them from support.*.
from support.oracles import ColourOracleScorer, iou  # noqa: E402,F401
from support.rasters import SCENE_COLOURS, scene_image, scene_labels, write_raster  # noqa: E402,F401
from support.tiny_models import (TINY_CLIP_CONFIG, TINY_DINO_DIMS,  # noqa: E402,F401
                                 write_tiny_clip_config)


@pytest.fixture
def scene(tmp_path):
    labels = scene_labels()
    path = write_raster(tmp_path / "scene.tif", scene_image(labels))
    return path, labels


@pytest.fixture
def tiny_clip_config(tmp_path):
    return write_tiny_clip_config(tmp_path)


def put_in_cache(cache_dir, catalog_name: str, content: bytes = b"not really weights") -> str:
    """Place a file where the model cache keeps `catalog_name` (as if it had been downloaded)."""
    from drseg.core.models.catalog import get_model

    os.makedirs(str(cache_dir), exist_ok=True)
    path = os.path.join(str(cache_dir), get_model(catalog_name).file)
    with open(path, "wb") as handle:
        handle.write(content)
    return path
