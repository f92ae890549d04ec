"""`--probabilities-out`: per-class probabilities before the threshold, float32, one band per class
named after it, on the class raster's grid, written by blocks and published only when complete."""
import os

import numpy as np
import pytest
import rasterio

from support.oracles import SCENE_CLASSES as CLASSES, ColourOracleScorer, scene_oracle as oracle
from support.rasters import write_raster
from drseg.core.errors import InputError, RunCancelled
from drseg.core.segment import SegmentationRequest, run_segmentation


def test_probabilities_match_the_class_raster_block_by_block(scene, tmp_path):
    path, _ = scene
    for blend in ("smooth", "mean"):
        request = SegmentationRequest(raster=path, classes=CLASSES, threshold=0.6, block=160,
                                      blend=blend, out_raster=str(tmp_path / f"c_{blend}.tif"),
                                      out_probabilities=str(tmp_path / f"p_{blend}.tif"))
        result = run_segmentation(request, scorer=oracle())
        assert result.probabilities_path == str(tmp_path / f"p_{blend}.tif")
        with rasterio.open(result.probabilities_path) as probs, rasterio.open(result.raster_path) as cls:
            assert probs.count == 5 and set(probs.dtypes) == {"float32"}
            assert probs.descriptions == ("building", "road", "water", "tree", "field")
            assert (probs.transform, probs.crs, probs.shape) == (cls.transform, cls.crs, cls.shape)
            p, c = probs.read(), cls.read(1)
        expected = np.where(p.max(axis=0) < 0.6, 0, p.argmax(axis=0) + 1)
        assert (expected == c).all()            # the threshold applied to these gives the classes
        assert (c == 0).any() and (c > 0).any()


def test_a_raster_smaller_than_a_window_has_no_black_padding_tokens(tmp_path):
    """A scorer declaring patch_size receives the crop at its own size; the engine cuts the
    centred pad off the logits, so a uniform raster gets the same answer everywhere."""

    class Recording(ColourOracleScorer):
        patch_size = 8

        def score_windows(self, images):
            self.shapes = getattr(self, "shapes", []) + [images.shape]
            b, c, h, w = images.shape
            padded = np.full((b, c, h + (-h) % 8, w + (-w) % 8), 128, np.uint8)  # pad: mid-grey
            top, left = ((-h) % 8) // 2, ((-w) % 8) // 2
            padded[:, :, top:top + h, left:left + w] = images
            return super().score_windows(padded)

    scorer = Recording(dict(ColourOracleScorer().colours, grey=(128, 128, 128)))
    tree = np.broadcast_to(np.array((40, 140, 50), np.uint8)[:, None, None], (3, 150, 190))
    path = write_raster(tmp_path / "small.tif", tree.copy())
    result = run_segmentation(SegmentationRequest(raster=path, classes="tree; grey", threshold=0.0,
                                                  out_raster=str(tmp_path / "c.tif")), scorer=scorer)
    assert scorer.shapes == [(1, 3, 150, 190)]
    with rasterio.open(result.raster_path) as src:
        assert (src.read(1) == 1).all()     # no grey (padding) leaks into the picture


def test_bad_blend_and_cancel_leave_nothing(scene, tmp_path):
    path, _ = scene
    with pytest.raises(InputError, match="Unknown blend"):
        run_segmentation(SegmentationRequest(raster=path, classes=CLASSES, blend="max",
                                             out_probabilities=str(tmp_path / "p.tif")),
                         scorer=oracle())
    calls = []
    with pytest.raises(RunCancelled):
        run_segmentation(SegmentationRequest(raster=path, classes=CLASSES, block=128,
                                             out_probabilities=str(tmp_path / "p.tif")),
                         scorer=oracle(), cancelled=lambda: calls.append(1) or len(calls) > 3)
    assert sorted(os.listdir(tmp_path)) == ["scene.tif"]
    with pytest.raises(InputError, match="must end with"):
        run_segmentation(SegmentationRequest(raster=path, classes=CLASSES,
                                             out_probabilities=str(tmp_path / "p.png")),
                         scorer=oracle())
