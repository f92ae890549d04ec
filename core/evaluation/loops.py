"""Score a method on a benchmark split, exactly as the papers do.

Two sources of predictions:

* ``predict_fn``: a plain callable. OVSS: ``predict_fn(image_path) -> H x W array of class
  indices`` in the order of ``dataset.classes`` (any other value counts as "no class", a miss).
  Referring: ``predict_fn(image_path, expression) -> H x W mask`` (non-zero = target).
  Predictions must have the ground truth's size.
* ``predictions_dir``: masks saved by any other method. OVSS: files with the ground-truth file
  names (at the same relative path, or flat in the folder when names are unique) holding the
  same label values as the ground truth; they are decoded like the ground truth.
  Referring: ``<sample key>.png`` (or the ground-truth mask's name), non-zero = target.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..errors import InputError
from ..progress import RunMonitor
from .datasets import (IGNORE_INDEX, OvssDataset, ReferDataset, binary_mask, describe_unexpected,
                       read_array)
from .metrics import ConfusionMatrix, ReferAccumulator, ovss_metrics, per_class_accuracy
from .predictors import OvssPredictor, ReferPredictor
from .reports import OvssReport, ReferReport

PREDICTION_EXTS = (".png", ".tif", ".tiff", ".bmp", ".jpg")


def _check_sources(predict_fn, predictions_dir) -> Optional[Path]:
    if (predict_fn is None) == (predictions_dir is None):
        raise InputError("Give exactly one source of predictions: a predict function (the "
                         "engine) or a folder of saved predictions")
    if predict_fn is not None:
        if not callable(predict_fn):
            raise InputError("predict_fn must be callable")
        return None
    folder = Path(predictions_dir).expanduser()
    if not folder.is_dir():
        raise InputError(f"Predictions folder {folder} does not exist or is not a folder")
    return folder


def _limited(samples: Sequence, limit: Optional[int]) -> Sequence:
    if limit is None:
        return samples
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"--limit must be a positive number of samples, got {limit!r}")
    return samples[:limit]


def _prepare(dataset, task: str, predict_fn, predictions_dir, limit):
    """(folder of saved predictions or None, the samples to score), after checking the inputs."""
    if getattr(dataset, "task", None) != task:
        kind = "an OVSS" if task == "ovss" else "a referring"
        raise InputError(f"{getattr(dataset, 'name', dataset)} is not {kind} data set")
    folder = _check_sources(predict_fn, predictions_dir)
    samples = _limited(dataset.samples, limit)
    if not samples:
        raise InputError(f"{dataset.name} split '{dataset.split}' has no samples")
    return folder, samples


def _as_class_map(pred, what: str) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim == 3 and 1 in (pred.shape[0], pred.shape[-1]):
        pred = pred.reshape(pred.shape[1:] if pred.shape[0] == 1 else pred.shape[:-1])
    if pred.ndim != 2:
        raise InputError(f"The {what} has shape {pred.shape}; expected one band of class indices")
    if pred.dtype == bool:
        return pred.astype(np.uint8)
    if pred.dtype.kind == "f":
        if not np.all(np.isfinite(pred)) or not np.all(pred == np.round(pred)):
            raise InputError(f"The {what} holds non-integer values; expected class indices")
        return pred.astype(np.int64)
    if pred.dtype.kind not in "iu":
        raise InputError(f"The {what} has dtype {pred.dtype}; expected integer class indices")
    return pred


def _find_file(candidates: Sequence[Path]) -> Optional[Path]:
    for path in candidates:
        if path.is_file():
            return path
    return None


def _ovss_prediction(folder: Path, sample, ambiguous_stems: set) -> Path:
    rel = Path(sample.label_relpath)
    candidates = [folder / rel]
    flat_ok = rel.stem not in ambiguous_stems
    if flat_ok:
        candidates.append(folder / rel.name)
    for ext in PREDICTION_EXTS:
        candidates.append(folder / rel.with_suffix(ext))
        if flat_ok:
            candidates.append(folder / (rel.stem + ext))
    found = _find_file(candidates)
    if found is None:
        hint = "" if flat_ok else (" (file names repeat across folders in this split, so the "
                                   "predictions must keep the ground truth's relative paths)")
        raise InputError(f"No prediction for {sample.key}: looked for {candidates[0]}"
                         + (f" and {candidates[1]}" if flat_ok else "") + hint)
    return found


def evaluate_ovss(dataset: OvssDataset, predict_fn: Optional[OvssPredictor] = None,
                  predictions_dir: Optional[Union[str, Path]] = None, limit: Optional[int] = None,
                  progress: Optional[Callable[[float, str], None]] = None,
                  cancelled: Optional[Callable[[], bool]] = None,
                  engine: Optional[Dict] = None) -> OvssReport:
    """Confusion-matrix mIoU / mACC / aAcc / per-class IoU over the split (or its first `limit`).

    The report carries the data set's pinned protocol and, when the engine ran, `engine`: the
    settings it actually used (they differ from the protocol only when asked to)."""
    folder, samples = _prepare(dataset, "ovss", predict_fn, predictions_dir, limit)
    ambiguous = {stem for stem, n in Counter(Path(s.label_relpath).stem
                                             for s in dataset.samples).items() if n > 1}
    monitor = RunMonitor(progress, cancelled)
    confusion = ConfusionMatrix(dataset.num_classes, IGNORE_INDEX)
    gt_stats: Dict = {}
    pred_stats: Dict = {}
    total = len(samples)
    for index, sample in enumerate(samples):
        monitor.check()
        gt = sample.load_label(gt_stats)
        if folder is not None:
            path = _ovss_prediction(folder, sample, ambiguous)
            pred = dataset.load_label_file(path, pred_stats)
            what = f"prediction {path}"
        else:
            what = f"prediction for {sample.image_path}"
            pred = _as_class_map(predict_fn(sample.image_path), what)
        confusion.update(gt, pred, what=what)
        monitor.report((index + 1) / total, f"{index + 1}/{total} {Path(sample.image_path).name}")

    warnings_ = list(getattr(dataset, "warnings", []))
    hint = f" If the files use another encoding, pick --layout or edit {dataset.json_path}."
    for line in describe_unexpected(gt_stats):
        warnings_.append(f"ground truth: {line}; they were not scored." + hint)
    for line in describe_unexpected(pred_stats):
        warnings_.append(f"predictions: {line}; those pixels count as misses.")
    if confusion.unknown_gt:
        warnings_.append(f"{confusion.unknown_gt} ground-truth pixels hold no class index and "
                         "were skipped")
    if folder is None and confusion.unassigned.sum():
        warnings_.append(f"{int(confusion.unassigned.sum())} predicted pixels hold no class "
                         "index; they count as misses")
    return OvssReport(
        dataset=dataset.name, split=dataset.split, layout=dataset.layout,
        source=f"predictions: {folder}" if folder is not None else "engine",
        classes=list(dataset.classes), samples=total,
        metrics=ovss_metrics(confusion, dataset.classes),
        per_class_acc=per_class_accuracy(confusion, dataset.classes),
        confusion=confusion.matrix.copy(), unassigned=confusion.unassigned.copy(),
        warnings=warnings_,
        settings={"background_index": dataset.background_index, "prob_thd": dataset.threshold,
                  "ignore_index": IGNORE_INDEX, "class_texts": list(dataset.class_texts),
                  "protocol": dict(getattr(dataset, "protocol", {}) or {}),
                  **({"engine": dict(engine)} if engine else {})})


def _refer_prediction(folder: Path, sample) -> Path:
    exts = list(PREDICTION_EXTS)
    if sample.mask_path:
        gt_ext = Path(sample.mask_path).suffix
        exts = [gt_ext] + [e for e in exts if e != gt_ext.lower()]
    candidates = [folder / (sample.key + ext) for ext in exts]
    found = _find_file(candidates)
    if found is None:
        raise InputError(f"No prediction for sample {sample.key} ('{sample.expression}'): "
                         f"looked for {candidates[0]} (or another of {', '.join(exts)})")
    return found


def evaluate_refer(dataset: ReferDataset, predict_fn: Optional[ReferPredictor] = None,
                   predictions_dir: Optional[Union[str, Path]] = None, limit: Optional[int] = None,
                   progress: Optional[Callable[[float, str], None]] = None,
                   cancelled: Optional[Callable[[], bool]] = None,
                   empty_iou: float = 0.0) -> ReferReport:
    """gIoU / cIoU / Pr@0.5..0.9 over the split (or its first `limit` samples)."""
    folder, samples = _prepare(dataset, "refer", predict_fn, predictions_dir, limit)
    monitor = RunMonitor(progress, cancelled)
    acc = ReferAccumulator(empty_iou=empty_iou)
    rows: List[Dict] = []
    total = len(samples)
    empty_gt = 0
    for index, sample in enumerate(samples):
        monitor.check()
        gt = sample.load_mask()
        if folder is not None:
            path = _refer_prediction(folder, sample)
            pred = binary_mask(read_array(path))
            what = f"prediction {path}"
        else:
            what = f"prediction for {sample.key} ('{sample.expression}')"
            pred = np.asarray(predict_fn(sample.image_path, sample.expression))
            if pred.ndim == 3 and 1 in (pred.shape[0], pred.shape[-1]):
                pred = pred.reshape(pred.shape[1:] if pred.shape[0] == 1 else pred.shape[:-1])
            pred = pred != 0
        iou = acc.update(gt, pred, what=what)
        empty_gt += int(not gt.any())
        rows.append({"key": sample.key, "image": sample.image_path, "expression": sample.expression,
                     "intersection": acc.intersections[-1], "union": acc.unions[-1], "IoU": iou})
        monitor.report((index + 1) / total, f"{index + 1}/{total} {sample.key}")
    warnings_ = list(getattr(dataset, "warnings", []))
    if empty_gt:
        warnings_.append(f"{empty_gt} samples have an empty ground-truth mask")
    return ReferReport(dataset=dataset.name, split=dataset.split,
                       source=f"predictions: {folder}" if folder is not None else "engine",
                       samples=total, metrics=acc.compute(), per_sample=rows,
                       pixel_confusion=acc.pixel_confusion.copy(), warnings=warnings_,
                       protocol=dict(getattr(dataset, "protocol", {}) or {}))
