"""Bad sources fail with the path and the reason, never a crash or a bare library error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsi_ats.readers import SlideError, open_slide


def test_a_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.svs"):
        open_slide(tmp_path / "nothing.svs")


def test_a_missing_url_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr"):
        open_slide((tmp_path / "nothing.zarr").as_uri())


def write_empty(path, _):
    path.write_bytes(b"")


def write_text(path, _):
    path.write_text("this is not a slide\n")


def write_png(path, _):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path, format="PNG")


def truncation(fraction):
    def write(path, slide_paths):
        data = slide_paths["svs"].read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return write


@pytest.mark.parametrize(
    "write, reason",
    [
        (write_empty, "not a TIFF"),
        (write_text, "not a TIFF"),
        (write_png, "not a TIFF"),
        (truncation(0.5), "truncated"),
        (truncation(0.99), "Short read"),
    ],
    ids=["empty", "text", "png", "truncated-half", "truncated-tail"],
)
def test_an_unreadable_file_named_svs_raises_slide_error_naming_it(tmp_path, slide_paths, write, reason):
    path = tmp_path / "bad.svs"
    write(path, slide_paths)
    with pytest.raises(SlideError, match=reason) as error:
        open_slide(path)
    assert str(error.value).startswith(f"{path}: ")


def test_an_unknown_backend_is_a_value_error(slide_paths):
    with pytest.raises(ValueError, match="unknown backend 'pillow'"):
        open_slide(slide_paths["svs"], backend="pillow")


def test_a_forced_backend_that_cannot_read_the_source_raises_slide_error(slide_paths):
    with pytest.raises(SlideError, match="known-04.ome.zarr"):
        open_slide(slide_paths["ome-zarr-0.4"], backend="tiff")


@pytest.mark.parametrize(
    "array",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)],
    ids=["2d", "float", "empty"],
)
def test_an_array_that_is_not_an_rgb_image_is_refused(array):
    with pytest.raises(SlideError, match="<array>"):
        open_slide(array)
