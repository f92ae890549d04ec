"""Raster <-> SAM input frame transforms, the dense mask prompt's placement, the prompt builders,
and a tiny segment_anything model of the real architecture fed with those prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import batched_mask_to_box
from segment_anything.utils.transforms import ResizeLongestSide

from support.tiny_models import build_tiny_sam
from drseg.core.errors import InputError
from drseg.core.refer.prompts import (box_filter_sum, build_prompts, dilate, erode,
                                      instance_prompts, label_components, mask_box,
                                      negative_points, peak_points, region_box, threshold_region)
from drseg.core.refer.sam_frames import (SamFrame, activation_to_low_res, corner_to_index,
                                         index_to_corner, low_res_to_raster,
                                         mask_input_from_activation, preprocess_shape,
                                         raster_to_sam_boxes, raster_to_sam_points,
                                         sam_to_raster_boxes, sam_to_raster_points)

# landscape, portrait, square, nearly square, tiny (enlarged), large, extreme strips
SHAPES = [(600, 520), (333, 1000), (1000, 333), (512, 512), (700, 701), (50, 30),
          (2048, 3000), (17, 4000), (4000, 17), (1023, 1025)]
RESIZE = ResizeLongestSide(1024)


def blob(shape, x0, y0, x1, y1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_points_and_boxes_match_resize_longest_side_and_round_trip(shape):
    h, w = shape
    frame = SamFrame(h, w)
    assert frame.input_size == RESIZE.get_preprocess_shape(h, w, 1024) == preprocess_shape(h, w)
    assert max(frame.input_size) == 1024
    rng = np.random.default_rng(h * 7 + w)
    pts = rng.uniform(0, [w - 1, h - 1], (50, 2))
    np.testing.assert_array_equal(raster_to_sam_points(pts, frame), RESIZE.apply_coords(pts, shape))
    torch_pts = RESIZE.apply_coords_torch(torch.as_tensor(pts), shape).numpy()
    np.testing.assert_allclose(raster_to_sam_points(pts, frame), torch_pts, rtol=1e-6)
    x0y0 = rng.uniform(0, [w / 2, h / 2], (20, 2))
    boxes = np.concatenate([x0y0, x0y0 + rng.uniform(1, [w / 2, h / 2], (20, 2))], axis=1)
    np.testing.assert_array_equal(raster_to_sam_boxes(boxes, frame),
                                  RESIZE.apply_boxes(boxes, shape))
    for convention in ("sam", "centre"):
        back = sam_to_raster_points(raster_to_sam_points(pts, frame, convention), frame, convention)
        np.testing.assert_allclose(back, pts, atol=1e-9)
        back = sam_to_raster_boxes(raster_to_sam_boxes(boxes, frame, convention), frame, convention)
        np.testing.assert_allclose(back, boxes, atol=1e-9)
    # corners of the tile land on the corners of the unpadded region, never in the padding
    new_h, new_w = frame.input_size
    far = raster_to_sam_points([[w, h]], frame)[0]
    np.testing.assert_allclose(far, [new_w, new_h], atol=1e-9)
    edge = raster_to_sam_points([[w - 0.5, h - 0.5]], frame, "centre")[0]
    np.testing.assert_allclose(edge, [new_w - 0.5, new_h - 0.5], atol=1e-9)


@pytest.mark.parametrize("shape,xy", [((100, 60), (30, 70)), ((60, 100), (71, 12)),
                                      ((600, 520), (300, 100)), ((520, 600), (17, 480)),
                                      ((2000, 3000), (1234, 777))])
def test_a_raster_point_lands_where_sam_sees_that_pixel(shape, xy):
    """A bright 3×3 marker at raster (x, y): in SAM's resized image (its own apply_image) its
    centroid sits exactly at the 'centre' transform; the 'sam' one is within half a pixel."""
    h, w = shape
    x, y = xy
    image = np.zeros((h, w, 3), np.uint8)
    image[y - 1:y + 2, x - 1:x + 2] = 255
    resized = RESIZE.apply_image(image)[..., 0].astype(float)
    frame = SamFrame(h, w)
    assert resized.shape == frame.input_size
    yy, xx = np.mgrid[:resized.shape[0], :resized.shape[1]]
    centroid = np.array([(xx * resized).sum(), (yy * resized).sum()]) / resized.sum()
    np.testing.assert_allclose(raster_to_sam_points([x, y], frame, "centre"), centroid, atol=0.1)
    scale = max(frame.scale_xy)
    off = np.abs(raster_to_sam_points([x, y], frame) - centroid).max()
    assert off <= 0.5 * abs(scale - 1) + 0.1
    np.testing.assert_allclose(sam_to_raster_points(centroid, frame, "centre"), [x, y], atol=0.1)


def test_corner_and_index_coordinates():
    np.testing.assert_allclose(corner_to_index([[0.5, 0.5], [10.0, 3.0]]), [[0, 0], [9.5, 2.5]])
    np.testing.assert_allclose(index_to_corner(corner_to_index([[4.2, 7.9]])), [[4.2, 7.9]])
    with pytest.raises(InputError):
        raster_to_sam_points([1, 2, 3], SamFrame(10, 10))
    with pytest.raises(InputError):
        raster_to_sam_points([1, 2], SamFrame(10, 10), convention="corner")


@pytest.mark.parametrize("shape", [(600, 400), (400, 600), (333, 1000), (50, 30), (700, 701)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_mask_input_lives_in_the_padded_low_res_frame(shape):
    h, w = shape
    frame = SamFrame(h, w)
    new_h, new_w = frame.input_size
    target = blob(shape, w // 5, h // 3, w // 5 + max(3, w // 4), h // 3 + max(3, h // 5))
    act = target.astype(float)
    mask_input = mask_input_from_activation(act, frame, pad_logit=-30.0)
    assert mask_input.shape == (1, 1, 256, 256) and mask_input.dtype == np.float32
    # cells whose centre lies in the padding hold the pad logit, all others do not
    centres_y = (np.arange(256) + 0.5) * 4
    centres_x = (np.arange(256) + 0.5) * 4
    padded = (centres_y[:, None] >= new_h) | (centres_x[None, :] >= new_w)
    low = mask_input[0, 0]
    assert np.all(low[padded] == -30.0)
    assert np.all(low[~padded] >= -10.0) and np.all(low[~padded] <= 10.0)
    assert frame.low_res_valid == (int((~padded).any(axis=1).sum()),
                                   int((~padded).any(axis=0).sum()))
    # SAM's own up-sampling of that mask input puts the blob back where it was
    back = low_res_to_raster(mask_input[0, 0], frame) > 0
    inter = (back & target).sum()
    assert inter / (back | target).sum() > 0.8


def test_mask_input_samples_the_activation_at_the_right_place():
    """A linear ramp a(x, y) = x: each low-res cell must hold the raster x under its centre."""
    h, w = 300, 500
    frame = SamFrame(h, w)
    ramp = np.tile(np.arange(w, dtype=float), (h, 1))
    low = activation_to_low_res(ramp, frame)
    sx, _ = frame.scale_xy
    valid_h, valid_w = frame.low_res_valid
    expected = (np.arange(valid_w) + 0.5) * 4 / sx - 0.5       # raster index under each centre
    inner = slice(2, valid_w - 2)
    np.testing.assert_allclose(low[5, inner], expected[inner], atol=1e-6)
    assert np.isnan(low[valid_h:, :]).all() and np.isnan(low[:, valid_w:]).all()
    # a small, enlarged tile: bilinear, still exact on a ramp
    frame = SamFrame(30, 50)
    ramp = np.tile(np.arange(30, dtype=float)[:, None], (1, 50))
    low = activation_to_low_res(ramp, frame)
    _, sy = frame.scale_xy
    rows = (np.arange(frame.low_res_valid[0]) + 0.5) * 4 / sy - 0.5
    inner = (rows > 0) & (rows < 29)
    np.testing.assert_allclose(low[:frame.low_res_valid[0], 7][inner], rows[inner], atol=1e-6)


@pytest.mark.parametrize("shape", [(240, 400), (400, 240), (900, 1300), (60, 90)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_low_res_round_trip(shape):
    """Smooth low-res logits -> tile (SAM's post-processing) -> our mask input: the same
    logits come back in the unpadded part of the frame, the padding holds the pad logit."""
    frame = SamFrame(*shape)
    valid_h, valid_w = frame.low_res_valid
    yy, xx = np.mgrid[:256, :256]
    low = 12.0 * np.exp(-(((xx - 0.4 * valid_w) / 30.0) ** 2
                          + ((yy - 0.6 * valid_h) / 25.0) ** 2)) - 6.0
    again = mask_input_from_activation(low_res_to_raster(low, frame), frame, logits=True)[0, 0]
    inner = (slice(2, valid_h - 2), slice(2, valid_w - 2))
    assert np.abs(again[inner] - low[inner]).max() < 0.25
    assert np.all(again[valid_h:] == -20.0) and np.all(again[:, valid_w:] == -20.0)


def test_activation_must_match_the_tile():
    with pytest.raises(InputError):
        mask_input_from_activation(np.zeros((10, 12)), SamFrame(12, 10))


# --------------------------------------------------------------------------------------------
# Prompt builders


def two_blob_activation(shape=(200, 300)):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    big = np.exp(-(((xx - 80) / 25.0) ** 2 + ((yy - 60) / 20.0) ** 2))
    small = 0.8 * np.exp(-(((xx - 220) / 12.0) ** 2 + ((yy - 150) / 12.0) ** 2))
    return big + small


def test_peak_points_nms_and_components():
    act = two_blob_activation()
    pts = peak_points(act, k=2, min_distance=20)
    np.testing.assert_allclose(pts, [[80, 60], [220, 150]])
    pts = peak_points(act, k=5, threshold=0.5, min_distance=10)
    assert len(pts) == 2                          # only two local maxima above the threshold
    per_blob = peak_points(act, k=5, threshold=0.3, min_distance=5, one_per_component=True)
    assert len(per_blob) == 2
    with pytest.raises(InputError, match="flat"):
        peak_points(np.ones((20, 20)))


def test_negative_points_are_low_and_spread():
    act = two_blob_activation()
    neg = negative_points(act, k=3, min_distance=40)
    assert len(neg) == 3
    a = (act - act.min()) / (act.max() - act.min())
    assert all(a[int(y), int(x)] <= 0.2 for x, y in neg)
    d = np.hypot(*(neg[:, None] - neg[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(3, 1)].min() >= 40
    near = negative_points(act, k=2, within=np.array([40, 20, 120, 100]))
    assert np.all((near[:, 0] >= 40) & (near[:, 0] <= 120))
    assert np.all((near[:, 1] >= 20) & (near[:, 1] <= 100))


def test_region_box_modes_and_components():
    act = two_blob_activation()
    peak = region_box(act, 0.5, "peak")
    assert peak[0] < 80 < peak[2] and peak[1] < 60 < peak[3] and peak[2] < 200
    largest = region_box(act, 0.3, "largest")
    assert largest[2] < 200
    everything = region_box(act, 0.3, "all")
    assert everything[0] < 80 and everything[2] > 220
    grown = region_box(act, 0.5, "peak", margin=0.5)
    assert grown[0] < peak[0] and grown[2] > peak[2]
    # same inclusive convention as segment_anything's own mask -> box
    region = threshold_region(act, 0.5, "peak")
    sam_box = batched_mask_to_box(torch.as_tensor(region)[None]).numpy()[0]
    np.testing.assert_array_equal(mask_box(region), sam_box)
    labels, n = label_components(act > 0.3 * act.max())
    assert n == 2 and labels.max() == 2
    with pytest.raises(InputError):
        region_box(act, 0.5, "biggest")


def test_build_prompts_shapes():
    act = two_blob_activation()
    prompts = build_prompts(act, n_positive=2, n_negative=2, min_distance=20)
    kw = prompts.predictor_kwargs()
    assert kw["point_coords"].shape == (4, 2) and list(kw["point_labels"]) == [1, 1, 0, 0]
    assert kw["box"].shape == (4,) and kw["mask_input"].shape == (1, 256, 256)
    sam = prompts.in_sam_frame()
    assert sam["point_coords"].shape == (1, 4, 2) and sam["boxes"].shape == (1, 4)
    assert sam["mask_input"].shape == (1, 1, 256, 256)


def flood_fill_labels(mask, connectivity):
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    labels = np.zeros(mask.shape, int)
    n = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        n += 1
        labels[y, x] = n
        stack = [(y, x)]
        while stack:
            cy, cx = stack.pop()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if (0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx]
                        and not labels[ny, nx]):
                    labels[ny, nx] = n
                    stack.append((ny, nx))
    return labels, n


def test_label_components_and_morphology_match_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(60):
        mask = rng.random(tuple(rng.integers(1, 25, 2))) < rng.uniform(0.2, 0.7)
        for connectivity in (4, 8):
            ours, n = label_components(mask, connectivity)
            ref, n_ref = flood_fill_labels(mask, connectivity)
            assert n == n_ref
            # the same partition, numbered in raster order of the first pixel
            np.testing.assert_array_equal(ours, ref)
        r = int(rng.integers(0, 4))
        padded = np.pad(mask.astype(int), r)
        h, w = mask.shape
        brute = sum(padded[dy:dy + h, dx:dx + w] for dy in range(2 * r + 1)
                    for dx in range(2 * r + 1))
        np.testing.assert_array_equal(box_filter_sum(mask, r), brute)
        np.testing.assert_array_equal(dilate(mask, r), brute > 0)
        np.testing.assert_array_equal(erode(mask, r), brute == (2 * r + 1) ** 2)


def test_label_components_of_speckle_and_spirals_match_brute_force():
    # speckled masks (random SAM weights) have many runs; a spiral joins its runs through a
    # long chain, the slowest case for the vectorised joining
    rng = np.random.default_rng(11)
    speckle = rng.random((90, 120)) < 0.45
    spiral = np.zeros((61, 61), bool)            # one path winding inwards, rings 2 px apart
    y = x = 0
    spiral[0, 0] = True
    lengths = [60, 60, 60] + [k for k in range(58, 0, -2) for _ in (0, 1)]
    for k, length in enumerate(lengths):
        dy, dx = ((0, 1), (1, 0), (0, -1), (-1, 0))[k % 4]
        for _ in range(length):
            y, x = y + dy, x + dx
            spiral[y, x] = True
    for mask in (speckle, spiral, ~spiral):
        for connectivity in (4, 8):
            ours, n = label_components(mask, connectivity)
            ref, n_ref = flood_fill_labels(mask, connectivity)
            assert n == n_ref
            np.testing.assert_array_equal(ours, ref)


def test_instance_prompts_one_set_per_blob():
    h, w = 160, 240
    yy, xx = np.mgrid[:h, :w]
    centres = [(40, 40, 0.7), (120, 50, 1.0), (200, 120, 0.85)]
    act = sum(v * np.exp(-(((xx - x) / 10.0) ** 2 + ((yy - y) / 10.0) ** 2))
              for x, y, v in centres)
    act[150, 5] = 0.9                                  # a one-pixel speck: not an instance
    sets = instance_prompts(act, threshold=0.4, min_area=4, use_mask=True)
    assert len(sets) == 3
    # strongest blob first; its peak is the single positive point
    expected = [(120, 50), (200, 120), (40, 40)]
    for prompts, (x, y) in zip(sets, expected):
        kw = prompts.predictor_kwargs()
        assert list(kw["point_labels"]).count(1) == 1 and kw["point_labels"][0] == 1
        np.testing.assert_allclose(kw["point_coords"][0], [x, y])
        x0, y0, x1, y1 = kw["box"]
        assert x0 < x < x1 and y0 < y < y1
        others = [c for c in expected if c != (x, y)]
        assert not any(x0 <= ox <= x1 and y0 <= oy <= y1 for ox, oy in others)
        negatives = kw["point_coords"][kw["point_labels"] == 0]
        assert any(np.allclose(n, o) for n in negatives for o in others)
        # the dense prompt lights this blob only
        lit = low_res_to_raster(kw["mask_input"][0], prompts.frame) > 0
        assert lit[y, x] and not any(lit[oy, ox] for ox, oy in others)
    assert len(instance_prompts(act, 2, threshold=0.4)) == 2
    assert instance_prompts(np.zeros((20, 20))) == []


# --------------------------------------------------------------------------------------------
# A tiny SAM of the real architecture, random weights


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return build_tiny_sam()


def test_tiny_sam_takes_our_prompts_in_both_frames(tiny_sam):
    h, w = 240, 400                                   # landscape, not a multiple of anything
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    act = two_blob_activation((h, w))
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    frame = SamFrame(h, w)
    assert predictor.original_size == frame.original_size
    assert predictor.input_size == frame.input_size
    assert predictor.features.shape == (1, 256, 64, 64)

    prompts = build_prompts(act, n_positive=2, n_negative=1, min_distance=20)
    with torch.no_grad():
        masks, ious, low = predictor.predict(**prompts.predictor_kwargs(), multimask_output=True,
                                             return_logits=True)
        sam = {k: None if v is None else torch.as_tensor(v) for k, v in
               prompts.in_sam_frame().items()}
        masks_t, ious_t, low_t = predictor.predict_torch(
            sam["point_coords"].float(), sam["point_labels"], sam["boxes"].float(),
            sam["mask_input"], multimask_output=True, return_logits=True)
    assert masks.shape == (3, h, w) and low.shape == (3, 256, 256)
    # the SAM-frame prompts are exactly what predict() builds from raster pixels
    np.testing.assert_allclose(masks_t[0].numpy(), masks, atol=1e-5)
    np.testing.assert_allclose(ious_t[0].numpy(), ious, atol=1e-6)
    # our up-sampling of the low-res logits is SAM's own post-processing
    np.testing.assert_allclose(low_res_to_raster(low, frame), masks, atol=1e-4)
    with torch.no_grad():
        ref = tiny_sam.postprocess_masks(torch.as_tensor(low)[None], frame.input_size,
                                         frame.original_size)[0].numpy()
    np.testing.assert_allclose(low_res_to_raster(low, frame), ref, atol=1e-5)

    # the dense prompt changes the answer, so SAM really reads it; a mask input that is all
    # padding logit beyond the image behaves like SAM's own low-res output fed back
    with torch.no_grad():
        without, _, _ = predictor.predict(**{**prompts.predictor_kwargs(), "mask_input": None},
                                          multimask_output=True, return_logits=True)
    assert not np.allclose(without, masks)
