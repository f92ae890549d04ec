"""Referring segmentation end to end: localisation, the cached per-area session, refinement,
selection with modifiers on known activations and masks, tiling with seams, the GeoPackage
output, errors and the `refer` command."""
from __future__ import annotations

import os

import numpy as np
import pytest
import shapely
import torch
from rasterio.transform import from_origin

from support.oracles import ColourLocalizer, ColourPredictor, stub_models  # noqa: F401 (re-exported)
from support.outputs import read_referring_gpkg as read_gpkg
from support.rasters import (FIELD, POND2, ROAD, WATER, WRITE_ORIGIN, WRITE_PIXEL,  # noqa: F401
                             pixel_box, pond_scene, scene_image, scene_labels, write_raster)
from support.tiny_models import build_tiny_sam, load_tiny_clip
from drseg.core import dense_clip
from drseg.core.dense_clip import DenseClip
from drseg.core.errors import InputError, RunCancelled
from drseg.core.refer.localize import Localizer, LocalizerSettings, context_crop
from drseg.core.refer.parse import parse_expression
from drseg.core.refer.pipeline import ReferringSession
from drseg.core.refer.request import ReferringRequest
from drseg.core.refer.run import run_referring
from drseg.core.refer.sessions import SESSIONS

ORIGIN, PIXEL = WRITE_ORIGIN, WRITE_PIXEL


@pytest.fixture(autouse=True)
def fresh_sessions():
    SESSIONS.clear()
    yield
    SESSIONS.clear()


def iou(a, b):
    return a.intersection(b).area / a.union(b).area


# --------------------------------------------------------------------------------------------
# Oracle: known activation and masks, right answer known


def test_selection_end_to_end_picks_the_pond_north_of_the_road(tmp_path):
    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    out = tmp_path / "ponds.gpkg"
    expressions = ["the pond north of the road", "the pond", "the largest pond",
                   "all the ponds", "the pond south of the road"]
    result = run_referring(ReferringRequest(path, expressions, str(out)), sam=predictor,
                           clip=localizer)
    fields, epsg, layer, rows = read_gpkg(out)
    assert fields == ["expression", "score", "area_m2"] and epsg == "32633" and layer == "referring"
    by_expression = {}
    for row in rows:
        by_expression.setdefault(row["expression"], []).append(row)
    north, south = pixel_box(40, 30, 100, 80), pixel_box(120, 160, 200, 220)
    (answer,) = by_expression["the pond north of the road"]
    assert answer["geometry"].equals(north)             # despite the brighter south pond
    assert answer["area_m2"] == pytest.approx(60 * 50 * PIXEL ** 2)
    assert 0 < answer["score"] <= 1
    assert by_expression["the pond"][0]["geometry"].equals(south)        # the strongest
    assert by_expression["the largest pond"][0]["geometry"].equals(south)
    assert by_expression["the pond south of the road"][0]["geometry"].equals(south)
    plural = by_expression["all the ponds"]
    assert len(plural) == 2 and {iou(r["geometry"], north) > 0.99 for r in plural} == {True, False}
    assert len(by_expression) == 5 and len(rows) == 6
    # one area, one session: the two image encoders ran once for five expressions
    assert predictor.set_calls == 1 and localizer.encodes == 1
    timings = [e.timing for e in result.expressions]
    assert not timings[0].cached and all(t.cached for t in timings[1:])
    assert result.tiles == 1 and result.session is not None
    assert result.expressions[0].results[0].mask[55, 70]


def test_a_later_run_on_the_same_area_reuses_the_session(tmp_path):
    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    first = run_referring(ReferringRequest(path, ["the pond"], str(tmp_path / "a.gpkg")),
                          sam=predictor, clip=localizer)
    second = run_referring(ReferringRequest(path, ["the largest pond"], str(tmp_path / "b.gpkg")),
                           sam=predictor, clip=localizer)
    assert second.session is first.session and second.expressions[0].timing.cached
    assert predictor.set_calls == 1 and localizer.encodes == 1
    # another area is another session
    third = run_referring(ReferringRequest(path, ["the pond"], str(tmp_path / "c.gpkg"),
                                           extent=(500000.0, 4099900.0, 500100.0, 4100000.0)),
                          sam=predictor, clip=localizer)
    assert third.session is not first.session and predictor.set_calls == 2
    assert not third.expressions[0].timing.cached


# --------------------------------------------------------------------------------------------
# Tiling


def seam_scene():
    """120×200 px; a pond straddling the seam of two 128-px tiles (overlap 32: x 72..128), whose
    halves are each smaller than a second pond, though the whole is larger."""
    image = np.empty((120, 200, 3), np.uint8)
    image[:] = FIELD
    image[10:50, 50:150] = WATER          # 4000 px; each tile sees 78×40 = 3120
    image[62:118, 4:66] = WATER           # 3472 px, inside the first tile
    return image


def test_a_target_straddling_a_tile_seam_is_one_polygon(tmp_path):
    path = write_raster(tmp_path / "seam.tif", seam_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    out = tmp_path / "seam.gpkg"
    request = ReferringRequest(path, ["the largest pond", "all the ponds", "the pond"], str(out),
                               max_size=None, tile_size=128, tile_overlap=32)
    result = run_referring(request, sam=predictor, clip=localizer)
    assert result.tiles == 2 and result.session is None and predictor.set_calls == 2
    _, epsg, _, rows = read_gpkg(out)
    assert epsg == "32633"
    straddler, other = pixel_box(50, 10, 150, 50), pixel_box(4, 62, 66, 118)
    largest = [r for r in rows if r["expression"] == "the largest pond"]
    assert len(largest) == 1 and largest[0]["geometry"].equals(straddler)
    assert largest[0]["geometry"].geom_type in ("Polygon", "MultiPolygon")
    assert len(shapely.get_parts(largest[0]["geometry"])) == 1
    every = [r["geometry"] for r in rows if r["expression"] == "all the ponds"]
    assert len(every) == 2
    assert sorted(iou(g, straddler) > 0.999 for g in every) == [False, True]
    assert any(g.equals(other) for g in every)
    assert len([r for r in rows if r["expression"] == "the pond"]) == 1


# --------------------------------------------------------------------------------------------
# The real architectures: tiny segment_anything and open_clip models, random weights


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    model, tokenizer, _ = load_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)
    clip = DenseClip(model, tokenizer, torch.device("cpu"))
    sam = build_tiny_sam()
    calls = {"sam": 0}
    sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("sam", calls["sam"] + 1))
    return sam, clip, calls


def test_tiny_models_end_to_end_cached_second_query_and_refine(tmp_path, tiny_models):
    sam, clip, calls = tiny_models
    labels = scene_labels(300, 360)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    path = write_raster(tmp_path / "scene.tif", scene_image(labels), transform=transform)
    sam_before, clip_before = calls["sam"], clip.forward_calls
    first = run_referring(ReferringRequest(path, ["the pond"], str(tmp_path / "one.gpkg")),
                          sam=sam, clip=clip)
    sam_first, clip_first = calls["sam"] - sam_before, clip.forward_calls - clip_before
    assert sam_first == 1 and clip_first >= 1            # 448 px long side: 9 windows, 2 batches
    fields, epsg, _, rows = read_gpkg(tmp_path / "one.gpkg")
    assert fields == ["expression", "score", "area_m2"] and epsg == "32633"
    assert len(rows) == 1 and rows[0]["expression"] == "the pond"
    raster_box = pixel_box(0, 0, 360, 300)
    assert rows[0]["geometry"].within(raster_box) and rows[0]["area_m2"] > 0
    assert rows[0]["area_m2"] == pytest.approx(first.expressions[0].results[0].pixels * PIXEL ** 2)

    second = run_referring(ReferringRequest(path, ["the round tree"],
                                            str(tmp_path / "two.gpkg")), sam=sam, clip=clip)
    assert calls["sam"] - sam_before == 1 and clip.forward_calls - clip_before == clip_first
    session = second.session
    assert session is first.session
    assert session.sam_encoder_calls == 1 and session.clip_encoder_calls == 1
    assert not first.expressions[0].timing.cached and second.expressions[0].timing.cached
    assert second.expressions[0].timing.candidates >= 1

    # refinement: one decoder call on the cached embedding, our click included
    result = first.expressions[0].results[0]
    features = session.predictor.features
    decoder_calls = session.decoder_calls
    click = session.pixel_of(ORIGIN[0] + 100.25 * PIXEL, ORIGIN[1] - 40.75 * PIXEL)
    assert click == pytest.approx((99.75, 40.25))
    refined = session.refine(result, positive_points=[click], negative_points=[(5, 5)])
    assert calls["sam"] - sam_before == 1 and session.predictor.features is features
    assert session.decoder_calls == decoder_calls + 1 and session.refinements == 1
    assert refined.points[-2:].tolist() == [list(click), [5.0, 5.0]]
    assert refined.labels[-2:].tolist() == [1, 0] and refined.mask.shape == (300, 360)
    again = session.refine(refined, positive_points=[(200, 150)])
    assert len(again.points) == len(refined.points) + 1 and calls["sam"] - sam_before == 1
    with pytest.raises(InputError, match="outside"):
        session.refine(result, positive_points=[(400, 10)])
    with pytest.raises(InputError, match="at least one click"):
        session.refine(result)


def test_localizer_maps_are_clip_similarity_minus_generic(tiny_models, monkeypatch):
    _, clip, _ = tiny_models
    settings = LocalizerSettings(clip_long_side=None, generic_prompts=("background", "land"))
    localizer = Localizer(clip, settings)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    valid = np.ones((224, 224), bool)
    valid[:, :20] = False
    features = localizer.encode(image, valid)
    assert localizer.image_encodes == 1 and len(features.windows) == 1
    # direct computation for one window: bilinear token logits, pond minus mean of generics
    with torch.no_grad():
        patches, cls = clip.dense_features(clip.normalise(image.transpose(2, 0, 1)[None]))
    patches = torch.nn.functional.normalize(patches, dim=1)
    cls = torch.nn.functional.normalize(cls, dim=-1)

    def direct(vector):
        logits = torch.einsum("bdhw,d->bhw", patches, vector) + clip.bias_lambda * (cls @ vector)
        return torch.nn.functional.interpolate(logits[None], size=(224, 224), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()

    pond = localizer.query_embedding(["pond"])
    generic = (localizer.text_embedding("background") + localizer.text_embedding("land")) / 2
    expected = direct(pond) - direct(generic)
    got = localizer.phrase_map(features, ["pond"])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    texts_before = localizer.text_encodes
    assert localizer.phrase_map(features, ["pond"]) is got and localizer.text_encodes == texts_before
    activation = localizer.localize(features, parse_expression("the largest pond"))
    assert activation.shape == (224, 224) and activation.dtype == np.float32
    assert activation.min() == 0.0 and activation.max() == pytest.approx(1.0)
    assert np.all(activation[:, :20] == 0.0)             # nodata is never the target
    # every phrase a new expression needs goes through the text tower in one batch
    batches = []
    encode_text = dense_clip.encode_text
    monkeypatch.setattr(dense_clip, "encode_text",
                        lambda m, t: batches.append(len(t)) or encode_text(m, t))
    texts_before = localizer.text_encodes
    localizer.localize(features, parse_expression("the small ship near the harbour"))
    new_phrases = localizer.text_encodes - texts_before
    assert new_phrases >= 4 and batches == [new_phrases * len(settings.templates)]
    masks = [np.zeros((224, 224), bool), np.zeros((224, 224), bool)]
    masks[0][50:90, 60:120] = True
    masks[1][150:200, 30:60] = True
    scores = localizer.region_scores(image, masks, parse_expression("the largest pond"))
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert localizer.crop_encodes == 1 and localizer.image_encodes == 1


def test_context_crop_keeps_the_mask_and_fades_the_surroundings():
    image = np.full((100, 200, 3), 200, np.uint8)
    image[80:95, 180:195] = (10, 20, 30)
    mask = np.zeros((100, 200), bool)
    mask[80:95, 180:195] = True
    crop = context_crop(image, mask, context=0.5, min_crop=32, dim_outside=0.5, size=64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    # the crop is the 32-px square around the mask pushed inside the image: rows 68..100,
    # columns 168..200, scaled by 2; the mask keeps its colour, the rest is faded
    np.testing.assert_array_equal(crop[26:52, 26:52].reshape(-1, 3).min(0), (10, 20, 30))
    np.testing.assert_array_equal(crop[26:52, 26:52].reshape(-1, 3).max(0), (10, 20, 30))
    faded = np.round(200 * 0.5 + np.array((122.771, 116.746, 104.094)) * 0.5)
    for corner in (crop[0, 0], crop[-1, -1], crop[0, -1], crop[-1, 0], crop[60, 40]):
        np.testing.assert_allclose(corner, faded, atol=1)


# --------------------------------------------------------------------------------------------
# Errors, cancellation, the command line


def test_bad_requests_are_input_errors_and_write_nothing(tmp_path):
    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    out = str(tmp_path / "x.gpkg")
    cases = [([], "Type an expression"), ([" "], "empty"), (["the pond", ""], "empty"),
             (["the big one on the left"], "No target found")]
    for expressions, message in cases:
        with pytest.raises(InputError, match=message):
            run_referring(ReferringRequest(path, expressions, out), sam=predictor, clip=localizer)
    with pytest.raises(InputError, match="does not overlap"):
        run_referring(ReferringRequest(path, ["the pond"], out, extent=(0, 0, 10, 10)),
                      sam=predictor, clip=localizer)
    with pytest.raises(InputError, match="empty"):
        run_referring(ReferringRequest(path, ["the pond"], out, extent=(500010, 4099990, 500000, 4100000)),
                      sam=predictor, clip=localizer)
    with pytest.raises(InputError, match=r"\.gpkg"):
        run_referring(ReferringRequest(path, ["the pond"], str(tmp_path / "x.shp")),
                      sam=predictor, clip=localizer)
    assert predictor.set_calls == 0 and localizer.encodes == 0
    assert sorted(os.listdir(tmp_path)) == ["ponds.tif"]


def test_nodata_area_and_cancel_leave_nothing(tmp_path):
    data = pond_scene().transpose(2, 0, 1).copy()
    data[:, :, :120] = 0
    path = write_raster(tmp_path / "half.tif", data, nodata=0)
    predictor, localizer = stub_models()
    with pytest.raises(InputError, match="no valid pixels"):
        run_referring(ReferringRequest(path, ["the pond"], str(tmp_path / "o.gpkg"),
                                       extent=(500000.0, 4099900.0, 500050.0, 4100000.0)),
                      sam=predictor, clip=localizer)
    messages = []

    def cancel_when_writing():
        return any("Writing" in m for m in messages)

    with pytest.raises(RunCancelled):
        run_referring(ReferringRequest(path, ["the pond", "all the ponds"], str(tmp_path / "o.gpkg")),
                      progress=lambda f, m: messages.append(m), cancelled=cancel_when_writing,
                      sam=predictor, clip=localizer)
    assert predictor.set_calls == 1                     # it had run; nothing was published
    assert sorted(os.listdir(tmp_path)) == ["half.tif"]


def test_refer_command(tmp_path, monkeypatch, capsys):
    from drseg import cli
    from drseg.core.refer import run as run_module

    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    monkeypatch.setattr(run_module, "load_models",
                        lambda request, sam=None, clip=None, monitor=None: (predictor, localizer, "cpu"))
    out = tmp_path / "out.gpkg"
    code = cli.main(["refer", path, "--expression", "the pond north of the road", "-e",
                     "all the ponds", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    lines = [line for line in text.splitlines() if line.startswith("  '")]
    assert len(lines) == 2 and " first " in lines[0] and " cached " in lines[1]
    assert "SAM encode" in lines[0] and "prompting+decoding+selection" in lines[0]
    assert "1 polygon(s)" in lines[0] and "2 polygon(s)" in lines[1]
    assert len(read_gpkg(out)[3]) == 3

    assert cli.main(["refer", str(tmp_path / "missing.tif"), "-e", "the pond", "--out",
                     str(tmp_path / "m.gpkg")]) == 2
    assert "Cannot open raster" in capsys.readouterr().err
    assert cli.main(["refer", path, "-e", "something", "--out", str(tmp_path / "m.gpkg")]) == 2
    assert "No target found" in capsys.readouterr().err
    assert not (tmp_path / "m.gpkg").exists()


def test_sessions_sharing_one_predictor_never_use_each_others_embedding():
    predictor, localizer = stub_models()
    north_only = pond_scene()
    north_only[160:220, 120:200] = FIELD
    a = ReferringSession(pond_scene(), predictor, localizer)
    b = ReferringSession(north_only, predictor, localizer)
    first = a.query("the pond")[0]
    assert b.query("the pond")[0].mask[50, 70]
    again = a.query("the pond")[0]                      # a's image is set again, not b's
    np.testing.assert_array_equal(again.mask, first.mask)
    assert first.mask[190, 150] and not first.mask[50, 70]
    assert predictor.set_calls == 3 and a.sam_encoder_calls == 2 and localizer.encodes == 2
    with pytest.raises(InputError, match="H×W×3"):
        ReferringSession(np.zeros((10, 10)), predictor, localizer)


def test_large_areas_are_read_at_a_reduced_working_size(tmp_path):
    path = write_raster(tmp_path / "ponds.tif", pond_scene().transpose(2, 0, 1))
    predictor, localizer = stub_models()
    out = tmp_path / "small.gpkg"
    result = run_referring(ReferringRequest(path, ["the pond north of the road"], str(out),
                                            max_size=120), sam=predictor, clip=localizer)
    assert (result.width, result.height, result.tiles) == (120, 120, 1)
    assert result.resolution_m == pytest.approx(2 * PIXEL)
    assert predictor.image.shape == (120, 120, 3)
    (row,) = read_gpkg(out)[3]
    # bilinear resampling mixes the edge pixels' colour, so the stub's region is the pond less
    # its 1-m rim: in place, not shifted
    north = pixel_box(40, 30, 100, 80)
    assert row["geometry"].within(north) and north.within(row["geometry"].buffer(1.0, join_style=2))
    assert row["area_m2"] == pytest.approx(28 * 23)


def test_prompt_sets_of_one_make_up_share_a_decoder_call_with_the_same_outputs(tiny_models):
    sam, _, _ = tiny_models
    image = np.random.default_rng(3).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    session = ReferringSession(image, sam, ColourLocalizer(), disk_cache=None)
    session.prepare()
    dense = np.random.default_rng(4).normal(size=(1, 256, 256)).astype(np.float32)
    sets = [(np.array([[10.0, 20.0], [90.0, 60.0]]), np.array([1, 0]), np.array([5, 5, 70, 80]),
             dense),
            (np.array([[30.0, 40.0]]), np.array([1]), None, None),
            (np.array([[50.0, 50.0], [5.0, 5.0]]), np.array([1, 0]), np.array([20, 10, 90, 100]),
             None),
            (np.array([[140.0, 100.0], [60.0, 5.0]]), np.array([1, 0]), np.array([100, 50, 159, 119]),
             None)]
    calls = session.decoder_calls
    batched = session._predict_sets(sets)
    assert session.decoder_calls == calls + 3               # the last two share one call
    for (points, labels, box, mask), (masks, ious, low) in zip(sets, batched):
        one_masks, one_ious, one_low = session._predict(points, labels, box, mask, multimask=True)
        np.testing.assert_allclose(low, one_low, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ious, one_ious, rtol=1e-4, atol=1e-4)
        assert np.mean(masks != one_masks) < 1e-3


def test_mask_to_geometry_of_a_speckled_mask_rasterises_back_to_it():
    from rasterio.features import rasterize

    from drseg.core.refer.pipeline import mask_to_geometry
    from drseg.core.refer.prompts import label_components

    rng = np.random.default_rng(8)
    mask = rng.random((90, 70)) < 0.55          # thousands of regions, most with holes around
    mask[10:40, 10:40] = True
    mask[20:30, 20:30] = False                  # a region with a hole
    transform = from_origin(500000, 4100000, 0.5, 0.5)
    geometry = mask_to_geometry(mask, transform)
    assert geometry.is_valid
    assert geometry.area == pytest.approx(mask.sum() * 0.25)
    back = rasterize([geometry], out_shape=mask.shape, transform=transform, fill=0,
                     default_value=1).astype(bool)
    np.testing.assert_array_equal(back, mask)
    assert len(geometry.geoms) == label_components(mask, connectivity=4)[1]
    assert mask_to_geometry(np.zeros((5, 5), bool), transform) is None
