"""OME-Zarr and plain zarr groups: the reader contract, layouts, units, sample types and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from slide_factories import TILE, write_ome_zarr, write_plain_zarr

from wsi_ats.readers import SlideError, open_slide
from wsi_ats.testing.known_image import MPP
from wsi_ats.testing.readers import SlideContract


def write_ome_by_hand(path, levels, axes, scales, *, paths=None, chunks=None, overall_scale=None, omero=None):
    """An OME-Zarr 0.4 group written with zarr alone, for layouts ome-zarr's writer refuses to write."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for level, scale, name in zip(levels, scales, paths or [f"level{i}" for i in range(len(levels))]):
        group.create_array(name, data=level, chunks=chunks or level.shape)
        datasets.append({"path": name, "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    multiscale = {"version": "0.4", "axes": axes, "datasets": datasets}
    if overall_scale:
        multiscale["coordinateTransformations"] = [{"type": "scale", "scale": overall_scale}]
    group.attrs.update({"multiscales": [multiscale], **({"omero": omero} if omero else {})})
    return path


def space(name, unit="micrometer"):
    return {"name": name, "type": "space", "unit": unit}


CHANNEL = {"name": "c", "type": "channel"}
YXC = [space("y"), space("x"), CHANNEL]


def damage_chunk(store: Path, array: str, chunk: tuple[int, ...]) -> None:
    """Overwrite one chunk of ``store/array`` with bytes its codec cannot decode."""
    key = zarr.open_array(str(store / array), mode="r").metadata.encode_chunk_key(chunk)
    (store / array / key).write_bytes(b"not a chunk")


class ZarrContract(SlideContract):
    """What the zarr stores below share: 256-pixel chunks, compressed, so a garbled chunk cannot decode."""

    backend = "zarr"
    tile = (TILE, TILE)
    supports_damage = True
    #: The level-0 array's path in the group, and where y and x sit among its axes.
    level0: str = "s0"
    chunk_axes: str = "cyx"

    def damaged_copy(self, source, directory, tile):
        copy = directory / f"damaged-{source.name}"
        shutil.copytree(source, copy)
        damage_chunk(copy, self.level0, tuple(dict(zip("yx", tile)).get(a, 0) for a in self.chunk_axes))
        return copy


class TestOmeZarr04(ZarrContract):
    def write(self, directory, pyramid):
        return write_ome_zarr(directory / "known-04.ome.zarr", pyramid, "0.4")

    def test_a_file_url_opens_like_the_directory(self, source, pyramid):
        url = source.as_uri()
        slide = open_slide(url)
        assert url.startswith("file://") and slide.source == url and slide.backend == "zarr"
        np.testing.assert_array_equal(slide.read_region(1, (0, 0), slide.levels[1].shape), pyramid[1])


class TestOmeZarr05(ZarrContract):
    def write(self, directory, pyramid):
        return write_ome_zarr(directory / "known-05.ome.zarr", pyramid, "0.5")


class TestPlainZarr(ZarrContract):
    mpp = None
    level0 = "0"
    chunk_axes = "yxc"

    def write(self, directory, pyramid):
        return write_plain_zarr(directory / "known.zarr", pyramid)


def test_any_axes_order_with_singleton_z_and_nanometre_units(tmp_path, known_pyramid):
    levels = [p[None] for p in known_pyramid[:2]]  # z, y, x, c
    axes = [space("z"), space("y", "nanometer"), space("x", "nanometer"), CHANNEL]
    scales = [[1, 125, 125, 1], [1, 500, 500, 1]]
    path = write_ome_by_hand(tmp_path / "zyxc.zarr", levels, axes, scales, overall_scale=[1, 2, 2, 1])
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(MPP)  # 125 nm x 2
    assert [lv.downsample for lv in slide.levels] == [1.0, 4.0]
    np.testing.assert_array_equal(slide.read_region(1, (-3, 5), (40, 50))[3:], known_pyramid[1][:37, 5:55])


def test_levels_follow_the_datasets_order_and_paths(tmp_path, known_pyramid):
    scales = [[MPP, MPP, 1], [1, 1, 1], [4, 4, 1]]
    path = write_ome_by_hand(tmp_path / "paths.zarr", known_pyramid, YXC, scales, paths=["z", "m", "a"])
    slide = open_slide(path)
    assert [lv.shape for lv in slide.levels] == [p.shape[:2] for p in known_pyramid]
    np.testing.assert_array_equal(slide.read_region(2, (0, 0), slide.levels[2].shape), known_pyramid[2])


def test_read_tile_reads_one_chunk(tmp_path, known_image):
    cyx = np.moveaxis(known_image, -1, 0)
    axes = [CHANNEL, space("y"), space("x")]
    path = write_ome_by_hand(tmp_path / "chunks.zarr", [cyx], axes, [[1, 1, 1]], chunks=(1, 128, 200))
    slide = open_slide(path)
    assert slide.tile_shape(0) == (128, 200) and slide.tile_grid(0) == (8, 8)
    np.testing.assert_array_equal(slide.read_tile(0, 2, 7), known_image[256:384, 1400:1536])


def test_uint16_samples_without_a_window_map_by_the_full_range_rounded(tmp_path, known_image):
    """65535 is white: ``v * 257 + 100`` is nearest to ``v`` (its high byte is ``v + 1`` for v >= 156)."""
    samples = known_image.astype(np.uint16) * 257 + 100
    path = write_ome_by_hand(tmp_path / "u16.zarr", [samples], YXC, [[1, 1, 1]])
    np.testing.assert_array_equal(open_slide(path).read_region(0, (0, 0), known_image.shape[:2]), known_image)


def test_uint16_samples_follow_the_omero_window(tmp_path, known_image):
    samples = known_image.astype(np.uint16) * 3
    omero = {"channels": [{"window": {"start": 100, "end": 600, "min": 0, "max": 65535}}] * 3}
    path = write_ome_by_hand(tmp_path / "win.zarr", [samples], YXC, [[1, 1, 1]], omero=omero)
    expected = np.clip(np.rint((samples.astype(np.float64) - 100) * 255 / 500), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(open_slide(path).read_region(0, (0, 0), known_image.shape[:2]), expected)


def test_grey_images_become_rgb(tmp_path, known_image):
    grey = known_image[..., 1]
    slide = open_slide(write_ome_by_hand(tmp_path / "grey.zarr", [grey], YXC[:2], [[1, 1]]))
    np.testing.assert_array_equal(slide.read_region(0, (0, 0), grey.shape), np.repeat(grey[..., None], 3, -1))


@pytest.mark.parametrize(
    "data, axes, reason",
    [
        (np.zeros((64, 64, 3), np.float32), YXC, "float32"),
        (np.zeros((2, 64, 64, 3), np.uint8), [space("z"), *YXC], "'z' has 2 planes"),
        (np.zeros((64, 64, 5), np.uint8), YXC, "5 channels: multichannel fluorescence is not RGB"),
        (np.zeros((64, 64, 3), np.uint8), [space("a"), space("b"), CHANNEL], "need y and x"),
    ],
    ids=["float", "z-stack", "five-channels", "no-y-x"],
)
def test_unsupported_layouts_are_refused_with_the_reason(tmp_path, data, axes, reason):
    path = write_ome_by_hand(tmp_path / "bad.zarr", [data], axes, [[1] * data.ndim])
    with pytest.raises(SlideError, match=reason) as error:
        open_slide(path)
    assert str(path) in str(error.value)


def test_a_zarr_group_without_multiscales_or_levels_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("image", data=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SlideError, match="plain.zarr.*multiscales"):
        open_slide(tmp_path / "plain.zarr")


def test_a_directory_that_is_not_zarr_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideError, match="not a zarr group"):
        open_slide(tmp_path)
