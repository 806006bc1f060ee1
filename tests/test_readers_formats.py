"""Every backend reads the same known pyramid the same way (`wsi_ats.open_slide` contract)."""

from __future__ import annotations

import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pytest
from slide_factories import DOWNSAMPLES, MPP, TILE

from wsi_ats.readers import open_slide
from wsi_ats.readers.base import DEFAULT_TILE

#: Mean absolute difference allowed between a JPEG slide and the known image.
JPEG_MAD = 3.0


class Spec(NamedTuple):
    path_key: str | None  # key of the `slide_paths` fixture; None: the numpy image itself
    backend: str | None  # forced backend, None: open_slide's choice
    expect_type: str
    lossless: bool
    tile: tuple[int, int]
    n_levels: int
    mpp: float | None


FORMATS = {
    "svs": Spec("svs", None, "TiffSlide", False, (TILE, TILE), 3, MPP),
    "svs-openslide": Spec("svs", "openslide", "OpenSlideSlide", False, (TILE, TILE), 3, MPP),
    "ome-tiff": Spec("ome-tiff", None, "TiffSlide", True, (TILE, TILE), 3, MPP),
    "stripped-tiff": Spec("stripped-tiff", None, "ZarrSlide", True, (64, 1536), 1, None),
    "ome-zarr-0.4": Spec("ome-zarr-0.4", None, "ZarrSlide", True, (TILE, TILE), 3, MPP),
    "ome-zarr-0.5": Spec("ome-zarr-0.5", None, "ZarrSlide", True, (TILE, TILE), 3, MPP),
    "zarr": Spec("zarr", None, "ZarrSlide", True, (TILE, TILE), 3, None),
    "numpy": Spec(None, None, "ArraySlide", True, (DEFAULT_TILE, DEFAULT_TILE), 3, None),
}

BOXES = {
    "one-pixel": ((0, 0), (1, 1)),
    "one-row": ((17, 33), (1, 300)),
    "many-tiles": ((100, 130), (700, 900)),
    "top-left-overhang": ((-5, -7), (20, 30)),
    "bottom-right-overhang": ((1000, 1500), (50, 60)),
    "wholly-outside-before": ((-100, -100), (50, 50)),
    "wholly-outside-after": ((2000, 10), (5, 5)),
    "taller-than-the-level": ((-10, 1530), (1040, 20)),
}


class Case(NamedTuple):
    slide: object
    spec: Spec
    pyramid: list[np.ndarray]


@pytest.fixture(params=list(FORMATS))
def case(request, slide_paths, known_pyramid) -> Case:
    spec = FORMATS[request.param]
    source = known_pyramid[0] if spec.path_key is None else slide_paths[spec.path_key]
    return Case(open_slide(source, backend=spec.backend), spec, known_pyramid[: spec.n_levels])


def whole_level(slide, level: int) -> np.ndarray:
    return slide.read_region(level, (0, 0), slide.levels[level].shape)


def crop_with_zeros(image: np.ndarray, top_left: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``image[y:y+h, x:x+w]`` with zeros wherever the box leaves the image (written without `blit`)."""
    (y, x), (h, w) = top_left, size
    ys, xs = np.arange(y, y + h), np.arange(x, x + w)
    inside = ((ys >= 0) & (ys < image.shape[0]))[:, None] & ((xs >= 0) & (xs < image.shape[1]))[None, :]
    out = np.zeros((h, w, 3), np.uint8)
    picked = image[np.clip(ys, 0, image.shape[0] - 1)][:, np.clip(xs, 0, image.shape[1] - 1)]
    out[inside] = picked[inside]
    return out


def test_open_slide_picks_the_expected_backend(case):
    assert type(case.slide).__name__ == case.spec.expect_type


def test_levels_follow_the_known_pyramid(case):
    slide = case.slide
    assert [lv.shape for lv in slide.levels] == [p.shape[:2] for p in case.pyramid]
    assert [lv.downsample for lv in slide.levels] == pytest.approx(DOWNSAMPLES[: case.spec.n_levels])
    assert all(slide.tile_shape(i) == case.spec.tile for i in range(len(slide.levels)))


def test_mpp_is_reported_when_the_format_records_it(case):
    assert case.slide.mpp == (pytest.approx(case.spec.mpp) if case.spec.mpp else None)


def test_each_level_holds_the_known_pixels(case):
    for level, expected in enumerate(case.pyramid):
        got = whole_level(case.slide, level)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        if case.spec.lossless:
            np.testing.assert_array_equal(got, expected)
        else:
            assert np.abs(got.astype(int) - expected).mean() < JPEG_MAD


@pytest.mark.parametrize("box", list(BOXES))
def test_region_is_level_pixels_inside_and_zero_outside(case, box):
    top_left, size = BOXES[box]
    for level, known in enumerate(case.pyramid):
        reference = known if case.spec.lossless else whole_level(case.slide, level)
        got = case.slide.read_region(level, top_left, size)
        np.testing.assert_array_equal(got, crop_with_zeros(reference, top_left, size), err_msg=f"level {level}")


def test_to_dask_equals_the_whole_level_and_is_chunked_on_tiles(case):
    for level in range(len(case.slide.levels)):
        lazy = case.slide.to_dask(level)
        (th, tw), (H, W) = case.slide.tile_shape(level), case.slide.levels[level].shape
        assert lazy.shape == (H, W, 3) and lazy.dtype == np.uint8
        assert all(c == th for c in lazy.chunks[0][:-1]) and all(c == tw for c in lazy.chunks[1][:-1])
        np.testing.assert_array_equal(lazy.compute(scheduler="threads"), whole_level(case.slide, level))


def test_level_for_picks_the_coarsest_level_at_least_as_fine_as_asked(case):
    last = len(case.slide.levels) - 1
    by_downsample = {0.5: 0, 1: 0, 3.9: 0, 3.99: 1, 4: 1, 15: 1, 16.1: 2, 1000: 2}
    for ds, level in by_downsample.items():
        assert case.slide.level_for(downsample=ds) == min(level, last), ds
    if case.spec.mpp is None:
        with pytest.raises(ValueError, match="mpp"):
            case.slide.level_for(mpp=1.0)
    else:
        for mpp, level in {0.1: 0, MPP: 0, 1.0: 1, 4.04: 2}.items():
            assert case.slide.level_for(mpp=mpp) == min(level, last), mpp


def test_a_pickled_slide_reopens_with_equal_pixels(case):
    clone = pickle.loads(pickle.dumps(case.slide))
    assert type(clone) is type(case.slide) and clone.backend == case.slide.backend
    assert clone.levels == case.slide.levels
    box = ((200, 300), (300, 400))
    np.testing.assert_array_equal(clone.read_region(0, *box), case.slide.read_region(0, *box))


def test_read_tile_from_8_threads_matches_serial_reads(case):
    slide = case.slide
    rows, cols = slide.tile_grid(0)
    tiles = [(ty, tx) for ty in range(rows) for tx in range(cols)] * 4
    random.Random(0).shuffle(tiles)
    serial = {t: slide.read_tile(0, *t) for t in set(tiles)}
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda t: slide.read_tile(0, *t), tiles))
    for t, pixels in zip(tiles, threaded):
        np.testing.assert_array_equal(pixels, serial[t], err_msg=str(t))


def test_thumbnail_fits_the_box_and_keeps_the_aspect(case):
    thumb = case.slide.thumbnail(96)
    assert thumb.shape == (64, 96, 3) and thumb.dtype == np.uint8
