"""core/refer/merge.py: dissolving pieces across tile seams and the expression's position, order
and number over the whole area (known answers on hand-made boxes)."""
import pytest
from shapely.geometry import box as shapely_box

from drseg.core.refer.merge import merge_pieces, select_across_tiles
from drseg.core.refer.parse import parse_expression


def test_merge_and_global_selection_rules():
    a, b = shapely_box(0, 0, 10, 10), shapely_box(10, 0, 20, 10)     # share an edge
    c = shapely_box(20, 10, 30, 20)                                   # touches b at a corner
    d = shapely_box(5, 5, 15, 8)                                      # overlaps a and b
    merged = merge_pieces([(a, 0.2), (b, 0.6), (c, 0.3)])
    assert sorted(round(g.area) for g, _ in merged) == [100, 200]
    assert max(s for g, s in merged if g.area == 200) == 0.6
    assert len(merge_pieces([(a, 0.1), (d, 0.1), (c, 0.1)])) == 2
    bounds = (0, 0, 100, 100)
    west, east = (shapely_box(0, 40, 10, 60), 0.5), (shapely_box(90, 40, 100, 60), 0.6)
    left = select_across_tiles([west, east], parse_expression("the pond on the left"), bounds)
    assert left[0][0].equals(west[0])
    assert select_across_tiles([west, east], parse_expression("the pond"), bounds)[0][1] == 0.6
    big = (shapely_box(20, 20, 60, 60), 0.3)
    assert select_across_tiles([west, east, big], parse_expression("the largest pond"),
                               bounds)[0][0].equals(big[0])
    assert len(select_across_tiles([west, east, big], parse_expression("all the ponds"),
                                   bounds)) == 3
    second = select_across_tiles([west, east, big], parse_expression("the second pond from the left"),
                                 bounds)
    assert second[0][0].equals(big[0])


def test_plural_order_takes_count_from_the_rank_and_position_reweights_scores():
    bounds = (0, 0, 100, 100)
    small, mid, big = ((shapely_box(0, 0, 5, 5), 0.5), (shapely_box(40, 40, 50, 50), 0.5),
                       (shapely_box(70, 70, 100, 100), 0.5))
    two = select_across_tiles([small, mid, big], parse_expression("the two largest ponds"), bounds)
    assert [g.area for g, _ in two] == [900, 100]
    # 'in the north': the northern box keeps its score, the southern one loses 0.8 of it
    north, south = (shapely_box(45, 90, 55, 100), 0.5), (shapely_box(45, 0, 55, 10), 0.5)
    (chosen,) = select_across_tiles([south, north], parse_expression("the pond at the top"),
                                    bounds)
    assert chosen[0].equals(north[0]) and chosen[1] == pytest.approx(0.5 * (0.2 + 0.8 * 0.95))
