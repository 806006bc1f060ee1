"""DICOM WSI through OpenSlide 4: the reader contract on a series folder, pixel-equality with the TIFF twin, discovery.

The series are written by `dicom_factory.write_dicom_series` from a JPEG TIFF, its
tiles copied without re-encoding, so the DICOM copy must read exactly as its TIFF twin.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
import wsidicom
from dicom_factory import jpeg_frames, write_dicom_series
from slide_factories import JPEG_MEAN_ERROR, TILE, write_jpeg_tiff

from wsi_ats.discover import discover
from wsi_ats.readers import SlideError, open_slide
from wsi_ats.readers.openslide import OpenSlideSlide
from wsi_ats.synth import make_slide
from wsi_ats.testing.known_image import MPP
from wsi_ats.testing.readers import SlideContract


def whole_levels(slide):
    return [slide.read_region(level, (0, 0), lv.shape) for level, lv in enumerate(slide.levels)]


class TestDicomSeries(SlideContract):
    """The known pyramid as a DICOM series folder (JPEG frames from `write_jpeg_tiff`), read by OpenSlide."""

    backend = "openslide"
    tile = (TILE, TILE)
    max_mean_error = JPEG_MEAN_ERROR
    supports_damage = True

    def write(self, directory, pyramid):
        twin = write_jpeg_tiff(directory / "twin.svs", pyramid)
        return write_dicom_series(twin, directory / "known-dicom", mpp=MPP, name="known")

    def damaged_copy(self, source, directory, tile):
        """A copy whose level-0 frame ``tile`` starts with zeros instead of a JPEG header."""
        copy = shutil.copytree(source, directory / "damaged-dicom")
        twin = source.parent / "twin.svs"
        with tifffile.TiffFile(twin) as tf:
            page = tf.pages.first
            columns = -(-page.imagewidth // page.tilewidth)
            frame = jpeg_frames(page, twin.read_bytes())[tile[0] * columns + tile[1]]
        level0 = copy / "level-0.dcm"
        data = level0.read_bytes()
        at = data.index(frame)
        level0.write_bytes(data[:at] + bytes(16) + data[at + 16 :])
        return copy

    def test_the_series_reads_exactly_as_its_tiff_twin(self, slide, source):
        twin = open_slide(source.parent / "twin.svs")
        assert slide.properties["openslide.vendor"] == "dicom" and slide.levels == twin.levels
        for level, (got, expected) in enumerate(zip(whole_levels(slide), whole_levels(twin))):
            np.testing.assert_array_equal(got, expected, err_msg=f"level {level}")

    def test_any_one_dcm_file_opens_the_whole_series_and_names_itself(self, slide, source):
        one = open_slide(source / "level-2.dcm")
        assert one.backend == "openslide" and one.source == str(source / "level-2.dcm") and one.levels == slide.levels
        np.testing.assert_array_equal(one.read_region(0, (100, 130), (300, 400)), slide.read_region(0, (100, 130), (300, 400)))

    def test_an_independent_dicom_reader_sees_the_same_series(self, slide, source):
        """wsidicom reads the files too: they are DICOM WSI, not only something OpenSlide tolerates."""
        with wsidicom.WsiDicom.open(source) as reference:
            assert len(reference.levels) == len(slide.levels)
            assert reference.levels[0].mpp.width == pytest.approx(MPP)
            H, W = slide.levels[0].shape
            np.testing.assert_array_equal(np.asarray(reference.read_region((0, 0), 0, (W, H)))[..., :3], whole_levels(slide)[0])


def test_a_dicom_copy_of_a_synthetic_slide_reads_pixel_equal_to_its_tiff_twin(tmp_path):
    twin = tmp_path / "synthetic.tiff"
    make_slide(twin, 1024, positive=True, seed=3)
    folder = write_dicom_series(twin, tmp_path / "synthetic-dicom", mpp=0.25, name="synthetic")
    tiff, dicom = open_slide(twin), open_slide(folder)
    assert (tiff.backend, dicom.backend) == ("tiff", "openslide")
    assert dicom.levels == tiff.levels and dicom.mpp == pytest.approx(tiff.mpp) == pytest.approx(0.25)
    for level, (got, expected) in enumerate(zip(whole_levels(dicom), whole_levels(tiff))):
        np.testing.assert_array_equal(got, expected, err_msg=f"level {level}")


def test_discover_finds_a_series_folder_as_one_slide(tmp_path, known_pyramid):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_jpeg_tiff(cohort / "case-a.svs", known_pyramid)
    write_dicom_series(cohort / "case-a.svs", cohort / "case-b", mpp=MPP, name="case-b")
    found = discover([cohort])
    assert [s.slide_id for s in found.slides] == ["case-a", "case-b"]
    assert any("3 .dcm files read as one DICOM slide" in note for note in found.notes)
    series = open_slide(found.slides[1].path)
    assert series.properties["openslide.vendor"] == "dicom" and len(series.levels) == 3


def test_a_folder_without_dicom_wsi_is_refused_naming_it(tmp_path):
    folder = tmp_path / "not-dicom"
    folder.mkdir()
    (folder / "notes.dcm").write_text("not DICOM")
    with pytest.raises(SlideError, match=f"^{folder}: a folder without a DICOM WSI"):
        OpenSlideSlide(str(folder))
    with pytest.raises(SlideError, match=f"^{folder}: not a zarr group"):
        open_slide(folder)
