"""core/evaluation/loops.py: scoring tiny synthetic benchmarks with predictions of known confusion.

Every number asserted is worked out by hand below; test_evaluation_writers.py and
test_cli_evaluate.py use the same benchmarks.
"""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_evaluation_datasets import tif  # the same GeoTIFF writer
from drseg.core.errors import InputError
from drseg.core.evaluation.datasets import get_dataset
from drseg.core.evaluation.loops import evaluate_ovss, evaluate_refer
from drseg.core.evaluation.reports import format_ovss_table
from drseg.core.evaluation.writers import write_refer_outputs

X = 255


def png(path, array):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


# LoveDA, converted layout: raw 0 = no-data, raw k = class k-1.
# classes: 0 background, 1 building, 2 road, 3 water, 4 barren, 5 forest, 6 agricultural
GT_A = [[1, 1, 2, 2], [3, 3, 0, 4]]      # -> [[0,0,1,1],[2,2,X,3]]
PRED_A = [[1, 2, 2, 2], [3, 1, 5, 4]]    # -> [[0,1,1,1],[2,0,4,3]]
GT_B = [[6, 6, 7, 7], [1, 1, 1, 1]]      # -> [[5,5,6,6],[0,0,0,0]]
PRED_B = [[6, 7, 7, 0], [1, 1, 2, 1]]    # -> [[5,6,6,X],[0,0,1,0]]   raw 0 = no class: a miss
# decoded (gt, pred) pairs: A: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (X,4: skipped) (3,3)
#                           B: (5,5) (5,6) (6,6) (6,none) (0,0) (0,0) (0,1) (0,0)
# confusion rows (ground truth):    TP  gt  pred  union  IoU        Acc
#   background 4x0, 2x1             4   6   5     7      4/7        4/6
#   building   2x1                  2   2   4     4      1/2        1
#   road       1x2, 1x0             1   2   1     2      1/2        1/2
#   water      1x3                  1   1   1     1      1          1
#   barren     -                    0   0   0     0      NaN        NaN
#   forest     1x5, 1x6             1   2   1     2      1/2        1/2
#   agricult.  1x6, 1 unassigned    1   2   2     3      1/3        1/2
EXPECTED_IOU = {"background": 400 / 7, "building": 50.0, "road": 50.0, "water": 100.0,
                "barren": None, "forest": 50.0, "agricultural": 100 / 3}
EXPECTED_ACC = {"background": 200 / 3, "building": 100.0, "road": 50.0, "water": 100.0,
                "barren": None, "forest": 50.0, "agricultural": 50.0}
EXPECTED_MIOU = 100 * (4 / 7 + 0.5 + 0.5 + 1 + 0.5 + 1 / 3) / 6        # 56.746
EXPECTED_MACC = 100 * (2 / 3 + 1 + 0.5 + 1 + 0.5 + 0.5) / 6            # 69.444
EXPECTED_AACC = 100 * 10 / 15                                          # 66.667


@pytest.fixture
def loveda(tmp_path):
    root = tmp_path / "LoveDA"
    png(root / "img_dir/val/a.png", np.full((2, 4, 3), 90))
    png(root / "img_dir/val/b.png", np.full((2, 4, 3), 160))
    png(root / "ann_dir/val/a.png", GT_A)
    png(root / "ann_dir/val/b.png", GT_B)
    preds = tmp_path / "preds"
    png(preds / "a.png", PRED_A)
    png(preds / "b.png", PRED_B)
    return root, preds


def check_ovss_metrics(report):
    m = report.metrics
    assert set(m) == {"mIoU", "mACC", "aAcc", "per_class"}
    for name, value in EXPECTED_IOU.items():
        assert m["per_class"][name] == (None if value is None else pytest.approx(value))
        expected_acc = EXPECTED_ACC[name]
        assert report.per_class_acc[name] == (None if expected_acc is None
                                              else pytest.approx(expected_acc))
    assert m["mIoU"] == pytest.approx(EXPECTED_MIOU)
    assert m["mACC"] == pytest.approx(EXPECTED_MACC)
    assert m["aAcc"] == pytest.approx(EXPECTED_AACC)


def test_ovss_from_prediction_files(loveda):
    root, preds = loveda
    ds = get_dataset("LoveDA", root)
    calls = []
    report = evaluate_ovss(ds, predictions_dir=preds, progress=lambda f, m: calls.append(f))
    check_ovss_metrics(report)
    assert report.samples == 2 and report.source == f"predictions: {preds}"
    assert report.confusion[0].tolist() == [4, 2, 0, 0, 0, 0, 0]
    assert report.unassigned.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert report.gt_pixels.sum() == 15 and report.pred_pixels.sum() == 14
    assert calls == [0.5, 1.0]
    table = format_ovss_table(report)
    assert "background      57.14    66.67" in table
    assert "barren              -        -" in table
    assert "agricultural    33.33    50.00" in table
    lines = table.splitlines()
    assert lines[lines.index("mIoU 56.75  mACC 69.44  aAcc 66.67") + 1] == (
        "protocol: long side 448, windows 224/112 (mean blend), prob_thd 0.3, background index 0")
    assert lines[-1].startswith("protocol source: SegEarth-OV")


def test_ovss_from_predict_function(loveda):
    root, _ = loveda
    ds = get_dataset("LoveDA", root)
    decoded = {"a.png": np.array([[0, 1, 1, 1], [2, 0, 4, 3]]),
               "b.png": np.array([[5, 6, 6, X], [0, 0, 1, 0]])}   # class indices; 255 = none
    seen = []

    def predict(image_path):
        seen.append(Path(image_path).name)
        return decoded[Path(image_path).name]

    report = evaluate_ovss(ds, predict_fn=predict)
    check_ovss_metrics(report)
    assert seen == ["a.png", "b.png"] and report.source == "engine"
    assert any("1 predicted pixels hold no class index" in w for w in report.warnings)


def test_limit_scores_only_the_first_samples(loveda):
    root, preds = loveda
    report = evaluate_ovss(get_dataset("LoveDA", root), predictions_dir=preds, limit=1)
    # image a alone: background 1/(2+2-1), building 2/(2+3-2), road 1/2, water 1 -> mean 62.5
    assert report.samples == 1
    assert report.metrics["per_class"]["background"] == pytest.approx(100 / 3)
    assert report.metrics["per_class"]["building"] == pytest.approx(200 / 3)
    assert report.metrics["mIoU"] == pytest.approx(62.5)
    with pytest.raises(InputError, match="positive number"):
        evaluate_ovss(get_dataset("LoveDA", root), predictions_dir=preds, limit=0)


def test_prediction_problems_are_input_errors(loveda, tmp_path):
    root, preds = loveda
    ds = get_dataset("LoveDA", root)
    with pytest.raises(InputError, match="exactly one source"):
        evaluate_ovss(ds)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_ovss(ds, predictions_dir=tmp_path / "missing")
    (preds / "b.png").unlink()
    with pytest.raises(InputError, match=r"No prediction for ann_dir/val/b: looked for "
                                         r".*preds/ann_dir/val/b\.png and .*preds/b\.png"):
        evaluate_ovss(ds, predictions_dir=preds)
    png(preds / "b.png", np.ones((3, 4)))
    with pytest.raises(InputError, match="is 4x3 px but its ground truth is 4x2 px"):
        evaluate_ovss(ds, predictions_dir=preds)
    with pytest.raises(InputError, match="non-integer"):
        evaluate_ovss(ds, predict_fn=lambda p: np.full((2, 4), 0.5))


def test_repeated_file_names_need_relative_paths(tmp_path):
    root = tmp_path / "UAVid"
    label = np.zeros((2, 2, 3), np.uint8)
    label[0, 0] = (128, 0, 0)                         # one building pixel, the rest clutter
    for seq in ("seq1", "seq2"):
        png(root / f"uavid_val/{seq}/Images/000000.png", np.full((2, 2, 3), 50))
        png(root / f"uavid_val/{seq}/Labels/000000.png", label)
    ds = get_dataset("UAVid", root, "val")
    flat = tmp_path / "flat"
    png(flat / "000000.png", label)
    with pytest.raises(InputError, match="must keep the ground truth's relative paths"):
        evaluate_ovss(ds, predictions_dir=flat)
    nested = tmp_path / "nested"
    for seq in ("seq1", "seq2"):
        png(nested / f"uavid_val/{seq}/Labels/000000.png", label)
    report = evaluate_ovss(ds, predictions_dir=nested)
    assert report.metrics["per_class"]["building"] == 100.0
    assert report.metrics["per_class"]["background"] == 100.0
    assert report.metrics["mIoU"] == 100.0      # the 5 classes absent everywhere are left out


# ----------------------------------------------------------------------------------------
# Referring
# ----------------------------------------------------------------------------------------

REFER_CASES = {
    # id: (ground truth, prediction)             I  U  IoU
    "7": ([[1, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]]),     # 1  2  0.5
    "12": ([[1, 1, 1], [1, 0, 0]], [[1, 1, 1], [1, 1, 0]]),    # 4  5  0.8
    "20": ([[0, 0, 0], [0, 1, 1]], [[1, 0, 0], [0, 0, 0]]),    # 0  3  0
}
# gIoU = 1.3/3 = 43.33, cIoU = 5/10 = 50, Pr@0.5 = 2/3, Pr@0.6..0.8 = 1/3, Pr@0.9 = 0
EXPECTED_REFER = {"gIoU": 130 / 3, "cIoU": 50.0, "Pr@0.5": 200 / 3, "Pr@0.6": 100 / 3,
                  "Pr@0.7": 100 / 3, "Pr@0.8": 100 / 3, "Pr@0.9": 0.0}


@pytest.fixture
def refsegrs(tmp_path):
    root = tmp_path / "RefSegRS"
    lines = []
    for key, (gt, _) in REFER_CASES.items():
        tif(root / f"images/{key}.tif", np.full((2, 3, 3), 70))
        tif(root / f"masks/{key}.tif", np.array(gt) * 255)
        lines.append(f"{key} the object number {key}")
    (root / "output_phrase_test.txt").write_text("\n".join(lines) + "\n")
    preds = tmp_path / "refer_preds"
    for key, (_, pred) in REFER_CASES.items():
        png(preds / f"{key}.png", np.array(pred) * 255)
    return root, preds


def test_refer_from_prediction_files(refsegrs, tmp_path):
    root, preds = refsegrs
    report = evaluate_refer(get_dataset("RefSegRS", root), predictions_dir=preds)
    assert list(report.metrics) == list(EXPECTED_REFER)
    for key, value in EXPECTED_REFER.items():
        assert report.metrics[key] == pytest.approx(value)
    assert [(r["key"], r["intersection"], r["union"]) for r in report.per_sample] == \
        [("7", 1, 2), ("12", 4, 5), ("20", 0, 3)]
    assert report.pixel_confusion.tolist() == [[8, 2], [3, 5]]
    written = write_refer_outputs(report, tmp_path / "out", json_path=tmp_path / "r.json")
    metrics = json.loads((tmp_path / "r.json").read_text())
    assert list(metrics) == list(EXPECTED_REFER)
    assert metrics["gIoU"] == pytest.approx(130 / 3)
    samples = list(csv.reader(open(written["samples_csv"])))
    assert samples[2][3:] == ["4", "5", "0.8000"]
    assert Path(written["confusion_png"]).is_file()


def test_refer_from_predict_function(refsegrs):
    root, _ = refsegrs
    ds = get_dataset("RefSegRS", root)
    asked = []

    def predict(image_path, expression):
        asked.append(expression)
        key = Path(image_path).stem
        return np.array(REFER_CASES[key][1], bool)

    report = evaluate_refer(ds, predict_fn=predict)
    assert asked == ["the object number 7", "the object number 12", "the object number 20"]
    assert report.metrics["cIoU"] == pytest.approx(50.0)
    assert report.metrics["gIoU"] == pytest.approx(130 / 3)


def test_refer_missing_prediction(refsegrs, tmp_path):
    root, preds = refsegrs
    (preds / "12.png").unlink()
    with pytest.raises(InputError, match=r"No prediction for sample 12 \('the object number 12'\)"):
        evaluate_refer(get_dataset("RefSegRS", root), predictions_dir=preds)
