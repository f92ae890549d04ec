"""End-to-end evaluation on tiny synthetic benchmarks with predictions of known confusion.

Every number asserted (and every number the command prints) is worked out by hand below.
"""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drseg.cli import main as drseg_main
from test_datasets import tif  # the same GeoTIFF writer
from drseg.core.datasets import get_dataset
from drseg.core.errors import InputError
from drseg.core.evaluate import (confusion_image_pillow, engine_to_dataset_labels,
                                 evaluate_ovss, evaluate_refer, format_ovss_table, heat_colour, write_ovss_outputs,
                                 write_refer_outputs, _row_normalised)
from drseg.core.evaluate_cli import set_predictor_factory

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


@pytest.fixture
def no_factory():
    set_predictor_factory(None)
    yield
    set_predictor_factory(None)


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


def test_engine_class_map_to_dataset_indices():
    # engine: 0 = below prob_thd, k = k-th prompt class (1-based), 255 = no data
    engine = np.array([[0, 1, 6], [7, 255, 9]])
    # Potsdam-like: 6 classes, background (clutter) is class 5
    assert engine_to_dataset_labels(engine, 5, 6).tolist() == [[5, 0, 5], [X, X, X]]
    # LoveDA-like: 7 classes, background is class 0
    assert engine_to_dataset_labels(engine, 0, 7).tolist() == [[0, 0, 5], [6, X, X]]
    with pytest.raises(InputError, match="background index 7"):
        engine_to_dataset_labels(engine, 7, 7)


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
    from drseg.core.evaluate import save_confusion_png
    path = save_confusion_png(matrix, ["bg", "barren", "water"], ["bg", "barren", "water"],
                              tmp_path / "p.png", title="t",
                              use_matplotlib=False)
    with Image.open(path) as saved:
        assert saved.size == image.size


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


# ----------------------------------------------------------------------------------------
# Command line (through drseg's own main)
# ----------------------------------------------------------------------------------------

def test_cli_ovss_with_predictions(loveda, tmp_path, capsys, no_factory):
    root, preds = loveda
    out_json = tmp_path / "results" / "loveda.json"
    code = drseg_main(["evaluate", "ovss", "--dataset", "LoveDA", "--root", str(root),
                       "--predictions", str(preds), "--json", str(out_json), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0] == f"LoveDA val (converted layout), 2 samples, predictions: {preds}"
    assert "building        50.00   100.00" in lines
    assert "water          100.00   100.00" in lines
    assert "mIoU 56.75  mACC 69.44  aAcc 66.67" in lines
    metrics = json.loads(out_json.read_text())
    assert set(metrics) == {"mIoU", "mACC", "aAcc", "per_class"}
    assert metrics["aAcc"] == pytest.approx(EXPECTED_AACC)
    for name in ("LoveDA_val_results.json", "LoveDA_val.csv", "LoveDA_val_confusion.png",
                 "LoveDA_val_confusion.csv"):
        assert (out_json.parent / name).is_file()
        assert f"wrote {out_json.parent / name}" in lines


def test_cli_needs_engine_or_predictions(loveda, tmp_path, capsys, no_factory, monkeypatch):
    import drseg.cli
    monkeypatch.setattr(drseg.cli, "register_evaluation_engine", lambda: None)  # a build without engine
    root, _ = loveda
    code = drseg_main(["evaluate", "ovss", "--dataset", "loveda", "--root", str(root),
                       "--out", str(tmp_path / "o")])
    assert code == 2
    assert "needs the segmentation engine" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_uses_registered_engine(loveda, tmp_path, capsys, no_factory):
    root, _ = loveda
    decoded = {"a.png": np.array([[0, 1, 1, 1], [2, 0, 4, 3]]),
               "b.png": np.array([[5, 6, 6, X], [0, 0, 1, 0]])}
    received = {}

    def factory(task, dataset, args):
        received.update(task=task, prompt=dataset.prompt, thd=dataset.threshold,
                        bg=dataset.background_index, limit=args.limit)
        return lambda image_path: decoded[Path(image_path).name]

    set_predictor_factory(factory)
    code = drseg_main(["evaluate", "ovss", "--dataset", "LoveDA", "--root", str(root),
                       "--limit", "1", "--out", str(tmp_path / "o"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert received == {"task": "ovss", "thd": 0.3, "bg": 0, "limit": 1,
                        "prompt": "background; building,roof,house; road; water; barren; "
                                  "forest; agricultural"}
    assert "1 samples, engine" in out.splitlines()[0]
    assert "mIoU 62.50" in out                  # image a only, as in test_limit...


def test_cli_refer_table(refsegrs, tmp_path, capsys, no_factory):
    root, preds = refsegrs
    code = drseg_main(["evaluate", "refer", "--dataset", "RefSegRS", "--root", str(root),
                       "--predictions", str(preds), "--out", str(tmp_path / "o"), "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[1].split() == ["gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert lines[2].split() == ["43.33", "50.00", "66.67", "33.33", "33.33", "33.33", "0.00"]
    assert (tmp_path / "o" / "RefSegRS_test.csv").is_file()


def test_cli_wrong_task_for_dataset(refsegrs, capsys, no_factory):
    root, preds = refsegrs
    code = drseg_main(["evaluate", "ovss", "--dataset", "RefSegRS", "--root", str(root),
                       "--predictions", str(preds)])
    assert code == 2
    assert "use 'evaluate refer'" in capsys.readouterr().err
