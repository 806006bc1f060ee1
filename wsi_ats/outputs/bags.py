"""Feature bags in the HDF5 layout CLAM and TRIDENT users already read: ``features`` N x D and ``coords`` N x 2.

``coords`` are level-0 ``(x, y)`` top-left corners (CLAM's order), with the attributes
``patch_size`` (pixels at the level read), ``patch_size_level0``, ``patch_level``,
``level0_magnification`` (``10 / mpp`` rounded, the usual 0.25 µm/px = 40x; -1 when the
resolution is unknown), ``level0_mpp`` and ``target_mpp`` (-1 when unknown). File attributes
name the slide, the encoder and how the patches were chosen (``dense``: every tissue tile;
``ats``: the patches attention sampling drew). Written atomically like every output.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import h5py
import numpy as np

from wsi_ats.outputs.atomic import atomic_write_bytes


@dataclass(frozen=True, eq=False)
class FeatureBag:
    """One slide's embeddings ``[N, D]`` and their level-0 ``(x, y)`` corners ``[N, 2]``, and how they were read."""

    slide_id: str
    features: np.ndarray
    coords_xy: np.ndarray
    patch_size: int
    patch_size_level0: int
    patch_level: int
    level0_mpp: float | None
    target_mpp: float | None
    encoder: str
    method: str

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.coords_xy.shape != (len(self.features), 2):
            raise ValueError(
                f"{self.slide_id}: features [N, D] and coords [N, 2] must match, got {self.features.shape} and {self.coords_xy.shape}"
            )


def write_bag(path: str | os.PathLike[str], bag: FeatureBag) -> None:
    """Write ``bag`` to ``path`` (``.h5``) atomically."""
    atomic_write_bytes(path, bag_bytes(bag))


def bag_bytes(bag: FeatureBag) -> bytes:
    """The ``.h5`` file of ``bag``, in memory (for outputs written together with others)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("features", data=np.asarray(bag.features, np.float32))
        coords = f.create_dataset("coords", data=np.asarray(bag.coords_xy, np.int64))
        coords.attrs["patch_size"] = int(bag.patch_size)
        coords.attrs["patch_size_level0"] = int(bag.patch_size_level0)
        coords.attrs["patch_level"] = int(bag.patch_level)
        coords.attrs["level0_magnification"] = round(10.0 / bag.level0_mpp) if bag.level0_mpp else -1
        coords.attrs["level0_mpp"] = float(bag.level0_mpp) if bag.level0_mpp else -1.0
        coords.attrs["target_mpp"] = float(bag.target_mpp) if bag.target_mpp else -1.0
        f.attrs["slide_id"] = bag.slide_id
        f.attrs["encoder"] = bag.encoder
        f.attrs["method"] = bag.method
    return buffer.getvalue()


def read_bag(path: str | os.PathLike[str]) -> FeatureBag:
    """The bag `write_bag` wrote (or a CLAM/TRIDENT one: missing attributes read as unknown)."""
    with h5py.File(path, "r") as f:
        coords = f["coords"]
        mpp = float(coords.attrs.get("level0_mpp", -1.0))
        target = float(coords.attrs.get("target_mpp", -1.0))
        return FeatureBag(
            slide_id=str(f.attrs.get("slide_id", os.path.splitext(os.path.basename(path))[0])),
            features=np.asarray(f["features"], np.float32),
            coords_xy=np.asarray(coords, np.int64),
            patch_size=int(coords.attrs.get("patch_size", -1)),
            patch_size_level0=int(coords.attrs.get("patch_size_level0", coords.attrs.get("patch_size", -1))),
            patch_level=int(coords.attrs.get("patch_level", 0)),
            level0_mpp=mpp if mpp > 0 else None,
            target_mpp=target if target > 0 else None,
            encoder=str(f.attrs.get("encoder", "")),
            method=str(f.attrs.get("method", "")),
        )
