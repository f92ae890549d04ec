"""The protocol's input resize reproduces OpenCV's INTER_LINEAR on uint8 (core/cv_resize.py).

Expected values are derived by hand from OpenCV's fixed-point rules (11-bit weights, the 8-bit
vertical pass `((b0*(r0>>4))>>16) + ((b1*(r1>>4))>>16) + 2) >> 2`, the 2×2 mean for an exact
halving) and cross-checked against the literal C++-shaped loops of the yardstick
(benchmarks/research_baseline.py), and against cv2 itself where it is installed.
"""
import numpy as np
import pytest

from test_research_baseline import load_baseline
from drseg.core.cv_resize import imrescale, rescale_size, resize_linear_u8


def test_upscale_by_two_in_one_row():
    # x positions -0.25 (clamped: weight 2048 on pixel 0), 0.25, 0.75, 1.25 (clamped to pixel 1):
    # rows 0, 255·512, 255·1536, 255·2048 -> (255·512>>4)·2048>>16 = 255 -> (255+2)>>2 = 64, ...
    image = np.array([[[0], [255]]], np.uint8)
    assert resize_linear_u8(image, 1, 4)[0, :, 0].tolist() == [0, 64, 191, 255]


def test_a_half_pixel_rounds_up_where_float_rounding_goes_to_even():
    # 3 -> 2 px: positions 0.25 and 1.75, weights (1536, 512) and (512, 1536).
    # [0, 2, 3]: 2·512 = 1024 -> (1024>>4)·2048>>16 = 2 -> (2+2)>>2 = 1 (exact value 0.5);
    # 2·512 + 3·1536 = 5632 -> 352·2048>>16 = 11 -> 13>>2 = 3 (exact value 2.75).
    image = np.array([[[0], [2], [3]]], np.uint8)
    assert resize_linear_u8(image, 1, 2)[0, :, 0].tolist() == [1, 3]
    assert np.round(0.5) == 0  # what float bilinear + round() gave


def test_vertical_pass_truncates_each_row_term():
    # 2 rows [10], [11] -> 4 rows: at y = 0.25 weights (1536, 512) on rows 20480 and 22528:
    # (1536·1280)>>16 = 30, (512·1408)>>16 = 11, (30+11+2)>>2 = 10.
    image = np.array([[[10]], [[11]]], np.uint8)
    assert resize_linear_u8(image, 4, 1)[:, 0, 0].tolist() == [10, 10, 11, 11]


def test_exact_halving_is_the_two_by_two_mean():
    image = np.array([[[1], [2]], [[3], [5]]], np.uint8)
    assert resize_linear_u8(image, 1, 1)[0, 0, 0] == 3          # (1+2+3+5+2)>>2
    image = np.array([[[0], [0]], [[0], [2]]], np.uint8)
    assert resize_linear_u8(image, 1, 1)[0, 0, 0] == 1          # (2+2)>>2: 0.5 rounds up


def test_same_size_is_a_copy():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(resize_linear_u8(image, 2, 4), image)


def test_mmcv_size_rule_rounds_half_up():
    assert rescale_size(896, 301, 448) == (448, 151)       # 150.5 -> 151 (round() gives 150)
    assert rescale_size(1000, 600, 448) == (448, 269)
    assert rescale_size(150, 200, 448) == (336, 448)       # small images are enlarged
    assert imrescale(np.zeros((896, 301, 3), np.uint8), 448).shape == (448, 151, 3)


@pytest.mark.parametrize("shape,size", [((37, 53, 3), (90, 20)), ((333, 250, 3), (448, 336)),
                                        ((600, 520, 3), (448, 388)), ((64, 64, 3), (32, 32)),
                                        ((5, 7, 1), (13, 3)), ((700, 190, 3), (448, 122))])
def test_vectorised_resize_equals_the_literal_loops(shape, size):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = load_baseline().opencv_resize_linear(image, *size)
    assert np.array_equal(resize_linear_u8(image, *size), expected)


def test_equals_opencv_where_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for shape, size in [((333, 250, 3), (448, 336)), ((600, 520, 3), (448, 388)),
                        ((896, 672, 3), (448, 336)), ((150, 200, 3), (336, 448))]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(resize_linear_u8(image, *size), expected)
