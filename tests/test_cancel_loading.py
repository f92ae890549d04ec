"""Cancel while a model is built or its weights are loaded (core.interrupt.cancellable_loading):
CLIP, SAM and DINO loaders stop at the next submodule, parameter or module of weights, and the
model cache keeps nothing half-loaded. Work done after the cancel is counted (parameters
registered, modules loaded), never wall-clock time: the behavioural proxy for the 2-s bound."""
from __future__ import annotations

import pytest
import torch

from support.tiny_models import TINY_DINO_DIMS, build_tiny_sam, write_tiny_clip_config
from drseg.core.drseg.dino import load_dino_checkpoint, make_dino
from drseg.core.errors import RunCancelled
from drseg.core.interrupt import cancel_points, cancellable_loading
from drseg.core.models import cache, sam as sam_models, shared
from drseg.core.models.sam import register_sam_architecture


class Work:
    """Counts parameters registered and modules loaded; the run counts as cancelled from the
    moment `cancel_when(work)` first holds, and `after_cancel` counts the work done after it."""

    def __init__(self, monkeypatch, cancel_when):
        self.registered = 0
        self.loaded = 0
        self.cancelled_at = None
        self.cancel_when = cancel_when
        self._handle = torch.nn.modules.module.register_module_parameter_registration_hook(
            self._registered)
        original = torch.nn.Module.load_state_dict

        def counting_load(module, state, *args, **kwargs):
            result = original(module, state, *args, **kwargs)
            self.loaded += 1
            return result

        monkeypatch.setattr(torch.nn.Module, "load_state_dict", counting_load)

    def _registered(self, module, name, param):
        self.registered += 1

    def total(self):
        return self.registered + self.loaded

    def check(self):  # what a run's monitor does: raise once the user has cancelled
        if self.cancelled_at is None and self.cancel_when(self):
            self.cancelled_at = self.total()
        if self.cancelled_at is not None:
            raise RunCancelled("cancelled")

    @property
    def after_cancel(self):
        return self.total() - self.cancelled_at

    def close(self):
        self._handle.remove()


@pytest.fixture
def work(monkeypatch):
    made = []

    def make(cancel_when):
        made.append(Work(monkeypatch, cancel_when))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture(autouse=True)
def empty_model_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def tiny_sam_type():
    register_sam_architecture("tiny_cancel", lambda: build_tiny_sam(depth=2))
    yield "tiny_cancel"
    sam_models._EXTRA_ARCHITECTURES.pop("tiny_cancel", None)


def clip_loader(tmp_path, weights):
    config = write_tiny_clip_config(tmp_path)
    return lambda: shared.dense_clip_scorer(config, weights, "cpu")


def test_cancel_while_clip_is_built_stops_at_the_next_parameter(tmp_path, work):
    load = clip_loader(tmp_path, "random")
    counter = work(lambda w: w.registered >= 10)
    with cancel_points(counter.check), pytest.raises(RunCancelled):
        load()
    assert counter.cancelled_at == 10 and counter.after_cancel <= 1
    assert len(cache.MODELS) == 0                   # nothing half-built is kept
    scorer = load()                                 # the next run builds it whole
    assert len(cache.MODELS) == 1 and scorer.model.visual.transformer.resblocks


def test_cancel_while_clip_weights_load_stops_at_the_next_module(tmp_path, work):
    # A checkpoint of the tiny CLIP: building registers every parameter, then weights load
    # module by module.
    model = clip_loader(tmp_path, "random")().model
    weights = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    cache.clear()
    load = clip_loader(tmp_path, str(weights))
    counter = work(lambda w: w.loaded >= 3)
    with cancel_points(counter.check), pytest.raises(RunCancelled):
        load()
    assert counter.loaded >= 3 and counter.after_cancel <= 1
    assert len(cache.MODELS) == 0
    loaded = load().model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values()))


@pytest.mark.parametrize("stage", ["build", "weights"])
def test_cancel_while_sam_loads(tmp_path, work, tiny_sam_type, stage):
    weights = tmp_path / "tiny_sam.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in build_tiny_sam(depth=2).state_dict().items()},
              str(weights))
    when = (lambda w: w.registered >= 20) if stage == "build" else (lambda w: w.loaded >= 5)
    counter = work(when)
    with cancel_points(counter.check), pytest.raises(RunCancelled):
        shared.sam_model(tiny_sam_type, str(weights), "cpu")
    assert counter.cancelled_at is not None and counter.after_cancel <= 1
    assert len(cache.MODELS) == 0
    assert shared.sam_model(tiny_sam_type, str(weights), "cpu") is not None


def test_the_safetensors_reader_checks_between_tensors(tmp_path):
    from safetensors.torch import save_file

    from drseg.core.models.checkpoints import load_state_dict

    weights = tmp_path / "many.safetensors"
    save_file({f"t{index}": torch.full((4,), float(index)) for index in range(50)}, str(weights))
    checks = []

    def check():
        checks.append(1)
        if len(checks) == 10:
            raise RunCancelled("cancelled")

    with cancel_points(check), pytest.raises(RunCancelled):
        load_state_dict(str(weights))
    assert len(load_state_dict(str(weights))) == 50     # outside a run: nothing checked


@pytest.mark.parametrize("stage", ["build", "weights"])
def test_cancel_while_dino_loads(tmp_path, work, stage):
    weights = tmp_path / "dino.pth"
    torch.save(make_dino("dino_vits8", **TINY_DINO_DIMS).model.state_dict(), weights)
    when = (lambda w: w.registered >= 8) if stage == "build" else (lambda w: w.loaded >= 4)
    counter = work(when)
    with cancel_points(counter.check), cancellable_loading(), pytest.raises(RunCancelled):
        load_dino_checkpoint("dino_vits8", str(weights), **TINY_DINO_DIMS)
    assert counter.cancelled_at is not None and counter.after_cancel <= 1


def test_outside_a_loading_block_registrations_are_not_checked(tmp_path, work):
    counter = work(lambda w: True)                   # "cancelled" from the start
    with cancel_points(counter.check):
        torch.nn.Linear(2, 2)                        # e.g. a small head built during a run
    assert counter.cancelled_at is None


def test_a_run_cancelled_while_its_model_is_built_stops_there_and_leaves_nothing(tmp_path, work):
    """The engine's run: its cancel reaches the model build (the dock's and Processing's path)."""
    import numpy as np

    from support.rasters import write_raster
    from drseg.core.segment import SegmentationRequest, run_segmentation

    raster = write_raster(tmp_path / "scene.tif",
                          np.random.default_rng(0).integers(0, 255, (3, 64, 64), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    counter = work(lambda w: w.registered >= 12)
    request = SegmentationRequest(raster=raster, classes="building; water",
                                  out_vector=str(out / "o.gpkg"), out_raster=str(out / "o.tif"),
                                  clip_model=write_tiny_clip_config(tmp_path), clip_weights="random",
                                  method="clip", device="cpu")

    def cancelled():
        try:
            counter.check()
        except RunCancelled:
            return True
        return False

    with pytest.raises(RunCancelled):
        run_segmentation(request, cancelled=cancelled)
    assert counter.cancelled_at == 12 and counter.after_cancel <= 1
    assert len(cache.MODELS) == 0 and sorted(p.name for p in out.iterdir()) == []


class CountingSafetensors:
    """Counts the tensors read through `safetensors.safe_open` (what the readers use)."""

    def __init__(self, monkeypatch):
        import safetensors

        self.read = 0
        original = safetensors.safe_open
        counter = self

        class Handle:
            def __init__(self, *args, **kwargs):
                self._inner = original(*args, **kwargs)

            def __enter__(self):
                self._handle = self._inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self._inner.__exit__(*exc)

            def keys(self):
                return self._handle.keys()

            def get_tensor(self, name):
                counter.read += 1
                return self._handle.get_tensor(name)

        monkeypatch.setattr(safetensors, "safe_open", Handle)


def test_cancel_while_sam3_reads_its_weights_stops_within_one_tensor(tmp_path, monkeypatch):
    """SAM 3's 3.4-GB safetensors file is read tensor by tensor: a cancel during the read stops
    before the next tensor, and the model cache keeps nothing."""
    from safetensors.torch import save_file

    from support.tiny_models import tiny_sam3_config
    from drseg.core.models import sam3 as sam3_models

    sam3_models.register_sam3_architecture("tiny_sam3_cancel", tiny_sam3_config)
    try:
        state = sam3_models.build_sam3("tiny_sam3_cancel").state_dict()
        weights = tmp_path / "model.safetensors"
        save_file({"detector_model." + k: v.clone().contiguous() for k, v in state.items()},
                  str(weights))
        reads = CountingSafetensors(monkeypatch)
        cancelled_at = []

        def check():
            if reads.read >= 25 and not cancelled_at:
                cancelled_at.append(reads.read)
            if cancelled_at:
                raise RunCancelled("cancelled")

        # Building registers parameters (each one checks the cancel too): cancel only once the
        # weights are being read, after 25 of them.
        with cancel_points(check), pytest.raises(RunCancelled):
            shared.sam3_scorer("tiny_sam3_cancel", str(weights), "cpu")
        assert cancelled_at == [25] and reads.read == 25     # not one tensor after the cancel
        assert len(state) > 100 and len(cache.MODELS) == 0
        scorer = shared.sam3_scorer("tiny_sam3_cancel", str(weights), "cpu")
        assert reads.read == 25 + len(state) and len(cache.MODELS) == 1
        loaded = scorer.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    finally:
        sam3_models._EXTRA_ARCHITECTURES.pop("tiny_sam3_cancel", None)
