"""core/evaluation/predictors.py: the engine as a benchmark predictor, run through
`python -m drseg evaluate ...` with model stand-ins of known answer."""
import json

import numpy as np
import pytest
from PIL import Image

from support.oracles import ColourOracleScorer
from drseg.core.errors import InputError
from drseg.core.evaluation.predictors import engine_to_dataset_labels

X = 255
LOVEDA_COLOURS = {"background": (215, 205, 150), "building": (200, 60, 50), "road": (245, 245, 245),
                  "water": (30, 90, 200), "barren": (150, 110, 70), "forest": (40, 140, 50),
                  "agricultural": (230, 220, 40)}


def test_engine_class_map_to_dataset_indices():
    # engine: 0 = below prob_thd, k = k-th prompt class (1-based), 255 = no data
    engine = np.array([[0, 1, 6], [7, 255, 9]])
    # Potsdam-like: 6 classes, background (clutter) is class 5
    assert engine_to_dataset_labels(engine, 5, 6).tolist() == [[5, 0, 5], [X, X, X]]
    # LoveDA-like: 7 classes, background is class 0
    assert engine_to_dataset_labels(engine, 0, 7).tolist() == [[0, 0, 5], [6, X, X]]
    with pytest.raises(InputError, match="background index 7"):
        engine_to_dataset_labels(engine, 7, 7)


def test_evaluate_ovss_runs_the_engine_on_a_loveda_layout(tmp_path, monkeypatch, capsys):
    from drseg.cli import main
    from drseg.core.models import shared

    root = tmp_path / "LoveDA"
    images, masks = root / "Val" / "Urban" / "images_png", root / "Val" / "Urban" / "masks_png"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    names = list(LOVEDA_COLOURS)
    for i in range(2):
        labels = np.zeros((256, 256), np.uint8)          # 0..6 = the 7 LoveDA classes
        labels[:, 128:] = 2 + i                          # road, then water
        labels[40:100, 20:100] = 1                       # a building
        image = np.zeros((256, 256, 3), np.uint8)
        for k, name in enumerate(names):
            image[labels == k] = LOVEDA_COLOURS[name]
        Image.fromarray(image).save(images / f"{i}.png")
        released = labels + 1
        released[:8] = 0                                 # a no-data strip, ignored
        Image.fromarray(released).save(masks / f"{i}.png")
    scorer = ColourOracleScorer(LOVEDA_COLOURS)
    monkeypatch.setattr(shared, "dense_clip_scorer", lambda *a, **k: scorer)
    out = tmp_path / "result.json"
    code = main(["evaluate", "ovss", "--dataset", "loveda", "--root", str(root), "--json", str(out),
                 "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    assert scorer.calls > 0
    for name in ("background", "building", "road", "water"):
        assert result["per_class"][name] >= 90.0, name
    assert result["aAcc"] >= 95.0


def test_evaluate_refer_runs_the_referring_engine(tmp_path, monkeypatch):
    """`evaluate refer` without --predictions: SAM and CLIP stand-ins of known answer (those of
    the referring pipeline tests) select the right pond, so every score is 100 %."""
    import rasterio
    from drseg.cli import main
    from drseg.core.models import shared
    from drseg.core.refer import localize
    from support.oracles import ColourLocalizer, ColourPredictor
    from support.rasters import pond_scene

    root = tmp_path / "RefSegRS"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image = pond_scene()
    north, south = np.zeros(image.shape[:2], np.uint8), np.zeros(image.shape[:2], np.uint8)
    north[30:80, 40:100] = 255
    south[160:220, 120:200] = 255
    cases = {"1": ("the pond north of the road", north), "2": ("the largest pond", south)}
    for key, (_, mask) in cases.items():
        with rasterio.open(root / "images" / f"{key}.tif", "w", driver="GTiff", width=240, height=240,
                           count=3, dtype="uint8") as dst:
            dst.write(image.transpose(2, 0, 1))
        with rasterio.open(root / "masks" / f"{key}.tif", "w", driver="GTiff", width=240, height=240,
                           count=1, dtype="uint8") as dst:
            dst.write(mask[None])
    (root / "output_phrase_test.txt").write_text(
        "".join(f"{key} {text}\n" for key, (text, _) in cases.items()))
    predictor = ColourPredictor()
    monkeypatch.setattr(shared, "sam_model", lambda *a, **k: predictor)
    monkeypatch.setattr(localize, "Localizer", lambda clip: ColourLocalizer())
    monkeypatch.setattr(shared, "dense_clip_scorer", lambda *a, **k: object())
    out = tmp_path / "refer.json"
    code = main(["evaluate", "refer", "--dataset", "RefSegRS", "--root", str(root), "--json", str(out),
                 "--quiet"])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["gIoU"] == 100.0 and metrics["cIoU"] == 100.0 and metrics["Pr@0.9"] == 100.0
    assert predictor.set_calls == 2  # one SAM embedding per image
