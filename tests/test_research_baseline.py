"""The research-style baseline of benchmarks/bench_suite.py computes what the engine computes.

The speed/memory comparison is only fair while both produce the same class map from the same
scorer: with the engine's blend window the baseline must agree pixel for pixel, and with the
research recipe's plain count map nearly everywhere (they differ only where overlapping windows
disagree and are averaged with different weights).
"""
import importlib.util
import os
import sys

import numpy as np
import pytest
import rasterio

from support.oracles import ColourOracleScorer
from support.rasters import scene_image, scene_labels, write_raster
from drseg.core.classes import flatten_queries, parse_classes
from drseg.core.segment import SegmentationRequest, run_segmentation
from drseg.core.sliding import window_starts

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
CLASSES = "building,roof; road,street; water; tree,forest; field"
COLOURS = dict(ColourOracleScorer().colours, field=(215, 205, 150))


def load_baseline():
    """benchmarks/ is not a package: load research_baseline.py by its path (once)."""
    if "research_baseline" not in sys.modules:
        spec = importlib.util.spec_from_file_location("research_baseline",
                                                      os.path.join(BENCHMARKS, "research_baseline.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["research_baseline"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["research_baseline"]


class BlurredOracle(ColourOracleScorer):
    """The colour oracle with softer logits, so that overlapping windows really disagree at class
    borders and the blending matters."""

    logit_scale = 8.0


def engine_classes(path, tmp_path, scorer, threshold):
    result = run_segmentation(SegmentationRequest(raster=path, classes=CLASSES, threshold=threshold,
                                                  out_raster=str(tmp_path / "engine.tif")),
                              scorer=scorer)
    with rasterio.open(result.raster_path) as src:
        return src.read(1)


@pytest.fixture
def noisy_scene(tmp_path):
    labels = scene_labels(height=530, width=470)
    image = scene_image(labels).astype(np.int16)
    image += np.random.default_rng(0).integers(-40, 41, image.shape, dtype=np.int16)
    return write_raster(tmp_path / "noisy.tif", np.clip(image, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("length,window,stride", [(224, 224, 112), (530, 224, 112), (470, 224, 112),
                                                   (448, 224, 112), (100, 224, 112), (337, 64, 48)])
def test_baseline_windows_are_the_engines(length, window, stride):
    assert load_baseline().slide_starts(length, window, stride) == window_starts(length, window, stride)


@pytest.mark.parametrize("threshold", [0.0, 0.6])
def test_baseline_with_the_engines_blend_window_equals_the_engine(noisy_scene, tmp_path, threshold):
    baseline = load_baseline()
    queries, owner = flatten_queries(parse_classes(CLASSES))
    scorer = BlurredOracle(COLOURS)
    expected = engine_classes(noisy_scene, tmp_path, scorer, threshold)
    scorer.set_queries(queries)
    got = baseline.segment_raster(noisy_scene, scorer, owner, threshold=threshold, weighting="ramp")
    assert got.classes.shape == expected.shape
    assert (got.classes == expected).mean() >= 0.9999
    if threshold:
        assert (expected == 0).any()  # the threshold was exercised


def test_research_count_map_agrees_with_the_engine_almost_everywhere(noisy_scene, tmp_path):
    baseline = load_baseline()
    queries, owner = flatten_queries(parse_classes(CLASSES))
    scorer = BlurredOracle(COLOURS)
    expected = engine_classes(noisy_scene, tmp_path, scorer, 0.0)
    scorer.set_queries(queries)
    out = tmp_path / "baseline.tif"
    got = baseline.segment_raster(noisy_scene, scorer, owner, out_raster=str(out), weighting="count")
    agreement = (got.classes == expected).mean()
    assert 0.97 <= agreement < 1.0  # the weighting differs, and here that shows
    with rasterio.open(out) as src, rasterio.open(noisy_scene) as ref:
        assert (src.read(1) == got.classes).all()
        assert (src.transform, src.crs) == (ref.transform, ref.crs)
    truth = np.where(scene_labels(height=530, width=470) == 0, 5, scene_labels(height=530, width=470))
    assert (got.classes == truth).mean() > 0.9  # and the baseline segments the scene


def test_baseline_handles_an_image_smaller_than_a_window(tmp_path):
    baseline = load_baseline()
    labels = scene_labels(height=150, width=190)
    path = write_raster(tmp_path / "small.tif", scene_image(labels))
    queries, owner = flatten_queries(parse_classes(CLASSES))
    scorer = BlurredOracle(COLOURS)
    expected = engine_classes(path, tmp_path, scorer, 0.0)
    scorer.set_queries(queries)
    got = baseline.segment_raster(path, scorer, owner, weighting="ramp")
    assert got.timings.windows == 1
    assert (got.classes == expected).mean() >= 0.9999
