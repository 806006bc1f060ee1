"""The same tissue stored another way: another pyramid, another scan resolution, one level only.

Real cohorts mix Aperio's x4 pyramids, NDPI's x2, one-level TIFFs and 20x scans beside 40x
ones. `restore` rewrites a slide that way, so tests and benchmarks can check that a model
gives the same answer whatever the storage. Level ``k`` of the output is the input read at
``scale * downsamples[k]`` (through `wsi_ats.readers.scaled`: the input's own level where it
has one, else a box-filtered resampled level), streamed one tile row at a time, so memory
stays bounded at any slide size.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
import zarr

from wsi_ats.readers.base import Slide
from wsi_ats.readers.scaled import at_scales, matching_level
from wsi_ats.synth.ngff import AXES
from wsi_ats.synth.tiff import APP_MAG

TILE = 256


def restore(
    slide: Slide,
    path: str | Path,
    *,
    downsamples: Sequence[float] = (1, 4, 16),
    scale: float = 1.0,
    mpp: float | None = None,
    fmt: str = "tiff",
    quality: int = 90,
) -> Path:
    """Write ``slide`` at ``path`` with levels at ``downsamples`` of a base ``scale`` times coarser than its own.

    ``mpp`` is the output's level-0 resolution to state (default: the input's times
    ``scale``; ``0`` states none, a file without a resolution). ``fmt``: ``"tiff"`` (an
    Aperio-like JPEG TIFF OpenSlide opens; one level when ``downsamples == (1,)``) or
    ``"zarr"`` (OME-Zarr 0.5).
    """
    if downsamples[0] != 1 or list(downsamples) != sorted(downsamples):
        raise ValueError(f"downsamples must start at 1 and ascend, got {tuple(downsamples)}")
    if mpp is None:
        mpp = slide.mpp * scale if slide.mpp is not None else 0
    view = at_scales(slide, tuple(scale * d for d in downsamples))
    levels = [matching_level(view, scale * d) for d in downsamples]
    H0, W0 = slide.levels[0].shape
    shapes = [(math.floor(H0 / (scale * d)), math.floor(W0 / (scale * d))) for d in downsamples]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if fmt == "tiff":
        _write_tiff(partial, view, levels, shapes, downsamples, mpp, quality)
    elif fmt == "zarr":
        _write_zarr(partial, view, levels, shapes, downsamples, mpp)
    else:
        raise ValueError(f"fmt must be 'tiff' or 'zarr', got {fmt!r}")
    if path.is_dir():
        shutil.rmtree(path)
    partial.replace(path)
    return path


def _rows(view: Slide, level: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """Tile rows of ``shape`` read from ``view``'s ``level`` (clipped to the output's shape)."""
    for y in range(0, shape[0], TILE):
        yield view.read_region(level, (y, 0), (min(TILE, shape[0] - y), shape[1]))


def _tiles(view: Slide, level: int, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    for rows in _rows(view, level, shape):
        for x in range(0, shape[1], TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            part = rows[:, x : x + TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


def _write_tiff(
    path: Path, view: Slide, levels: list[int], shapes: list[tuple[int, int]], downsamples: Sequence[float], mpp: float, quality: int
) -> None:
    H, W = shapes[0]
    page = {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
        "dtype": np.uint8,
    }
    with tifffile.TiffWriter(path, bigtiff=H * W * 3 >= 2**31) as tif:
        for k, (level, shape, d) in enumerate(zip(levels, shapes, downsamples)):
            head = f"Aperio Image Library v12.0.0 \n{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE})"
            if k:
                head += f" -> {shape[1]}x{shape[0]}"
            tags = f" JPEG/RGB Q={quality}|AppMag = {APP_MAG}|MPP = {mpp}" if mpp else ""
            extra = {"resolution": (1e4 / (mpp * d), 1e4 / (mpp * d)), "resolutionunit": "CENTIMETER"} if mpp else {}
            tif.write(
                _tiles(view, level, shape),
                shape=(*shape, 3),
                subfiletype=1 if k else 0,
                description=head + tags if mpp else None,
                **page,
                **extra,
            )


def _write_zarr(
    path: Path, view: Slide, levels: list[int], shapes: list[tuple[int, int]], downsamples: Sequence[float], mpp: float
) -> None:
    root = zarr.open_group(path, mode="w", zarr_format=3)
    for k, (level, shape) in enumerate(zip(levels, shapes)):
        array = root.create_array(str(k), shape=(3, *shape), chunks=(3, TILE, TILE), dtype=np.uint8, dimension_names=("c", "y", "x"))
        for y, rows in zip(range(0, shape[0], TILE), _rows(view, level, shape)):
            array[:, y : y + len(rows)] = rows.transpose(2, 0, 1)
    unit = mpp or 1.0  # without a resolution the scales are plain downsamples
    axes = AXES if mpp else [{k: v for k, v in a.items() if k != "unit"} for a in AXES]
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1.0, unit * d, unit * d]}]}
        for k, d in enumerate(downsamples)
    ]
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": path.name.split(".")[0], "axes": axes, "datasets": datasets}]}})
