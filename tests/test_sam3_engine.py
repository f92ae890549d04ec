"""The SAM 3 engine: the combination of SAM 3's outputs per concept (oracle), probabilities through
the sliding-window engine (background by threshold, seam-free whatever the block size), text once
per run, image features kept per tile, with the real SAM 3 architecture at tiny size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_SAM3_SIZE, tiny_sam3_config, write_raster
from drseg.core.models import sam3 as sam3_models
from drseg.core.raster_io import RasterReader
from drseg.core.sam3_engine import FeatureCache, Sam3Scorer, combine_concept
from drseg.core.sliding import SlidingWindowSegmenter

BIG = 30.0  # a logit whose sigmoid is 1 to float precision


def test_instances_count_by_their_score_and_presence():
    masks = torch.full((3, 4, 4), -BIG)
    masks[0, :2, :2] = BIG      # a confident instance, top left
    masks[1, 2:, 2:] = BIG      # an instance SAM 3 does not believe in, bottom right
    masks[2, :2, 2:] = BIG      # a half-believed instance, top right
    scores = torch.tensor([BIG, -BIG, 0.0])
    semantic = torch.full((4, 4), -BIG)
    out = combine_concept(masks, scores, torch.tensor([BIG]), semantic)
    expected = np.zeros((4, 4), np.float32)
    expected[:2, :2] = 1.0
    expected[:2, 2:] = 0.5
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_semantic_map_fills_stuff_only_where_the_concept_is_present():
    masks = torch.full((2, 4, 4), -BIG)
    semantic = torch.full((4, 4), -BIG)
    semantic[3] = BIG           # a strip of "water" the instances miss
    present = combine_concept(masks, torch.zeros(2), torch.tensor([BIG]), semantic)
    absent = combine_concept(masks, torch.zeros(2), torch.tensor([-BIG]), semantic)
    expected = np.zeros((4, 4), np.float32)
    expected[3] = 1.0
    np.testing.assert_allclose(present.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(absent.numpy(), 0.0, atol=1e-6)


def test_semantic_map_of_another_size_is_resized():
    masks = torch.full((1, 4, 4), -BIG)
    out = combine_concept(masks, torch.zeros(1), torch.tensor([BIG]), torch.full((2, 2), BIG))
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)


def test_feature_cache_keeps_the_latest_within_its_budget():
    cache = FeatureCache(budget_bytes=2 * 400)
    tile = lambda v: ((torch.full((100,), float(v)),), ())  # 400 bytes each  # noqa: E731
    cache.put("a", tile(1))
    cache.put("b", tile(2))
    cache.get("a")              # a is now the most recently used
    cache.put("c", tile(3))     # b goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 800
    cache.put("huge", ((torch.zeros(1000),), ()))  # larger than the budget: not kept
    assert cache.get("huge") is None and len(cache) == 2


# --------------------------------------------------------------- sliding engine, probabilities

class ColourProbabilityScorer:
    """Per query an independent probability: 0.9 where the pixel has the query's colour, else
    0.05 (so a pixel of neither colour has every probability below the threshold)."""

    outputs = "probabilities"
    logit_scale = 1.0
    colours = {"red": (200, 0, 0), "blue": (0, 0, 200)}

    def set_queries(self, queries):
        self.queries = list(queries)

    def score_windows(self, images):
        maps = []
        for query in self.queries:
            colour = np.array(self.colours[query], np.int32)[None, :, None, None]
            hit = (np.abs(images.astype(np.int32) - colour).sum(axis=1) < 30)
            maps.append(np.where(hit, 0.9, 0.05))
        return np.stack(maps, axis=1).astype(np.float32)


def test_probabilities_are_not_softmaxed_and_background_comes_by_threshold(tmp_path):
    image = np.zeros((3, 64, 96), np.uint8)
    image[:, :, :] = np.array((0, 160, 0), np.uint8)[:, None, None]   # green: neither class
    image[:, :32, :48] = np.array((200, 0, 0), np.uint8)[:, None, None]
    image[:, 32:, 48:] = np.array((0, 0, 200), np.uint8)[:, None, None]
    path = write_raster(tmp_path / "rgb.tif", image)
    scorer = ColourProbabilityScorer()
    scorer.set_queries(["red", "blue"])
    with RasterReader(path) as reader:
        blocks = list(SlidingWindowSegmenter(reader, scorer, [0, 1], threshold=0.3, window=32,
                                             stride=16, block=40))
    classes = np.zeros((64, 96), np.uint8)
    for block in blocks:
        w = block.window
        classes[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = block.classes
    expected = np.zeros((64, 96), np.uint8)
    expected[:32, :48] = 1
    expected[32:, 48:] = 2
    assert (classes == expected).mean() > 0.97  # only the blended rims of the areas may differ
    assert (classes[:24, :40] == 1).all() and (classes[40:, 56:] == 2).all()
    assert (classes[:24, 56:] == 0).all()     # green: 0.05 each, not a softmax's 0.5


# --------------------------------------------------------------- the real architecture, tiny

@pytest.fixture
def tiny_scorer():
    sam3_models.register_sam3_architecture("tiny_sam3", tiny_sam3_config)
    torch.manual_seed(0)
    scorer = Sam3Scorer(sam3_models.load_sam3("tiny_sam3", "random", "cpu"))
    yield scorer
    sam3_models._EXTRA_ARCHITECTURES.pop("tiny_sam3", None)


def test_scorer_runs_the_real_architecture(tiny_scorer):
    assert tiny_scorer.window == TINY_SAM3_SIZE
    tiny_scorer.set_queries(["building", "water"])
    tiles = np.random.default_rng(0).integers(0, 255, (2, 3, TINY_SAM3_SIZE, TINY_SAM3_SIZE), np.uint8)
    out = tiny_scorer.score_windows(tiles)
    assert out.shape[:2] == (2, 2) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out[0], out[1])  # the tiles differ, so do their maps


def test_second_class_list_on_the_same_tiles_skips_the_image_encoder(tiny_scorer):
    tiles = np.random.default_rng(1).integers(0, 255, (3, 3, TINY_SAM3_SIZE, TINY_SAM3_SIZE), np.uint8)
    tiny_scorer.set_queries(["building", "road"])
    first = tiny_scorer.score_windows(tiles)
    assert tiny_scorer.encoder_calls == 3
    tiny_scorer.set_queries(["road", "tree", "building"])
    second = tiny_scorer.score_windows(tiles)
    assert tiny_scorer.encoder_calls == 3        # features came from the cache
    # the same concept on the same tile gives the same map, whatever list it is in
    np.testing.assert_allclose(second[:, 0], first[:, 1], atol=1e-5)
    np.testing.assert_allclose(second[:, 2], first[:, 0], atol=1e-5)
    other = tiles.copy()
    other[0, 0, 0, 0] ^= 1                       # one pixel differs: another tile
    tiny_scorer.score_windows(other[:1])
    assert tiny_scorer.encoder_calls == 4


def test_text_features_are_computed_once_per_class_list(tiny_scorer, monkeypatch):
    calls = []
    original = tiny_scorer.model.get_text_features
    monkeypatch.setattr(tiny_scorer.model, "get_text_features",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    tiny_scorer.set_queries(["building"])
    tiles = np.zeros((2, 3, TINY_SAM3_SIZE, TINY_SAM3_SIZE), np.uint8)
    tiny_scorer.score_windows(tiles)
    tiny_scorer.score_windows(tiles + 1)
    assert len(calls) == 1


def test_sam3_results_do_not_depend_on_the_block_size(tmp_path, tiny_scorer):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (3, 150, 200), np.uint8)
    path = write_raster(tmp_path / "scene.tif", image)
    tiny_scorer.set_queries(["building", "water"])
    results = []
    for block in (64, 512):
        with RasterReader(path) as reader:
            segmenter = SlidingWindowSegmenter(
                reader, tiny_scorer, [0, 1], threshold=0.0, window=TINY_SAM3_SIZE,
                stride=TINY_SAM3_SIZE * 3 // 4, block=block, keep_probabilities=True)
            probs = np.zeros((2, 150, 200), np.float32)
            for result in segmenter:
                w = result.window
                probs[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = result.probabilities
        results.append(probs)
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)


def test_a_tiles_scores_do_not_depend_on_its_batch_and_positions_are_shared(tiny_scorer):
    """One encoder pass per tile: scoring a tile alone, after other tiles, or in a batch whose
    other tile is cached gives the same bits (what a Dask task, which scores its halo again, needs);
    the position encodings, which depend on the shape alone, are one set for every tile."""
    tiles = np.random.default_rng(4).integers(0, 255, (3, 3, TINY_SAM3_SIZE, TINY_SAM3_SIZE), np.uint8)
    tiny_scorer.set_queries(["building", "water"])
    together = tiny_scorer.score_windows(tiles)
    tiny_scorer.features.clear()
    tiny_scorer.score_windows(tiles[1:2])                    # the middle tile cached first
    mixed = tiny_scorer.score_windows(tiles)
    tiny_scorer.features.clear()
    alone = np.concatenate([tiny_scorer.score_windows(tiles[i:i + 1]) for i in range(3)])
    assert np.array_equal(together, mixed) and np.array_equal(together, alone)
    first, second = tiny_scorer._encode(tiles[:2])
    assert all(a is b for a, b in zip(first[1], second[1]))
    fresh = tiny_scorer.model.get_vision_features(
        pixel_values=torch.from_numpy(tiles[2:3]).float().div(255).sub(0.5).div(0.5))
    assert all(torch.equal(a, b) for a, b in zip(first[1], fresh.fpn_position_encoding))
    level_bytes = sum(t.numel() * t.element_size() for t in first[0])
    tiny_scorer.features.clear()
    tiny_scorer.features.put("x", first)
    assert tiny_scorer.features.bytes == level_bytes          # shared positions are not counted
