"""The OpenSlide backend: the reader contract on an Aperio file, and handles that OpenSlide latches after an error."""

from __future__ import annotations

import openslide
import pytest
from slide_factories import TILE, SvsFiles, damage_tiff_tile

from wsi_ats.readers import SlideError
from wsi_ats.testing.readers import DAMAGED_TILE, SlideContract


class TestOpenSlideSvs(SvsFiles, SlideContract):
    backend = "openslide"
    chosen_by_open_slide = False  # the TIFF fast path reads Aperio files (see `wsi_ats.readers.open_slide`)

    def test_a_latched_handle_is_replaced(self, source, tmp_path):
        """OpenSlide refuses every read on a handle after one error; the slide must reopen instead."""
        path = str(damage_tiff_tile(source, tmp_path / "latch.svs", DAMAGED_TILE))
        inside_damage = ((TILE + 10, 10), (20, 20))
        latched = openslide.OpenSlide(path)
        with pytest.raises(openslide.OpenSlideError):
            latched.read_region(inside_damage[0][::-1], 0, inside_damage[1])
        with pytest.raises(openslide.OpenSlideError):
            latched.read_region((0, 0), 0, (20, 20))
        slide = self.open(path)
        with pytest.raises(SlideError):
            slide.read_region(0, *inside_damage)
        assert slide.read_region(0, (0, 0), (20, 20)).any()
