"""Shared test helpers: georeferenced rasters written on the fly, a colour 'oracle' scorer whose
right answer is known, and a tiny open_clip configuration of the real architecture."""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

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

# Colours of the synthetic scene's classes; the oracle recognises a class by its colour.
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


SCENE_COLOURS = {"building": (200, 60, 50), "road": (245, 245, 245), "water": (30, 90, 200),
                 "tree": (40, 140, 50)}

# Tiny widths of the real DINO definitions (same timm model, patch size and token layout), passed
# to make_dino / load_dino_checkpoint as dims.
TINY_DINO_DIMS = dict(embed_dim=32, depth=2, num_heads=2)

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_raster(path, data, crs="EPSG:32633", transform=None, nodata=None, dtype=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(500000.0, 4100000.0, 0.5, 0.5)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=dtype or data.dtype, crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def scene_labels(height=600, width=520):
    """Ground truth of a synthetic scene: 0 background field, 1 building, 2 road, 3 water, 4 tree."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, 240:300] = 2                          # a road crossing the whole scene
    labels[60:230, 40:200] = 1                      # a building block west of the road
    labels[380:560, 330:500] = 3                    # a pond east of the road
    yy, xx = np.mgrid[:height, :width]
    labels[(yy - 150) ** 2 + (xx - 420) ** 2 < 70 ** 2] = 4   # a round tree crown
    labels[420:540, 60:180] = 1                     # a second building
    return labels


def scene_image(labels):
    image = np.full((3,) + labels.shape, 200, np.uint8)  # bright background
    image[:] = np.array((215, 205, 150), np.uint8)[:, None, None]
    for index, name in enumerate(SCENE_COLOURS, start=1):
        image[:, labels == index] = np.array(SCENE_COLOURS[name], np.uint8)[:, None]
    return image


class ColourOracleScorer:
    """Knows each class by its colour: per window, token logits = closeness of the token's mean
    colour to the class colour (a query 'roof' means the building colour, too)."""

    logit_scale = 50.0

    def __init__(self, colours=None, patch=8):
        self.colours = colours or SCENE_COLOURS
        self.patch = patch
        self.queries = []
        self.calls = 0
        self.windows = 0

    def set_queries(self, queries):
        aliases = {"roof": "building", "street": "road", "forest": "tree", "river": "water"}
        self.queries = [aliases.get(q, q) for q in queries]

    def score_windows(self, images):
        self.calls += 1
        self.windows += len(images)
        b, _, h, w = images.shape
        p = self.patch
        pooled = images.reshape(b, 3, h // p, p, w // p, p).astype(np.float32).mean(axis=(3, 5))
        logits = []
        for query in self.queries:
            colour = np.array(self.colours.get(query, (255, 0, 255)), np.float32)[None, :, None, None]
            distance = np.sqrt(((pooled - colour) ** 2).sum(axis=1))
            logits.append(1.0 - distance / 100.0)
        return np.stack(logits, axis=1).astype(np.float32)


@pytest.fixture
def scene(tmp_path):
    labels = scene_labels()
    path = write_raster(tmp_path / "scene.tif", scene_image(labels))
    return path, labels


@pytest.fixture
def tiny_clip_config(tmp_path):
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return str(path)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def put_in_cache(cache_dir, catalog_name: str, content: bytes = b"not really weights") -> str:
    """Place a file where the model cache keeps `catalog_name` (as if it had been downloaded)."""
    from drseg.core.models.catalog import get_model

    os.makedirs(str(cache_dir), exist_ok=True)
    path = os.path.join(str(cache_dir), get_model(catalog_name).file)
    with open(path, "wb") as handle:
        handle.write(content)
    return path
