"""Aperio-like pyramidal TIFF, written tile by tile, that OpenSlide opens as an `aperio` slide.

Layout (as Aperio scanners do): level 0 (tiled 256, JPEG), a stripped thumbnail as the second
page (OpenSlide's associated image `thumbnail`), then the reduced levels (tiled, NewSubfileType
1). Level 0 streams straight into the file; the reduced levels it produces are parked in a
temporary zarr store next to the output (they must follow level 0 and the thumbnail) and then
streamed out, so memory stays bounded at any slide size.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image
from zarr.codecs import ZstdCodec

from wsi_ats.outputs.atomic import atomic_writer
from wsi_ats.synth.pyramid import downsamples, stream_levels
from wsi_ats.synth.scene import TILE, Scene

APP_MAG = 40
THUMBNAIL_MAX = 1024
_LIBRARY = "Aperio Image Library v12.0.0"


def _tiles(rows: np.ndarray) -> Iterator[np.ndarray]:
    for x in range(0, rows.shape[1], TILE):
        yield rows[:, x : x + TILE]


def _row_tiles(array: zarr.Array) -> Iterator[np.ndarray]:
    for y in range(0, array.shape[0], TILE):
        yield from _tiles(array[y : y + TILE])


def write_tiff(
    path: str | Path, scene: Scene, *, mpp: float = 0.25, quality: int = 90, workers: int = 1, on_row: Callable[[], None] | None = None
) -> None:
    """Write `scene` as a pyramidal TIFF at `path` (JPEG `quality`, `workers` render/encode threads)."""
    path = Path(path)
    h, w = scene.shape
    ds = downsamples(scene.shape)
    page = {
        "dtype": np.uint8,
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "maxworkers": workers,
        "buffersize": 16 * 2**20,
        "resolutionunit": "CENTIMETER",
    }
    head = f"{_LIBRARY} \n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q={quality}"
    tags = f"|AppMag = {APP_MAG}|MPP = {mpp}|Filename = {path.stem}"
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        parked = zarr.open_group(tmp, mode="w")
        reduced = {
            lvl: parked.create_array(
                str(lvl), shape=(h // f, w // f, 3), chunks=(TILE, w // f, 3), dtype=np.uint8, compressors=ZstdCodec(level=1)
            )  # one chunk per tile row: written once
            for lvl, f in enumerate(ds)
            if lvl
        }

        def level0() -> Iterator[np.ndarray]:
            for lvl, y, rows in stream_levels(scene, workers=workers, on_row=on_row):
                if lvl == 0:
                    yield from _tiles(rows)
                else:
                    reduced[lvl][y : y + len(rows)] = rows

        with atomic_writer(path) as out, tifffile.TiffWriter(out, bigtiff=h * w * 3 >= 2**31) as tif:
            tif.write(level0(), shape=(h, w, 3), description=head + tags, resolution=(1e4 / mpp, 1e4 / mpp), **page)
            thumb = Image.fromarray(reduced[len(ds) - 1][:])
            thumb.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX), Image.Resampling.BOX)
            tif.write(
                np.asarray(thumb),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                metadata=None,
                description=f"{_LIBRARY} \n{w}x{h} -> {thumb.width}x{thumb.height} - ",
            )
            for lvl, f in enumerate(ds):
                if lvl:
                    lh, lw = reduced[lvl].shape[:2]
                    tif.write(
                        _row_tiles(reduced[lvl]),
                        shape=(lh, lw, 3),
                        subfiletype=1,
                        description=f"{_LIBRARY} \n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) -> {lw}x{lh} JPEG/RGB Q={quality}{tags}",
                        resolution=(1e4 / (mpp * f), 1e4 / (mpp * f)),
                        **page,
                    )
