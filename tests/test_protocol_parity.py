"""`evaluate` follows the benchmark protocol (DESIGN.md section 8) exactly.

The yardstick is benchmarks/research_baseline.protocol_probabilities: the protocol written out
plainly (OpenCV's resize loops, the dense CLIP forward on open_clip's modules, mmseg's slide
inference with a count map, logits resized back before the softmax). On identical tiny-CLIP
random weights the evaluate path's class probabilities must match it to 1e-4, for an image
smaller than a window, non-square ones, and ones resized to the 448 long side. The other tests
pin each point of the protocol separately with an oracle whose answer is known.
"""
import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from support.rasters import write_raster
from support.tiny_models import load_tiny_clip
from test_research_baseline import load_baseline
from drseg.core.array_segment import segment_array_probabilities
from drseg.core.classes import flatten_queries, parse_classes
from drseg.core.dense_clip import DenseClip, interpolate_positional_embedding
from drseg.core.sliding import SlidingWindowSegmenter, centred_pad

CLASSES = "building,roof; road; water,river,lake; tree"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tokenizer, path = load_tiny_clip(tmp_path_factory.mktemp("clip"), seed=3)
    clip = DenseClip(model, tokenizer, torch.device("cpu"), templates=["a photo of a {}.", "{}"])
    queries, owner = flatten_queries(parse_classes(CLASSES))
    clip.set_queries(queries)
    return clip, owner, str(path)


def textured_image(height, width, seed):
    """Smooth colour fields plus noise: neighbouring pixels differ, as in real tiles."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(height, width),
                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    noisy = field + rng.normal(0, 25, field.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


MEASURED = {}


@pytest.mark.parametrize("case,height,width,long_side", [
    ("smaller than a window, kept at its size", 150, 200, 0),
    ("square, upscaled to 448", 300, 300, 448),
    ("non-square, resized to 448", 330, 190, 448),
    ("larger than 448, downscaled", 600, 520, 448),
    ("elongated: short side under a window after the resize", 700, 190, 448),
    ("exact halving (OpenCV's area path)", 896, 672, 448),
])
def test_evaluate_path_matches_the_protocol_yardstick(tiny, case, height, width, long_side):
    clip, owner, _ = tiny
    baseline = load_baseline()
    image = textured_image(height, width, seed=height + width)
    got = segment_array_probabilities(image, CLASSES, clip, threshold=0.3,
                                      long_side=long_side or None)
    expected, labels = baseline.protocol_probabilities(image, clip.model, clip.text_features,
                                                       owner, long_side=long_side or None,
                                                       threshold=0.3)
    assert got.probabilities.shape == expected.shape == (4, height, width)
    difference = float(np.abs(got.probabilities - expected).max())
    MEASURED[case] = difference
    print(f"\n{case}: {height}x{width}, max abs difference of class probabilities {difference:.2e}")
    assert difference <= TOLERANCE
    # Labels agree wherever the top two classes are not within the tolerance of each other.
    top2 = np.sort(expected, axis=0)[-2:]
    decided = (top2[1] - top2[0] > 2 * TOLERANCE) & (np.abs(top2[1] - 0.3) > 2 * TOLERANCE)
    assert (got.labels[decided] == labels[decided]).all()


# -- 1. blending -------------------------------------------------------------------------------

class PositionScorer:
    """Logits that depend on where the window lies (the mean pixel value of the crop's first
    row encodes it), so overlapping windows disagree and the blend decides the result."""

    logit_scale = 10.0
    patch_size = 16

    def set_queries(self, queries):
        self.queries = list(queries)

    def score_windows(self, images):
        b, _, h, w = images.shape
        rng = [np.random.default_rng(int(img[0, 0, :].astype(np.int64).sum()) + 100000 * int(img[1, 0, 0]))
               for img in images]
        return np.stack([r.normal(0, 1, (len(self.queries), -(-h // 16), -(-w // 16)))
                         for r in rng]).astype(np.float32)


def test_mean_blend_is_the_count_map_average():
    from drseg.core.array_segment import ArrayReader

    height, width = 300, 410
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = (np.arange(width) % 251)[None, :]
    image[:, :, 1] = (np.arange(height) % 241)[:, None]
    scorer = PositionScorer()
    scorer.set_queries(["a", "b", "c"])
    runs = {}
    for blend in ("mean", "smooth"):
        segmenter = SlidingWindowSegmenter(ArrayReader(image), scorer, [0, 1, 2], blend=blend,
                                           block=128, keep_logits=True)
        logits = np.zeros((3, height, width), np.float32)
        for block in segmenter:
            w = block.window
            logits[:, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] = block.logits
        runs[blend] = logits
    # The count map, by hand: every window's logits resized to 224², summed, divided by coverage.
    total = np.zeros((3, height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    for y in (0, 76):
        for x in (0, 112, 186):
            window = np.ascontiguousarray(image[y:y + 224, x:x + 224].transpose(2, 0, 1))[None]
            tokens = torch.from_numpy(scorer.score_windows(window))
            total[:, y:y + 224, x:x + 224] += F.interpolate(tokens, size=(224, 224), mode="bilinear",
                                                            align_corners=False)[0].numpy()
            count[y:y + 224, x:x + 224] += 1
    assert np.abs(runs["mean"] - total / count).max() < 1e-5
    assert np.abs(runs["smooth"] - total / count).max() > 1e-2  # the default blend differs


# -- 2. resize back: logits, then the softmax ---------------------------------------------------

class StepScorer:
    """Query 0 is +2 on the left half of the tokens and -2 on the right; query 1 is 0."""

    logit_scale = 5.0
    patch_size = 16

    def set_queries(self, queries):
        self.queries = list(queries)

    def score_windows(self, images):
        b, _, h, w = images.shape
        logits = np.zeros((b, 2, h // 16, w // 16), np.float32)
        logits[:, 0, :, : w // 32] = 2.0
        logits[:, 0, :, w // 32:] = -2.0
        return logits


def test_logits_are_resized_back_before_the_softmax():
    image = np.zeros((448, 448, 3), np.uint8)    # works at 224²: one window
    got = segment_array_probabilities(image, "a; b", StepScorer(), long_side=224)
    tokens = torch.from_numpy(StepScorer().score_windows(np.zeros((1, 3, 224, 224), np.uint8)))
    window = F.interpolate(tokens, size=(224, 224), mode="bilinear", align_corners=False)
    back = F.interpolate(window, size=(448, 448), mode="bilinear", align_corners=False)[0]
    expected = torch.softmax(5.0 * back, dim=0).numpy()
    wrong = F.interpolate(torch.softmax(5.0 * window, dim=1), size=(448, 448), mode="bilinear",
                          align_corners=False)[0].numpy()
    assert np.abs(got.probabilities - expected).max() < 1e-6
    assert np.abs(expected - wrong).max() > 1e-2  # the order matters on this step


# -- 3. input resize: OpenCV's arithmetic ---------------------------------------------------------

class RecordingScorer(StepScorer):
    def __init__(self):
        self.seen = []

    def score_windows(self, images):
        self.seen.append(images.copy())
        return super().score_windows(images)


def test_evaluate_path_resizes_the_input_as_opencv_does():
    baseline = load_baseline()
    image = textured_image(333, 250, seed=5)
    scorer = RecordingScorer()
    segment_array_probabilities(image, "a; b", scorer, long_side=448)
    resized = baseline.opencv_resize_linear(image, *baseline.mmcv_rescale_size(333, 250, 448))
    assert resized.shape == (448, 336, 3)
    first = scorer.seen[0][0]
    assert np.array_equal(first, resized[:224, :224].transpose(2, 0, 1))
    # torch's float bilinear rounded (what evaluate did before) is off by one in many places
    torch_way = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                              size=(448, 336), mode="bilinear", align_corners=False)
    torch_way = torch_way[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert (torch_way != resized).mean() > 0.01


# -- 4. images smaller than a window ---------------------------------------------------------------

def test_a_small_crop_is_padded_centred_after_normalisation(tiny):
    clip = tiny[0]
    crop = np.full((1, 3, 150, 200), 255, np.uint8)
    seen = []
    real = clip.dense_features

    def spy(pixels, vanilla=False):
        seen.append(pixels.clone())
        return real(pixels, vanilla)

    clip.dense_features = spy
    try:
        logits = clip.score_windows(crop)
    finally:
        del clip.dense_features
    pixels = seen[0]
    assert centred_pad(150, 16) == (5, 5) and centred_pad(200, 16) == (4, 4)
    assert pixels.shape == (1, 3, 160, 208)
    assert logits.shape[-2:] == (10, 13)
    inside = pixels[:, :, 5:155, 4:204]
    white = (255 - torch.tensor([122.771, 116.746, 104.094])) / torch.tensor([68.501, 66.632, 70.323])
    assert torch.allclose(inside, white.view(1, 3, 1, 1).expand_as(inside))
    outside = pixels.clone()
    outside[:, :, 5:155, 4:204] = 0
    assert (outside == 0).all()   # the pad is the mean colour, zero after normalisation


def test_positional_embedding_is_interpolated_with_the_reference_scale_factor(tiny):
    pos = tiny[0].model.visual.positional_embedding.detach()
    got = interpolate_positional_embedding(pos, 13, 10)
    grid = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(13.1 / 14, 10.1 / 14), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(130, -1)
    assert torch.allclose(got[1:], expected, atol=1e-6) and torch.equal(got[0], pos[0])
    by_size = F.interpolate(grid, size=(13, 10), mode="bicubic",
                            align_corners=False).permute(0, 2, 3, 1).reshape(130, -1)
    assert (by_size - expected).abs().max() > 1e-3       # what size= gave: visibly different
    assert torch.equal(interpolate_positional_embedding(pos, 14, 14), pos)


def test_segment_blend_mean_writes_the_protocols_probabilities(tiny, tmp_path):
    """`segment --blend mean --probabilities-out` on a raster smaller than a window: the product
    gives the protocol's probabilities at native size, one named float32 band per class."""
    from drseg.cli import main
    from drseg.core.models import cache as model_cache

    clip, owner, config = tiny
    image = textured_image(150, 200, seed=9)
    path = write_raster(tmp_path / "small.tif", image.transpose(2, 0, 1), crs="EPSG:32631")
    out = tmp_path / "p.tif"
    model_cache.clear()
    model_cache.cached(("dense_clip", config, "random", "cpu", "segearth"), lambda: clip)
    try:
        code = main(["segment", path, "--classes", CLASSES, "--clip-model", config,
                     "--clip-weights", "random", "--device", "cpu", "--method", "clip",
                     "--blend", "mean", "--probabilities-out", str(out), "--quiet"])
    finally:
        model_cache.clear()
    assert code == 0
    with rasterio.open(out) as src, rasterio.open(path) as ref:
        assert src.count == 4 and src.dtypes == ("float32",) * 4
        assert src.descriptions == ("building", "road", "water", "tree")
        assert (src.transform, src.crs, src.shape) == (ref.transform, ref.crs, ref.shape)
        got = src.read()
    expected, _ = load_baseline().protocol_probabilities(image, clip.model, clip.text_features,
                                                         owner, long_side=None)
    difference = float(np.abs(got - expected).max())
    MEASURED["segment --blend mean, 150x200 raster"] = difference
    print(f"\nsegment --blend mean: max abs difference {difference:.2e}")
    assert difference <= TOLERANCE


# -- the protocol pinned per data set and written into every report -------------------------------

def test_every_ovss_data_set_pins_its_protocol():
    from drseg.core.evaluation.datasets import dataset_spec, list_datasets
    from drseg.core.evaluation.datasets.ovss import ovss_protocol

    names = list_datasets("ovss")
    assert len(names) == 8
    for name in names:
        protocol = ovss_protocol(dataset_spec(name))
        assert (protocol["long_side"], protocol["window"], protocol["stride"], protocol["blend"]) \
            == (448, 224, 112, "mean"), name
        assert protocol["source"].startswith("SegEarth-OV") and protocol["background"], name
        assert 0 < protocol["prob_thd"] < 1 and protocol["class_texts"], name


def test_evaluate_reports_the_protocol_and_the_engine_settings(tmp_path, monkeypatch):
    from PIL import Image

    from drseg.cli import main
    from drseg.core.models import shared

    root = tmp_path / "LoveDA"
    images, masks = root / "Val" / "Urban" / "images_png", root / "Val" / "Urban" / "masks_png"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(images / "0.png")
    Image.fromarray(np.ones((64, 96), np.uint8)).save(masks / "0.png")
    class FlatScorer(StepScorer):
        def score_windows(self, images):
            b, _, h, w = images.shape
            return np.zeros((b, len(self.queries), -(-h // 16), -(-w // 16)), np.float32)

    monkeypatch.setattr(shared, "dense_clip_scorer", lambda *a, **k: FlatScorer())
    for extra, long_side in (([], 448), (["--long-side", "0"], 0)):
        out = tmp_path / f"run{long_side}"
        assert main(["evaluate", "ovss", "--dataset", "loveda", "--root", str(root), "--out",
                     str(out), "--quiet"] + extra) == 0
        settings = json.loads((out / "LoveDA_val_results.json").read_text())["settings"]
        assert settings["protocol"]["long_side"] == 448 and settings["protocol"]["blend"] == "mean"
        assert settings["protocol"]["class_texts"][1] == "building,roof,house"
        assert settings["protocol"]["source"].startswith("SegEarth-OV")
        assert settings["engine"]["long_side"] == long_side and settings["engine"]["blend"] == "mean"


def test_refer_reports_both_iou_conventions_with_their_definitions(tmp_path):
    from drseg.core.evaluation.metrics import ReferAccumulator
    from drseg.core.evaluation.reports import ReferReport, format_refer_table

    acc = ReferAccumulator()
    acc.add(1, 2)          # IoU 0.5
    acc.add(3, 3)          # IoU 1.0
    metrics = acc.compute()
    assert metrics["gIoU"] == pytest.approx(75.0)      # (0.5 + 1.0) / 2
    assert metrics["cIoU"] == pytest.approx(80.0)      # (1 + 3) / (2 + 3)
    report = ReferReport("RefSegRS", "test", "engine", 2, metrics, [], np.zeros((2, 2), int),
                         protocol={"source": "x"})
    data = report.to_dict()
    assert "mean" in data["metric_definitions"]["gIoU"] and "cumulative" in data["metric_definitions"]["cIoU"]
    table = format_refer_table(report)
    assert "gIoU: mean over samples" in table and "cIoU: cumulative intersection" in table
