"""Click refinement of SAM 3 referring results: SAM 3's tracker head (prompt encoder and mask
decoder on the detector's backbone) from the same checkpoint, on the area's cached encoding.

Oracle: a stand-in click head whose answer is known (a disc of ±logits around each click over the
prior) shows the session maps clicks into SAM 3's input and the mask back onto the area, keeps
the result as the prior and chains clicks: a positive click outside the object adds the place
clicked, a negative one inside removes it. Then the real architecture at tiny size: the head
loads from the released checkpoint's key names, clicks run the decoder only."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_sam3_config, write_raster
from drseg.core.errors import InputError
from drseg.core.models import sam3 as sam3_models
from drseg.core.models.sam3_clicks import (NECK_PREFIX, TRACKER_PREFIX, Sam3ClickHead,
                                           build_sam3_clicks, load_sam3_clicks)
from drseg.core.refer import sam3_refer
from drseg.core.refer.pipeline import ReferringResult
from drseg.core.refer.sam3_refer import Sam3ReferringSession
from drseg.core.sam3_engine import Sam3Scorer

H, W = 96, 160
OBJECT = np.zeros((H, W), bool)
OBJECT[20:80, 10:70] = True


class DiscClicks:
    """A click head with a known answer, in SAM 3's input pixels (`image_size`): the prior
    (else −10 everywhere), then +10 (positive) or −10 (negative) within RADIUS of each click."""

    image_size, mask_size, RADIUS = 64, 16, 6.0

    def __init__(self):
        self.calls = []

    def features(self, tokens):
        return "features"

    def decode(self, features, points, labels, prior=None):
        self.calls.append(dict(points=np.asarray(points), labels=np.asarray(labels),
                               prior=None if prior is None else prior.clone()))
        cell = self.image_size / self.mask_size
        centres = (np.arange(self.mask_size) + 0.5) * cell - 0.5
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        logits = (np.full((self.mask_size, self.mask_size), -10.0) if prior is None
                  else prior.numpy().astype(np.float64).copy())
        for (x, y), label in zip(points, labels):
            logits[(xx - x) ** 2 + (yy - y) ** 2 <= self.RADIUS ** 2] = 10.0 if label else -10.0
        return torch.from_numpy(logits.astype(np.float32)), 0.8


def oracle_session():
    clicks = DiscClicks()
    session = Sam3ReferringSession(np.zeros((H, W, 3), np.uint8), detect=lambda phrase: ([], None),
                                   clicks=clicks)
    result = ReferringResult(mask=OBJECT.copy(), score=0.7, expression="the field")
    return session, clicks, result


def test_positive_click_outside_adds_the_place_and_keeps_the_object():
    session, clicks, result = oracle_session()
    refined = session.refine(result, positive_points=[(130, 30)])
    assert refined.mask[30, 130] and refined.mask[26:35, 124:137].all()
    assert refined.mask[50, 40] and refined.mask[25:75, 15:65].all()     # the prior: the object
    assert not refined.mask[85, 150] and not refined.mask[5, 100]        # elsewhere nothing new
    assert refined.pixels > OBJECT.sum()
    # the click in SAM 3's input pixels (the area is resized to 64×64): x 160→64, y 96→64
    (call,) = clicks.calls
    assert call["points"][0] == pytest.approx(((130 + 0.5) * 64 / W - 0.5, (30 + 0.5) * 64 / H - 0.5))
    assert call["labels"].tolist() == [1] and float(call["prior"].max()) > 5
    assert refined.score == 0.7 and refined.terms["sam_iou"] == pytest.approx(0.8)


def test_negative_click_inside_removes_the_place_and_clicks_chain():
    session, clicks, result = oracle_session()
    first = session.refine(result, negative_points=[(40, 50)])
    assert not first.mask[50, 40] and not first.mask[46:55, 34:47].any()
    assert first.mask[25, 15] and first.mask[75, 65]                     # the rest stays
    assert first.pixels < OBJECT.sum()
    second = session.refine(first, positive_points=[(130, 30)])
    assert second.points.tolist() == [[40.0, 50.0], [130.0, 30.0]]
    assert second.labels.tolist() == [0, 1]
    assert not second.mask[50, 40] and second.mask[30, 130]               # both clicks hold
    assert torch.equal(clicks.calls[1]["prior"], torch.from_numpy(first.low_res[0]))
    assert np.array_equal(result.mask, OBJECT)                            # undo: the original stays
    assert session.refinements == 2


def test_first_click_where_nothing_was_found_has_no_prior():
    session, clicks, _ = oracle_session()
    empty = ReferringResult(mask=np.zeros((H, W), bool), score=0.0, expression="the ship",
                            low_res=np.zeros((1, 256, 256), np.float32))   # the dock's SAM 1 stand-in
    refined = session.refine(empty, positive_points=[(130, 30)])
    assert clicks.calls[0]["prior"] is None
    assert refined.mask[30, 130] and refined.pixels < 0.1 * H * W


def test_clicks_must_lie_in_the_area_and_exist():
    session, _, result = oracle_session()
    with pytest.raises(InputError, match="outside"):
        session.refine(result, positive_points=[(W + 5, 10)])
    with pytest.raises(InputError, match="at least one click"):
        session.refine(result)


def test_without_a_click_head_refinement_says_why():
    session = Sam3ReferringSession(np.zeros((H, W, 3), np.uint8), detect=lambda phrase: ([], None))
    assert "tracker" in session.cannot_refine
    with pytest.raises(InputError, match="not available.*tracker"):
        session.refine(ReferringResult(mask=OBJECT, score=1.0, expression="x"), [(5, 5)])


# -- the real architecture at tiny size ---------------------------------------------------------
@pytest.fixture
def tiny_architecture():
    sam3_models.register_sam3_architecture("tiny_sam3", tiny_sam3_config)
    yield "tiny_sam3"
    sam3_models._EXTRA_ARCHITECTURES.pop("tiny_sam3", None)


def test_click_head_matches_the_released_checkpoint_layout():
    from transformers import Sam3Config, Sam3VideoConfig, Sam3VideoModel

    with torch.device("meta"):
        video = Sam3VideoModel(Sam3VideoConfig())   # the released checkpoint's model
        head = Sam3ClickHead(Sam3Config())
    released = {k: tuple(v.shape) for k, v in video.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert ours and all(released.get(k) == shape for k, shape in ours.items())
    assert {k.split(".")[0] for k in ours} == {"tracker_model", "tracker_neck"}
    assert head.image_size == 1008 and head.mask_size == 288


def test_click_head_loads_from_the_same_safetensors_file(tmp_path, tiny_architecture):
    torch.manual_seed(3)
    detector = sam3_models.build_sam3(tiny_architecture)
    head = build_sam3_clicks(tiny_architecture)
    state = {"detector_model." + k: v.clone().contiguous() for k, v in detector.state_dict().items()}
    state.update({k: v.clone().contiguous() for k, v in head.state_dict().items()})
    state[TRACKER_PREFIX + "memory_attention.layers.0.weight"] = torch.zeros(3)   # video only
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    torch.manual_seed(4)
    loaded = load_sam3_clicks(tiny_architecture, str(path))
    for name, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    sam3_models.load_sam3(tiny_architecture, str(path))   # the detector from the same file
    # a detector-only export has no click head
    detector_only = {k: v for k, v in state.items() if not k.startswith((TRACKER_PREFIX, NECK_PREFIX))}
    save_file(detector_only, str(tmp_path / "detector.safetensors"))
    assert load_sam3_clicks(tiny_architecture, str(tmp_path / "detector.safetensors")) is None


def test_real_click_head_decodes_on_the_cached_encoding(tiny_architecture):
    torch.manual_seed(0)
    scorer = Sam3Scorer(sam3_models.load_sam3(tiny_architecture, "random", "cpu"))
    head = load_sam3_clicks(tiny_architecture, "random")
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)
    session = Sam3ReferringSession(image, scorer, clicks=head, min_score=0.0)
    (found, *_) = session.query("the largest building")
    encodes = scorer.encoder_calls
    refined = session.refine(found, positive_points=[(100, 20)], negative_points=[(10, 80)])
    again = session.refine(refined, positive_points=[(60, 45)])
    assert scorer.encoder_calls == encodes and session.encoder_calls == 1   # decoder only
    assert refined.mask.shape == again.mask.shape == (90, 120)
    assert refined.low_res.shape == (1, head.mask_size, head.mask_size)
    assert again.labels.tolist() == [1, 0, 1] and again.source == "refined"
    # the prior matters: the same clicks over another mask decode differently
    other = ReferringResult(mask=~found.mask, score=found.score, expression=found.expression)
    flipped = session.refine(other, positive_points=[(100, 20)], negative_points=[(10, 80)])
    assert not np.array_equal(flipped.low_res, refined.low_res)


def test_a_referring_run_gives_the_dock_a_session_with_the_click_head(tmp_path, tiny_sam3_json,
                                                                       monkeypatch):
    from drseg.core.refer.run import ReferringRequest, run_referring
    from drseg.core.refer.sessions import SESSIONS

    monkeypatch.setattr(sam3_refer, "MIN_INSTANCE_SCORE", 0.0)   # random weights: keep them all
    SESSIONS.clear()
    image = np.random.default_rng(5).integers(0, 255, (3, 64, 80), np.uint8)
    raster = write_raster(tmp_path / "scene.tif", image, crs="EPSG:32632")
    result = run_referring(ReferringRequest(raster=raster, expressions=["the largest building"],
                                            out_vector=str(tmp_path / "o.gpkg"), engine="sam3",
                                            sam3_model=tiny_sam3_json, sam3_weights="random",
                                            device="cpu"))
    session = result.session
    assert isinstance(session.clicks, Sam3ClickHead) and session.cannot_refine == ""
    (found, *_) = result.expressions[0].results
    x, y = session.pixel_of(*session.transform * (40.5, 20.5))
    assert (x, y) == pytest.approx((40.0, 20.0))
    refined = session.refine(found, positive_points=[(x, y)])
    assert refined.mask.shape == (64, 80) and session.encoder_calls == 1
    SESSIONS.clear()


# -- SAM 3 weights without the tracker: SAM decodes the clicks on the same area ----------------
def test_without_the_tracker_sam_decodes_the_clicks_on_the_same_area():
    from support.oracles import ColourPredictor

    from drseg.core.refer.sam3_refer import Sam1Clicks

    image = np.zeros((H, W, 3), np.uint8)
    image[10:40, 100:150] = (30, 90, 200)                    # a second object, blue
    loads = []
    predictor = ColourPredictor()
    clicks = Sam1Clicks(lambda: loads.append(1) or predictor)
    session = Sam3ReferringSession(image, detect=lambda phrase: ([], None), clicks=clicks)
    assert session.cannot_refine == "" and "SAM decodes the clicks" in session.click_note
    result = ReferringResult(mask=OBJECT.copy(), score=0.7, expression="the field")
    assert loads == []                                       # nothing loaded before a click
    refined = session.refine(result, positive_points=[(120, 20)])
    blue = np.zeros((H, W), bool)
    blue[10:40, 100:150] = True
    assert np.array_equal(refined.mask, blue)                # the region clicked, at its place
    assert predictor.calls[-1]["points"][-1].tolist() == [120.0, 20.0]
    again = session.refine(refined, negative_points=[(5, 90)])
    assert again.labels.tolist() == [1, 0] and session.refinements == 2
    assert loads == [1] and predictor.set_calls == 1         # one load, one embedding per area


def test_detector_only_weights_give_the_sam_fallback_without_loading_it(tmp_path,
                                                                        tiny_architecture):
    from drseg.core.models.cache import MODELS
    from drseg.core.refer.loading import load_models
    from drseg.core.refer.request import ReferringRequest
    from drseg.core.refer.sam3_refer import Sam1Clicks

    detector = sam3_models.build_sam3(tiny_architecture)
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, str(path))
    request = ReferringRequest(raster="x.tif", expressions="the pond", out_vector="o.gpkg",
                               engine="sam3", sam3_model=tiny_architecture,
                               sam3_weights=str(path), device="cpu", cache_dir=str(tmp_path))
    try:
        scorer, clicks, _ = load_models(request)
        assert isinstance(scorer, Sam3Scorer) and isinstance(clicks, Sam1Clicks)
        assert clicks._sam is None                           # SAM is loaded at the first click
        assert load_models(request)[1] is clicks             # one object: sessions stay cached
    finally:
        MODELS.clear()
