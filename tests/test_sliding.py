import numpy as np
import pytest

from drseg.core.sliding import blend_weights, block_windows, window_starts


@pytest.mark.parametrize("length,window,stride", [(224, 224, 112), (500, 224, 112), (1000, 224, 112),
                                                   (100, 224, 112), (449, 224, 224), (337, 64, 48)])
def test_windows_cover_every_pixel_and_stay_inside(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = np.zeros(max(length, window), int)
    for s in starts:
        covered[s:s + window] += 1
    assert covered[:length].min() >= 1
    if length >= window:
        assert starts[-1] + window == length          # last window shifted back to the edge
        assert all(s + window <= length for s in starts)
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    else:
        assert starts == [0]


@pytest.mark.parametrize("width,height,block", [(1000, 700, 256), (100, 100, 512), (513, 512, 512)])
def test_blocks_partition_the_raster(width, height, block):
    count = np.zeros((height, width), int)
    for w in block_windows(width, height, block):
        count[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert (count == 1).all()


def test_blend_weights_are_smooth_positive_and_centred():
    w = blend_weights(224)
    assert w.min() > 0
    assert w.argmax() in (111 * 224 + 111, 112 * 224 + 112, 111 * 224 + 112, 112 * 224 + 111)
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    assert w[0, 0] < 0.01 * w.max()


@pytest.mark.parametrize("size_out,size_in", [(224, 14), (224, 28), (100, 7), (5, 5)])
def test_bilinear_matrix_equals_torch_bilinear_resize(size_out, size_in):
    import torch
    import torch.nn.functional as F
    from drseg.core.sliding import bilinear_matrix

    grid = torch.randn(3, size_in, size_in + 2)
    expected = F.interpolate(grid[None], size=(size_out, size_out + 7), mode="bilinear", align_corners=False)[0]
    ry = torch.from_numpy(bilinear_matrix(size_out, size_in))
    rx = torch.from_numpy(bilinear_matrix(size_out + 7, size_in + 2))
    assert torch.allclose(ry @ grid @ rx.T, expected, atol=1e-5)
