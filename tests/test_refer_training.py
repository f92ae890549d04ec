"""Training the referring prompter: batches from each data format and from QGIS-style labels,
resume, cancel, the head file's safety checks."""
import json
import os

import numpy as np
import pytest
import rasterio
import torch
from osgeo import ogr, osr
from rasterio.transform import from_origin

from support.rasters import write_raster
from drseg.core.errors import InputError, RunCancelled
from drseg.core.refer.head import (HEAD_FORMAT, base_metadata, read_head, save_head)
from drseg.core.refer.learned import LearnedPrompter
from drseg.core.refer.prompter import PromptedSegmenter, PrompterConfig
from drseg.core.refer.synthetic import synthetic_set, tiny_clip, tiny_sam
from drseg.core.refer.train import TrainConfig, resume_paths, train_prompter
from drseg.core.refer.train_data import (TrainingSample, make_batch, samples_from_dataset,
                                         samples_from_labels)
from test_evaluation_datasets import _phrase_set, _rrsisd

SMALL = PrompterConfig(width=32, heads=2, lora_rank=2)


def small_models(seed=0):
    clip, tokenizer = tiny_clip(seed=seed)
    return clip, tokenizer, tiny_sam(64, prompt_dim=32, seed=seed)


def samples(count=4, seed=0):
    return [TrainingSample(s.expression, s.image, s.mask)
            for s in synthetic_set(count, seed=seed, size=32)]


# -- dataset-to-batch ----------------------------------------------------------------------------
def test_batches_from_rrsisd(tmp_path):
    _rrsisd(tmp_path)
    found = samples_from_dataset("RRSIS-D", tmp_path, "test")
    assert [s.expression for s in found] == ["The vehicle on the left", "A grey vehicle",
                                             "The small car"]
    image, mask = found[2].load()
    assert image.shape == (2, 3, 3) and mask.astype(int).tolist() == [[0, 0, 1], [0, 1, 0]]
    images, masks, texts = make_batch(found, 6)
    assert images.shape == (3, 3, 6, 6) and masks.shape == (3, 1, 6, 6)
    assert texts[2] == "The small car"
    # nearest-neighbour: each source pixel becomes a 2×2 block
    assert masks[2, 0].numpy().astype(int).tolist()[0] == [0, 0, 0, 0, 1, 1]
    assert masks[0, 0].sum() == pytest.approx(36 * 70 / 75, abs=3)


def test_batches_from_refsegrs_and_risbench(tmp_path):
    _phrase_set(tmp_path / "rs", "images", "masks", ["7", "12"],
                ["7 the red roof near the road", "12 vehicles"], split="train")
    found = samples_from_dataset("RefSegRS", tmp_path / "rs", "train")
    assert [s.expression for s in found] == ["the red roof near the road", "vehicles"]
    images, masks, _ = make_batch(found, 2 * 3)
    assert float(images.min()) == pytest.approx(50) and float(images.max()) == pytest.approx(50)
    # the first two pixels of the 2×3 mask's top row: rows 0-2, columns 0-3 of the 6×6 stretch
    expected = np.zeros((6, 6))
    expected[:3, :4] = 1
    assert masks[1, 0].numpy().tolist() == expected.tolist()
    _phrase_set(tmp_path / "rb", "img_rgb", "mask", ["00001", "00002"],
                ["00001.png a ship on the left", "00002.png the bridge"], split="train",
                ext=".png")
    found = samples_from_dataset("RISBench", tmp_path / "rb", "train")
    assert [s.load()[1].sum() for s in found] == [1, 2]


def _write_labels(path, polygons, epsg):
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("expression", ogr.OFTString))
    for wkt, text in polygons:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("expression", text)
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)
    ds = None
    return str(path)


def test_samples_from_labels_in_another_crs(tmp_path):
    # a 200×200 raster at 1 m in UTM 33N; a 20×10 m rectangle given in WGS 84
    image = np.zeros((3, 200, 200), np.uint8)
    image[0, 50:60, 100:120] = 255
    raster = write_raster(tmp_path / "r.tif", image, crs="EPSG:32633",
                          transform=from_origin(500000.0, 4100000.0, 1.0, 1.0))
    from rasterio.warp import transform

    xs, ys = transform("EPSG:32633", "EPSG:4326", [500100, 500120, 500120, 500100, 500100],
                       [4099950, 4099950, 4099940, 4099940, 4099950])
    ring = ", ".join(f"{x} {y}" for x, y in zip(xs, ys))
    labels = _write_labels(tmp_path / "l.gpkg", [(f"POLYGON(({ring}))", "the red roof"),
                                                  ("POLYGON((0 0, 0 0.0001, 0.0001 0, 0 0))", "")],
                           4326)
    found = samples_from_labels(raster, labels)
    assert len(found) == 1 and found[0].expression == "the red roof"
    crop, mask = found[0].load()
    assert mask.sum() == pytest.approx(200, abs=12)          # 20 × 10 px
    assert crop[mask, 0].mean() > 240 and crop[~mask, 0].mean() < 20   # on the red rectangle
    assert mask.shape[1] >= 60                                  # context around the object
    with pytest.raises(InputError, match="expression"):
        bad = _write_labels(tmp_path / "b.gpkg", [], 4326)
        ds = ogr.Open(bad, 1)
        ds.GetLayer(0).DeleteField(0)
        ds = None
        samples_from_labels(raster, bad)



def test_samples_from_labels_a_front_end_holds(tmp_path):
    # the polygons as a QGIS layer hands them over (core.adapt.data.LabelFeatures): the same
    # reader as the adapter's labels, so a feature without an expression is skipped
    from drseg.core.adapt.data import LabelFeatures

    image = np.zeros((3, 100, 100), np.uint8)
    image[1, 20:30, 40:50] = 255
    raster = write_raster(tmp_path / "r.tif", image, crs="EPSG:32633",
                          transform=from_origin(500000.0, 4100000.0, 1.0, 1.0))
    square = {"type": "Polygon", "coordinates": [[(500040, 4099980), (500050, 4099980),
                                                  (500050, 4099970), (500040, 4099970),
                                                  (500040, 4099980)]]}
    labels = LabelFeatures([square, square], ["the green field", " "], "EPSG:32633")
    found = samples_from_labels(raster, labels)
    assert [s.expression for s in found] == ["the green field"]
    crop, mask = found[0].load()
    assert mask.sum() == 100 and crop[mask, 1].min() == 255 and crop[~mask, 1].max() == 0
    with pytest.raises(InputError, match="expression"):
        samples_from_labels(raster, LabelFeatures([square], [""], "EPSG:32633"))


# -- training, resume, cancel, head --------------------------------------------------------------
def _train(tmp_path, name, epochs, resume=False, cancelled=None, seed=0, schedule="constant"):
    clip, tokenizer, sam = small_models(seed)
    base = base_metadata(clip, sam, "tiny-clip", "tiny-sam")
    torch.manual_seed(0)
    model = PromptedSegmenter(clip, tokenizer, sam, SMALL)
    out = str(tmp_path / name)
    result = train_prompter(model, samples(4), None, TrainConfig(epochs=epochs, batch_size=2,
                                                                   lr=1e-3, schedule=schedule),
                            out_path=out, base=base, resume=resume, cancelled=cancelled)
    return result, out


def test_resume_continues_exactly(tmp_path):
    straight, out_a = _train(tmp_path, "a.safetensors", 2)
    assert [r["epoch"] for r in straight.history] == [1, 2]
    assert all(r["gIoU"] is not None and r["cIoU"] is not None for r in straight.history)
    first, out_b = _train(tmp_path, "b.safetensors", 1)
    state = json.loads(open(resume_paths(out_b)[1]).read())
    assert state["epoch"] == 1 and len(state["history"]) == 1
    resumed, _ = _train(tmp_path, "b.safetensors", 2, resume=True)
    assert resumed.resumed_from == 1 and resumed.epochs_run == 1
    a, _ = read_head(out_a)
    b, _ = read_head(out_b)
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # a fresh start would differ: the optimizer state matters
    fresh, out_c = _train(tmp_path, "c.safetensors", 1)
    c, _ = read_head(out_c)
    assert any(not torch.allclose(a[k], c[k], atol=1e-5) for k in a)


def test_cosine_schedule_decays_to_zero_and_a_resumed_run_stays_on_its_curve(tmp_path):
    from drseg.core.refer.train import learning_rate

    cosine = TrainConfig(lr=2.0, schedule="cosine")
    assert [learning_rate(cosine, step, 8) for step in (0, 4, 8)] == pytest.approx([2.0, 1.0, 0.0])
    assert learning_rate(TrainConfig(lr=2.0), 8, 8) == 2.0
    with pytest.raises(InputError, match="schedule"):
        train_prompter(None, samples(1), None, TrainConfig(schedule="linear"), out_path="x")
    straight, out_a = _train(tmp_path, "a.safetensors", 2, schedule="cosine")
    def after_one_epoch():          # the first epoch's state is written
        return os.path.isfile(resume_paths(str(tmp_path / "b.safetensors"))[1])

    with pytest.raises(RunCancelled):
        _train(tmp_path, "b.safetensors", 2, cancelled=after_one_epoch, schedule="cosine")
    resumed, out_b = _train(tmp_path, "b.safetensors", 2, resume=True, schedule="cosine")
    assert resumed.resumed_from == 1
    a, _ = read_head(out_a)
    b, _ = read_head(out_b)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    constant, out_c = _train(tmp_path, "c.safetensors", 2)
    c, _ = read_head(out_c)
    assert any(not torch.allclose(a[k], c[k], atol=1e-5) for k in a)


def test_cancel_leaves_no_head_and_resume_needs_state(tmp_path):
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(RunCancelled):
        _train(tmp_path, "x.safetensors", 2, cancelled=cancelled)
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(InputError, match="Nothing to resume"):
        _train(tmp_path, "y.safetensors", 1, resume=True)


def test_head_is_safetensors_with_metadata_and_refuses_other_models(tmp_path):
    result, out = _train(tmp_path, "h.safetensors", 1)
    tensors, meta = read_head(out)
    assert meta["format"] == HEAD_FORMAT and meta["clip_model"] == "tiny-clip"
    config = json.loads(meta["config"])
    assert config["text_queries"] == 3 and config["prompt_tokens"] == 9 and config["lora_rank"] == 2
    assert any(k.startswith("lora.clip.") for k in tensors)
    assert any(k.startswith("lora.sam.") for k in tensors)
    assert any(k.startswith("prompter.") for k in tensors)
    assert json.loads(meta["training"])["epochs"] == 1
    clip, tokenizer, sam = small_models(0)
    loaded = LearnedPrompter.from_file(out, clip, tokenizer, sam)
    image = samples(1)[0].image
    prob = loaded.probabilities(loaded.encode(image), "the red square", image.shape[:2])
    assert prob.shape == image.shape[:2] and 0 <= prob.min() <= prob.max() <= 1
    # the base models are untouched (the head's deltas go into copies)
    assert base_metadata(clip, sam)["sam_digest"] == meta["sam_digest"]
    other_clip, _, other_sam = small_models(seed=1)
    with pytest.raises(InputError, match="trained on another SAM"):
        LearnedPrompter.from_file(out, clip, tokenizer, other_sam)
    with pytest.raises(InputError, match="trained on another CLIP"):
        LearnedPrompter.from_file(out, other_clip, tokenizer, sam)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="Cannot read"):
        LearnedPrompter.from_file(str(tmp_path / "bad.safetensors"), clip, tokenizer, sam)
    with pytest.raises(InputError, match="safetensors"):
        LearnedPrompter.from_file(str(tmp_path / "h.pt"), clip, tokenizer, sam)


def test_cli_train_referring_errors_are_one_line(tmp_path, capsys):
    from drseg.cli.app import main

    code = main(["train-referring", "--dataset", "RefSegRS", "--out",
                 str(tmp_path / "h.safetensors"), "--quiet"])
    assert code == 2 and "needs --root" in capsys.readouterr().err
    code = main(["train-referring", "--dataset", "labels", "--out",
                 str(tmp_path / "h.safetensors"), "--quiet"])
    assert code == 2 and "--raster and --labels" in capsys.readouterr().err
    code = main(["train-referring", "--dataset", "RefSegRS", "--root", str(tmp_path), "--out",
                 str(tmp_path / "h.pt"), "--quiet"])
    assert code == 2 and ".safetensors" in capsys.readouterr().err
    assert not (tmp_path / "h.safetensors").exists()


def test_cli_refer_prompter_refuses_a_bad_head(tmp_path, capsys, tiny_clip_config):
    from drseg.cli.app import main

    raster = write_raster(tmp_path / "r.tif", np.full((3, 32, 32), 100, np.uint8))
    bad = tmp_path / "head.safetensors"
    bad.write_bytes(b"\x00" * 16)
    code = main(["refer", raster, "-e", "the pond", "--out", str(tmp_path / "o.gpkg"),
                 "--prompter", str(bad), "--sam-weights", "random", "--clip-model",
                 tiny_clip_config, "--clip-weights", "random", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot read prompter head" in err, err
    assert not (tmp_path / "o.gpkg").exists()


# -- the synthetic referring set -----------------------------------------------------------------
def test_synthetic_set_is_lazy_repeatable_and_its_expressions_describe_the_mask():
    from drseg.core.refer.parse import parse_expression
    from drseg.core.refer.synthetic import COLOURS, POSITIONS, SIZES, SyntheticSet

    train, again, held = SyntheticSet(10 ** 6, seed=1, size=64), SyntheticSet(10 ** 6, seed=1, size=64), \
        SyntheticSet(50, seed=2, size=64)
    assert len(train) == 10 ** 6                       # nothing drawn until read
    first = train[123456]
    assert np.array_equal(first.image, again[123456].image) and first.expression == again[123456].expression
    seen = {s.image.tobytes() for s in train[:50]}
    assert not any(s.image.tobytes() in seen for s in held)   # held-out layouts are new
    for sample in train[:40]:
        words = sample.expression.split()
        size_word, colour, shape = words[1:4]
        position = " ".join(words[5:])
        parsed = parse_expression(sample.expression)    # the training-free path reads it too
        assert parsed.colours == (colour,) and parsed.attributes == (size_word, shape)
        assert parsed.position == position.split()[-1]
        mask = sample.mask
        assert mask.any() and sample.image.shape == (64, 64, 3)
        # the mask is the named object: its colour, its size class, its third of the image
        assert np.abs(sample.image[mask].mean(axis=0) - COLOURS[colour]).max() < 25   # colours differ by > 100
        side = SIZES[size_word] * 64
        area = side ** 2 if shape == "rectangular" else np.pi * side ** 2 / 4
        assert mask.sum() == pytest.approx(area, rel=0.35)
        axis, (lo, hi) = POSITIONS[position]
        centre = np.argwhere(mask).mean(axis=0)[::-1][axis] + 0.5      # x or y, pixel units
        assert lo * 64 <= centre < hi * 64
