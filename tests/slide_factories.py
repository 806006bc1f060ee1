"""The known image written into every slide format by independent writers.

Tests compare what the readers return with `wsi_ats.testing.known_image`, so the
writers here never go through `wsi_ats`: tifffile for TIFFs, ome-zarr's own
writer for OME-Zarr, zarr for plain groups. The reader tests hand them to the
contract (`wsi_ats.testing.readers.SlideContract`); other test modules (fetch,
tissue, pipeline) reuse them through the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import tifffile
import zarr

from wsi_ats.testing.known_image import MPP

#: Tile edge of the tiled formats written here.
TILE = 256
APERIO_DESCRIPTION = "Aperio Image Library v12.0.0 \n256x256 [0,0 256x256] JPEG/RGB Q=90|AppMag = 40|MPP = 0.25"
#: Mean absolute difference allowed between the known image and `write_jpeg_tiff`'s Q90 tiles.
#: JPEG drops fine detail; on the smooth known image it costs 0.09 (level 0) to 0.36 (level 2) grey
#: levels, while a swapped axis or a misplaced tile costs tens.
JPEG_MEAN_ERROR = 1.0


def write_jpeg_tiff(path: Path, pyramid: list[np.ndarray], *, ycbcr: bool = False, description: str | None = APERIO_DESCRIPTION) -> Path:
    """OpenSlide-readable tiled TIFF: 256 JPEG tiles, Q90, reduced-resolution (subfiletype 1) pages.

    Aperio-like with the default ``description``, OpenSlide's generic-tiff without
    one. Photometric RGB JPEG (no colour transform, no chroma subsampling) as the
    Aperio description says, or YCbCr 2x2-subsampled JPEG (tifffile's default) when ``ycbcr``.
    """
    if ycbcr:
        jpeg = {"compressionargs": {"level": 90}}
    else:
        jpeg = {"compressionargs": {"level": 90, "outcolorspace": "RGB"}, "subsampling": (1, 1)}
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(pyramid):
            tw.write(
                level,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                subfiletype=1 if i else 0,
                description=description if i == 0 else None,
                metadata=None,
                **jpeg,
            )
    return path


def write_ome_tiff(path: Path, pyramid: list[np.ndarray]) -> Path:
    """OME-TIFF with the reduced levels in SubIFDs (zlib, lossless): OpenSlide sees one level."""
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            pyramid[0],
            tile=(TILE, TILE),
            compression="zlib",
            photometric="rgb",
            subifds=len(pyramid) - 1,
            metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP},
        )
        for level in pyramid[1:]:
            tw.write(level, tile=(TILE, TILE), compression="zlib", photometric="rgb", subfiletype=1)
    return path


def write_stripped_tiff(path: Path, image: np.ndarray, rows_per_strip: int = 64) -> Path:
    """A single-level TIFF in strips (no tiles): OpenSlide refuses it."""
    tifffile.imwrite(path, image, photometric="rgb", compression="zlib", rowsperstrip=rows_per_strip, metadata=None)
    return path


def write_ome_zarr(path: Path, pyramid: list[np.ndarray], version: str) -> Path:
    """OME-Zarr ``version`` 0.4 or 0.5 through ome-zarr's writer: axes c, y, x in micrometres, 256 chunks."""
    from ome_zarr.format import FormatV04, FormatV05

    with warnings.catch_warnings():  # ome-zarr 0.18 warns about its own deprecated Scaler on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscale

    fmt = {"0.4": FormatV04(), "0.5": FormatV05()}[version]
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    write_multiscale(
        [np.moveaxis(level, -1, 0) for level in pyramid],
        group,
        fmt=fmt,
        axes=axes,
        scale={"c": 1.0, "y": MPP, "x": MPP},
        storage_options={"chunks": (3, TILE, TILE)},
        name="known",
    )
    return path


def write_plain_zarr(path: Path, pyramid: list[np.ndarray]) -> Path:
    """A zarr group whose arrays ``"0"``, ``"1"``, ... are the ``H x W x 3`` levels."""
    group = zarr.open_group(str(path), mode="w")
    for i, level in enumerate(pyramid):
        group.create_array(str(i), data=level, chunks=(TILE, TILE, 3))
    return path


def write_all(directory: Path, pyramid: list[np.ndarray]) -> dict[str, Path]:
    """Every file format of the known pyramid under ``directory``: format name -> path."""
    return {
        "svs": write_jpeg_tiff(directory / "known.svs", pyramid),
        "ome-tiff": write_ome_tiff(directory / "known.ome.tif", pyramid),
        "stripped-tiff": write_stripped_tiff(directory / "known-strips.tif", pyramid[0]),
        "ome-zarr-0.4": write_ome_zarr(directory / "known-04.ome.zarr", pyramid, "0.4"),
        "ome-zarr-0.5": write_ome_zarr(directory / "known-05.ome.zarr", pyramid, "0.5"),
        "zarr": write_plain_zarr(directory / "known.zarr", pyramid),
    }


def damage_tiff_tile(src: Path, dst: Path, tile: tuple[int, int]) -> Path:
    """Copy ``src`` to ``dst`` with the first bytes of level-0 ``tile`` (or strip ``(row, 0)``) zeroed."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tf:
        page = tf.pages[0]
        across = -(-page.imagewidth // page.tilewidth) if page.is_tiled else 1
        offset = page.dataoffsets[tile[0] * across + tile[1]]
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(bytes(16))
    return dst


class SvsFiles:
    """Contract settings of `write_jpeg_tiff`'s Aperio file, for each backend that reads it (tiff, openslide).

    Lossy: pixels are within `JPEG_MEAN_ERROR` of the known image, and every
    read must agree exactly with the slide's own whole level.
    """

    tile = (TILE, TILE)
    max_mean_error = JPEG_MEAN_ERROR
    supports_damage = True

    def write(self, directory: Path, pyramid: list[np.ndarray]) -> Path:
        return write_jpeg_tiff(directory / "known.svs", pyramid)

    def damaged_copy(self, source: Path, directory: Path, tile: tuple[int, int]) -> Path:
        return damage_tiff_tile(source, directory / "damaged.svs", tile)
