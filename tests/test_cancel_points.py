"""Cancel inside long forwards and progress inside stages, on tiny models of the real
architectures. A run cancelled while a transformer block computes must stop before the next
block: at most one more block forward after the cancel (a behavioural proxy for the 2-s bound)."""
from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest
import torch

from support.rasters import write_raster
from support.tiny_models import TINY_CLIP_CONFIG
from drseg.core.refer.synthetic import tiny_sam
from drseg.core.models.clip import load_clip
from drseg.core.dense_clip import DenseClip
from drseg.core.errors import RunCancelled
from drseg.core.interrupt import cancel_points, install_cancel_points
from drseg.core.segment import SegmentationRequest, run_segmentation

DEPTH = 4


class BlockCounter:
    """Counts forwards of `blocks`; sets `cancel` when the forward number `cancel_at` starts."""

    def __init__(self, blocks, cancel_at: int):
        self.cancel = threading.Event()
        self.calls = 0
        self.after_cancel = 0
        self.cancel_at = cancel_at
        for block in blocks:
            block.register_forward_hook(self._done)

    def _done(self, module, args, output):
        self.calls += 1
        if self.cancel.is_set():
            self.after_cancel += 1
        elif self.calls == self.cancel_at:
            self.cancel.set()  # pressed while this block computed


@pytest.fixture
def deep_clip(tmp_path_factory):
    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["layers"] = DEPTH
    config["text_cfg"]["layers"] = DEPTH
    path = tmp_path_factory.mktemp("deep") / "deep.json"
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    model, tokenizer = load_clip(str(path), "random")
    return DenseClip(model, tokenizer, torch.device("cpu"), templates=["a photo of a {}.", "{}"],
                     batch_size=1)


def scene(tmp_path, size):
    rng = np.random.default_rng(0)
    return write_raster(tmp_path / "scene.tif", rng.integers(0, 255, (3, size, size), np.uint8))


def request(tmp_path, raster, **extra):
    values = dict(raster=raster, classes="building; road; tree; water",
                  out_vector=str(tmp_path / "out.gpkg"), out_raster=str(tmp_path / "out.tif"),
                  window=224, stride=112, block=512, batch_size=1)
    values.update(extra)
    return SegmentationRequest(**values)


def outputs_left(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "scene.tif")


def test_cancel_during_text_encoding_stops_before_the_next_block(deep_clip, tmp_path):
    counter = BlockCounter(deep_clip.model.transformer.resblocks, cancel_at=1)
    raster = scene(tmp_path, 224)
    with pytest.raises(RunCancelled):
        run_segmentation(request(tmp_path, raster), scorer=deep_clip,
                         cancelled=counter.cancel.is_set)
    assert counter.cancel.is_set() and counter.after_cancel <= 1
    assert outputs_left(tmp_path) == []


def test_cancel_inside_a_block_stops_before_the_next_block(deep_clip, tmp_path):
    """448² px with 224-px windows at stride 112 is 9 windows in one 512-px block; pressed while
    the third window's first block computes (dense CLIP runs all blocks but the last, whose
    attention it replaces)."""
    counter = BlockCounter(deep_clip.model.visual.transformer.resblocks, cancel_at=2 * (DEPTH - 1) + 1)
    raster = scene(tmp_path, 448)
    with pytest.raises(RunCancelled):
        run_segmentation(request(tmp_path, raster), scorer=deep_clip,
                         cancelled=counter.cancel.is_set)
    assert counter.cancel.is_set() and counter.after_cancel <= 1
    assert outputs_left(tmp_path) == []


def test_progress_moves_per_query_and_per_window_batch_inside_one_block(deep_clip, tmp_path):
    raster = scene(tmp_path, 448)
    seen = []
    run_segmentation(request(tmp_path, raster), scorer=deep_clip,
                     progress=lambda fraction, message: seen.append((fraction, message)))
    text = [(f, m) for f, m in seen if m.startswith("Encoding class names")]
    assert [m.split(":")[0] for f, m in text] == [f"Encoding class names ({i}/4" for i in
                                                  range(1, 5)]
    windows = [(f, m) for f, m in seen if "windows)" in m]
    assert [m for f, m in windows] == [f"Segmenting block 1/1 ({i}/9 windows)" for i in range(1, 10)]
    fractions = [f for f, m in text + windows]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert [f for f, m in seen] == sorted(f for f, m in seen)  # never goes back


def test_cancel_during_sam_encoding_stops_before_the_next_block():
    from drseg.core.refer.pipeline import make_predictor

    sam = tiny_sam(depth=DEPTH)
    predictor = make_predictor(sam)  # hooks SAM's image encoder blocks
    counter = BlockCounter(sam.image_encoder.blocks, cancel_at=1)

    def check():
        if counter.cancel.is_set():
            raise RunCancelled("cancelled")

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    with cancel_points(check), pytest.raises(RunCancelled):
        predictor.set_image(image)
    assert counter.cancel.is_set() and counter.after_cancel <= 1


def test_cancel_points_belong_to_the_calling_thread_and_are_installed_once(deep_clip):
    assert install_cancel_points(deep_clip.model) == 2 * DEPTH  # text and image towers
    assert install_cancel_points(deep_clip.model) == 2 * DEPTH
    # Another thread's cancelled run does not stop this thread's forward.
    entered, release = threading.Event(), threading.Event()

    def cancelled_elsewhere():
        def check():
            raise RunCancelled("the other run")
        with cancel_points(check):
            entered.set()
            release.wait(10)

    other = threading.Thread(target=cancelled_elsewhere)
    other.start()
    assert entered.wait(10)
    try:
        deep_clip.set_queries(["water"])  # runs every text block without a cancel
    finally:
        release.set()
        other.join()
    assert deep_clip.text_features.shape == (1, 32)
