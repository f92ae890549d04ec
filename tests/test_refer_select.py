"""Selection on hand-made candidates and activation maps whose right answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from drseg.core.errors import InputError
from drseg.core.refer.parse import parse_expression
from drseg.core.refer.select import (Candidate, Modifiers, SelectionWeights, mask_iou,
                                     position_score, rank_instances, score_candidates,
                                     select_candidates, suppress_duplicates)

H, W = 128, 160


def disk(cx, cy, r, shape=(H, W)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def rect(x0, y0, x1, y1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def blur(a, sigma=3.0):
    radius = int(3 * sigma)
    k = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    a = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, a.astype(float))
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, a)


def activation_of(masks, levels=None, seed=0):
    """A CLIP-like map: each object lit at its level, blurred, with a little noise."""
    levels = levels or [1.0] * len(masks)
    a = np.zeros((H, W))
    for m, level in zip(masks, levels):
        a = np.maximum(a, level * m)
    rng = np.random.default_rng(seed)
    return blur(a) + 0.03 * rng.random((H, W))


def variants(mask, iou=0.92):
    """What SAM's multimask output gives for one object: the object, a part, a spill-over."""
    ys, xs = np.nonzero(mask)
    part = mask & (np.arange(W)[None, :] < np.median(xs))
    grown = blur(mask, 2.0) > 0.05
    return [Candidate(mask, iou), Candidate(part, iou - 0.1), Candidate(grown, iou - 0.05)]


def same(result, mask, at_least=0.95):
    return mask_iou(result.mask, mask) >= at_least


# --------------------------------------------------------------------------------------------


@pytest.fixture
def three_ponds():
    ponds = [disk(30, 70, 12), disk(80, 60, 16), disk(130, 75, 9)]
    # the middle pond glows most: order and position must beat raw activation
    act = activation_of(ponds, [0.7, 1.0, 0.8])
    cands = []
    for p in ponds:
        cands += variants(p)
    cands.append(Candidate(ponds[0] | ponds[1] | ponds[2], 0.85, source="union"))
    cands.append(Candidate(rect(0, 0, 12, 128), 0.95, source="left strip of field"))
    cands.append(Candidate(rect(40, 100, 120, 128), 0.9, source="field"))
    return ponds, act, cands


def test_leftmost_of_three_ponds(three_ponds):
    ponds, act, cands = three_ponds
    for text in ("the leftmost of the three ponds", "the pond on the left",
                 "the westernmost pond", "the first pond from the left"):
        chosen = select_candidates(cands, act, parse_expression(text))
        assert len(chosen) == 1, text
        assert same(chosen[0], ponds[0]), text


def test_rightmost_and_second_from_left(three_ponds):
    ponds, act, cands = three_ponds
    chosen = select_candidates(cands, act, parse_expression("the rightmost pond"))
    assert same(chosen[0], ponds[2])
    chosen = select_candidates(cands, act, parse_expression("the second pond from the left"))
    assert same(chosen[0], ponds[1])
    chosen = select_candidates(cands, act, parse_expression("the second pond from the right"))
    assert same(chosen[0], ponds[1])
    chosen = select_candidates(cands, act, parse_expression("the last pond from the left"))
    assert same(chosen[0], ponds[2])


def test_plain_expression_takes_the_best_target(three_ponds):
    ponds, act, cands = three_ponds
    chosen = select_candidates(cands, act, parse_expression("the pond"))
    assert len(chosen) == 1 and same(chosen[0], ponds[1])     # the most activated, whole pond


def test_largest_smallest_second_largest(three_ponds):
    ponds, act, cands = three_ponds
    assert same(select_candidates(cands, act, parse_expression("the largest pond"))[0], ponds[1])
    assert same(select_candidates(cands, act, parse_expression("the smallest pond"))[0], ponds[2])
    assert same(select_candidates(cands, act, parse_expression("the second largest pond"))[0],
                ponds[0])
    two = select_candidates(cands, act, parse_expression("the two largest ponds"))
    assert len(two) == 2 and same(two[0], ponds[1]) and same(two[1], ponds[0])


def test_second_from_left_among_ships_and_from_top():
    ships = [rect(20 + 30 * k, 30 + 15 * ((k * 2) % 3), 32 + 30 * k, 40 + 15 * ((k * 2) % 3))
             for k in range(4)]
    act = activation_of(ships, [1.0, 0.6, 0.9, 0.75])
    cands = [c for s in ships for c in variants(s)]
    cands.append(Candidate(rect(0, 90, 160, 128), 0.97))          # water around them
    chosen = select_candidates(cands, act, parse_expression("the second ship from the left"))
    assert same(chosen[0], ships[1])
    tops = sorted(range(4), key=lambda k: (ships[k].nonzero()[0].mean(),))
    chosen = select_candidates(cands, act, parse_expression("the topmost ship"))
    assert same(chosen[0], ships[tops[0]])


def test_the_one_north_of_the_road():
    road = rect(0, 58, 160, 70)
    north, south, south2 = disk(50, 25, 12), disk(110, 100, 14), disk(20, 105, 8)
    act = activation_of([north, south, south2], [0.8, 1.0, 0.9])
    cands = [c for p in (north, south, south2) for c in variants(p)]
    cands.append(Candidate(road, 0.99, source="the road itself"))
    parsed = parse_expression("the pond north of the road")
    chosen = select_candidates(cands, act, parsed, references={"road": road})
    assert len(chosen) == 1 and same(chosen[0], north)
    parsed = parse_expression("the largest pond south of the road")
    chosen = select_candidates(cands, act, parsed, references={"road": road})
    assert same(chosen[0], south)
    # references may also be given in the order of the relations
    parsed = parse_expression("the pond above the street")
    chosen = select_candidates(cands, act, parsed, references=[road])
    assert same(chosen[0], north)


def test_north_of_a_diagonal_road_is_judged_where_the_road_is():
    yy, xx = np.mgrid[:H, :W]
    road = np.abs(yy - (0.75 * xx + 5)) < 5              # from top-left to bottom-right
    a = disk(135, 80, 9)     # north of the road locally (road there at y≈106) ...
    b = disk(25, 62, 9)      # ... south of it (road there at y≈24) though higher in the image
    act = activation_of([a, b], [0.8, 1.0])
    cands = variants(a) + variants(b)
    parsed = parse_expression("the pond north of the road")
    chosen = select_candidates(cands, act, parsed, references={"road": road})
    assert same(chosen[0], a)
    parsed = parse_expression("the pond south of the road")
    chosen = select_candidates(cands, act, parsed, references={"road": road})
    assert same(chosen[0], b)


def test_all_of_a_kind_returns_every_instance_once():
    tanks = [disk(20 + 28 * k, 30 + 50 * (k % 2), 7) for k in range(5)]
    building = rect(60, 95, 110, 120)
    act = activation_of(tanks + [building], [1, 0.9, 0.95, 0.85, 1, 0.15])
    cands = [c for t in tanks for c in variants(t)]
    cands.append(Candidate(np.logical_or.reduce(tanks), 0.8, source="all tanks in one mask"))
    cands.append(Candidate(building, 0.97))
    cands.append(Candidate(~np.logical_or.reduce(tanks + [building]), 0.9, source="background"))
    chosen = select_candidates(cands, act, parse_expression("all the storage tanks"))
    assert len(chosen) == 5
    for t in tanks:
        assert sum(mask_iou(c.mask, t) > 0.8 for c in chosen) == 1
    assert all(c.score > 0 for c in chosen)
    assert [c.score for c in chosen] == sorted((c.score for c in chosen), reverse=True)
    # a count limits the answer; a position filters it
    assert len(select_candidates(cands, act, parse_expression("the two tanks"))) == 2
    left = select_candidates(cands, act, parse_expression("the tanks on the left"))
    expected = [t for t in tanks if t.nonzero()[1].mean() < W / 2]
    assert len(left) == len(expected) == 3
    assert all(any(same(c, t) for c in left) for t in expected)


def test_next_to_and_far_from():
    road = rect(0, 60, 160, 68)
    near, far = disk(40, 76, 6), disk(120, 20, 6)
    act = activation_of([near, far], [0.8, 1.0])
    cands = variants(near) + variants(far) + [Candidate(road, 0.99)]
    chosen = select_candidates(cands, act, parse_expression("the tank next to the road"),
                               references={"road": road})
    assert same(chosen[0], near)
    chosen = select_candidates(cands, act, parse_expression("the tank far from the road"),
                               references={"road": road})
    assert same(chosen[0], far)
    chosen = select_candidates(cands, act, parse_expression("the tank closest to the road"),
                               references={"road": road})
    assert same(chosen[0], near)


def test_between_and_on():
    road, river = rect(0, 0, 20, 128), rect(140, 0, 160, 128)
    mid, side = rect(70, 50, 90, 70), rect(25, 100, 45, 120)
    bridge = rect(135, 60, 160, 68)
    act = activation_of([mid, side, bridge], [0.7, 1.0, 0.9])
    cands = [c for m in (mid, side, bridge) for c in variants(m)]
    chosen = select_candidates(cands, act,
                               parse_expression("the building between the road and the river"),
                               references={"road": road, "river": river})
    assert same(chosen[0], mid)
    chosen = select_candidates(cands, act, parse_expression("the bridge over the river"),
                               references={"river": river})
    assert same(chosen[0], bridge)


def test_shape_attributes():
    round_tank, square_roof = disk(40, 40, 12), rect(90, 25, 114, 49)
    long_shed = rect(20, 90, 140, 98)
    act = activation_of([round_tank, square_roof, long_shed], [1.0, 1.0, 1.0])
    cands = [Candidate(m, 0.9) for m in (round_tank, square_roof, long_shed)]
    assert same(select_candidates(cands, act, parse_expression("the round building"))[0],
                round_tank)
    assert same(select_candidates(cands, act, parse_expression("the rectangular building"))[0],
                square_roof)
    assert same(select_candidates(cands, act, parse_expression("the long building"))[0],
                long_shed)


def test_clip_similarity_and_weights_matter():
    a, b = disk(40, 60, 10), disk(120, 60, 10)
    act = activation_of([a, b], [1.0, 1.0])
    cands = [Candidate(a, 0.9, clip_score=0.2), Candidate(b, 0.9, clip_score=0.9)]
    assert same(select_candidates(cands, act, parse_expression("the pool"))[0], b)
    no_clip = SelectionWeights(clip=0.0)
    scored = score_candidates(cands, act, Modifiers(), weights=no_clip)
    assert "clip" not in scored[0].terms
    assert abs(scored[0].target_score - scored[1].target_score) < 0.05


def test_modifiers_cannot_promote_a_non_target():
    pond = disk(120, 60, 12)
    act = activation_of([pond])
    cands = [Candidate(pond, 0.9), Candidate(rect(0, 0, 20, 128), 0.99)]
    chosen = select_candidates(cands, act, parse_expression("the pond on the left"))
    assert same(chosen[0], pond)


def test_fallbacks_and_errors():
    assert select_candidates([], None, parse_expression("all the ships")) == []
    lone = disk(40, 40, 5)
    chosen = select_candidates([Candidate(lone, 0.1)], np.zeros((H, W)),
                               parse_expression("all the ships north of the road"),
                               references={"road": rect(0, 100, 160, 110)})
    assert len(chosen) == 1 and chosen[0].index == 0          # best effort, never empty
    with pytest.raises(InputError):
        select_candidates([Candidate(lone, 0.9)], np.zeros((H + 1, W)), None)
    with pytest.raises(InputError):
        select_candidates([Candidate(lone, 0.9), Candidate(np.zeros((10, 10), bool), 0.9)])


def test_missing_reference_leaves_relation_out():
    north, south = disk(50, 25, 10), disk(110, 100, 10)
    act = activation_of([north, south], [0.8, 1.0])
    scored = score_candidates([Candidate(north, 0.9), Candidate(south, 0.9)], act,
                              parse_expression("the pond north of the road"))
    assert all(not any(k.startswith("relation") for k in s.terms) for s in scored)


def test_suppress_duplicates_keeps_best_of_nested_masks():
    big, small = disk(60, 60, 20), disk(60, 60, 18)
    other = disk(130, 60, 10)
    scored = score_candidates([Candidate(big, 0.7), Candidate(small, 0.95), Candidate(other, 0.9)],
                              None, None)
    kept = suppress_duplicates(scored)
    assert len(kept) == 2 and {k.index for k in kept} == {1, 2}


def test_suppress_duplicates_equals_plain_greedy_nms_on_random_masks():
    def plain(scored, iou=0.5, containment=0.8):        # whole-mask counts, no boxes
        kept = []
        for sc in sorted(scored, key=lambda s: -s.score):
            area = max(1, np.count_nonzero(sc.mask))
            if not any(np.count_nonzero(sc.mask & k.mask)
                       and (np.count_nonzero(sc.mask & k.mask)
                            / (area + np.count_nonzero(k.mask) - np.count_nonzero(sc.mask & k.mask))
                            > iou
                            or np.count_nonzero(sc.mask & k.mask)
                            / max(1, min(area, np.count_nonzero(k.mask))) >= containment)
                       for k in kept):
                kept.append(sc)
        return kept

    rng = np.random.default_rng(12)
    for _ in range(20):
        masks = []
        for _ in range(8):
            m = np.zeros((60, 80), bool)
            y, x = rng.integers(0, 50), rng.integers(0, 70)
            m[y:y + rng.integers(1, 30), x:x + rng.integers(1, 30)] = True
            masks.append(m & (rng.random(m.shape) < 0.9))
        masks.append(np.zeros((60, 80), bool))
        scored = score_candidates([Candidate(m, float(rng.random())) for m in masks], None, None)
        for iou, containment in ((0.5, 0.8), (0.2, 0.5)):
            assert ([k.index for k in suppress_duplicates(scored, iou, containment)]
                    == [k.index for k in plain(scored, iou, containment)])


def test_rank_instances_applies_order_rank_and_count_as_parsed():
    items = [("a", 3.0, 0.9), ("b", 1.0, 0.5), ("c", 2.0, 0.7), ("d", 2.0, 0.8)]   # name, value, score

    def ranked(text, values=lambda item: item[1]):
        chosen = rank_instances(items, parse_expression(text), values, lambda item: item[2])
        return [item[0] for item in chosen]

    assert ranked("the largest pond") == ["a"]
    assert ranked("the second largest pond") == ["c"]             # ties keep their order: c, d
    assert ranked("the two smallest ponds") == ["b", "c"]
    assert ranked("the tenth largest pond") == ["b"]              # fewer: the last one
    assert ranked("all the ponds") == ["a", "d", "c", "b"]        # no order: best score first
    assert ranked("three ponds") == ["a", "d", "c"]
    assert ranked("the largest pond", values=lambda item: None) == ["a"]   # unmeasurable: score


def test_position_score_is_one_at_the_requested_place_and_half_at_the_middle():
    assert position_score(0.0, 0.3, "left") == (1.0, True)
    assert position_score(0.5, 0.5, "left") == (0.5, True)
    assert position_score(1.0, 0.9, "left") == (0.0, False)
    assert position_score(0.5, 0.5, "centre") == (1.0, True)
    value, hold = position_score(0.9, 0.2, "top-right")
    assert value == pytest.approx(0.85) and hold
    with pytest.raises(InputError, match="Unknown position"):
        position_score(0.5, 0.5, "upstairs")
