"""Pyramids with non-integer downsamples: the fast path reports OpenSlide's levels and reads its pixels bit for bit.

OpenSlide maps a level-0 point into a level by dividing by the downsample; at 3.0015 that
lands between pixels and OpenSlide paints the level resampled there. The OpenSlide backend
starts its reads where the mapping is exact (`exact_origin`), so both backends return the
stored pixels. Files: the known image rewritten by `wsi_ats.synth.restore` with levels at
downsamples 1, 3, 9 of its odd sizes (a generic TIFF without resolution, and Aperio-like),
and a generic TIFF stepping by exactly 2.5.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_ats.readers import open_slide
from wsi_ats.readers.openslide import EXACT_OFFSET, EXACT_SEARCH, exact_origin
from wsi_ats.synth.restore import restore
from wsi_ats.testing.known_image import MPP, known_image

#: Region origins (y, x) at every level: each residue modulo 2 and 3, tile edges, and far from the origin.
ORIGINS = [*itertools.product(range(4), range(4)), (37, 101), (255, 257), (300, 1300), (110, 160)]
SIZE = (23, 41)


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """vendor -> the known image rewritten with levels at 1, 3 and 9 (shapes 1024x1536, 341x512, 113x170)."""
    directory, slide = tmp_path_factory.mktemp("restored"), open_slide(known_image())
    return {
        "generic-tiff": restore(slide, directory / "x3-no-mpp.tif", downsamples=(1, 3, 9), mpp=0),
        "aperio": restore(slide, directory / "x3.svs", downsamples=(1, 3, 9), mpp=MPP),
    }


@pytest.fixture(scope="module")
def by_two_and_a_half(tmp_path_factory):
    """A generic tiled TIFF at downsamples 1, 2.5 and 6.25 exactly (1000x1500, 400x600, 160x240)."""
    image = known_image((1000, 1500))
    path = tmp_path_factory.mktemp("x2.5") / "x2.5.tif"
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate([image, _resize(image, (400, 600)), _resize(image, (160, 240))]):
            tw.write(level, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1 if i else 0, metadata=None)
    return path


def _resize(image, shape):
    return np.asarray(Image.fromarray(image).resize(shape[::-1], Image.Resampling.BOX))


def assert_fast_path_is_openslide(path, vendor):
    fast, reference = open_slide(path), open_slide(path, backend="openslide")
    assert fast.backend == "tiff" and reference.properties["openslide.vendor"] == vendor
    assert fast.levels == reference.levels
    assert not all(lv.downsample.is_integer() for lv in fast.levels)
    for level, lv in enumerate(fast.levels):
        for top_left, size in [((0, 0), lv.shape), *((origin, SIZE) for origin in ORIGINS)]:
            np.testing.assert_array_equal(
                fast.read_region(level, top_left, size),
                reference.read_region(level, top_left, size),
                err_msg=f"level {level} at {top_left}",
            )
    return fast


@pytest.mark.parametrize("vendor", ["generic-tiff", "aperio"])
def test_x3_pyramid_of_odd_sizes_reads_bit_identically_in_both_backends(restored, vendor):
    slide = assert_fast_path_is_openslide(restored[vendor], vendor)
    assert [lv.shape for lv in slide.levels] == [(1024, 1536), (341, 512), (113, 170)]
    assert slide.mpp == (None if vendor == "generic-tiff" else pytest.approx(MPP))


def test_x2_5_pyramid_reads_bit_identically_in_both_backends(by_two_and_a_half):
    slide = assert_fast_path_is_openslide(by_two_and_a_half, "generic-tiff")
    assert [lv.downsample for lv in slide.levels] == [1.0, 2.5, 6.25]


def test_openslide_reads_the_stored_pixels_of_a_non_integer_level(restored):
    path = restored["generic-tiff"]
    with tifffile.TiffFile(path) as tf:
        stored = tf.pages[1].asarray()
    slide = open_slide(path, backend="openslide")
    for y, x in [(y, x) for y, x in ORIGINS if y + SIZE[0] <= stored.shape[0] and x + SIZE[1] <= stored.shape[1]]:
        np.testing.assert_array_equal(slide.read_region(1, (y, x), SIZE), stored[y : y + SIZE[0], x : x + SIZE[1]])


def test_exact_origin_starts_where_openslide_maps_back_to_a_whole_pixel():
    assert exact_origin(37, 4.0) == (37, 148)
    assert exact_origin(7, 2.5) == (6, 15)
    start, level0 = exact_origin(1000, 3.001466275659824)
    assert 1000 - EXACT_SEARCH < start <= 1000 and abs(level0 / 3.001466275659824 - start) < EXACT_OFFSET


def test_exact_origin_falls_back_to_openslides_mapping_when_none_is_within_reach():
    """Just off an integer (Aperio's 4.00012), exact starts cluster every ~8000 pixels."""
    assert exact_origin(3000, 4.00012) == (3000, round(3000 * 4.00012))
