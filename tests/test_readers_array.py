"""In-memory slides: the reader contract, the documented pyramid rule and what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_ats.readers import SlideError, open_slide
from wsi_ats.readers.base import DEFAULT_TILE
from wsi_ats.testing.readers import SlideContract


class TestArraySlide(SlideContract):
    backend = "array"
    tile = (DEFAULT_TILE, DEFAULT_TILE)
    mpp = None

    def write(self, directory, pyramid):
        return pyramid[0]

    def not_a_slide(self, directory):
        return np.zeros((8, 8), np.uint8)


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


@pytest.mark.parametrize("array", [np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)], ids=["float", "empty"])
def test_an_array_that_is_not_an_rgb_image_is_refused(array):
    with pytest.raises(SlideError, match="<array>"):
        open_slide(array)
