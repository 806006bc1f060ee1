"""The TIFF fast path reads what OpenSlide reads, pixel for pixel, without OpenSlide."""

from __future__ import annotations

import shutil

import numpy as np
import openslide
import pytest
import tifffile
from slide_factories import APERIO_DESCRIPTION, TILE, write_jpeg_tiff

from wsi_ats.readers import SlideError, open_slide

UNALIGNED = ((37, 101), (300, 500))


@pytest.fixture(scope="module")
def jpeg_tiffs(tmp_path_factory, slide_paths, known_pyramid):
    """JPEG flavours of the known pyramid: OpenSlide reads the first two as Aperio, the last as generic-tiff."""
    directory = tmp_path_factory.mktemp("jpeg")
    return {
        "aperio-rgb-jpeg": slide_paths["svs"],
        "aperio-ycbcr-jpeg": write_jpeg_tiff(directory / "ycbcr.svs", known_pyramid, ycbcr=True),
        "generic-tiff-ycbcr-jpeg": write_jpeg_tiff(
            directory / "generic.tif", known_pyramid, ycbcr=True, description=None
        ),
    }


@pytest.fixture(scope="module")
def rgba_tiff(tmp_path_factory, known_image):
    """Generic tiled TIFF with straight alpha: a transparent block and a half-transparent one."""
    rgba = np.dstack([known_image[:512, :768], np.full((512, 768), 255, np.uint8)])
    rgba[100:200, 50:300, 3] = 0
    rgba[300:350, 300:400, 3] = 128
    path = tmp_path_factory.mktemp("rgba") / "rgba.tif"
    tifffile.imwrite(
        path, rgba, tile=(TILE, TILE), photometric="rgb", compression="zlib", extrasamples=["unassalpha"], metadata=None
    )
    return path


def corrupt_copy(src, dst, tile_index: int):
    """Copy ``src`` with the first bytes of level-0 tile ``tile_index`` zeroed (its JPEG header)."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tf:
        offset = tf.pages[0].dataoffsets[tile_index]
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(bytes(16))
    return dst


@pytest.mark.parametrize("kind", ["aperio-rgb-jpeg", "aperio-ycbcr-jpeg", "generic-tiff-ycbcr-jpeg"])
def test_fast_path_pixels_are_bit_identical_to_openslide(kind, jpeg_tiffs):
    path = jpeg_tiffs[kind]
    fast, reference = open_slide(path), open_slide(path, backend="openslide")
    assert fast.backend == "tiff" and fast.levels == reference.levels
    assert fast.properties["openslide.vendor"] == reference.properties["openslide.vendor"] == kind.rsplit("-", 2)[0]
    for level, lv in enumerate(fast.levels):
        for top_left, size in [((0, 0), lv.shape), UNALIGNED]:
            np.testing.assert_array_equal(
                fast.read_region(level, top_left, size), reference.read_region(level, top_left, size)
            )


def test_subifd_ome_tiff_offers_levels_openslide_cannot_see(slide_paths):
    path = slide_paths["ome-tiff"]
    fast, reference = open_slide(path), open_slide(path, backend="openslide")
    assert len(reference.levels) == 1 and len(fast.levels) == 3
    np.testing.assert_array_equal(fast.read_region(0, *UNALIGNED), reference.read_region(0, *UNALIGNED))


def test_aperio_metadata_matches_openslides_properties(slide_paths):
    fast = open_slide(slide_paths["svs"])
    reference = open_slide(slide_paths["svs"], backend="openslide")
    assert fast.properties["tiff.ImageDescription"] == APERIO_DESCRIPTION
    shared = ["aperio.AppMag", "aperio.MPP", "openslide.vendor", "openslide.objective-power", "openslide.level-count"]
    shared += [f"openslide.level[{i}].{k}" for i in range(3) for k in ("width", "height", "tile-width", "tile-height")]
    assert {k: fast.properties[k] for k in shared} == {k: reference.properties[k] for k in shared}
    for axis in "xy":
        assert float(fast.properties[f"openslide.mpp-{axis}"]) == float(reference.properties[f"openslide.mpp-{axis}"])


def test_ome_tiff_resolution_comes_from_the_ome_xml(slide_paths):
    slide = open_slide(slide_paths["ome-tiff"])
    assert slide.properties["openslide.mpp-x"] == "0.25" and slide.mpp == pytest.approx(0.25)


def test_transparent_pixels_become_white_as_in_openslide(rgba_tiff):
    fast, reference = open_slide(rgba_tiff), open_slide(rgba_tiff, backend="openslide")
    assert fast.backend == "tiff"
    got = fast.read_region(0, (0, 0), fast.levels[0].shape)
    np.testing.assert_array_equal(got, reference.read_region(0, (0, 0), reference.levels[0].shape))
    assert (got[100:200, 50:300] == 255).all()


@pytest.mark.parametrize("backend", [None, "openslide"])
def test_a_corrupt_tile_raises_slide_error_and_other_tiles_still_read(backend, slide_paths, tmp_path):
    path = corrupt_copy(slide_paths["svs"], tmp_path / "corrupt.svs", tile_index=7)  # tile (1, 1) of 4 x 6
    slide = open_slide(path, backend=backend)
    with pytest.raises(SlideError, match="corrupt.svs.*level 0") as error:
        slide.read_region(0, (TILE + 10, TILE + 10), (20, 20))
    assert "JPEG" in str(error.value)
    reference = open_slide(slide_paths["svs"], backend=backend)
    first_tile = ((0, 0), (TILE, TILE))
    np.testing.assert_array_equal(slide.read_region(0, *first_tile), reference.read_region(0, *first_tile))


def test_a_latched_openslide_handle_is_replaced(slide_paths, tmp_path):
    """OpenSlide refuses every read on a handle after one error; the slide must reopen instead."""
    path = corrupt_copy(slide_paths["svs"], tmp_path / "latch.svs", tile_index=7)
    slide = open_slide(path, backend="openslide")
    latched = openslide.OpenSlide(path)
    with pytest.raises(openslide.OpenSlideError):
        latched.read_region((TILE + 10, TILE + 10), 0, (20, 20))
    with pytest.raises(openslide.OpenSlideError):
        latched.read_region((0, 0), 0, (20, 20))
    with pytest.raises(SlideError):
        slide.read_region(0, (TILE + 10, TILE + 10), (20, 20))
    assert slide.read_region(0, (0, 0), (20, 20)).any()


def test_stripped_tiff_reads_through_tifffile_with_strips_as_tiles(slide_paths, known_image):
    slide = open_slide(slide_paths["stripped-tiff"])
    assert slide.backend == "tiff" and slide.tile_grid(0) == (known_image.shape[0] // 64, 1)
    np.testing.assert_array_equal(slide.read_tile(0, 3, 0), known_image[192:256])


def test_an_ome_tiff_with_one_page_per_channel_is_read_as_rgb(tmp_path, known_image):
    path = tmp_path / "planes.ome.tif"
    planes = np.moveaxis(known_image, -1, 0)
    tifffile.imwrite(path, planes, tile=(TILE, TILE), photometric="minisblack", metadata={"axes": "CYX"})
    slide = open_slide(path)
    np.testing.assert_array_equal(slide.read_region(0, (0, 0), slide.levels[0].shape), known_image)
