"""Confusion matrices as PNG heat maps: matplotlib's object API when it is installed, else
Pillow."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np


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
