"""Score a method on a benchmark split, exactly as the papers do, and write the results.

Two sources of predictions:

* ``predict_fn``: a plain callable. OVSS: ``predict_fn(image_path) -> H x W array of class
  indices`` in the order of ``dataset.classes`` (any other value counts as "no class", a miss).
  Referring: ``predict_fn(image_path, expression) -> H x W mask`` (non-zero = target).
  Predictions must have the ground truth's size.
* ``predictions_dir``: masks saved by any other method. OVSS: files with the ground-truth file
  names (at the same relative path, or flat in the folder when names are unique) holding the
  same label values as the ground truth; they are decoded like the ground truth.
  Referring: ``<sample key>.png`` (or the ground-truth mask's name), non-zero = target.

Writers put the numbers in a JSON file in the exact form
``{"mIoU": %, "mACC": %, "aAcc": %, "per_class": {name: IoU %}}`` (referring: gIoU, cIoU, Pr@X),
a fuller results JSON, CSV tables and a confusion-matrix PNG per data set.
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .datasets import IGNORE_INDEX, OvssDataset, ReferDataset, binary_mask, describe_unexpected, read_array
from .errors import InputError
from .metrics import (REFER_METRIC_DEFINITIONS, ConfusionMatrix, ReferAccumulator, ovss_metrics,
                      per_class_accuracy)
from .progress import RunMonitor

PREDICTION_EXTS = (".png", ".tif", ".tiff", ".bmp", ".jpg")
DEFAULT_OUT_DIR = "drseg-eval"


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------

@dataclass
class OvssReport:
    dataset: str
    split: str
    layout: str
    source: str
    classes: List[str]
    samples: int
    metrics: Dict                        # {"mIoU", "mACC", "aAcc", "per_class"}
    per_class_acc: Dict[str, Optional[float]]
    confusion: np.ndarray                # ground truth rows x predicted columns, pixels
    unassigned: np.ndarray               # per ground-truth class: pixels predicted as no class
    warnings: List[str] = field(default_factory=list)
    settings: Dict = field(default_factory=dict)

    @property
    def gt_pixels(self) -> np.ndarray:
        return self.confusion.sum(axis=1) + self.unassigned

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.confusion.sum(axis=0)

    def to_dict(self) -> Dict:
        return {
            "dataset": self.dataset, "split": self.split, "layout": self.layout,
            "source": self.source, "samples": self.samples, "classes": list(self.classes),
            "metrics": _clean(self.metrics), "per_class_acc": _clean(self.per_class_acc),
            "confusion_matrix": self.confusion.tolist(), "unassigned": self.unassigned.tolist(),
            "settings": _clean(self.settings), "warnings": list(self.warnings),
        }


@dataclass
class ReferReport:
    dataset: str
    split: str
    source: str
    samples: int
    metrics: Dict                        # {"gIoU", "cIoU", "Pr@0.5", ..., "Pr@0.9"}
    per_sample: List[Dict]
    pixel_confusion: np.ndarray          # 2 x 2, rows ground truth (background, target)
    warnings: List[str] = field(default_factory=list)
    protocol: Dict = field(default_factory=dict)

    def to_dict(self) -> Dict:
        return {
            "dataset": self.dataset, "split": self.split, "source": self.source,
            "samples": self.samples, "metrics": _clean(self.metrics),
            "metric_definitions": dict(REFER_METRIC_DEFINITIONS), "protocol": _clean(self.protocol),
            "pixel_confusion": self.pixel_confusion.tolist(), "warnings": list(self.warnings),
            "per_sample": _clean(self.per_sample),
        }


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ------------------------------------------------------------------------------------------
# Evaluation loops
# ------------------------------------------------------------------------------------------

def engine_to_dataset_labels(class_map, background_index: int, num_classes: int) -> np.ndarray:
    """The engine's class raster (0 = not sure enough -> background, 1..K = the K prompt
    classes in order, 255 = no data) as the data set's class indices, when the engine was
    prompted with ``dataset.prompt`` and ``dataset.threshold``: k -> k - 1, 0 -> the data
    set's background index, 255 stays "no class"."""
    class_map = np.asarray(class_map)
    if not 0 <= background_index < num_classes:
        raise InputError(f"background index {background_index} is not a class index "
                         f"0..{num_classes - 1}")
    out = np.full(class_map.shape, IGNORE_INDEX, np.uint8)
    classes = (class_map >= 1) & (class_map <= num_classes)
    out[classes] = (class_map[classes] - 1).astype(np.uint8)
    out[class_map == 0] = background_index
    return out


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


def evaluate_ovss(dataset: OvssDataset, predict_fn: Optional[Callable] = None,
                  predictions_dir: Optional[Union[str, Path]] = None, limit: Optional[int] = None,
                  progress: Optional[Callable[[float, str], None]] = None,
                  cancelled: Optional[Callable[[], bool]] = None,
                  engine: Optional[Dict] = None) -> OvssReport:
    """Confusion-matrix mIoU / mACC / aAcc / per-class IoU over the split (or its first `limit`).

    The report carries the data set's pinned protocol and, when the engine ran, `engine`: the
    settings it actually used (they differ from the protocol only when asked to)."""
    if getattr(dataset, "task", None) != "ovss":
        raise InputError(f"{getattr(dataset, 'name', dataset)} is not an OVSS data set")
    folder = _check_sources(predict_fn, predictions_dir)
    samples = _limited(dataset.samples, limit)
    if not samples:
        raise InputError(f"{dataset.name} split '{dataset.split}' has no samples")
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


def evaluate_refer(dataset: ReferDataset, predict_fn: Optional[Callable] = None,
                   predictions_dir: Optional[Union[str, Path]] = None, limit: Optional[int] = None,
                   progress: Optional[Callable[[float, str], None]] = None,
                   cancelled: Optional[Callable[[], bool]] = None,
                   empty_iou: float = 0.0) -> ReferReport:
    """gIoU / cIoU / Pr@0.5..0.9 over the split (or its first `limit` samples)."""
    if getattr(dataset, "task", None) != "refer":
        raise InputError(f"{getattr(dataset, 'name', dataset)} is not a referring data set")
    folder = _check_sources(predict_fn, predictions_dir)
    samples = _limited(dataset.samples, limit)
    if not samples:
        raise InputError(f"{dataset.name} split '{dataset.split}' has no samples")
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


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

def _fmt(value: Optional[float], width: int = 7) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.2f}"


def format_ovss_table(report: OvssReport) -> str:
    width = max([len("class")] + [len(c) for c in report.classes])
    lines = [f"{report.dataset} {report.split} ({report.layout} layout), {report.samples} samples, "
             f"{report.source}",
             f"{'class'.ljust(width)}  {'IoU':>7}  {'Acc':>7}"]
    for name in report.classes:
        lines.append(f"{name.ljust(width)}  {_fmt(report.metrics['per_class'][name])}  "
                     f"{_fmt(report.per_class_acc[name])}")
    m = report.metrics
    lines.append(f"mIoU {_fmt(m['mIoU'], 0)}  mACC {_fmt(m['mACC'], 0)}  aAcc {_fmt(m['aAcc'], 0)}")
    lines.extend(protocol_lines(report.settings))
    return "\n".join(lines)


def protocol_lines(settings: Dict) -> List[str]:
    """The protocol in two or three lines under the table (the results JSON holds all of it)."""
    protocol = settings.get("protocol") or {}
    if not protocol:
        return []
    lines = [f"protocol: long side {protocol.get('long_side') or 'kept'}, windows "
             f"{protocol.get('window')}/{protocol.get('stride')} ({protocol.get('blend')} blend), "
             f"prob_thd {protocol.get('prob_thd')}, background index "
             f"{protocol.get('background_index')}"]
    engine = settings.get("engine") or {}
    changed = {k: v for k, v in engine.items() if k in protocol and protocol[k] != v}
    if changed:
        lines.append("engine deviated from it: " + ", ".join(f"{k} {v}" for k, v in changed.items()))
    if protocol.get("source"):
        lines.append(f"protocol source: {protocol['source']}")
    return lines


def format_refer_table(report: ReferReport) -> str:
    keys = list(report.metrics)
    return "\n".join([
        f"{report.dataset} {report.split}, {report.samples} samples, {report.source}",
        "  ".join(k.rjust(7) for k in keys),
        "  ".join(_fmt(report.metrics[k]) for k in keys),
    ] + [f"{name}: {text}" for name, text in REFER_METRIC_DEFINITIONS.items()])


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

def write_metrics_json(metrics: Dict, path: Union[str, Path]) -> str:
    """The metrics dict as is (percentages, undefined values as null)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_clean(metrics), handle, indent=2, allow_nan=False)
        handle.write("\n")
    return str(path)


def _csv_number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _file_stem(dataset: str, split: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{dataset}_{split}")


def write_ovss_csv(report: OvssReport, path: Union[str, Path]) -> str:
    gt = report.gt_pixels
    pred = report.pred_pixels
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "IoU", "Acc", "gt_pixels", "pred_pixels"])
        for i, name in enumerate(report.classes):
            writer.writerow([name, _csv_number(report.metrics["per_class"][name]),
                             _csv_number(report.per_class_acc[name]), int(gt[i]), int(pred[i])])
        writer.writerow(["mean", _csv_number(report.metrics["mIoU"]),
                         _csv_number(report.metrics["mACC"]), "", ""])
        writer.writerow(["overall", "", _csv_number(report.metrics["aAcc"]), int(gt.sum()),
                         int(pred.sum())])
    return str(path)


def write_confusion_csv(report: OvssReport, path: Union[str, Path]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ground truth \\ predicted"] + list(report.classes) + ["(no class)"])
        for i, name in enumerate(report.classes):
            writer.writerow([name] + [int(v) for v in report.confusion[i]] +
                            [int(report.unassigned[i])])
    return str(path)


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rows > 0, matrix / np.maximum(rows, 1), 0.0)


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except Exception:                   # any import problem: fall back to Pillow
        return False
    return True


def save_confusion_png(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str],
                       path: Union[str, Path], title: str = "",
                       use_matplotlib: Optional[bool] = None) -> str:
    """A heat map of the row-normalised confusion matrix (share of each ground-truth class)."""
    norm = _row_normalised(matrix)
    if use_matplotlib is None:
        use_matplotlib = _matplotlib_available()
    if use_matplotlib:
        _confusion_png_matplotlib(norm, row_names, col_names, path, title)
    else:
        image, _, _ = confusion_image_pillow(norm, row_names, col_names, title)
        image.save(path)
    return str(path)


def _confusion_png_matplotlib(norm, row_names, col_names, path, title) -> None:
    # the object API only: never touches pyplot's global state (QGIS runs its own GUI)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = norm.shape
    size = max(4.0, 0.45 * max(rows, cols) + 2.5)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(cols))
    ax.set_xticklabels(col_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows))
    ax.set_yticklabels(row_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if title:
        ax.set_title(title, fontsize=10)
    if max(rows, cols) <= 20:
        for r in range(rows):
            for c in range(cols):
                ax.text(c, r, f"{100 * norm[r, c]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[r, c] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of ground-truth pixels")
    fig.tight_layout()
    fig.savefig(str(path))


def heat_colour(value: float):
    """White (0) to dark blue (1), the Pillow heat map's colour scale."""
    v = min(max(float(value), 0.0), 1.0)
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    return tuple(int(round(x)) for x in low + (high - low) * v)


def confusion_image_pillow(norm: np.ndarray, row_names: Sequence[str], col_names: Sequence[str],
                           title: str = ""):
    """(image, (x0, y0) of the top-left cell, cell size) of a simple Pillow heat map."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = norm.shape
    cell = int(max(14, min(40, 800 // max(rows, cols, 1))))
    font = ImageFont.load_default()
    char_w = 7
    left = 10 + char_w * max([len(n) for n in row_names] + [4])
    top = 30 + char_w * max([len(n) for n in col_names] + [4])
    width = left + cols * cell + 20
    height = top + rows * cell + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((10, 8), title, fill="black", font=font)
    for r, name in enumerate(row_names):
        draw.text((10, top + r * cell + cell // 2 - 5), name, fill="black", font=font)
    for c, name in enumerate(col_names):       # column names written vertically
        label = Image.new("RGB", (char_w * max(len(name), 1) + 4, 12), "white")
        ImageDraw.Draw(label).text((2, 0), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (left + c * cell + (cell - label.width) // 2, top - label.height - 4))
    for r in range(rows):
        for c in range(cols):
            x, y = left + c * cell, top + r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=heat_colour(norm[r, c]),
                           outline=(200, 200, 200))
            if cell >= 28:
                draw.text((x + 4, y + cell // 2 - 5), f"{100 * norm[r, c]:.0f}",
                          fill="white" if norm[r, c] > 0.5 else "black", font=font)
    return image, (left, top), cell


def _out_paths(out_dir: Union[str, Path], dataset: str, split: str) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(dataset, split)
    return {"results": out / f"{stem}_results.json", "csv": out / f"{stem}.csv",
            "confusion_csv": out / f"{stem}_confusion.csv",
            "confusion_png": out / f"{stem}_confusion.png",
            "samples_csv": out / f"{stem}_samples.csv"}


def _write_results(report, out_dir, json_path):
    """What both kinds of report write: the metrics JSON (when asked for) and the full results."""
    paths = _out_paths(out_dir, report.dataset, report.split)
    written = {}
    if json_path:
        written["json"] = write_metrics_json(report.metrics, json_path)
    with open(paths["results"], "w", encoding="utf-8") as handle:
        json.dump(report.to_dict(), handle, indent=2, allow_nan=False)
        handle.write("\n")
    written["results"] = str(paths["results"])
    return paths, written


def write_ovss_outputs(report: OvssReport, out_dir: Union[str, Path],
                       json_path: Optional[Union[str, Path]] = None,
                       use_matplotlib: Optional[bool] = None) -> Dict[str, str]:
    """Results JSON, per-class CSV, confusion CSV and PNG in `out_dir`; metrics JSON at `json_path`."""
    paths, written = _write_results(report, out_dir, json_path)
    written["csv"] = write_ovss_csv(report, paths["csv"])
    written["confusion_csv"] = write_confusion_csv(report, paths["confusion_csv"])
    matrix = report.confusion
    cols = list(report.classes)
    if report.unassigned.any():
        matrix = np.concatenate([matrix, report.unassigned[:, None]], axis=1)
        cols.append("(no class)")
    written["confusion_png"] = save_confusion_png(
        matrix, report.classes, cols, paths["confusion_png"],
        f"{report.dataset} {report.split}: mIoU {_fmt(report.metrics['mIoU'], 0)}",
        use_matplotlib=use_matplotlib)
    return written


def write_refer_outputs(report: ReferReport, out_dir: Union[str, Path],
                        json_path: Optional[Union[str, Path]] = None,
                        use_matplotlib: Optional[bool] = None) -> Dict[str, str]:
    """Results JSON, metrics CSV, per-sample CSV and a target/background confusion PNG."""
    paths, written = _write_results(report, out_dir, json_path)
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "value"])
        for key, value in report.metrics.items():
            writer.writerow([key, _csv_number(value)])
        writer.writerow(["samples", report.samples])
    written["csv"] = str(paths["csv"])
    with open(paths["samples_csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "image", "expression", "intersection", "union", "IoU"])
        for row in report.per_sample:
            writer.writerow([row["key"], row["image"], row["expression"], row["intersection"],
                             row["union"], _csv_number(row["IoU"])])
    written["samples_csv"] = str(paths["samples_csv"])
    written["confusion_png"] = save_confusion_png(
        report.pixel_confusion, ["background", "target"], ["background", "target"],
        paths["confusion_png"], f"{report.dataset} {report.split}: pixels",
        use_matplotlib=use_matplotlib)
    return written
