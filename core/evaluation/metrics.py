"""Scores as papers report them: OVSS by confusion matrix, referring segmentation by mask IoU.

OVSS (the mmseg protocol the training-free papers use): one confusion matrix over the whole split,
ground-truth pixels equal to the ignore index skipped. Per class
``IoU = TP / (GT area + predicted area - TP)`` and ``Acc = TP / GT area``. A class with an empty
union has IoU NaN and a class absent from the ground truth has Acc NaN; NaNs are left out of the
means (a class predicted but absent from the ground truth keeps IoU 0 and so lowers mIoU).
A predicted value that is not a class index (e.g. 255) is a miss for the ground-truth class.

RES (the LAVT/RMSIN protocol): per sample ``IoU = I / U`` (0 when both masks are empty),
gIoU = mean of per-sample IoU, cIoU = sum(I) / sum(U) over the split, Pr@X = share of samples
with IoU >= X.

Results are plain dicts of percentages; a value that is undefined (NaN) is ``None``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError

IGNORE_INDEX = 255  # ground-truth value of a pixel that is not scored (mmseg's)
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Papers disagree on which name is which, so every referring report states both definitions.
REFER_METRIC_DEFINITIONS = {
    "gIoU": "mean over samples of the per-sample IoU = I / U (0 when both masks are empty)",
    "cIoU": "cumulative intersection / cumulative union: sum of I over the split / sum of U",
    "Pr@X": "share of samples whose IoU is at least X",
}
_CHUNK = 1 << 22  # pixels per bincount pass, so a 6000x6000 tile never needs a 288 MB index array


def percent(value: float) -> Optional[float]:
    """A share as a percentage; NaN (undefined) as None."""
    value = float(value)
    return None if math.isnan(value) else 100.0 * value


def nanmean(values: np.ndarray) -> float:
    """Mean of the defined values (NaN: undefined, left out); NaN when none is defined."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _same_shape(gt: np.ndarray, pred: np.ndarray, what: str) -> None:
    if gt.shape == pred.shape:
        return
    if gt.ndim == 2 and pred.ndim == 2:
        raise InputError(f"The {what} is {pred.shape[1]}x{pred.shape[0]} px but its ground truth is "
                         f"{gt.shape[1]}x{gt.shape[0]} px; a prediction must have the size of its "
                         "ground truth")
    raise InputError(f"The {what} has shape {pred.shape} but its ground truth has shape {gt.shape}; "
                     "a prediction must be a single-band array of the ground truth's size")


def gt_pixel_totals(matrix: np.ndarray, unassigned: np.ndarray) -> np.ndarray:
    """Ground-truth pixels per class: its row of the matrix plus those predicted as no class."""
    return matrix.sum(axis=1) + unassigned


class ConfusionMatrix:
    """Accumulates a (ground truth x prediction) pixel count matrix over many images."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise InputError(f"A confusion matrix needs at least one class, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        # ground-truth pixels of each class whose prediction is no class at all
        self.unassigned = np.zeros(self.num_classes, np.int64)
        # ground-truth pixels that are neither a class nor the ignore index (skipped, reported)
        self.unknown_gt = 0
        self.images = 0

    def update(self, gt, pred, what: str = "prediction") -> None:
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        _same_shape(gt, pred, what)
        gt = gt.reshape(-1)
        pred = pred.reshape(-1)
        n = self.num_classes
        for start in range(0, gt.size, _CHUNK):
            g = gt[start:start + _CHUNK].astype(np.int64)
            p = pred[start:start + _CHUNK].astype(np.int64)
            valid = (g >= 0) & (g < n)
            self.unknown_gt += int(np.count_nonzero(~valid & (g != self.ignore_index)))
            p_ok = (p >= 0) & (p < n)
            both = valid & p_ok
            self.matrix += np.bincount(g[both] * n + p[both], minlength=n * n).reshape(n, n)
            self.unassigned += np.bincount(g[valid & ~p_ok], minlength=n)
        self.images += 1

    def merge(self, other: "ConfusionMatrix") -> None:
        if other.num_classes != self.num_classes:
            raise InputError("Cannot merge confusion matrices of different class counts")
        self.matrix += other.matrix
        self.unassigned += other.unassigned
        self.unknown_gt += other.unknown_gt
        self.images += other.images

    # per-class quantities ------------------------------------------------------------------
    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix).copy()

    @property
    def gt_pixels(self) -> np.ndarray:
        return gt_pixel_totals(self.matrix, self.unassigned)

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        tp = self.true_positives.astype(np.float64)
        union = self.gt_pixels + self.pred_pixels - self.true_positives
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def accuracy(self) -> np.ndarray:
        tp = self.true_positives.astype(np.float64)
        gt = self.gt_pixels
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)

    def compute(self, class_names: Optional[Sequence[str]] = None) -> Dict:
        """`{"mIoU": %, "mACC": %, "aAcc": %, "per_class": {name: IoU %}}`."""
        return ovss_metrics(self, class_names)


def _class_names(names: Optional[Sequence[str]], n: int) -> List[str]:
    if names is None:
        return [str(i) for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise InputError(f"{len(names)} class names were given for {n} classes")
    if len(set(names)) != len(names):
        raise InputError(f"Class names must be unique, got {names}")
    return names


def ovss_metrics(confusion: ConfusionMatrix, class_names: Optional[Sequence[str]] = None) -> Dict:
    names = _class_names(class_names, confusion.num_classes)
    iou = confusion.iou()
    acc = confusion.accuracy()
    total_gt = int(confusion.gt_pixels.sum())
    a_acc = confusion.true_positives.sum() / total_gt if total_gt else float("nan")
    return {
        "mIoU": percent(nanmean(iou)),
        "mACC": percent(nanmean(acc)),
        "aAcc": percent(a_acc),
        "per_class": {name: percent(v) for name, v in zip(names, iou)},
    }


def per_class_accuracy(confusion: ConfusionMatrix,
                       class_names: Optional[Sequence[str]] = None) -> Dict[str, Optional[float]]:
    names = _class_names(class_names, confusion.num_classes)
    return {name: percent(v) for name, v in zip(names, confusion.accuracy())}


# ------------------------------------------------------------------------------------------
# Referring segmentation
# ------------------------------------------------------------------------------------------

def mask_intersection_union(gt, pred, what: str = "predicted mask"):
    """(I, U) pixel counts of two masks (anything non-zero is foreground)."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    _same_shape(gt, pred, what)
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    return int(np.count_nonzero(gt & pred)), int(np.count_nonzero(gt | pred))


def sample_iou(intersection: int, union: int, empty_iou: float = 0.0) -> float:
    return intersection / union if union > 0 else float(empty_iou)


class ReferAccumulator:
    """Per-sample IoU and the cumulative I and U over a split."""

    def __init__(self, thresholds: Sequence[float] = PRECISION_THRESHOLDS, empty_iou: float = 0.0):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.empty_iou = float(empty_iou)
        self.intersections: List[int] = []
        self.unions: List[int] = []
        self.ious: List[float] = []
        # pixel confusion of background (0) and target (1), ground truth rows
        self.pixel_confusion = np.zeros((2, 2), np.int64)

    def update(self, gt, pred, what: str = "predicted mask") -> float:
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        inter, union = mask_intersection_union(gt, pred, what)
        gt_fg = int(np.count_nonzero(gt))
        pred_fg = int(np.count_nonzero(pred))
        total = int(gt.size)
        self.pixel_confusion += np.array(
            [[total - union, pred_fg - inter], [gt_fg - inter, inter]], np.int64)
        return self.add(inter, union)

    def add(self, intersection: int, union: int) -> float:
        if intersection < 0 or union < intersection:
            raise InputError(f"Invalid intersection/union counts {intersection}/{union}")
        iou = sample_iou(intersection, union, self.empty_iou)
        self.intersections.append(int(intersection))
        self.unions.append(int(union))
        self.ious.append(iou)
        return iou

    @property
    def samples(self) -> int:
        return len(self.ious)

    def compute(self) -> Dict:
        """`{"gIoU": %, "cIoU": %, "Pr@0.5": %, ..., "Pr@0.9": %}`."""
        return refer_metrics(self.ious, self.intersections, self.unions, self.thresholds)


def _threshold_key(t: float) -> str:
    return f"Pr@{t:g}"


def refer_metrics(ious: Sequence[float], intersections: Sequence[int], unions: Sequence[int],
                  thresholds: Sequence[float] = PRECISION_THRESHOLDS) -> Dict:
    ious_arr = np.asarray(list(ious), np.float64)
    n = ious_arr.size
    total_u = int(sum(unions))
    result = {
        "gIoU": percent(ious_arr.mean()) if n else None,
        "cIoU": percent(sum(intersections) / total_u) if total_u else None,
    }
    for t in thresholds:
        # a tiny tolerance so IoU = 7/10 counts at 0.7 whatever the float rounding
        result[_threshold_key(t)] = percent(np.mean(ious_arr >= t - 1e-12)) if n else None
    return result
