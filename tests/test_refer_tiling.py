"""core/refer/tiling.py: the working grid (max_size, resolution) and the tiles covering it."""
import numpy as np
import pytest

from support.rasters import write_raster
from drseg.core.errors import InputError
from drseg.core.refer.request import ReferringRequest
from drseg.core.refer.tiling import open_reader, tile_windows


def test_two_tiles_overlap_by_the_requested_margin():
    assert [(w.col_off, w.width) for w in tile_windows(200, 120, 128, 32)] == [(0, 128), (72, 128)]


@pytest.mark.parametrize("width,height,tile,overlap", [(200, 120, 128, 32), (1000, 700, 256, 64),
                                                       (64, 300, 64, 0), (129, 129, 128, 63)])
def test_tiles_cover_every_pixel_and_neighbours_share_at_least_the_overlap(width, height, tile,
                                                                           overlap):
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), np.int32)
    for w in windows:
        assert w.width <= tile and w.height <= tile
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert covered.min() >= 1
    starts_x = sorted({w.col_off for w in windows})
    for a, b in zip(starts_x, starts_x[1:]):
        assert a + tile - b >= overlap          # the next tile starts inside this one's margin


def test_an_area_that_fits_is_one_window_and_bad_tiles_are_input_errors():
    (only,) = tile_windows(100, 60, 128, 32)
    assert (only.col_off, only.row_off, only.width, only.height) == (0, 0, 100, 60)
    with pytest.raises(InputError, match="at least 64"):
        tile_windows(500, 500, 32, 0)
    with pytest.raises(InputError, match="below half"):
        tile_windows(500, 500, 128, 64)


def test_the_working_grid_is_capped_at_max_size_unless_a_resolution_is_given(tmp_path):
    path = write_raster(tmp_path / "r.tif", np.zeros((3, 300, 200), np.uint8))   # 0.5 m pixels
    with open_reader(ReferringRequest(path, "x", "o.gpkg", max_size=150)) as reader:
        assert (reader.grid.width, reader.grid.height) == (100, 150)
    with open_reader(ReferringRequest(path, "x", "o.gpkg", max_size=None)) as reader:
        assert (reader.grid.width, reader.grid.height) == (200, 300)
    with open_reader(ReferringRequest(path, "x", "o.gpkg", resolution=2.0)) as reader:
        assert (reader.grid.width, reader.grid.height) == (50, 75)
    with pytest.raises(InputError, match="at least 16"):
        open_reader(ReferringRequest(path, "x", "o.gpkg", max_size=8))
