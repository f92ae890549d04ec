"""Training chips from polygons: sampling, spatial split, ignored pixels, reprojection."""
from __future__ import annotations

import numpy as np
import pytest
from adapt_scene import pixel_box, write_polygons
from conftest import write_raster
from rasterio.windows import Window

from drseg.core.adapt.data import chip_windows, load_chips, spatial_split
from drseg.core.errors import InputError
from drseg.core.evaluation.metrics import IGNORE_INDEX


def test_chip_windows_tile_without_overlap():
    windows = chip_windows(100, 70, 32)
    assert len(windows) == 3 * 2
    covered = np.zeros((70, 100), int)
    for w in windows:
        covered[w.row_off:w.row_off + 32, w.col_off:w.col_off + 32] += 1
    assert covered.max() == 1 and covered[:64, :96].min() == 1
    with pytest.raises(InputError):
        chip_windows(20, 100, 32)


@pytest.mark.parametrize("share", [0.1, 0.2, 0.3, 0.5])
def test_spatial_split_is_by_blocks_and_respects_share(share):
    windows = [Window(c * 16, r * 16, 16, 16) for r in range(8) for c in range(10)]
    train, validation = spatial_split(windows, 16, share, seed=3)
    assert set(train).isdisjoint(validation) and sorted(train + validation) == list(range(80))
    assert abs(len(validation) - share * 80) <= 4  # within one 2×2 block of chips
    # whole blocks: a validation chip's block-mates are all in validation
    block = {i: (windows[i].row_off // 32, windows[i].col_off // 32) for i in range(80)}
    val_blocks = {block[i] for i in validation}
    assert all(block[i] not in val_blocks for i in train)


def test_spatial_split_small_sets_keep_both_sides():
    windows = [Window(0, 0, 16, 16), Window(16, 0, 16, 16)]
    train, validation = spatial_split(windows, 16, 0.2)
    assert len(train) == 1 and len(validation) == 1
    assert spatial_split(windows, 16, 0.0) == ([0, 1], [])


def test_chips_carry_labels_and_ignore_unlabelled_and_nodata(tmp_path):
    image = np.full((3, 64, 96), 100, np.uint8)
    image[:, :, 80:] = 0                                  # nodata stripe (value 0)
    raster = write_raster(tmp_path / "r.tif", image, nodata=0)
    layer = write_polygons(tmp_path / "l.gpkg", [("water", pixel_box(0, 0, 10, 32)),
                                                ("field", pixel_box(40, 0, 96, 20))])
    chips = load_chips(raster, layer, "landuse", chip=32, validation_share=0.0)
    assert chips.class_names == ["field", "water"]
    # the chip at rows 32..64 holds no polygon and is skipped
    assert [(w.col_off, w.row_off) for w in chips.windows] == [(0, 0), (32, 0), (64, 0)]
    first, second, third = chips.labels
    assert (first[:, :10] == 1).all() and (first[:, 10:] == IGNORE_INDEX).all()
    assert (second[:20, 8:] == 0).all() and (second[20:] == IGNORE_INDEX).all()
    assert (third[:20, :16] == 0).all() and (third[:, 16:] == IGNORE_INDEX).all()  # nodata


def test_labels_in_another_crs_land_on_the_right_pixels(tmp_path):
    image = np.full((3, 64, 64), 120, np.uint8)
    raster = write_raster(tmp_path / "r.tif", image)      # EPSG:32633, 0.5 m pixels
    layer = write_polygons(tmp_path / "l.gpkg", [("roof", pixel_box(10, 20, 30, 40))],
                           crs="EPSG:4326")
    chips = load_chips(raster, layer, "landuse", chip=64, validation_share=0.0)
    expected = np.full((64, 64), IGNORE_INDEX, np.uint8)
    expected[20:40, 10:30] = 0
    # a reprojected rectangle's edges are not exactly straight in the raster: allow one pixel
    assert (chips.labels[0] != expected).sum() <= 2 * 20
    assert (chips.labels[0][21:39, 11:29] == 0).all()
    assert (chips.labels[0][:19] == IGNORE_INDEX).all() and (chips.labels[0][:, 31:] == IGNORE_INDEX).all()


def test_missing_field_is_one_clear_error(tmp_path):
    raster = write_raster(tmp_path / "r.tif", np.full((3, 32, 32), 9, np.uint8))
    layer = write_polygons(tmp_path / "l.gpkg", [("a", pixel_box(0, 0, 5, 5))])
    with pytest.raises(InputError, match="no field 'class'"):
        load_chips(raster, layer, "class", chip=32)


def test_label_features_from_a_front_end_match_the_file(tmp_path):
    from drseg.core.adapt.data import LabelFeatures

    raster = write_raster(tmp_path / "r.tif", np.full((3, 64, 64), 120, np.uint8))
    box = pixel_box(8, 8, 40, 24)
    layer = write_polygons(tmp_path / "l.gpkg", [("roof", box)])
    features = LabelFeatures([box, None], ["roof", "tree"], "EPSG:32633")
    from_file = load_chips(raster, layer, "landuse", chip=64, validation_share=0.0)
    in_memory = load_chips(raster, features, "landuse", chip=64, validation_share=0.0)
    assert in_memory.class_names == ["roof"]
    np.testing.assert_array_equal(in_memory.labels, from_file.labels)
