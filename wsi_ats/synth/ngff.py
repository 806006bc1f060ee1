"""OME-Zarr (NGFF 0.5 on zarr v3 by default, 0.4 on zarr v2), written with zarr directly.

Arrays are (c, y, x) uint8 chunked (3, 256, 256), NGFF's canonical axis order. The fill
value is the background grey and empty chunks are not stored, so glass costs nothing on
disk. Every level is streamed row by row (see `pyramid.stream_levels`): bounded memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from wsi_ats.synth import palette
from wsi_ats.synth.pyramid import downsamples, stream_levels
from wsi_ats.synth.scene import TILE, Scene

VERSIONS = ("0.4", "0.5")
AXES = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def multiscales(name: str, ds: tuple[int, ...], mpp: float, version: str) -> list[dict[str, Any]]:
    """The `multiscales` list: one dataset per level, scale [1, mpp*ds, mpp*ds]."""
    entry: dict[str, Any] = {
        "name": name,
        "axes": AXES,
        "datasets": [
            {"path": str(lvl), "coordinateTransformations": [{"type": "scale", "scale": [1.0, mpp * f, mpp * f]}]}
            for lvl, f in enumerate(ds)
        ],
    }
    if version == "0.4":
        entry = {"version": "0.4", **entry}
    return [entry]


def write_ome_zarr(
    path: str | Path, scene: Scene, *, mpp: float = 0.25, version: str = "0.5", workers: int = 1, on_row: Callable[[], None] | None = None
) -> None:
    """Write `scene` as an OME-Zarr image group at `path` (replaced if present)."""
    if version not in VERSIONS:
        raise ValueError(f"{path}: OME-NGFF version {version!r} is not one of {', '.join(VERSIONS)}")
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    v3 = version == "0.5"
    root = zarr.open_group(partial, mode="w", zarr_format=3 if v3 else 2)
    # zstd level 1: the grain makes tissue nearly incompressible, so higher levels cost time and save next to no space.
    layout: dict[str, Any] = (
        {"dimension_names": ("c", "y", "x"), "compressors": ZstdCodec(level=1)}
        if v3
        else {"chunk_key_encoding": {"name": "v2", "separator": "/"}, "compressors": numcodecs.Zstd(level=1)}
    )
    ds = downsamples(scene.shape)
    arrays = [
        root.create_array(
            str(lvl),
            shape=(3, scene.shape[0] // f, scene.shape[1] // f),
            chunks=(3, TILE, TILE),
            dtype=np.uint8,
            fill_value=palette.BACKGROUND,
            config={"write_empty_chunks": False},
            **layout,
        )
        for lvl, f in enumerate(ds)
    ]
    for lvl, y, rows in stream_levels(scene, workers=workers, on_row=on_row):
        arrays[lvl][:, y : y + len(rows)] = rows.transpose(2, 0, 1)
    meta = multiscales(path.name.split(".")[0], ds, mpp, version)
    root.attrs.update({"ome": {"version": "0.5", "multiscales": meta}} if v3 else {"multiscales": meta})
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
