"""A huge one-level TIFF written in a second: an image pasted on an empty canvas whose other tiles hold no bytes.

Slides without a pyramid are what make memory and time explode, and a 200000^2 one
(40 gigapixels) takes many minutes to encode. Tiles without bytes are legal TIFF (sparse
files; readers show them as white) and cost nothing to write, so the hostile-input tests
and ``benchmarks/bad_input_memory.py`` make such slides of any size at once. Tiles are
stored uncompressed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from wsi_ats.outputs.atomic import atomic_writer


def write_sparse_tiff(
    path: str | Path,
    shape: tuple[int, int],
    image: np.ndarray | None = None,
    at: tuple[int, int] = (0, 0),
    *,
    mpp: float | None = 0.25,
    tile: int = 256,
) -> Path:
    """Write a one-level ``shape`` RGB TIFF, blank but for ``image`` with its top-left at ``at`` (level ``(y, x)``).

    ``mpp`` is stated in the resolution tags (centimetre units, as OpenSlide reads them);
    None states none. Tiles the image does not touch hold no bytes; the background of the
    ones it touches is white.
    """
    path = Path(path)
    H, W = shape
    if image is not None and (at[0] < 0 or at[1] < 0 or at[0] + image.shape[0] > H or at[1] + image.shape[1] > W):
        raise ValueError(f"an image of {image.shape[:2]} at {at} does not fit in {shape}")
    extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with atomic_writer(path) as f, tifffile.TiffWriter(f, bigtiff=True) as tif:
        tif.write(_tiles(shape, image, at, tile), shape=(H, W, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                  metadata=None, **extra)  # fmt: skip
    return path


def _tiles(shape: tuple[int, int], image: np.ndarray | None, at: tuple[int, int], tile: int) -> Iterator[bytes]:
    """Each tile's bytes in raster order: ``b""`` (no bytes at all) where ``image`` is not."""
    H, W = shape
    y0, x0 = at
    h, w = (0, 0) if image is None else image.shape[:2]
    for ty in range(0, H, tile):
        for tx in range(0, W, tile):
            if ty + tile <= y0 or ty >= y0 + h or tx + tile <= x0 or tx >= x0 + w:
                yield b""
                continue
            block = np.full((tile, tile, 3), 255, np.uint8)
            a, b, c, d = max(ty, y0), max(tx, x0), min(ty + tile, y0 + h), min(tx + tile, x0 + w)
            block[a - ty : c - ty, b - tx : d - tx] = image[a - y0 : c - y0, b - x0 : d - x0]
            yield block.tobytes()
