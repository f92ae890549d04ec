"""`python -m drseg evaluate ...` (cli/evaluate.py) through drseg's own main, on the hand-worked
benchmarks of test_evaluation_loops.py."""
import json
from pathlib import Path

import numpy as np
import pytest

from test_evaluation_loops import EXPECTED_AACC, X, loveda, refsegrs  # noqa: F401 (fixtures)
from drseg.cli import main as drseg_main


def test_cli_ovss_with_predictions(loveda, tmp_path, capsys):
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


def test_cli_needs_engine_or_predictions(loveda, tmp_path, capsys):
    root, _ = loveda
    code = drseg_main(["evaluate", "ovss", "--dataset", "loveda", "--root", str(root),
                       "--out", str(tmp_path / "o")], predictor_factory=None)  # no engine given
    assert code == 2
    assert "needs the segmentation engine" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_uses_the_predictor_factory_it_is_given(loveda, tmp_path, capsys):
    root, _ = loveda
    decoded = {"a.png": np.array([[0, 1, 1, 1], [2, 0, 4, 3]]),
               "b.png": np.array([[5, 6, 6, X], [0, 0, 1, 0]])}
    received = {}

    def factory(task, dataset, settings):
        received.update(task=task, prompt=dataset.prompt, thd=dataset.threshold,
                        bg=dataset.background_index, long_side=settings.long_side,
                        clip=(settings.clip_model, settings.clip_weights, settings.device))
        return lambda image_path: decoded[Path(image_path).name]

    code = drseg_main(["evaluate", "ovss", "--dataset", "LoveDA", "--root", str(root),
                       "--limit", "1", "--out", str(tmp_path / "o"), "--quiet", "--long-side", "0",
                       "--clip-weights", "w.pt", "--device", "cpu"], predictor_factory=factory)
    out = capsys.readouterr().out
    assert code == 0
    assert received == {"task": "ovss", "thd": 0.3, "bg": 0, "long_side": 0,
                        "clip": ("ViT-B-16", "w.pt", "cpu"),
                        "prompt": "background; building,roof,house; road; water; barren; "
                                  "forest; agricultural"}
    assert "1 samples, engine" in out.splitlines()[0]
    assert "mIoU 62.50" in out                  # image a only, as in test_limit...


def test_cli_refer_table(refsegrs, tmp_path, capsys):
    root, preds = refsegrs
    code = drseg_main(["evaluate", "refer", "--dataset", "RefSegRS", "--root", str(root),
                       "--predictions", str(preds), "--out", str(tmp_path / "o"), "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[1].split() == ["gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert lines[2].split() == ["43.33", "50.00", "66.67", "33.33", "33.33", "33.33", "0.00"]
    assert (tmp_path / "o" / "RefSegRS_test.csv").is_file()


def test_cli_wrong_task_for_dataset(refsegrs, capsys):
    root, preds = refsegrs
    code = drseg_main(["evaluate", "ovss", "--dataset", "RefSegRS", "--root", str(root),
                       "--predictions", str(preds)])
    assert code == 2
    assert "use 'evaluate refer'" in capsys.readouterr().err
