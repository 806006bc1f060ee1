"""`open_slide`: bad sources fail with the path and the reason, never a crash or a bare library error.

Which backend it picks for each format is part of the reader contract (`wsi_ats.testing.readers`).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image
from slide_factories import write_jpeg_tiff

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
    def write(path, pyramid):
        data = write_jpeg_tiff(path, pyramid).read_bytes()
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
def test_an_unreadable_file_named_svs_raises_slide_error_naming_it(tmp_path, known_pyramid, write, reason):
    path = tmp_path / "bad.svs"
    write(path, known_pyramid)
    with pytest.raises(SlideError, match=reason) as error:
        open_slide(path)
    assert str(error.value).startswith(f"{path}: ")


def test_an_unknown_backend_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'pillow'"):
        open_slide(tmp_path, backend="pillow")


def test_a_forced_backend_that_cannot_read_the_source_raises_slide_error(tmp_path):
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(SlideError, match="group.zarr: cannot read"):
        open_slide(tmp_path / "group.zarr", backend="tiff")
