"""The TIFF fast path: the reader contract on SVS, OME-TIFF and stripped files, and OpenSlide's pixels without OpenSlide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from slide_factories import (
    APERIO_DESCRIPTION,
    TILE,
    SvsFiles,
    damage_tiff_tile,
    write_jpeg_tiff,
    write_ome_tiff,
    write_stripped_tiff,
)

from wsi_ats.readers import open_slide
from wsi_ats.testing.readers import SlideContract

UNALIGNED = ((37, 101), (300, 500))


class TestSvs(SvsFiles, SlideContract):
    """Aperio JPEG tiles, decoded tile by tile."""

    backend = "tiff"

    def test_aperio_metadata_matches_openslides_properties(self, slide, source):
        reference = open_slide(source, backend="openslide")
        assert slide.properties["tiff.ImageDescription"] == APERIO_DESCRIPTION
        shared = ["aperio.AppMag", "aperio.MPP", "openslide.vendor", "openslide.objective-power", "openslide.level-count"]
        shared += [f"openslide.level[{i}].{k}" for i in range(3) for k in ("width", "height", "tile-width", "tile-height")]
        assert {k: slide.properties[k] for k in shared} == {k: reference.properties[k] for k in shared}
        for axis in "xy":
            mpp = f"openslide.mpp-{axis}"
            assert float(slide.properties[mpp]) == float(reference.properties[mpp])


class TestOmeTiff(SlideContract):
    """zlib tiles, reduced levels in SubIFDs, resolution in the OME-XML."""

    backend = "tiff"
    tile = (TILE, TILE)
    supports_damage = True

    def write(self, directory, pyramid):
        return write_ome_tiff(directory / "known.ome.tif", pyramid)

    def damaged_copy(self, source, directory, tile):
        return damage_tiff_tile(source, directory / "damaged.ome.tif", tile)

    def test_subifd_levels_are_offered_though_openslide_sees_one(self, slide, source):
        reference = open_slide(source, backend="openslide")
        assert len(reference.levels) == 1 and len(slide.levels) == 3
        np.testing.assert_array_equal(slide.read_region(0, *UNALIGNED), reference.read_region(0, *UNALIGNED))

    def test_resolution_comes_from_the_ome_xml(self, slide):
        assert slide.properties["openslide.mpp-x"] == "0.25" and slide.mpp == pytest.approx(0.25)


class TestStrippedTiff(SlideContract):
    """One level in strips of 64 rows: read through tifffile's zarr view, a strip for a tile."""

    backend = "tiff"
    tile = (64, 1536)
    n_levels = 1
    mpp = None
    supports_damage = True

    def write(self, directory, pyramid):
        return write_stripped_tiff(directory / "known-strips.tif", pyramid[0])

    def damaged_copy(self, source, directory, tile):
        return damage_tiff_tile(source, directory / "damaged-strips.tif", tile)

    def test_a_tile_is_one_strip(self, slide, pyramid):
        assert slide.tile_grid(0) == (pyramid[0].shape[0] // 64, 1)
        np.testing.assert_array_equal(slide.read_tile(0, 3, 0), pyramid[0][192:256])


@pytest.fixture(scope="module")
def jpeg_tiffs(tmp_path_factory, known_pyramid):
    """JPEG flavours of the known pyramid: OpenSlide reads the first two as Aperio, the last as generic-tiff."""
    directory = tmp_path_factory.mktemp("jpeg")
    return {
        "aperio-rgb-jpeg": write_jpeg_tiff(directory / "rgb.svs", known_pyramid),
        "aperio-ycbcr-jpeg": write_jpeg_tiff(directory / "ycbcr.svs", known_pyramid, ycbcr=True),
        "generic-tiff-ycbcr-jpeg": write_jpeg_tiff(directory / "generic.tif", known_pyramid, ycbcr=True, description=None),
    }


@pytest.fixture(scope="module")
def rgba_tiff(tmp_path_factory, known_image):
    """Generic tiled TIFF with straight alpha: a transparent block and a half-transparent one."""
    rgba = np.dstack([known_image[:512, :768], np.full((512, 768), 255, np.uint8)])
    rgba[100:200, 50:300, 3] = 0
    rgba[300:350, 300:400, 3] = 128
    path = tmp_path_factory.mktemp("rgba") / "rgba.tif"
    tifffile.imwrite(path, rgba, tile=(TILE, TILE), photometric="rgb", compression="zlib", extrasamples=["unassalpha"], metadata=None)
    return path


@pytest.mark.parametrize("kind", ["aperio-rgb-jpeg", "aperio-ycbcr-jpeg", "generic-tiff-ycbcr-jpeg"])
def test_fast_path_pixels_are_bit_identical_to_openslide(kind, jpeg_tiffs):
    path = jpeg_tiffs[kind]
    fast, reference = open_slide(path), open_slide(path, backend="openslide")
    assert fast.backend == "tiff" and fast.levels == reference.levels
    assert fast.properties["openslide.vendor"] == reference.properties["openslide.vendor"] == kind.rsplit("-", 2)[0]
    for level, lv in enumerate(fast.levels):
        for top_left, size in [((0, 0), lv.shape), UNALIGNED]:
            np.testing.assert_array_equal(fast.read_region(level, top_left, size), reference.read_region(level, top_left, size))


def test_transparent_pixels_become_white_as_in_openslide(rgba_tiff):
    fast, reference = open_slide(rgba_tiff), open_slide(rgba_tiff, backend="openslide")
    assert fast.backend == "tiff"
    got = fast.read_region(0, (0, 0), fast.levels[0].shape)
    np.testing.assert_array_equal(got, reference.read_region(0, (0, 0), reference.levels[0].shape))
    assert (got[100:200, 50:300] == 255).all()


def test_an_ome_tiff_with_one_page_per_channel_is_read_as_rgb(tmp_path, known_image):
    path = tmp_path / "planes.ome.tif"
    planes = np.moveaxis(known_image, -1, 0)
    tifffile.imwrite(path, planes, tile=(TILE, TILE), photometric="minisblack", metadata={"axes": "CYX"})
    slide = open_slide(path)
    np.testing.assert_array_equal(slide.read_region(0, (0, 0), slide.levels[0].shape), known_image)
