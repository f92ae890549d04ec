"""What an evaluation returns: the OVSS and referring reports, JSON-safe dicts and text tables."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .metrics import REFER_METRIC_DEFINITIONS, gt_pixel_totals


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
        return gt_pixel_totals(self.confusion, self.unassigned)

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.confusion.sum(axis=0)      # the column sums, as ConfusionMatrix.pred_pixels

    def to_dict(self) -> Dict:
        return {
            "dataset": self.dataset, "split": self.split, "layout": self.layout,
            "source": self.source, "samples": self.samples, "classes": list(self.classes),
            "metrics": clean(self.metrics), "per_class_acc": clean(self.per_class_acc),
            "confusion_matrix": self.confusion.tolist(), "unassigned": self.unassigned.tolist(),
            "settings": clean(self.settings), "warnings": list(self.warnings),
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
            "samples": self.samples, "metrics": clean(self.metrics),
            "metric_definitions": dict(REFER_METRIC_DEFINITIONS), "protocol": clean(self.protocol),
            "pixel_confusion": self.pixel_confusion.tolist(), "warnings": list(self.warnings),
            "per_sample": clean(self.per_sample),
        }


def clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def format_number(value: Optional[float], width: int = 7) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.2f}"


def format_ovss_table(report: OvssReport) -> str:
    width = max([len("class")] + [len(c) for c in report.classes])
    lines = [f"{report.dataset} {report.split} ({report.layout} layout), {report.samples} samples, "
             f"{report.source}",
             f"{'class'.ljust(width)}  {'IoU':>7}  {'Acc':>7}"]
    for name in report.classes:
        lines.append(f"{name.ljust(width)}  {format_number(report.metrics['per_class'][name])}  "
                     f"{format_number(report.per_class_acc[name])}")
    m = report.metrics
    lines.append(f"mIoU {format_number(m['mIoU'], 0)}  mACC {format_number(m['mACC'], 0)}  "
                 f"aAcc {format_number(m['aAcc'], 0)}")
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
        "  ".join(format_number(report.metrics[k]) for k in keys),
    ] + [f"{name}: {text}" for name, text in REFER_METRIC_DEFINITIONS.items()])
