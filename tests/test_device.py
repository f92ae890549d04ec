"""Device choice (monkeypatched CUDA / MPS), half precision, and the out-of-memory retry path."""
from __future__ import annotations

import types

import numpy as np
import pytest
import rasterio
import torch

from support.oracles import ColourOracleScorer
from support.tiny_models import TINY_DINO_DIMS, load_tiny_clip
from drseg.core import device as dev
from drseg.core.errors import InputError, ModelError
from drseg.core.raster_io import RasterReader
from drseg.core.segment import SegmentationRequest, run_segmentation
from drseg.core.sliding import SlidingWindowSegmenter

GIB = 2 ** 30


@pytest.fixture
def machine(monkeypatch):
    """Pretend hardware: set .cuda / .mps / .cuda_count, then call the device functions."""
    state = types.SimpleNamespace(cuda=False, mps=False, cuda_count=1, empty_cache_calls=0)

    def empty_cache():
        state.empty_cache_calls += 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: state.cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state.cuda_count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"NVIDIA Test GPU {index}")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: types.SimpleNamespace(total_memory=12 * GIB))
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: state.mps)
    return state


def test_auto_prefers_cuda_and_says_which_gpu(machine):
    machine.cuda, machine.mps = True, True
    device, reason = dev.describe_device_choice("auto")
    assert device == torch.device("cuda")
    assert reason == "CUDA: NVIDIA Test GPU 0 (12 GB)"
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device(None) == torch.device("cuda")


def test_auto_takes_mps_without_cuda(machine):
    machine.mps = True
    device, reason = dev.describe_device_choice("AUTO")
    assert device == torch.device("mps")
    assert reason.startswith("MPS:")


def test_auto_falls_back_to_cpu_and_says_why(machine, monkeypatch):
    device, reason = dev.describe_device_choice("auto")
    assert device == torch.device("cpu")
    assert reason.startswith("CPU: no CUDA GPU found")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert dev.describe_device_choice("auto")[1] == ("CPU: no CUDA GPU found (this torch build has "
                                                     "no CUDA support)")


def test_broken_cuda_driver_counts_as_no_gpu(machine, monkeypatch):
    def broken():
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    assert dev.resolve_device("auto") == torch.device("cpu")


def test_explicit_choices(machine):
    assert dev.describe_device_choice("cpu") == (torch.device("cpu"), "CPU: chosen in the settings")
    machine.cuda, machine.cuda_count = True, 2
    device, reason = dev.describe_device_choice("cuda:1")
    assert device == torch.device("cuda", 1) and "NVIDIA Test GPU 1" in reason
    with pytest.raises(InputError, match="has 2 CUDA GPU"):
        dev.resolve_device("cuda:2")


@pytest.mark.parametrize("name,message", [("cuda", "no CUDA GPU found"), ("cuda:0", "no CUDA GPU"),
                                          ("mps", "Apple GPU"), ("tpu", "Unknown device 'tpu'")])
def test_unusable_or_unknown_devices_are_clear_errors(machine, name, message):
    with pytest.raises(InputError, match=message):
        dev.resolve_device(name)


def test_device_choices_still_offered():
    assert dev.DEVICE_CHOICES[:3] == ("auto", "cpu", "cuda")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_float16_on_cuda_only():
    ctx = dev.autocast_context(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16 and ctx.device == "cuda"
    assert not isinstance(dev.autocast_context("cuda", enabled=False), torch.autocast)
    assert not isinstance(dev.autocast_context("cuda", precision="fp32"), torch.autocast)
    assert dev.autocast_context("cuda", precision="bf16").fast_dtype == torch.bfloat16
    for name in ("cpu", "mps"):
        with dev.autocast_context(torch.device(name)):
            assert not torch.is_autocast_enabled()
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        dev.autocast_context("cpu", precision="half")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_drseg_and_dense_clip_share_one_precision_choice(tmp_path):
    """Both engines run their image encoders under the dense CLIP's `precision` (bfloat16 on the CPU
    stands in for float16 on CUDA): logits stay float32, differ from fp32 and stay close."""
    from drseg.core import dense_clip
    from drseg.core.drseg.dino import make_dino
    from drseg.core.drseg.rectify import DrSegRectifier, DrSegScorer

    model, tokenizer, _ = load_tiny_clip(tmp_path, seed=0)
    clip = dense_clip.DenseClip(model, tokenizer, torch.device("cpu"), templates=["{}"])
    clip.set_queries(["water", "road"])
    images = np.random.default_rng(0).integers(0, 255, (2, 3, 224, 224), dtype=np.uint8)
    torch.manual_seed(0)
    dino = make_dino("dino_vitb8", **TINY_DINO_DIMS)
    drseg = DrSegScorer(clip, dino, DrSegRectifier(spatial_prior=2, graph_k=4))
    for scorer in (clip, drseg):
        clip.precision = "fp32"
        reference = scorer.score_windows(images)
        clip.precision = "bf16"
        low = scorer.score_windows(images)
        assert low.dtype == np.float32 and low.shape == reference.shape
        assert not np.array_equal(low, reference)                  # reduced precision really ran
        np.testing.assert_allclose(low, reference, atol=0.1)
        clip.precision = "auto"                                     # the CPU default is float32
        np.testing.assert_array_equal(scorer.score_windows(images), reference)


# ----------------------------------------------------------------------------- OOM retry

def oom(text="CUDA out of memory. Tried to allocate 2.00 GiB"):
    return torch.cuda.OutOfMemoryError(text)


def test_oom_halves_the_batch_until_it_fits(machine):
    machine.cuda = True
    sizes, retries = [], []

    def fn(size):
        sizes.append(size)
        if size > 2:
            raise oom()
        return f"done with {size}"

    assert dev.run_with_oom_retry(fn, 9, lambda size, why: retries.append((size, why))) == "done with 2"
    assert sizes == [9, 4, 2]
    assert [s for s, _ in retries] == [4, 2] and "out of memory" in retries[0][1]
    assert machine.empty_cache_calls == 2


def test_runtime_error_saying_out_of_memory_is_retried_others_are_not():
    calls = []

    def mps_oom(size):
        calls.append(size)
        if size == 4:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)")
        return size

    assert dev.run_with_oom_retry(mps_oom, 4) == 2

    def bug(size):
        calls.append(size)
        raise RuntimeError("shape mismatch")

    calls.clear()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        dev.run_with_oom_retry(bug, 8)
    assert calls == [8]  # not retried, not disguised


def test_oom_with_one_window_tells_the_user_what_to_change(machine):
    machine.cuda = True
    retries = []

    def always(size):
        raise oom()

    with pytest.raises(ModelError) as info:
        dev.run_with_oom_retry(always, 4, lambda size, why: retries.append(size))
    assert retries == [2, 1]
    text = str(info.value)
    assert "out of memory" in text and "smaller window" in text and "CPU" in text
    assert "Tried to allocate 2.00 GiB" in text


class OomScorer(ColourOracleScorer):
    """Raises CUDA out-of-memory for batches larger than `limit` windows."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.batches = []

    def score_windows(self, images):
        self.batches.append(len(images))
        if len(images) > self.limit:
            raise oom()
        return super().score_windows(images)


def segment_blocks(path, scorer, **kw):
    scorer.set_queries(["building", "road", "water", "tree"])
    with RasterReader(path, None, None, None) as reader:
        segmenter = SlidingWindowSegmenter(reader, scorer, [0, 1, 2, 3], window=224, stride=112,
                                           block=256, batch_size=8, **kw)
        blocks = [(b.window, b.classes.copy(), b.score.copy()) for b in segmenter]
    return segmenter, blocks


def test_segmenter_survives_oom_with_identical_output_and_reports_it(scene):
    path, _ = scene
    _, expected = segment_blocks(path, ColourOracleScorer())
    reported = []
    scorer = OomScorer(limit=3)
    segmenter, blocks = segment_blocks(path, scorer,
                                       on_batch_reduced=lambda size, why: reported.append(size))
    assert reported == [4, 2]                   # 8 -> 4 -> 2, reported once each
    assert segmenter.batch_size == 2            # later blocks keep the smaller batch
    assert len(segmenter.oom_retries) == 2 and "out of memory" in segmenter.oom_retries[0]
    assert max(b for b in scorer.batches[3:]) <= 2
    assert len(blocks) == len(expected)
    for (window, classes, score), (window2, classes2, score2) in zip(blocks, expected):
        assert window == window2
        np.testing.assert_array_equal(classes, classes2)
        np.testing.assert_array_equal(score, score2)
    # every window was scored exactly once in the successful batches
    assert segmenter.timings.windows == sum(b for b in scorer.batches if b <= 3)


def test_run_segmentation_with_oom_writes_the_same_raster(scene, tmp_path):
    path, _ = scene
    outputs = []
    for name, scorer in (("plain", ColourOracleScorer()), ("oom", OomScorer(limit=1))):
        request = SegmentationRequest(raster=path, classes="building; road; water; tree",
                                      out_raster=str(tmp_path / f"{name}.tif"), threshold=0.0)
        run_segmentation(request, scorer=scorer)
        with rasterio.open(request.out_raster) as src:
            outputs.append(src.read(1))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_oom_at_one_window_fails_the_run_with_advice(scene, tmp_path):
    path, _ = scene
    request = SegmentationRequest(raster=path, classes="building; road",
                                  out_raster=str(tmp_path / "never.tif"))
    with pytest.raises(ModelError, match="smaller window"):
        run_segmentation(request, scorer=OomScorer(limit=0))
    assert not (tmp_path / "never.tif").exists()
