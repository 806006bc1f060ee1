"""The reader contract: every behaviour a slide backend must show, as a pytest base class.

A backend proves itself by subclassing `SlideContract` in its test module and
saying how to write the known image in its format and what the format cannot do::

    from wsi_ats.testing.readers import SlideContract

    class TestMyFormat(SlideContract):
        backend = "myformat"      # its name in wsi_ats.readers.BACKENDS (or override `open`)
        tile = (256, 256)         # the format tile of every level
        mpp = None                # the format records no resolution
        max_mean_error = 1.0      # lossy: say why

        def write(self, directory, pyramid):
            return write_my_format(directory / "known.myf", pyramid)

Every ``test_*`` method below then runs against it. Call
``pytest.register_assert_rewrite("wsi_ats.testing")`` in ``conftest.py`` before
importing this module to get pytest's detailed assertion messages.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wsi_ats.readers import Slide, SlideError, open_slide
from wsi_ats.testing.known_image import DOWNSAMPLES, MPP, known_levels

#: Boxes ``(top_left, size)`` read at every level: inside, across tiles and edges, and wholly outside.
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
#: The level-0 tile `SlideContract.damaged_copy` makes unreadable: present in any grid of two or more tile rows.
DAMAGED_TILE = (1, 0)
#: Mean difference a thumbnail may add to the slide's own: resampling filters differ from block means.
THUMBNAIL_MEAN_ERROR = 1.0


class SlideContract:
    """Base class of a backend's tests; the class attributes and hooks say what the format holds.

    The source is written once per class, in a temporary directory, and opened
    once: the tests share that slide, as a program shares one slide among its reads.
    """

    #: The `open_slide` backend that reads the source, and that a pickled slide reopens with.
    backend: str
    #: The format tile ``(th, tw)`` at every level (`Slide.tile_shape`).
    tile: tuple[int, int]
    #: How many levels of the known pyramid the format keeps (1: the format has no pyramid).
    n_levels: int = len(DOWNSAMPLES)
    #: The resolution the slide reports: the known `MPP`, or None where the format cannot record it.
    mpp: float | None = MPP
    #: Mean absolute difference allowed between the slide and the known pixels: 0 means bit-exact.
    max_mean_error: float = 0.0
    #: Whether `open_slide` without ``backend=`` reads the source with this backend (else it must choose another).
    chosen_by_open_slide: bool = True
    #: Whether a read after `Slide.close` reopens the slide (else it must raise `SlideError`).
    reopens_after_close: bool = True
    #: Whether `damaged_copy` can write a copy with an unreadable tile (not for in-memory sources).
    supports_damage: bool = False

    # -- hooks -----------------------------------------------------------------
    def write(self, directory: Path, pyramid: list[np.ndarray]) -> Any:
        """Write the known ``pyramid`` (finest first) in the format under ``directory``; return the source."""
        raise NotImplementedError(f"{type(self).__name__} must say how to write the known image (write)")

    def open(self, source: Any) -> Slide:
        """Open ``source`` with this backend."""
        return open_slide(source, backend=self.backend)

    def not_a_slide(self, directory: Path) -> Any:
        """A source this backend must refuse: by default a text file."""
        path = directory / "not-a-slide.txt"
        path.write_text("this is not a slide\n")
        return path

    def damaged_copy(self, source: Any, directory: Path, tile: tuple[int, int]) -> Any:
        """A copy of ``source`` under ``directory`` whose level-0 ``tile`` cannot be decoded (with `supports_damage`)."""
        raise NotImplementedError(f"{type(self).__name__} sets supports_damage but does not define damaged_copy")

    # -- fixtures --------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def source(cls, tmp_path_factory) -> Any:
        """The known pyramid written by `write`, once per class (pytest gives each test its own instance)."""
        return cls().write(tmp_path_factory.mktemp(cls.__name__), list(known_levels()))

    @pytest.fixture
    def pyramid(self) -> list[np.ndarray]:
        """The known levels the slide must hold."""
        return list(known_levels()[: self.n_levels])

    @pytest.fixture(scope="class")
    @classmethod
    def slide(cls, source) -> Iterator[Slide]:
        with cls().open(source) as slide:
            yield slide

    # -- opening, levels and metadata ----------------------------------------------
    def test_open_slide_chooses_this_backend_unless_another_is_preferred(self, slide, source):
        chosen = open_slide(source)
        if self.chosen_by_open_slide:
            assert (type(chosen), chosen.backend) == (type(slide), self.backend)
        else:
            assert chosen.backend != self.backend

    def test_levels_follow_the_known_pyramid(self, slide, pyramid):
        assert [lv.shape for lv in slide.levels] == [p.shape[:2] for p in pyramid]
        assert [lv.downsample for lv in slide.levels] == pytest.approx(DOWNSAMPLES[: self.n_levels])
        assert all(slide.tile_shape(i) == self.tile for i in range(len(slide.levels)))

    def test_mpp_is_reported_when_the_format_records_it(self, slide):
        assert slide.mpp == (None if self.mpp is None else pytest.approx(self.mpp))

    def test_level_for_picks_the_coarsest_level_at_least_as_fine_as_asked(self, slide):
        last = len(slide.levels) - 1
        by_downsample = {0.5: 0, 1: 0, 3.9: 0, 3.99: 1, 4: 1, 15: 1, 16.1: 2, 1000: 2}
        for ds, level in by_downsample.items():
            assert slide.level_for(downsample=ds) == min(level, last), ds
        if self.mpp is None:
            with pytest.raises(ValueError, match="mpp"):
                slide.level_for(mpp=1.0)
        else:
            for mpp, level in {0.1: 0, MPP: 0, 1.0: 1, 4.04: 2}.items():
                assert slide.level_for(mpp=mpp) == min(level, last), mpp

    # -- pixels ----------------------------------------------------------------
    def test_each_level_holds_the_known_pixels(self, slide, pyramid):
        for level, expected in enumerate(pyramid):
            got = whole_level(slide, level)
            assert got.dtype == np.uint8 and got.shape == expected.shape
            if self.max_mean_error:
                assert np.abs(got.astype(int) - expected).mean() <= self.max_mean_error, f"level {level}"
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"level {level}")

    @pytest.mark.parametrize("box", list(BOXES))
    def test_region_is_level_pixels_inside_and_zero_outside(self, slide, pyramid, box):
        """Lossy formats are compared with their own whole level: regions must agree with it exactly."""
        top_left, size = BOXES[box]
        for level, known in enumerate(pyramid):
            reference = whole_level(slide, level) if self.max_mean_error else known
            got = slide.read_region(level, top_left, size)
            np.testing.assert_array_equal(got, crop_with_zeros(reference, top_left, size), err_msg=f"level {level}")

    def test_writing_into_a_region_leaves_the_slide_unchanged(self, slide):
        whole_rows = [(10, lv.shape[1]) for lv in slide.levels]  # whole rows: the likeliest to be a view
        before = [slide.read_region(level, (0, 0), size) for level, size in enumerate(whole_rows)]
        for level, size in enumerate(whole_rows):
            slide.read_region(level, (0, 0), size)[:] = 0
        for level, size in enumerate(whole_rows):
            np.testing.assert_array_equal(slide.read_region(level, (0, 0), size), before[level], err_msg=f"level {level}")
        assert all(b.any() for b in before)

    def test_to_dask_equals_the_whole_level_and_is_chunked_on_tiles(self, slide):
        for level in range(len(slide.levels)):
            lazy = slide.to_dask(level)
            (th, tw), (H, W) = slide.tile_shape(level), slide.levels[level].shape
            assert lazy.shape == (H, W, 3) and lazy.dtype == np.uint8
            assert all(c == th for c in lazy.chunks[0][:-1]) and all(c == tw for c in lazy.chunks[1][:-1])
            np.testing.assert_array_equal(lazy.compute(scheduler="threads"), whole_level(slide, level))

    def test_thumbnail_fits_the_box_keeps_the_aspect_and_shows_the_image(self, slide):
        thumb = slide.thumbnail(96)
        assert thumb.shape == (64, 96, 3) and thumb.dtype == np.uint8
        coarse = known_levels()[-1]  # 64 x 96: the known image at the thumbnail's size
        assert np.abs(thumb.astype(int) - coarse).mean() <= self.max_mean_error + THUMBNAIL_MEAN_ERROR

    # -- workers and threads ---------------------------------------------------------
    def test_a_pickled_slide_reopens_with_equal_pixels(self, slide):
        clone = pickle.loads(pickle.dumps(slide))
        assert type(clone) is type(slide) and clone.backend == slide.backend == self.backend
        assert clone.source == slide.source and clone.levels == slide.levels
        box = ((200, 300), (300, 400))
        np.testing.assert_array_equal(clone.read_region(0, *box), slide.read_region(0, *box))

    def test_read_tile_from_8_threads_matches_serial_reads(self, slide):
        rows, cols = slide.tile_grid(0)
        tiles = [(ty, tx) for ty in range(rows) for tx in range(cols)] * 4
        random.Random(0).shuffle(tiles)
        serial = {t: slide.read_tile(0, *t) for t in set(tiles)}
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(lambda t: slide.read_tile(0, *t), tiles))
        for t, pixels in zip(tiles, threaded):
            np.testing.assert_array_equal(pixels, serial[t], err_msg=str(t))

    def test_a_slide_closed_by_its_with_block_is_reopened_or_refused(self, source):
        box = ((5, 5), (30, 30))
        with self.open(source) as slide:
            before = slide.read_region(0, *box)
        if self.reopens_after_close:
            np.testing.assert_array_equal(slide.read_region(0, *box), before)
        else:
            with pytest.raises(SlideError, match=re.escape(slide.name)):
                slide.read_region(0, *box)

    # -- errors ----------------------------------------------------------------
    def test_a_level_or_tile_outside_the_slide_is_an_index_error_naming_it(self, slide):
        with pytest.raises(IndexError, match=re.escape(f"{slide.name}: level 7 does not exist")):
            slide.read_region(7, (0, 0), (8, 8))
        rows = slide.tile_grid(0)[0]
        with pytest.raises(IndexError, match=re.escape(f"{slide.name}: tile ({rows}, 0) outside level 0")):
            slide.read_tile(0, rows, 0)

    def test_a_source_in_another_format_raises_slide_error_naming_it(self, tmp_path):
        source = self.not_a_slide(tmp_path)
        with pytest.raises(SlideError) as error:
            self.open(source)
        assert str(error.value).startswith(f"{source_name(source)}: ")

    def test_a_damaged_tile_raises_slide_error_naming_the_source_and_other_tiles_still_read(self, slide, source, tmp_path):
        if not self.supports_damage:
            pytest.skip(f"{type(self).__name__} cannot damage a tile of its sources")
        damaged = self.open(self.damaged_copy(source, tmp_path, DAMAGED_TILE))
        y, x, _, _ = damaged.tile_box(0, *DAMAGED_TILE)
        with pytest.raises(SlideError) as error:
            damaged.read_region(0, (y + 10, x + 10), (20, 20))
        message, cause = str(error.value), error.value.__cause__
        assert message.startswith(f"{damaged.name}: ") and "level 0" in message
        assert cause is not None and str(cause) in message, "the error carries the format's reason"
        first_tile = ((0, 0), damaged.tile_shape(0))
        np.testing.assert_array_equal(damaged.read_region(0, *first_tile), slide.read_region(0, *first_tile))


def whole_level(slide: Slide, level: int) -> np.ndarray:
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


def source_name(source: Any) -> str:
    """How errors name a source: its path, or ``<array>`` for an in-memory image."""
    return "<array>" if isinstance(source, np.ndarray) else os.fspath(source)
