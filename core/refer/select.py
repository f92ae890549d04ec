"""Scoring SAM candidates against a referring expression and picking the answer.

A candidate is a boolean H×W mask with SAM's predicted IoU and, optionally, a CLIP region
similarity computed elsewhere (a float in [0, 1], e.g. the probability of the target against
generic prompts on a context-aware crop). Each candidate gets

- a **target score** — how much it looks like the target, whatever the modifiers: weighted mean
  of CLIP similarity, agreement with the activation map (mean activation inside the mask minus
  the mean in a ring around it, so a mask must cover its blob without spilling over), SAM's
  predicted IoU and shape/size attributes (``round``, ``rectangular``, ``long``, ``large``,
  ``small``); terms that are not available are left out of the mean;
- a **modifier score** — consistency with the absolute position (centroid against the requested
  part of the tile) and the relations to reference masks (``north of the road``: centroid north
  of the road where the road is, ``next to``: small gap, ``on``: inside, ``between``);
- the final ``score = target · ((1 − s) + s · modifier)`` with ``s = modifier_strength``, so the
  modifiers re-rank targets but cannot turn a non-target into the answer.

:func:`select_candidates` then returns the best candidate; or, when the expression has an order
(``largest``, ``second from left``) or is plural, splits masks into connected components,
removes duplicates (mask IoU / containment NMS), keeps the *instances* — components whose
target score is high enough and whose modifiers hold — and returns the ranked one, or all of
them (at most ``count``). Positions and directions are on the image grid (row 0 = north).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from .parse import Order, ParsedExpression, Relation
from .prompts import dilate, erode, label_components
from .sam_frames import normalize_activation

_DIRECTION_VECTORS = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0), "bottom": (0.0, 1.0),
    "top-left": (-1.0, -1.0), "top-right": (1.0, -1.0), "bottom-left": (-1.0, 1.0),
    "bottom-right": (1.0, 1.0),
}
# Requested place of the centroid, per axis, in [0, 1] of the area, y from the top (north)
# edge (None: that axis is free).
POSITION_TARGETS = {
    "left": (0.0, None), "right": (1.0, None), "top": (None, 0.0), "bottom": (None, 1.0),
    "top-left": (0.0, 0.0), "top-right": (1.0, 0.0), "bottom-left": (0.0, 1.0),
    "bottom-right": (1.0, 1.0), "centre": (0.5, 0.5),
}
_SHAPE_ATTRIBUTES = ("round", "rectangular", "long")
_SIZE_ATTRIBUTES = ("large", "small")
_MAX_POINTS = 3000


@dataclass(frozen=True)
class SelectionWeights:
    """Weights and thresholds of the selection. Defaults:

    - ``clip`` 1.0, ``activation`` 1.0, ``sam_iou`` 0.5, ``attribute`` 0.5: weights of the
      target-score terms (CLIP region similarity, activation agreement, SAM's predicted IoU,
      shape/size attributes). A missing term drops out of the weighted mean.
    - ``position`` 1.0, ``relation`` 1.0: weights inside the modifier score.
    - ``modifier_strength`` 0.8: share of the final score the modifiers control.
    - ``instance_threshold`` 0.1 and ``instance_relative`` 0.5: for ordered/plural expressions a
      component is an instance when its *evidence* (the weighted mean of the CLIP and activation
      terms alone: what it is, not how clean its mask is) is ≥ 0.1 and ≥ 0.5 × the best one.
    - ``nms_iou`` 0.5, ``containment`` 0.8: a mask is a duplicate of a better one when their IoU
      exceeds 0.5 or 80 % of the smaller lies inside the larger.
    - ``min_component_px`` 4, ``min_component_fraction`` 0.1: components kept when splitting a
      mask (pixels, and share of the mask's largest component).
    - ``ring_fraction`` 0.5: width of the ring around a mask for the activation contrast,
      × sqrt(mask area), clamped to 3..64 px (CLIP maps are blurred: a thin ring would still
      sit on the object's halo).
    - ``direction_scale`` 0.05, ``near_scale`` 0.05: distances that make a direction or a
      gap count, × the tile diagonal.
    """

    clip: float = 1.0
    activation: float = 1.0
    sam_iou: float = 0.5
    attribute: float = 0.5
    position: float = 1.0
    relation: float = 1.0
    modifier_strength: float = 0.8
    instance_threshold: float = 0.1
    instance_relative: float = 0.5
    nms_iou: float = 0.5
    containment: float = 0.8
    min_component_px: int = 4
    min_component_fraction: float = 0.1
    ring_fraction: float = 0.5
    direction_scale: float = 0.05
    near_scale: float = 0.05


@dataclass
class Candidate:
    """One proposed mask: ``sam_iou`` SAM's predicted IoU, ``clip_score`` a CLIP region
    similarity in [0, 1] (None: not computed), ``source`` free text (e.g. ``"peak0/mask2"``)."""

    mask: np.ndarray
    sam_iou: Optional[float] = None
    clip_score: Optional[float] = None
    source: str = ""


@dataclass(frozen=True)
class Modifiers:
    """The parts of an expression selection uses (a ParsedExpression works the same way)."""

    position: Optional[str] = None
    relations: Tuple[Relation, ...] = ()
    order: Optional[Order] = None
    attributes: Tuple[str, ...] = ()
    plural: bool = False
    count: Optional[int] = None

    @classmethod
    def from_parsed(cls, parsed: Union[ParsedExpression, "Modifiers", None]) -> "Modifiers":
        if parsed is None:
            return cls()
        if isinstance(parsed, Modifiers):
            return parsed
        return cls(position=parsed.position, relations=tuple(parsed.relations),
                   order=parsed.order, attributes=tuple(parsed.attributes),
                   plural=bool(parsed.plural), count=parsed.count)


@dataclass
class ScoredCandidate:
    """A candidate (or, when masks were split, one connected component of it) with its scores.

    ``index`` is the position in the input list, ``component`` the component number (None when
    the mask was kept whole), ``evidence`` the CLIP/activation part of the target score,
    ``terms`` every score term, ``modifiers_hold`` whether each
    position/relation constraint is met (score ≥ 0.5), ``order_value`` the sort key used."""

    index: int
    component: Optional[int]
    mask: np.ndarray
    score: float
    target_score: float
    modifier_score: float
    evidence: float = 1.0
    terms: Dict[str, float] = field(default_factory=dict)
    modifiers_hold: bool = True
    order_value: Optional[float] = None

    @property
    def area(self) -> int:
        return int(self.terms.get("area", np.count_nonzero(self.mask)))


# --------------------------------------------------------------------------------------------
# Geometry


class _Shape:
    """Lazily computed geometry of one mask."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        ys, xs = np.nonzero(mask)
        self.area = int(xs.size)
        self.cx = float(xs.mean()) if xs.size else float("nan")
        self.cy = float(ys.mean()) if ys.size else float("nan")
        self.bbox = ((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
                     if xs.size else None)
        self._xs, self._ys = xs, ys
        self._boundary: Optional[np.ndarray] = None
        self._rect: Optional[Tuple[float, float, float]] = None

    def points(self, limit: int = 20000) -> np.ndarray:
        """(n, 2) x, y of (a subsample of) its pixels."""
        step = max(1, self.area // limit)
        return np.stack([self._xs[::step], self._ys[::step]], axis=1).astype(np.float64)

    def boundary(self) -> np.ndarray:
        """(n ≤ _MAX_POINTS, 2) x, y of its edge pixels."""
        if self._boundary is None:
            if self.bbox is None:
                self._boundary = np.zeros((0, 2))
            else:
                x0, y0, x1, y1 = self.bbox
                win = self.mask[max(0, y0 - 1):y1 + 2, max(0, x0 - 1):x1 + 2]
                edge = win & ~erode(win, 1)
                ys, xs = np.nonzero(edge)
                pts = np.stack([xs + max(0, x0 - 1), ys + max(0, y0 - 1)], 1).astype(np.float64)
                step = max(1, len(pts) // _MAX_POINTS)
                self._boundary = pts[::step]
        return self._boundary

    def rectangle(self) -> Tuple[float, float, float]:
        """(long side, short side, area) of the minimum rotated rectangle around the pixels."""
        if self._rect is None:
            import shapely

            if self.area == 0:
                self._rect = (0.0, 0.0, 0.0)
            else:
                # the convex hull of the pixel squares only needs each row's end pixels
                rows, first = np.unique(self._ys, return_index=True)
                last = np.r_[first[1:], len(self._ys)] - 1   # np.nonzero is row-major
                left, right = self._xs[first], self._xs[last] + 1
                corners = np.concatenate([np.stack([left, rows], 1), np.stack([left, rows + 1], 1),
                                          np.stack([right, rows], 1),
                                          np.stack([right, rows + 1], 1)]).astype(np.float64)
                hull = shapely.convex_hull(shapely.MultiPoint(corners))
                rect = shapely.oriented_envelope(hull)
                xy = np.asarray(rect.exterior.coords)[:4] if rect.geom_type == "Polygon" else None
                if xy is None:
                    self._rect = (1.0, 1.0, 1.0)
                else:
                    a = float(np.hypot(*(xy[1] - xy[0])))
                    b = float(np.hypot(*(xy[2] - xy[1])))
                    long_side, short_side = max(a, b, 1.0), max(min(a, b), 1.0)
                    self._rect = (long_side, short_side, long_side * short_side)
        return self._rect


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 for two empty masks)."""
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return inter / union if union else 1.0


def _min_distance(a: _Shape, b: _Shape) -> float:
    """Smallest distance between two masks, in pixels (0 when they touch or overlap)."""
    if a.area == 0 or b.area == 0:
        return float("inf")
    if np.any(a.mask & b.mask):
        return 0.0
    pa, pb = a.boundary(), b.boundary()
    best = float("inf")
    for start in range(0, len(pa), 1000):
        chunk = pa[start:start + 1000]
        d2 = ((chunk[:, None, :] - pb[None, :, :]) ** 2).sum(-1)
        best = min(best, float(d2.min()))
    return max(0.0, math.sqrt(best) - 1.0)   # neighbouring pixels touch: distance 0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


# --------------------------------------------------------------------------------------------
# Terms


def _activation_contrast(shape: _Shape, act: np.ndarray, ring_fraction: float) -> float:
    if shape.area == 0:
        return 0.0
    r = int(min(64, max(3, round(ring_fraction * math.sqrt(shape.area)))))
    x0, y0, x1, y1 = shape.bbox
    h, w = act.shape
    ys, xs = slice(max(0, y0 - r), min(h, y1 + r + 1)), slice(max(0, x0 - r), min(w, x1 + r + 1))
    m = shape.mask[ys, xs]
    a = act[ys, xs]
    ring = dilate(m, r) & ~m
    inside = float(a[m].mean())
    if not ring.any():
        return 0.0
    return float(np.clip(inside - float(a[ring].mean()), 0.0, 1.0))


def _shape_attribute(shape: _Shape, attribute: str) -> float:
    long_side, short_side, rect_area = shape.rectangle()
    if rect_area <= 0:
        return 0.0
    fill = min(1.0, shape.area / rect_area)
    disk_fill = math.pi / 4.0
    if attribute == "long":
        return 1.0 - short_side / long_side
    if attribute == "rectangular":
        return float(np.clip((fill - disk_fill) / (1.0 - disk_fill), 0.0, 1.0))
    if attribute == "round":
        return (short_side / long_side) * float(
            np.clip(1.0 - abs(fill - disk_fill) / (1.0 - disk_fill), 0.0, 1.0))
    raise ValueError(attribute)


def position_score(rel_x: float, rel_y: float, position: str) -> Tuple[float, bool]:
    """How well a centroid at (rel_x, rel_y), fractions of the area's width and height with y
    from the top (north) edge, fits an absolute position: per constrained axis 1 − its distance
    to the requested place / the farthest possible, averaged; and whether every axis is ≥ 0.5."""
    if position not in POSITION_TARGETS:
        raise InputError(f"Unknown position '{position}'.")
    tx, ty = POSITION_TARGETS[position]
    parts = [1.0 - abs(rel - target) / max(target, 1.0 - target)
             for target, rel in ((tx, rel_x), (ty, rel_y)) if target is not None]
    return float(np.mean(parts)), all(p >= 0.5 for p in parts)


def _position_score(shape: _Shape, position: str, size: Tuple[int, int]) -> Tuple[float, bool]:
    h, w = size
    return position_score((shape.cx + 0.5) / w, (shape.cy + 0.5) / h, position)


def _direction_score(shape: _Shape, ref: _Shape, direction: str, diag: float,
                     scale_fraction: float) -> float:
    d = np.asarray(_DIRECTION_VECTORS[direction])
    d = d / np.linalg.norm(d)
    c = np.array([shape.cx, shape.cy])
    pts = ref.points()
    rel = pts - c
    along = rel @ d
    across = np.abs(rel[:, 0] * d[1] - rel[:, 1] * d[0])
    if shape.bbox is not None:
        x0, y0, x1, y1 = shape.bbox
        half_width = 0.5 * abs(np.array([x1 - x0 + 1, y1 - y0 + 1]) @ d[::-1])
    else:
        half_width = 0.0
    band = across <= half_width + 0.02 * diag + 1.0
    ref_along = float(along[band].mean()) if band.any() else float(along.mean())
    # the candidate is beyond the reference in direction d when ref_along < 0
    score = _sigmoid(-ref_along / max(1.0, scale_fraction * diag))
    overlap = np.count_nonzero(shape.mask & ref.mask) / max(1, shape.area)
    return score * (1.0 - overlap)


def _between_score(shape: _Shape, a: _Shape, b: _Shape) -> float:
    pa, pb = np.array([a.cx, a.cy]), np.array([b.cx, b.cy])
    seg = pb - pa
    length = float(np.linalg.norm(seg))
    if length < 1e-6:
        return 0.0
    c = np.array([shape.cx, shape.cy]) - pa
    t = float(c @ seg) / length ** 2
    perp = abs(c[0] * seg[1] - c[1] * seg[0]) / length
    inside = _sigmoid(min(t, 1.0 - t) / 0.05)
    lateral = math.exp(-perp / (0.5 * length))
    overlap = np.count_nonzero(shape.mask & (a.mask | b.mask)) / max(1, shape.area)
    return inside * lateral * (1.0 - overlap)


def _lookup_reference(relation: Relation, index: int, references, which: str = "reference"):
    phrase = getattr(relation, which)
    if references is None or phrase is None:
        return None
    if isinstance(references, Mapping):
        for key in (phrase.text, phrase.head, phrase.category):
            if key is not None and key in references:
                return references[key]
        return None
    if index < len(references):
        item = references[index]
        if relation.kind == "between" and isinstance(item, (tuple, list)):
            return item[0] if which == "reference" else item[1]
        return item
    return None


def _relation_score(shape: _Shape, relation: Relation, refs: Sequence[Optional[_Shape]],
                    diag: float, w: SelectionWeights) -> Optional[float]:
    ref = refs[0]
    if ref is None or ref.area == 0:
        return None
    near_scale = max(1.0, w.near_scale * diag)
    if relation.kind == "direction":
        return _direction_score(shape, ref, relation.direction, diag, w.direction_scale)
    if relation.kind == "near":
        iou = mask_iou(shape.mask, ref.mask)
        return math.exp(-_min_distance(shape, ref) / near_scale) * (1.0 - iou)
    if relation.kind == "far":
        return 1.0 - math.exp(-_min_distance(shape, ref) / (4.0 * near_scale))
    if relation.kind == "on":
        grown = dilate(ref.mask, 2)
        return np.count_nonzero(shape.mask & grown) / max(1, shape.area)
    if relation.kind == "between":
        if len(refs) < 2 or refs[1] is None or refs[1].area == 0:
            return None
        return _between_score(shape, ref, refs[1])
    raise InputError(f"Unknown relation '{relation.kind}'.")


# --------------------------------------------------------------------------------------------
# Scoring


def _weighted_mean(pairs: Sequence[Tuple[float, float]], empty: float = 1.0) -> float:
    total = sum(wt for wt, _ in pairs)
    return sum(wt * v for wt, v in pairs) / total if total > 0 else empty


def _weighted_geometric_mean(pairs: Sequence[Tuple[float, float]], floor: float = 0.02) -> float:
    """exp(Σ w·log v / Σ w), each v clamped to ≥ ``floor``: every term must hold (a mask that
    is not the target cannot win on a clean outline), none can veto outright."""
    total = sum(wt for wt, _ in pairs)
    if total <= 0:
        return 1.0
    return math.exp(sum(wt * math.log(max(floor, v)) for wt, v in pairs) / total)


def _check_mask(mask, shape: Optional[Tuple[int, int]], what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"{what} must be an H×W mask, got shape {m.shape}.")
    if shape is not None and m.shape != shape:
        raise InputError(f"{what} is {m.shape[0]}×{m.shape[1]}, expected {shape[0]}×{shape[1]}.")
    return m.astype(bool, copy=False)


def _split(candidates: Sequence[Candidate], split: bool, w: SelectionWeights,
           size: Tuple[int, int]) -> List[Tuple[int, Optional[int], np.ndarray, Candidate]]:
    items = []
    for index, cand in enumerate(candidates):
        mask = _check_mask(cand.mask, size, f"Candidate {index}")
        if not split:
            items.append((index, None, mask, cand))
            continue
        labels, n = label_components(mask)
        if n <= 1:
            items.append((index, None, mask, cand))
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = [k for k in range(n) if sizes[k] >= w.min_component_px
                and sizes[k] >= w.min_component_fraction * sizes.max()]
        for k in keep:
            items.append((index, k + 1, labels == k + 1, cand))
    return items


def score_candidates(candidates: Sequence[Candidate], activation: Optional[np.ndarray] = None,
                     modifiers: Union[ParsedExpression, Modifiers, None] = None,
                     references=None, weights: Optional[SelectionWeights] = None, *,
                     split_components: bool = False) -> List[ScoredCandidate]:
    """Score every candidate (each connected component with ``split_components``).

    ``references`` gives the masks of the things relations name: a mapping from the reference's
    text, head noun or category (``"road"``) to an H×W mask, or a sequence aligned with
    ``modifiers.relations`` (a pair of masks for ``between``). A relation without a mask is
    left out (its term is absent from ``terms``).
    """
    w = weights or SelectionWeights()
    mods = Modifiers.from_parsed(modifiers)
    if not candidates:
        return []
    size = _check_mask(candidates[0].mask, None, "Candidate 0").shape
    act = None
    if activation is not None:
        act = np.asarray(activation)
        if act.shape != size:
            raise InputError(f"The activation map is {act.shape} but the masks are {size}.")
        act = normalize_activation(act)
    diag = math.hypot(*size)

    ref_shapes: List[List[Optional[_Shape]]] = []
    for k, rel in enumerate(mods.relations):
        shapes = []
        for which in ("reference", "second"):
            ref = _lookup_reference(rel, k, references, which)
            shapes.append(None if ref is None else _Shape(_check_mask(ref, size, "Reference")))
        ref_shapes.append(shapes)

    items = _split(candidates, split_components, w, size)
    shapes = [_Shape(mask) for _, _, mask, _ in items]
    log_areas = np.log([max(1, s.area) for s in shapes])
    spread = float(log_areas.max() - log_areas.min())

    out: List[ScoredCandidate] = []
    for (index, comp, mask, cand), shape, log_area in zip(items, shapes, log_areas):
        terms: Dict[str, float] = {"area": float(shape.area), "cx": shape.cx, "cy": shape.cy}
        target: List[Tuple[float, float]] = []
        names: List[str] = []
        if cand.clip_score is not None and w.clip > 0:
            terms["clip"] = float(np.clip(cand.clip_score, 0.0, 1.0))
            target.append((w.clip, terms["clip"]))
            names.append("clip")
        if act is not None and w.activation > 0:
            terms["activation"] = _activation_contrast(shape, act, w.ring_fraction)
            target.append((w.activation, terms["activation"]))
            names.append("activation")
        if cand.sam_iou is not None and w.sam_iou > 0:
            terms["sam_iou"] = float(np.clip(cand.sam_iou, 0.0, 1.0))
            target.append((w.sam_iou, terms["sam_iou"]))
            names.append("sam_iou")
        attr_scores = []
        for attr in mods.attributes:
            if attr in _SHAPE_ATTRIBUTES and shape.area:
                value = _shape_attribute(shape, attr)
            elif attr in _SIZE_ATTRIBUTES:
                rel_size = (log_area - log_areas.min()) / spread if spread > 0 else 0.5
                value = rel_size if attr == "large" else 1.0 - rel_size
            else:
                continue
            terms[f"attr_{attr}"] = float(value)
            attr_scores.append(value)
        if attr_scores and w.attribute > 0:
            target.append((w.attribute, float(np.mean(attr_scores))))
            names.append("attribute")
        target_score = _weighted_geometric_mean(target)
        evidence = _weighted_mean([(wt, v) for (wt, v), name in zip(target, names)
                                   if name in ("clip", "activation")], target_score)

        modifier: List[Tuple[float, float]] = []
        hold = True
        if mods.position is not None and shape.area:
            value, ok = _position_score(shape, mods.position, size)
            terms["position"] = value
            modifier.append((w.position, value))
            hold &= ok
        rel_values = []
        for k, rel in enumerate(mods.relations):
            value = _relation_score(shape, rel, ref_shapes[k], diag, w) if shape.area else 0.0
            if value is None:
                continue
            terms[f"relation{k}_{rel.kind}"] = float(value)
            rel_values.append(value)
            hold &= value >= 0.5
        if rel_values:
            modifier.append((w.relation, float(np.mean(rel_values))))
        modifier_score = _weighted_mean(modifier)
        s = float(np.clip(w.modifier_strength, 0.0, 1.0)) if modifier else 0.0
        score = target_score * ((1.0 - s) + s * modifier_score)
        out.append(ScoredCandidate(index, comp, mask, float(score), float(target_score),
                                   float(modifier_score), float(evidence), terms, bool(hold)))

    if mods.order is not None:
        for sc, shape in zip(out, shapes):
            sc.order_value = order_value(mods.order.key, _PixelMeasure(shape, ref_shapes))
    return out


class Measure(Protocol):
    """What an order sorts by, for one mask or polygon. ``y`` grows southwards (ascending = from
    the north); ``distance`` to the relation's reference, None when it cannot be measured."""

    def area(self) -> float: ...
    def x(self) -> float: ...
    def y(self) -> float: ...
    def length(self) -> float: ...
    def distance(self) -> Optional[float]: ...


def order_value(key: str, measure: Measure) -> Optional[float]:
    """The value an order key (``Order.key``) sorts by: ``largest`` area, ``from the left`` x,
    ``from the top`` y, ``longest`` length (long side of the minimum rotated rectangle),
    ``nearest`` distance."""
    if key == "area":
        return measure.area()
    if key == "x":
        return measure.x()
    if key == "y":
        return measure.y()
    if key == "length":
        return measure.length()
    if key == "distance":
        return measure.distance()
    raise InputError(f"Unknown order key '{key}'.")


class _PixelMeasure:
    """A mask's :class:`Measure` in pixels (rows grow southwards)."""

    def __init__(self, shape: _Shape, ref_shapes: List[List[Optional[_Shape]]]):
        self.shape, self.ref_shapes = shape, ref_shapes

    def area(self) -> float:
        return float(self.shape.area)

    def x(self) -> float:
        return self.shape.cx

    def y(self) -> float:
        return self.shape.cy

    def length(self) -> float:
        return self.shape.rectangle()[0] if self.shape.area else 0.0

    def distance(self) -> float:
        for shapes in self.ref_shapes:
            if shapes[0] is not None:
                return _min_distance(self.shape, shapes[0])
        raise InputError("Ordering by distance needs the mask of the thing it is measured from.")


def rank_instances(pool: Sequence, modifiers, value_of: Callable, score_of: Callable) -> List:
    """The expression's order and number applied to its instances (``modifiers``: a
    ParsedExpression or :class:`Modifiers`). With an order: sorted by ``value_of`` (largest
    first for a descending order; ties keep their order), the ``rank``-th one (the last when there
    are fewer), or ``count`` of them from there for plural ``the two largest``; when some value is
    None, by score instead. Without: best ``score_of`` first, at most ``count`` when plural."""
    wanted = modifiers.count if (modifiers.plural and modifiers.count) else None
    order = modifiers.order
    if order is not None:
        values = [value_of(item) for item in pool]
        if all(v is not None for v in values):
            ranked = [pool[i] for i in sorted(range(len(pool)), key=values.__getitem__,
                                              reverse=order.descending)]
        else:
            ranked = sorted(pool, key=lambda item: -score_of(item))
        start = min(max(1, order.rank), len(ranked)) - 1
        return ranked[start:start + (wanted or 1)]
    ranked = sorted(pool, key=lambda item: -score_of(item))
    return ranked[:wanted] if wanted else ranked


def suppress_duplicates(scored: Sequence[ScoredCandidate], iou: float = 0.5,
                        containment: float = 0.8) -> List[ScoredCandidate]:
    """Greedy NMS on masks, best ``score`` first: drop a mask whose IoU with a kept one exceeds
    ``iou`` or whose smaller one lies ≥ ``containment`` inside the other. Overlaps are counted
    inside the two masks' common bounding box only (outside it one of them is empty)."""
    kept: List[Tuple[ScoredCandidate, int, Optional[Tuple[int, int, int, int]]]] = []
    for sc in sorted(scored, key=lambda s: -s.score):
        area = np.count_nonzero(sc.mask)
        box = _bbox(sc.mask)
        duplicate = False
        for other, other_area, other_box in kept:
            if box is None or other_box is None:
                continue
            y0, x0 = max(box[0], other_box[0]), max(box[1], other_box[1])
            y1, x1 = min(box[2], other_box[2]), min(box[3], other_box[3])
            if y0 >= y1 or x0 >= x1:
                continue
            inter = np.count_nonzero(sc.mask[y0:y1, x0:x1] & other.mask[y0:y1, x0:x1])
            if not inter:
                continue
            union = max(1, area) + other_area - inter
            smaller = min(max(1, area), other_area)
            if inter / union > iou or inter / max(1, smaller) >= containment:
                duplicate = True
                break
        if not duplicate:
            kept.append((sc, area, box))
    return [sc for sc, _, _ in kept]


def _bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(row0, col0, row1, col1), ends exclusive, of a boolean mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def select_candidates(candidates: Sequence[Candidate], activation: Optional[np.ndarray] = None,
                      modifiers: Union[ParsedExpression, Modifiers, None] = None,
                      references=None,
                      weights: Optional[SelectionWeights] = None) -> List[ScoredCandidate]:
    """The candidate(s) the expression refers to, best first, each with its scores.

    - No order, singular: the single highest ``score``.
    - Order (``largest``, ``second from left``...): instances (see module doc) sorted by the
      order key; the ``rank``-th is returned (the last one when there are fewer), or ``count``
      of them from there for ``the two largest``.
    - Plural: every instance, best first, at most ``count``.
    When no component qualifies as an instance the best-scoring one is returned, so a non-empty
    candidate list always gives an answer. ``references`` as in :func:`score_candidates`.
    """
    w = weights or SelectionWeights()
    mods = Modifiers.from_parsed(modifiers)
    instances_mode = mods.plural or mods.order is not None
    scored = score_candidates(candidates, activation, mods, references, w,
                              split_components=instances_mode)
    scored = [s for s in scored if s.area > 0]
    if not scored:
        return []
    best = max(scored, key=lambda s: s.score)
    if not instances_mode:
        return [best]
    floor = max(w.instance_threshold, w.instance_relative * max(s.evidence for s in scored))
    pool = [s for s in suppress_duplicates(scored, w.nms_iou, w.containment)
            if s.evidence >= floor and s.modifiers_hold]
    if not pool:
        return [best]
    return rank_instances(pool, mods, lambda s: s.order_value, lambda s: s.score)
