"""SAM prompts from an activation map (H×W float, higher = more likely the target).

- :func:`peak_points` — positive points: local maxima above a threshold, non-maximum
  suppressed by distance, best first (optionally one per activated blob).
- :func:`negative_points` — background points in the lowest regions, also spread apart,
  optionally only inside a search box (hard negatives around the target).
- :func:`region_box` — a box around the thresholded region: the blob holding the peak, the
  largest blob, or all of it.
- :func:`build_prompts` — all of the above plus the dense mask prompt (see ``sam_frames``),
  as a :class:`SamPrompts` ready for ``SamPredictor.predict`` (raster pixels) or, through
  :meth:`SamPrompts.in_sam_frame`, for ``predict_torch``.
- :func:`instance_prompts` — one prompt set per activated blob, to enumerate instances.

The activation map must be on the tile's pixel grid (the image given to SAM): up-sample a
coarse CLIP map to H×W first.

Thresholds are relative: the activation is min-max normalised to [0, 1] first. Coordinates
follow ``sam_frames``: (x, y) pixel indices, boxes xyxy with inclusive ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..union_find import group_roots
from .sam_frames import (SamFrame, mask_input_from_activation, normalize_activation,
                         raster_to_sam_boxes, raster_to_sam_points)

BOX_MODES = ("peak", "largest", "all")


# --------------------------------------------------------------------------------------------
# Small array tools shared with select.py


def label_components(mask: np.ndarray, connectivity: int = 8) -> Tuple[np.ndarray, int]:
    """Connected components of a boolean H×W mask: (int32 labels, 0 = background; count).

    Works on horizontal runs: the runs that touch between consecutive rows are found with
    sorted searches and joined with :func:`~..union_find.group_roots`, all vectorised (fast
    for SAM's blobs and for speckled masks alike). Components are numbered in raster order of
    their first pixel. ``connectivity`` is 4 or 8.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"A mask must be H×W, got shape {m.shape}.")
    if connectivity not in (4, 8):
        raise InputError(f"Connectivity must be 4 or 8, got {connectivity}.")
    h, w = m.shape
    labels = np.zeros((h, w), np.int32)
    if not m.any():
        return labels, 0
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(d == 1)
    _, run_ends = np.nonzero(d == -1)          # exclusive; same row-major order as the starts
    n = len(run_rows)
    reach = 1 if connectivity == 8 else 0
    # Runs i (row r - 1) and j (row r) touch when start_j < end_i + reach and
    # start_i < end_j + reach. Keys row·stride + column keep the rows apart, so one search over
    # all runs finds, per run j, the range of runs in the row above that it touches.
    stride = w + 4
    start_key = run_rows * stride + run_starts
    end_key = run_rows * stride + run_ends
    above = (run_rows - 1) * stride
    first = np.searchsorted(end_key, above + run_starts - reach, side="right")
    last = np.searchsorted(start_key, above + run_ends + reach, side="left")
    count = np.where(run_rows > 0, np.maximum(last - first, 0), 0)
    pairs = int(count.sum())
    j = np.repeat(np.arange(n), count)
    i = np.repeat(first, count) + (np.arange(pairs) - np.repeat(np.cumsum(count) - count, count))
    roots = group_roots(n, i, j)
    # the smallest run of a component holds its first pixel in raster order
    _, run_label = np.unique(roots, return_inverse=True)
    lengths = run_ends - run_starts
    flat = np.repeat(run_rows * w + run_starts - np.cumsum(lengths) + lengths, lengths)
    flat += np.arange(int(lengths.sum()))
    labels.reshape(-1)[flat] = np.repeat(run_label + 1, lengths)
    return labels, int(run_label.max()) + 1


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    """xyxy box (inclusive ends, float64) around a boolean mask; None when it is empty."""
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def _window_sum_1d(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    c = np.cumsum(a, axis=axis, dtype=np.int32)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    hi = np.minimum(np.arange(n) + radius + 1, n)
    lo = np.maximum(np.arange(n) - radius, 0)
    return np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)


def box_filter_sum(mask: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)² square around each pixel (zero outside): separable running sums."""
    r = int(radius)
    m = np.asarray(mask, dtype=np.int32)
    return _window_sum_1d(_window_sum_1d(m, r, 0), r, 1)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by ``radius`` pixels."""
    if radius <= 0:
        return np.asarray(mask, dtype=bool).copy()
    return box_filter_sum(mask, radius) > 0


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square erosion by ``radius`` pixels (outside the array counts as background)."""
    m = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return m.copy()
    if radius == 1:        # the common case (mask edges): eight shifted copies, no sums
        p = np.pad(m, 1, constant_values=False)
        h, w = m.shape
        out = m.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out &= p[dy:dy + h, dx:dx + w]
        return out
    return box_filter_sum(m, radius) == (2 * radius + 1) ** 2


# --------------------------------------------------------------------------------------------
# Points and boxes


def _local_maxima(a: np.ndarray) -> np.ndarray:
    """Pixels not lower than any of their 8 neighbours."""
    p = np.pad(a, 1, mode="constant", constant_values=-np.inf)
    h, w = a.shape
    ok = np.ones(a.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            ok &= a >= p[dy:dy + h, dx:dx + w]
    return ok


def _default_distance(shape) -> float:
    return max(2.0, 0.05 * max(shape))


def _greedy_spread(score: np.ndarray, allowed: np.ndarray, k: int, min_distance: float,
                   group: Optional[np.ndarray] = None) -> np.ndarray:
    """Up to k (x, y) pixels of ``allowed`` with the highest ``score``, each at least
    ``min_distance`` from those already taken (and, with ``group``, one per group label)."""
    s = np.where(allowed, score, -np.inf).astype(np.float64)
    h, w = s.shape
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]
    out = []
    r2 = float(min_distance) ** 2
    for _ in range(max(0, int(k))):
        flat = int(np.argmax(s))
        y, x = divmod(flat, w)
        if not np.isfinite(s[y, x]):
            break
        out.append((x, y))
        s[(yy - y) ** 2 + (xx - x) ** 2 < r2] = -np.inf
        if group is not None and group[y, x] > 0:
            s[group == group[y, x]] = -np.inf
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def peak_points(activation: np.ndarray, k: int = 3, *, threshold: float = 0.5,
                min_distance: Optional[float] = None,
                one_per_component: bool = False) -> np.ndarray:
    """Positive prompt points: (n ≤ k, 2) float (x, y), strongest first.

    Local maxima whose normalised activation is at least ``threshold``; non-maximum suppression
    keeps them ``min_distance`` pixels apart (default 5 % of the long side). With
    ``one_per_component`` each blob of the thresholded map gives at most one point (one point
    per instance). Raises InputError when the map is flat (nothing to point at).
    """
    a = normalize_activation(activation)
    if not (a > 0).any():
        raise InputError("The activation map is flat: the target could not be localised.")
    allowed = _local_maxima(a) & (a >= threshold)
    group = label_components(a >= threshold)[0] if one_per_component else None
    dist = _default_distance(a.shape) if min_distance is None else float(min_distance)
    return _greedy_spread(a, allowed, k, dist, group)


def negative_points(activation: np.ndarray, k: int = 2, *, threshold: float = 0.2,
                    min_distance: Optional[float] = None,
                    within: Optional[np.ndarray] = None) -> np.ndarray:
    """Negative prompt points: (n ≤ k, 2) float (x, y), lowest activation first.

    Pixels whose normalised activation is at most ``threshold`` (local minima preferred), spread
    ``min_distance`` apart. ``within`` (an xyxy box, inclusive) restricts the search, e.g. to
    the positive box grown by a margin so the negatives sit on the target's surroundings.
    """
    a = normalize_activation(activation)
    allowed = a <= threshold
    if within is not None:
        x0, y0, x1, y1 = np.asarray(within, dtype=np.float64)
        region = np.zeros(a.shape, bool)
        h, w = a.shape
        region[max(0, int(np.floor(y0))):min(h, int(np.floor(y1)) + 1),
               max(0, int(np.floor(x0))):min(w, int(np.floor(x1)) + 1)] = True
        allowed &= region
    minima = allowed & _local_maxima(-a)
    if minima.any():
        allowed = minima
    dist = _default_distance(a.shape) if min_distance is None else float(min_distance)
    return _greedy_spread(-a, allowed, k, dist)


def threshold_region(activation: np.ndarray, threshold: float = 0.5,
                     mode: str = "peak") -> np.ndarray:
    """Boolean mask of the thresholded activation: the blob holding the global maximum
    (``peak``), the ``largest`` blob, or ``all`` of it."""
    if mode not in BOX_MODES:
        raise InputError(f"Box mode must be one of {', '.join(BOX_MODES)}, got '{mode}'.")
    a = normalize_activation(activation)
    region = a >= threshold
    if mode == "all" or not region.any():
        return region
    labels, n = label_components(region)
    if mode == "peak":
        y, x = np.unravel_index(int(np.argmax(a)), a.shape)
        return labels == labels[y, x]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def region_box(activation: np.ndarray, threshold: float = 0.5, mode: str = "peak",
               margin: float = 0.0) -> Optional[np.ndarray]:
    """xyxy box (inclusive ends) around :func:`threshold_region`, grown by ``margin`` × its
    size on each side and clipped to the tile; None when nothing passes the threshold."""
    region = threshold_region(activation, threshold, mode)
    box = mask_box(region)
    if box is None:
        return None
    if margin:
        bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
        box = box + np.array([-bw, -bh, bw, bh]) * float(margin)
    h, w = region.shape
    return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])


# --------------------------------------------------------------------------------------------
# Everything together


@dataclass
class SamPrompts:
    """Prompts for one SAM call, in raster pixel coordinates (what ``SamPredictor.predict``
    takes). ``mask_input`` is 1×1×256×256 logits in SAM's padded low-res frame (or None)."""

    point_coords: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    box: Optional[np.ndarray]
    mask_input: Optional[np.ndarray]
    frame: SamFrame

    def predictor_kwargs(self) -> dict:
        """Keyword arguments for ``SamPredictor.predict`` (raster pixel coordinates)."""
        has_points = self.point_coords is not None and len(self.point_coords) > 0
        return {
            "point_coords": self.point_coords if has_points else None,
            "point_labels": self.point_labels if has_points else None,
            "box": self.box,
            "mask_input": None if self.mask_input is None else self.mask_input[0],
        }

    def in_sam_frame(self, convention: str = "sam") -> dict:
        """The same prompts in SAM's input frame, as numpy arrays shaped for
        ``SamPredictor.predict_torch`` (batch of one: points 1×N×2, labels 1×N, box 1×4,
        mask 1×1×256×256); convert with ``torch.as_tensor``. ``convention`` as in
        ``sam_frames`` ("sam": identical to what ``predict`` does with raster pixels)."""
        has_points = self.point_coords is not None and len(self.point_coords) > 0
        boxes = None
        if self.box is not None:
            boxes = raster_to_sam_boxes(self.box, self.frame, convention)[None]
        return {
            "point_coords": raster_to_sam_points(self.point_coords, self.frame, convention)[None]
            if has_points else None,
            "point_labels": np.asarray(self.point_labels)[None] if has_points else None,
            "boxes": boxes,
            "mask_input": self.mask_input,
        }


def build_prompts(activation: np.ndarray, *, n_positive: int = 3, n_negative: int = 2,
                  threshold: float = 0.5, negative_threshold: float = 0.2,
                  min_distance: Optional[float] = None, use_box: bool = True,
                  box_mode: str = "peak", box_margin: float = 0.05,
                  negatives_near_box: Optional[float] = 1.0, use_mask: bool = True,
                  mask_gain: float = 20.0, one_per_component: bool = False) -> SamPrompts:
    """Points, box and dense prompt for one target from its activation map.

    ``negatives_near_box``: when a box is made, search negatives inside it grown by this many
    box sizes (None: anywhere); if that finds none, anywhere.
    """
    a = normalize_activation(activation)
    frame = SamFrame(a.shape[0], a.shape[1])
    pos = peak_points(a, n_positive, threshold=threshold, min_distance=min_distance,
                      one_per_component=one_per_component)
    box = region_box(a, threshold, box_mode, box_margin) if use_box else None
    neg = np.zeros((0, 2))
    if n_negative > 0:
        within = None
        if box is not None and negatives_near_box is not None:
            bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
            within = box + np.array([-bw, -bh, bw, bh]) * float(negatives_near_box)
        neg = negative_points(a, n_negative, threshold=negative_threshold,
                              min_distance=min_distance, within=within)
        if len(neg) == 0 and within is not None:
            neg = negative_points(a, n_negative, threshold=negative_threshold,
                                  min_distance=min_distance)
    coords = np.concatenate([pos, neg], axis=0)
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    mask = mask_input_from_activation(a, frame, normalize=False, threshold=threshold,
                                      gain=mask_gain) if use_mask else None
    return SamPrompts(coords if len(coords) else None, labels if len(coords) else None,
                      box, mask, frame)


def instance_prompts(activation: np.ndarray, max_instances: int = 8, *, threshold: float = 0.5,
                     box_margin: float = 0.1, n_negative: int = 1, other_peaks: int = 2,
                     min_area: int = 4, use_mask: bool = False,
                     mask_gain: float = 20.0) -> List[SamPrompts]:
    """One prompt set per activated blob, strongest blob first, to enumerate instances
    (plural expressions, ordering among instances): the blob's peak as the positive point, a
    box around the blob (grown by ``box_margin`` × its size), the peaks of the nearest
    ``other_peaks`` other blobs plus ``n_negative`` low points around the box as negatives,
    and, with ``use_mask``, the activation restricted to the blob as the dense prompt.
    Blobs smaller than ``min_area`` pixels are skipped."""
    a = normalize_activation(activation)
    frame = SamFrame(a.shape[0], a.shape[1])
    labels, n = label_components(a >= threshold)
    if n == 0:
        return []
    inside = np.flatnonzero(labels.ravel())
    by_value = inside[np.argsort(-a.ravel()[inside], kind="stable")]
    blob_of = labels.ravel()[by_value]
    blob_ids, first = np.unique(blob_of, return_index=True)
    peak_flat = by_value[first]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    order = np.argsort(-a.ravel()[peak_flat], kind="stable")
    h, w = a.shape
    peaks = np.stack([peak_flat % w, peak_flat // w], axis=1).astype(np.float64)
    out: List[SamPrompts] = []
    for i in order:
        blob = int(blob_ids[i])
        if sizes[blob] < min_area:
            continue
        region = labels == blob
        box = mask_box(region)
        bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
        box = np.clip(box + np.array([-bw, -bh, bw, bh]) * float(box_margin), 0,
                      [w - 1, h - 1, w - 1, h - 1])
        pos = peaks[i][None]
        others = np.delete(peaks, i, axis=0)
        if len(others) and other_peaks > 0:
            dist = np.hypot(*(others - peaks[i]).T)
            others = others[np.argsort(dist)[:other_peaks]]
        else:
            others = np.zeros((0, 2))
        low = np.zeros((0, 2))
        if n_negative > 0:
            grown = box + np.array([-bw, -bh, bw, bh])
            low = negative_points(a, n_negative, within=grown)
        neg = np.concatenate([others, low], axis=0)
        coords = np.concatenate([pos, neg], axis=0)
        point_labels = np.concatenate([np.ones(1, np.int64), np.zeros(len(neg), np.int64)])
        mask = None
        if use_mask:
            mask = mask_input_from_activation(np.where(region, a, 0.0), frame, normalize=False,
                                              threshold=threshold, gain=mask_gain)
        out.append(SamPrompts(coords, point_labels, box, mask, frame))
        if len(out) >= max_instances:
            break
    return out
