"""`wsi_ats.readers.scaled`: resampled levels that behave like the slide's own, at bounded memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from wsi_ats.readers import open_slide, scaled
from wsi_ats.readers.base import Slide
from wsi_ats.readers.scaled import MAX_STEP, MAX_TILE, ScaledSlide, at_scales, matching_level


class CountingSlide(Slide):
    """Another slide's pixels, recording the largest region and the number of reads asked of it."""

    def __init__(self, inner: Slide) -> None:
        super().__init__(None, inner.levels, inner.mpp)
        self.inner, self.largest, self.reads = inner, 0, 0

    def _read(self, level, y, x, h, w):
        self.largest, self.reads = max(self.largest, h * w), self.reads + 1
        return self.inner._read(level, y, x, h, w)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (1500, 1700, 3), dtype=np.uint8)


def test_a_level_within_tolerance_is_used_as_it_is(image):
    slide = open_slide(image)  # levels 1, 4, 16
    assert at_scales(slide, (4.05, 16.0)) is slide
    assert matching_level(slide, 4.05) == 1 and matching_level(slide, 5.0) is None


def test_a_resampled_level_is_the_box_filtered_finer_level(image):
    view = at_scales(open_slide(image), (3.0,))
    level = matching_level(view, 3.0)
    assert view.levels[level].shape == (500, 566) and view.levels[level].downsample == 3.0
    got = view.read_region(level, (0, 0), view.levels[level].shape).astype(float)
    want = image[:1500, :1698].reshape(500, 3, 566, 3, 3).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 1.0  # rounding only (PIL averages in fixed point)


@pytest.mark.parametrize("target", [3.0, 6.0, 48.0])
def test_region_reads_tiles_and_dask_agree_on_a_resampled_level(image, target):
    view = at_scales(open_slide(image), (target,))
    level = matching_level(view, target)
    H, W = view.levels[level].shape
    whole = view.read_region(level, (0, 0), (H, W))
    np.testing.assert_array_equal(view.to_dask(level).compute(), whole)
    np.testing.assert_array_equal(
        view.read_region(level, (H // 3, W // 5), (H // 2, W // 2)), whole[H // 3 : H // 3 + H // 2, W // 5 : W // 5 + W // 2]
    )
    out = view.read_region(level, (-5, W - 3), (10, 10))  # outside is zero, as on any level
    assert (out[:5] == 0).all() and (out[:, 3:] == 0).all()


def test_a_far_coarser_level_is_built_through_bounded_steps(image):
    counting = CountingSlide(open_slide(image[:, :, :]))
    counting.levels = counting.levels[:1]  # one level only: nothing to start from but the base
    view = ScaledSlide(counting, (64.0,))
    assert sorted(lv.downsample for lv in view.levels) == [1.0, 4.0, 16.0, 64.0]
    level = matching_level(view, 64.0)
    view.read_region(level, (0, 0), view.levels[level].shape)
    assert counting.largest <= (MAX_TILE * MAX_STEP + 1) ** 2  # no read bigger than one step's tile


def test_a_resampled_slide_pickles_and_reads_the_same_after(slide_paths):
    view = at_scales(open_slide(slide_paths["svs"]), (6.0,))
    level = matching_level(view, 6.0)
    again = pickle.loads(pickle.dumps(view))
    np.testing.assert_array_equal(again.read_region(level, (10, 20), (64, 80)), view.read_region(level, (10, 20), (64, 80)))


def test_the_disk_cache_serves_a_rerun_without_reading_the_slide(image, tmp_path, slide_paths):
    first = at_scales(open_slide(slide_paths["svs"]), (6.0,), cache=tmp_path)
    level = matching_level(first, 6.0)
    want = first.read_region(level, (0, 0), first.levels[level].shape)
    counting = CountingSlide(open_slide(slide_paths["svs"]))
    counting.source = first.source  # the cache is keyed by the file
    rerun = ScaledSlide(counting, (6.0,), cache=tmp_path)
    np.testing.assert_array_equal(rerun.read_region(level, (0, 0), rerun.levels[level].shape), want)
    assert counting.reads == 0


def test_a_small_read_on_a_resampled_level_decodes_about_one_source_tile(image):
    counting = CountingSlide(open_slide(image))  # numpy levels: 512 px tiles
    view = ScaledSlide(counting, (2.0,))
    level = matching_level(view, 2.0)
    assert view.tile_shape(level) == (256, 256)  # x2 of a 512 px tile
    view.read_region(level, (300, 300), (32, 32))
    assert counting.largest <= 512 * 512


def test_coarse_tiles_stay_in_memory_while_the_finer_ones_they_were_made_from_go(monkeypatch):
    pixels = np.random.default_rng(1).integers(0, 256, (2600, 2600, 3), dtype=np.uint8)
    counting = CountingSlide(open_slide(pixels))
    counting.levels = counting.levels[:1]
    monkeypatch.setattr(scaled, "CACHE_BYTES", 400_000)  # the x16 and x64 levels, a third of x4
    view = ScaledSlide(counting, (64.0,))
    view.read_region(matching_level(view, 64.0), (0, 0), view.levels[matching_level(view, 64.0)].shape)
    reads = counting.reads
    x16 = matching_level(view, 16.0)
    view.read_region(x16, (0, 0), view.levels[x16].shape)
    assert counting.reads == reads  # the x16 tiles made for x64 were kept: the base is not decoded again


def test_a_tile_missing_or_cut_short_in_the_disk_cache_is_made_again(tmp_path, slide_paths):
    first = at_scales(open_slide(slide_paths["svs"]), (6.0,), cache=tmp_path)
    level = matching_level(first, 6.0)
    want = first.read_region(level, (0, 0), first.levels[level].shape)
    files = sorted(tmp_path.rglob("*.zst"))
    assert len(files) == np.prod(first.tile_grid(level)) > 2
    files[0].unlink()  # never written: the process was killed before
    files[1].write_bytes(files[1].read_bytes()[:10])  # cut short: the machine crashed before it reached the disk
    counting = CountingSlide(open_slide(slide_paths["svs"]))
    counting.source = first.source
    rerun = ScaledSlide(counting, (6.0,), cache=tmp_path)
    np.testing.assert_array_equal(rerun.read_region(level, (0, 0), rerun.levels[level].shape), want)
    assert counting.reads == 2
