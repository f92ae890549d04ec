"""In-memory segmentation as benchmarks are run (core/array_segment.py)."""
import numpy as np

from support.oracles import ColourOracleScorer, iou
from support.rasters import scene_image, scene_labels
from drseg.core.array_segment import segment_array


def test_segment_array_matches_the_truth_at_native_and_benchmark_size():
    truth = scene_labels()
    image = scene_image(truth).transpose(1, 2, 0)
    colours = dict(ColourOracleScorer().colours, field=(215, 205, 150))
    for long_side, wanted in ((None, 0.95), (448, 0.93)):
        labels = segment_array(image, "building; road; water; tree; field", ColourOracleScorer(colours),
                               long_side=long_side)
        assert labels.shape == truth.shape
        expected = np.where(truth == 0, 5, truth)
        for k in range(1, 6):
            assert iou(labels == k, expected == k) >= wanted, (long_side, k)


def test_threshold_sends_unsure_pixels_to_background():
    image = np.zeros((224, 224, 3), np.uint8)
    image[:, :112] = (200, 60, 50)
    image[:, 112:] = (120, 100, 125)   # halfway between building and water: unsure
    scorer = ColourOracleScorer({"building": (200, 60, 50), "water": (30, 90, 200)})
    labels = segment_array(image, "building; water", scorer, threshold=0.9, long_side=None)
    assert (labels[:, :90] == 1).all()
    assert (labels[:, 140:] == 0).all()
