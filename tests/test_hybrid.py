"""Engine fusion: oracles for the confidence fusion of two engines and the hybrid class map, and
the sam3 and hybrid engines end to end through `run_segmentation` with the real SAM 3 and CLIP
architectures at tiny size (random weights)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from conftest import write_raster
from drseg.core.drseg.fusion import engine_confidence, fuse_engines
from drseg.core.errors import InputError
from drseg.core.hybrid import fuse_blocks
from drseg.core.segment import SegmentationRequest, run_segmentation
from drseg.core.sliding import BlockResult


def test_identical_engines_fuse_to_themselves_bit_for_bit():
    probs = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fuse_engines(probs, probs.clone()), probs)


def test_fusion_follows_the_confident_engine():
    sure = torch.tensor([0.95, 0.02, 0.03])[:, None, None]
    unsure = torch.tensor([0.30, 0.40, 0.30])[:, None, None]
    fused = fuse_engines(sure, unsure)[:, 0, 0]
    assert int(fused.argmax()) == 0
    w = (fused[0] - 0.30) / (0.95 - 0.30)           # the weight the sure engine got
    c_sure, c_unsure = engine_confidence(sure)[0, 0], engine_confidence(unsure)[0, 0]
    assert w == pytest.approx(float(c_sure / (c_sure + c_unsure)), abs=1e-5) and w > 0.9
    # symmetric: the order of the engines does not matter
    assert torch.allclose(fuse_engines(unsure, sure), fuse_engines(sure, unsure))


def test_an_engine_that_finds_nothing_has_no_say():
    nothing = torch.tensor([0.001, 0.0001, 0.0])[:, None, None]   # peaked shape, but ≈ 0
    clip = torch.tensor([0.10, 0.80, 0.10])[:, None, None]
    assert float(engine_confidence(nothing)) < 1e-3
    fused = fuse_engines(nothing, clip)[:, 0, 0]
    assert int(fused.argmax()) == 1 and float(fused[1]) > 0.79


def _block(probs, valid=None):
    k, h, w = probs.shape
    classes = np.ones((h, w), np.uint8) if valid is None else np.where(valid, 1, 255).astype(np.uint8)
    return BlockResult(Window(0, 0, w, h), classes, probs.max(axis=0), probs.astype(np.float32))


def test_hybrid_class_map_from_known_masks():
    """SAM 3 knows the building (an instance) and misses the field; CLIP sees the field and is
    vague about the building: the map takes the building from SAM 3 and the field from CLIP, and
    where neither is sure of anything the pixel is background."""
    h, w = 6, 8
    building = np.zeros((h, w), bool)
    building[1:4, 1:4] = True
    field = np.zeros((h, w), bool)
    field[:, 5:] = True
    sam3 = np.full((2, h, w), 0.01, np.float32)          # classes: building, field
    sam3[0][building] = 0.97
    clip = np.full((2, h, w), 0.5, np.float32)           # CLIP: even split (nothing known)...
    clip[:, building] = [[0.55], [0.45]]                    # ...vague on the building
    clip[:, field] = [[0.05], [0.95]]                       # ...and sure of the field
    clip[:, 4:, :4] = np.array([0.12, 0.08])[:, None, None]                      # a corner neither engine believes in
    valid = np.ones((h, w), bool)
    valid[0, 7] = False                                   # nodata
    result = fuse_blocks(_block(sam3), _block(clip, valid), threshold=0.3)
    expected = np.zeros((h, w), np.uint8)
    expected[building] = 1
    expected[field] = 2
    # elsewhere CLIP's even split and SAM 3's near-nothing both have confidence 0: they are
    # averaged, (0.255, 0.255), below the threshold: background like the corner
    expected[0, 7] = 255
    np.testing.assert_array_equal(result.classes, expected)
    assert result.score[0, 7] == 0.0 and result.score[2, 2] > 0.9


# --------------------------------------------------------------- end to end, tiny models

@pytest.fixture
def rgb_scene(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (3, 130, 170), np.uint8)
    image[:, 20:70, 30:90] = np.array((200, 60, 50), np.uint8)[:, None, None]
    return write_raster(tmp_path / "scene.tif", image, crs="EPSG:32631")


def _request(tmp_path, raster, tiny_sam3_json, tiny_clip_config, **kwargs):
    options = dict(raster=raster, classes="building, roof; water", threshold=0.0,
                   out_vector=str(tmp_path / "out.gpkg"), out_raster=str(tmp_path / "out.tif"),
                   sam3_model=tiny_sam3_json, sam3_weights="random",
                   clip_model=tiny_clip_config, clip_weights="random", method="clip")
    options.update(kwargs)
    return SegmentationRequest(**options)


@pytest.mark.parametrize("engine", ["sam3", "hybrid"])
def test_engine_end_to_end_keeps_grid_crs_and_fields(tmp_path, rgb_scene, tiny_sam3_json,
                                                      tiny_clip_config, engine):
    import sqlite3

    result = run_segmentation(_request(tmp_path, rgb_scene, tiny_sam3_json, tiny_clip_config,
                                       engine=engine))
    assert result.method == engine
    with rasterio.open(rgb_scene) as src, rasterio.open(result.raster_path) as out:
        assert (out.width, out.height, out.transform, out.crs) == (src.width, src.height,
                                                                    src.transform, src.crs)
        classes = out.read(1)
    assert set(np.unique(classes)) <= {1, 2}  # threshold 0: every pixel is a class
    assert sum(result.class_pixels.values()) == 130 * 170
    with sqlite3.connect(result.vector_path) as db:
        columns = [row[1] for row in db.execute('PRAGMA table_info("segmentation")')]
        srs = db.execute("SELECT organization_coordsys_id FROM gpkg_spatial_ref_sys "
                         "WHERE srs_id = (SELECT srs_id FROM gpkg_geometry_columns)").fetchone()[0]
    assert {"class", "class_id", "score", "area_m2"} <= set(columns) and srs == 32631
    if engine == "hybrid":
        assert "dense CLIP" in result.note


def test_hybrid_does_not_depend_on_the_block_size(tmp_path, rgb_scene, tiny_sam3_json, tiny_clip_config):
    maps = []
    for block in (48, 512):
        out = tmp_path / f"b{block}"
        out.mkdir()
        result = run_segmentation(_request(out, rgb_scene, tiny_sam3_json, tiny_clip_config,
                                           engine="hybrid", block=block, out_vector=None))
        with rasterio.open(result.raster_path) as src:
            maps.append(src.read(1))
    np.testing.assert_array_equal(maps[0], maps[1])


def test_unknown_engine_is_one_clear_error(tmp_path, rgb_scene, tiny_sam3_json, tiny_clip_config):
    with pytest.raises(InputError, match="Unknown engine 'sam4'"):
        run_segmentation(_request(tmp_path, rgb_scene, tiny_sam3_json, tiny_clip_config, engine="sam4"))
    assert not (tmp_path / "out.tif").exists()
