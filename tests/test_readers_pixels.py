"""Samples that are not 8-bit RGB: RGBA, 16-bit and grey become RGB by one rule in every backend; float and fluorescence are refused.

The rule is libtiff's, so the TIFF fast path, OpenSlide and zarr stores agree bit for
bit on the same samples: 16-bit maps by ``(v + 128) // 257``; straight alpha is
premultiplied as ``(v * a + 127) // 255`` and composited onto white (``+ 255 - a``).
Images are 300 x 400 random samples in 256-pixel tiles, so edge tiles are read too.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from wsi_ats.readers import SlideError, open_slide
from wsi_ats.readers.pixels import UnsupportedPixels

SHAPE = (300, 400)
TILE = 256


def write_tiff(path, data, **kwargs):
    tifffile.imwrite(path, data, tile=(TILE, TILE), compression="zlib", metadata=None, **kwargs)
    return path


def write_zarr(path, data):
    """A plain zarr level group: array ``"0"`` shaped ``H x W x C``."""
    zarr.open_group(str(path), mode="w").create_array("0", data=data, chunks=(TILE, TILE, data.shape[-1]))
    return path


def whole(source, backend=None):
    slide = open_slide(source, backend=backend)
    return slide.read_region(0, (0, 0), slide.levels[0].shape)


def readers(tiff):
    """Level 0 of ``tiff`` as open_slide reads it (the fast path) and as OpenSlide does."""
    assert open_slide(tiff).backend == "tiff"
    return whole(tiff), whole(tiff, "openslide")


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (*SHAPE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def alpha():
    """Random alpha with a fully transparent and a fully opaque block."""
    a = np.random.default_rng(1).integers(0, 256, (*SHAPE, 1), dtype=np.uint8)
    a[10:60, 20:300] = 0
    a[200:290, 100:390] = 255
    return a


def on_white(premultiplied, alpha):
    return (premultiplied.astype(int) + 255 - alpha).astype(np.uint8)


def test_straight_alpha_is_composited_onto_white_alike_by_the_fast_path_openslide_and_zarr(tmp_path, rgb, alpha):
    rgba = np.dstack([rgb, alpha])
    expected = on_white((rgb.astype(int) * alpha + 127) // 255, alpha)
    fast, reference = readers(write_tiff(tmp_path / "straight.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]))
    stored = whole(write_zarr(tmp_path / "straight.zarr", rgba))
    for name, got in [("tiff", fast), ("openslide", reference), ("zarr", stored)]:
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert (fast[10:60, 20:300] == 255).all() and np.array_equal(fast[200:290, 100:390], rgb[200:290, 100:390])


@pytest.mark.parametrize("extrasample", ["assocalpha", "unspecified"])
def test_associated_or_unspecified_alpha_is_not_multiplied_again(tmp_path, rgb, alpha, extrasample):
    """libtiff reads an unspecified fourth sample as associated alpha; so must the fast path."""
    premultiplied = np.minimum(rgb, alpha)
    path = write_tiff(tmp_path / "associated.tif", np.dstack([premultiplied, alpha]), photometric="rgb", extrasamples=[extrasample])
    fast, reference = readers(path)
    np.testing.assert_array_equal(fast, on_white(premultiplied, alpha))
    np.testing.assert_array_equal(reference, fast)


def test_16_bit_rgb_and_rgba_map_by_the_full_range_as_libtiff_does(tmp_path, alpha):
    samples = np.random.default_rng(2).integers(0, 65536, (*SHAPE, 3), dtype=np.uint16)
    samples[0, :4, 0] = (0, 127, 128, 65535)  # -> 0, 0, 1, 255; the high byte would give 0, 0, 0, 255
    expected = ((samples.astype(int) + 128) // 257).astype(np.uint8)
    fast, reference = readers(write_tiff(tmp_path / "rgb16.tif", samples, photometric="rgb"))
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(whole(write_zarr(tmp_path / "rgb16.zarr", samples)), expected)
    rgba = np.dstack([samples, alpha.astype(np.uint16) * 257])
    fast, reference = readers(write_tiff(tmp_path / "rgba16.tif", rgba, photometric="rgb", extrasamples=["unassalpha"]))
    np.testing.assert_array_equal(fast, reference)
    np.testing.assert_array_equal(fast, on_white((expected.astype(int) * alpha + 127) // 255, alpha))


def test_grey_is_replicated_to_rgb_and_16_bit_grey_maps_by_the_full_range(tmp_path, rgb):
    """8-bit grey matches OpenSlide; for 16-bit grey libtiff takes the high byte and garbles edge tiles, so it is not compared."""
    grey = rgb[..., 0]
    fast, reference = readers(write_tiff(tmp_path / "grey.tif", grey, photometric="minisblack"))
    np.testing.assert_array_equal(fast, np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(reference, fast)
    grey16 = np.minimum(grey.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)  # nearest to grey, not its high byte
    np.testing.assert_array_equal(whole(write_tiff(tmp_path / "grey16.tif", grey16, photometric="minisblack")), fast)
    np.testing.assert_array_equal(whole(write_zarr(tmp_path / "grey16.zarr", grey16[..., None])), fast)


@pytest.fixture(params=["tiff", "tiff-forced-openslide", "zarr"])
def write_any(request, tmp_path):
    """Writes samples as a TIFF (opened by open_slide, or with backend="openslide") or a zarr group; returns its opener."""

    def write(data):
        if request.param == "zarr":
            path = write_zarr(tmp_path / "image.zarr", data)
        else:
            path = write_tiff(tmp_path / "image.tif", data, photometric="minisblack", planarconfig="contig")
        backend = "openslide" if request.param == "tiff-forced-openslide" else None
        return path, lambda: open_slide(path, backend=backend)

    return write


def test_float_samples_are_refused_naming_the_file_the_type_and_the_fix(write_any):
    path, open_ = write_any(np.random.default_rng(3).random((*SHAPE, 3), np.float32))
    with pytest.raises(UnsupportedPixels, match="float32.*convert the image to 8-bit RGB") as error:
        open_()
    assert str(error.value).startswith(f"{path}: ") and isinstance(error.value, SlideError)


@pytest.mark.parametrize("channels", [2, 5])
def test_fluorescence_channels_are_refused_not_shown_as_grey(write_any, channels):
    """OpenSlide reads a 2- or 5-sample TIFF as its first channel in grey: open_slide must not."""
    path, open_ = write_any(np.zeros((*SHAPE, channels), np.uint8))
    with pytest.raises(UnsupportedPixels, match=f"{channels} channels: multichannel fluorescence is not RGB") as error:
        open_()
    assert str(error.value).startswith(f"{path}: ")


def test_three_samples_a_tiff_declares_grey_are_fluorescence_not_rgb(tmp_path, rgb):
    """Photometric minisblack with 3 samples: three channels of grey levels (DAPI, FITC, ...), whatever their count."""
    path = write_tiff(tmp_path / "three-grey.tif", rgb, photometric="minisblack", planarconfig="contig")
    for backend in (None, "openslide"):
        with pytest.raises(UnsupportedPixels, match="3 channels: multichannel fluorescence is not RGB"):
            open_slide(path, backend=backend)
