"""In-memory slides: the documented pyramid rule."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_ats.readers import open_slide


@pytest.mark.parametrize(
    "shape, downsamples",
    [((1024, 1536), [1, 4, 16]), ((100, 100), [1]), ((64, 5000), [1, 4, 16, 64]), ((4096, 4096), [1, 4, 16, 64])],
)
def test_levels_shrink_by_4_while_the_longer_side_stays_at_least_64(shape, downsamples):
    slide = open_slide(np.zeros((*shape, 3), np.uint8))
    assert [lv.downsample for lv in slide.levels] == downsamples
    assert [lv.shape for lv in slide.levels] == [(shape[0] // d, shape[1] // d) for d in downsamples]


def test_a_lower_level_pixel_is_the_rounded_mean_of_its_block():
    image = np.zeros((256, 256, 3), np.uint8)
    image[:4, 1:4] = 1  # mean 0.75 -> 1
    image[:4, 4:8, 1] = 2
    image[:4, 5, 1] = 0  # mean 1.5 -> 2 (half up)
    image[252:, 252:, 2] = 255
    level1 = open_slide(image).read_region(1, (0, 0), (64, 64))
    assert level1[0, 0].tolist() == [1, 1, 1]
    assert level1[0, 1].tolist() == [0, 2, 0]
    assert level1[63, 63].tolist() == [0, 0, 255]


def test_writing_into_a_region_leaves_the_slide_unchanged(known_image):
    slide = open_slide(known_image.copy())
    whole_rows = [(10, lv.shape[1]) for lv in slide.levels]  # a view of whole rows is contiguous: returned as is
    before = [slide.read_region(level, (0, 0), size) for level, size in enumerate(whole_rows)]
    for level, size in enumerate(whole_rows):
        slide.read_region(level, (0, 0), size)[:] = 0
    for level, size in enumerate(whole_rows):
        np.testing.assert_array_equal(slide.read_region(level, (0, 0), size), before[level])
    assert before[0].any() and np.array_equal(before[0], known_image[:10])
