"""core/evaluation/writers.py and rendering.py: the files an OVSS evaluation writes, and the heat
map, for the hand-worked benchmark of test_evaluation_loops.py."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_evaluation_loops import EXPECTED_MIOU, loveda  # noqa: F401 (fixture)
from drseg.core.evaluation.datasets import get_dataset
from drseg.core.evaluation.loops import evaluate_ovss
from drseg.core.evaluation.rendering import (_row_normalised, confusion_image_pillow, heat_colour,
                                             save_confusion_png)
from drseg.core.evaluation.writers import write_ovss_outputs


def test_ovss_output_files(loveda, tmp_path):
    root, preds = loveda
    report = evaluate_ovss(get_dataset("LoveDA", root), predictions_dir=preds)
    out = tmp_path / "out"
    written = write_ovss_outputs(report, out, json_path=tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"mIoU", "mACC", "aAcc", "per_class"}
    assert metrics["per_class"]["barren"] is None
    assert metrics["mIoU"] == pytest.approx(EXPECTED_MIOU)
    full = json.loads(Path(written["results"]).read_text())
    assert full["dataset"] == "LoveDA" and full["split"] == "val" and full["samples"] == 2
    assert full["confusion_matrix"][5] == [0, 0, 0, 0, 0, 1, 1]      # forest: 1x5, 1x6
    assert full["confusion_matrix"][6] == [0, 0, 0, 0, 0, 0, 1]      # agricultural: 1x6
    assert full["unassigned"] == [0, 0, 0, 0, 0, 0, 1]
    assert full["settings"]["prob_thd"] == 0.3
    rows = list(csv.reader(open(written["csv"])))
    assert rows[0] == ["class", "IoU", "Acc", "gt_pixels", "pred_pixels"]
    assert rows[1] == ["background", "57.1429", "66.6667", "6", "5"]
    assert rows[5] == ["barren", "", "", "0", "0"]
    assert rows[-2] == ["mean", "56.7460", "69.4444", "", ""]
    assert rows[-1] == ["overall", "", "66.6667", "15", "14"]
    confusion = list(csv.reader(open(written["confusion_csv"])))
    assert confusion[0][-1] == "(no class)"
    assert confusion[7] == ["agricultural", "0", "0", "0", "0", "0", "0", "1", "1"]
    with Image.open(written["confusion_png"]) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
    assert Path(written["confusion_png"]).name == "LoveDA_val_confusion.png"


def test_pillow_heat_map_colours(tmp_path):
    # row-normalised: background row [4, 2] / 6 -> 2/3, 1/3; water row 1.0; barren row empty -> 0
    matrix = np.array([[4, 2, 0], [0, 0, 0], [0, 0, 3]])
    norm = _row_normalised(matrix)
    assert norm[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert norm[1].tolist() == [0.0, 0.0, 0.0]
    image, (x0, y0), cell = confusion_image_pillow(norm, ["bg", "barren", "water"],
                                                   ["bg", "barren", "water"], "t")
    pixel = lambda r, c: image.getpixel((x0 + c * cell + 2, y0 + r * cell + 2))
    assert heat_colour(1.0) == (8, 48, 107) and heat_colour(0.0) == (255, 255, 255)
    assert pixel(2, 2) == (8, 48, 107)
    assert pixel(1, 1) == (255, 255, 255)
    # 1/3 of the way from white to (8, 48, 107): 255 - 247/3, 255 - 207/3, 255 - 148/3
    assert pixel(0, 1) == (173, 186, 206)
    # the writer's fallback path produces a PNG as well
    path = save_confusion_png(matrix, ["bg", "barren", "water"], ["bg", "barren", "water"],
                              tmp_path / "p.png", title="t",
                              use_matplotlib=False)
    with Image.open(path) as saved:
        assert saved.size == image.size
