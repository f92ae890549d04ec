"""core/raster_io.py: reading windows of one to many bands, stretched to 8 bits robustly."""
import numpy as np
import pytest
import rasterio

from support.oracles import ColourOracleScorer, segment_scene
from support.rasters import scene_image, scene_labels, write_raster


def test_sixteen_bit_and_float_with_nan_are_stretched(tmp_path):
    from drseg.core.raster_io import RasterReader
    from rasterio.windows import Window

    labels = scene_labels(300, 260)
    image = scene_image(labels).astype(np.float32)
    data16 = (image * 40 + 1000).astype(np.uint16)
    data16[0, 0, 0] = 65000  # one hot pixel must not ruin the stretch
    path16 = write_raster(tmp_path / "u16.tif", data16)
    # Robust per-band stretch: the 2nd..98th percentiles map to 0..255.
    low, high = np.percentile(data16.reshape(3, -1).astype(np.float64), (2, 98), axis=1)
    expected = np.clip((data16 - low[:, None, None]) * (255.0 / (high - low))[:, None, None], 0, 255).round()
    with RasterReader(path16) as reader:
        got, valid = reader.read(Window(0, 0, 260, 300))
    assert valid.all()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    # End to end, the 16-bit raster segments exactly like its stretched 8-bit equivalent.
    path8 = write_raster(tmp_path / "u8.tif", got)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    colours = {k: tuple(int(v) for v in np.median(got[:, labels == i], axis=1))
               for i, k in enumerate(["field", "building", "road", "water", "tree"])
               if (labels == i).any()}
    scorer = ColourOracleScorer(colours)
    a = segment_scene(path16, tmp_path / "a", scorer=scorer, out_vector=None)
    b = segment_scene(path8, tmp_path / "b", scorer=scorer, out_vector=None)
    with rasterio.open(a.raster_path) as ra, rasterio.open(b.raster_path) as rb:
        assert np.array_equal(ra.read(1), rb.read(1))
        predicted = ra.read(1)
    truth = np.where(labels == 0, 5, labels)
    assert (predicted == truth).mean() > 0.95

    floats = image / 255.0
    floats[:, :20, :20] = np.nan
    path_f = write_raster(tmp_path / "f32.tif", floats)
    (tmp_path / "f").mkdir()
    result = segment_scene(path_f, tmp_path / "f", out_vector=None)
    with rasterio.open(result.raster_path) as src:
        predicted = src.read(1)
    assert (predicted[:20, :20] == 255).all() and (predicted[20:, 20:] != 255).all()


@pytest.mark.parametrize("bands,count,expected", [(None, 1, [1, 1, 1]), (None, 5, [1, 2, 3]),
                                                  ([4, 3, 2], 5, [4, 3, 2]), ([2], 5, [2, 2, 2])])
def test_band_choice_for_one_to_many_bands(tmp_path, bands, count, expected):
    from drseg.core.raster_io import RasterReader
    from rasterio.windows import Window

    data = np.stack([np.full((40, 50), 10 * (b + 1), np.uint8) for b in range(count)])
    path = write_raster(tmp_path / "bands.tif", data)
    with RasterReader(path, bands=bands) as reader:
        image, _ = reader.read(Window(0, 0, 50, 40))
    assert [int(image[i, 0, 0]) for i in range(3)] == [10 * b for b in expected]
