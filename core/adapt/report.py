"""The adaptation report: a JSON file and a small PNG bar chart of held-out per-class IoU before
and after (matplotlib's object API when installed, else Pillow)."""
from __future__ import annotations

import json
from typing import Dict, Optional, Sequence

from ..evaluation.rendering import _matplotlib_available


def report_paths(adapter_path: str):
    stem = adapter_path[: -len(".safetensors")] if adapter_path.endswith(".safetensors") else adapter_path
    return f"{stem}.report.json", f"{stem}.iou.png"


def write_report(report: Dict, json_path: str, png_path: Optional[str]) -> None:
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    if png_path:
        names = list(report["after"]["per_class"])
        save_iou_chart([report["before"]["per_class"].get(n) for n in names],
                       [report["after"]["per_class"].get(n) for n in names], names, png_path,
                       f"held-out IoU, level {report['level']}: mIoU {report['before']['mIoU']:.1f}"
                       f" -> {report['after']['mIoU']:.1f}")


def save_iou_chart(before: Sequence[Optional[float]], after: Sequence[Optional[float]],
                   names: Sequence[str], path: str, title: str = "") -> str:
    """Grouped bars: per class IoU (%) before (grey) and after (blue); None is drawn as 0."""
    before = [v or 0.0 for v in before]
    after = [v or 0.0 for v in after]
    if _matplotlib_available():
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(4.0, 0.7 * len(names) + 2), 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], before, 0.4, label="before", color="#999999")
        ax.bar([x + 0.2 for x in xs], after, 0.4, label="after", color="#2166ac")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU %")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(str(path))
        return str(path)
    from PIL import Image, ImageDraw

    bar, gap, height = 14, 12, 160
    image = Image.new("RGB", (40 + len(names) * (2 * bar + gap), height + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    for i, name in enumerate(names):
        x = 30 + i * (2 * bar + gap)
        for j, (value, colour) in enumerate(((before[i], (153, 153, 153)), (after[i], (33, 102, 172)))):
            top = 20 + height - int(height * value / 100)
            draw.rectangle([x + j * bar, top, x + (j + 1) * bar - 2, 20 + height], fill=colour)
        draw.text((x, height + 24), name[:6], fill="black")
    image.save(path)
    return str(path)
