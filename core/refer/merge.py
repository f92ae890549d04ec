"""Across tiles: pieces of one expression's answer that overlap or touch across tile seams are
dissolved into one polygon, then the absolute position, order and number the expression asks
for are applied to the merged polygons over the whole area, with the same rules as selection
inside one tile (``select.position_score``, ``select.order_value``, ``select.rank_instances``)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely

from ..vectorize import connected_groups
from .parse import ParsedExpression
from .select import SelectionWeights, order_value, position_score, rank_instances


def merge_pieces(pieces: Sequence[Tuple[object, float]]) -> List[Tuple[object, float]]:
    """Dissolve pieces (geometry, score) that overlap or share an edge into one polygon each
    (score: the best piece's). Pieces meeting at a corner only stay apart."""
    if len(pieces) <= 1:
        return list(pieces)
    geoms = [g for g, _ in pieces]
    merged = []
    for members in connected_groups(geoms, predicate="intersects"):
        geometry = (geoms[members[0]] if len(members) == 1
                    else shapely.union_all([geoms[i] for i in members]))
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        merged.append((geometry, max(pieces[i][1] for i in members)))
    return merged


class _GeometryMeasure:
    """A polygon's ``select.Measure`` in map units (north up, so y is the negated northing)."""

    def __init__(self, geometry):
        self.geometry = geometry

    def area(self) -> float:
        return self.geometry.area

    def x(self) -> float:
        return self.geometry.centroid.x

    def y(self) -> float:
        return -self.geometry.centroid.y

    def length(self) -> float:
        rect = shapely.oriented_envelope(self.geometry)
        if rect.geom_type != "Polygon":
            return rect.length
        xy = np.asarray(rect.exterior.coords)
        return float(max(np.hypot(*(xy[1] - xy[0])), np.hypot(*(xy[2] - xy[1]))))

    def distance(self) -> Optional[float]:
        return None                      # references are localised per tile


def _position_value(geometry, position: str, bounds) -> Tuple[float, bool]:
    xmin, ymin, xmax, ymax = bounds
    c = geometry.centroid
    return position_score((c.x - xmin) / max(xmax - xmin, 1e-12),
                          (ymax - c.y) / max(ymax - ymin, 1e-12), position)


def select_across_tiles(groups: Sequence[Tuple[object, float]], parsed: ParsedExpression, bounds,
                        weights: Optional[SelectionWeights] = None) -> List[Tuple[object, float]]:
    """The expression's position, order and number applied to merged polygons over the whole
    area, as ``select.select_candidates`` does inside one tile: position re-weights the score
    (``modifier_strength``), order sorts the instances (score ≥ ``instance_relative`` × best),
    plural keeps them all (at most ``count``), singular keeps the best."""
    w = weights or SelectionWeights()
    if not groups:
        return []
    scored = []
    for geometry, score in groups:
        hold = True
        if parsed.position is not None:
            value, hold = _position_value(geometry, parsed.position, bounds)
            s = float(np.clip(w.modifier_strength, 0.0, 1.0))
            score = score * ((1.0 - s) + s * value)
        scored.append((geometry, float(score), hold))
    best = max(scored, key=lambda item: item[1])
    if not (parsed.plural or parsed.order is not None):
        return [best[:2]]
    floor = w.instance_relative * best[1]
    pool = [item for item in scored if item[1] >= floor and item[2]] or [best]
    ranked = rank_instances(pool, parsed,
                            lambda item: order_value(parsed.order.key, _GeometryMeasure(item[0])),
                            lambda item: item[1])
    return [item[:2] for item in ranked]
