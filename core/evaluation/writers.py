"""Evaluation files: the metrics JSON in the exact form
``{"mIoU": %, "mACC": %, "aAcc": %, "per_class": {name: IoU %}}`` (referring: gIoU, cIoU, Pr@X),
a fuller results JSON, CSV tables and a confusion-matrix PNG per data set."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .rendering import save_confusion_png
from .reports import OvssReport, ReferReport, clean, format_number

DEFAULT_OUT_DIR = "drseg-eval"


def write_metrics_json(metrics: Dict, path: Union[str, Path]) -> str:
    """The metrics dict as is (percentages, undefined values as null)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(clean(metrics), handle, indent=2, allow_nan=False)
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
        f"{report.dataset} {report.split}: mIoU {format_number(report.metrics['mIoU'], 0)}",
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
