"""The per-slide output folder ``OUT/<folder_name(slide_id)>/``: which files, their bytes, and whether it is complete.

Rendering (`slide_files`) is pure and returns bytes, so it can run wherever the
prediction ran; writing (`write_slide_folder`) is atomic file by file. The CSV row that
says ``ok`` is written only after every file here exists, so "row ok and files present"
is what marks a slide done. The folder's name is `wsi_ats.outputs.names.folder_name`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from wsi_ats.outputs.atomic import atomic_write_bytes, remove_stale_temps
from wsi_ats.outputs.attention_zarr import ATTENTION_ZARR, attention_zarr_files
from wsi_ats.outputs.geojson import attention_geojson, patches_geojson
from wsi_ats.outputs.heatmap import render_heatmap_png
from wsi_ats.result import SlideResult

HEATMAP, ATTENTION, ATTENTION_META, PATCHES = "attention.png", "attention.npy", "attention.json", "patches.geojson"
#: The highest-attention tissue cells as QuPath detections (`attention_geojson`).
ATTENTION_CELLS = "attention.geojson"
#: What the folder holds: files, and one folder store (`ATTENTION_ZARR`, complete when its ``zarr.json`` is there).
SLIDE_FILES = (HEATMAP, ATTENTION, ATTENTION_META, PATCHES, ATTENTION_CELLS, ATTENTION_ZARR)


def attention_sidecar(result: SlideResult) -> dict:
    """Where the attention grid lies on the slide: cell ``(i, j)`` covers level-0 ``origin + (i, j) * downsample``."""
    return {
        "slide_id": result.slide_id,
        "axes": ["y", "x"],
        "level": int(result.attention_level),
        "downsample": float(result.attention_downsample),
        "origin": [float(v) for v in result.attention_origin],
        "shape": [int(v) for v in np.shape(result.attention)],
    }


def slide_files(result: SlideResult, thumbnail: np.ndarray | None, level0_shape: tuple[int, int], draws: int = 1) -> dict[str, bytes]:
    """Every file of the slide's folder, rendered in memory; ``draws`` the result holds (1 with top-k); ``thumbnail`` None: none."""
    npy = io.BytesIO()
    np.save(npy, np.asarray(result.attention, dtype=np.float32))
    return {
        HEATMAP: render_heatmap_png(result, thumbnail, level0_shape, draws),
        ATTENTION: npy.getvalue(),
        ATTENTION_META: json.dumps(attention_sidecar(result), indent=2).encode(),
        PATCHES: json.dumps(patches_geojson(result, draws)).encode(),
        ATTENTION_CELLS: json.dumps(attention_geojson(result)).encode(),
        **attention_zarr_files(result),
    }


def write_slide_folder(folder: str | os.PathLike[str], files: dict[str, bytes]) -> None:
    """Create ``folder`` and write each file atomically, sweeping temporaries of an earlier killed run.

    Keys ``store/inner/path`` form a folder store: written whole into a temporary folder, then renamed
    into place (an older store moved aside first and removed), so a reader never sees half a store.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    stores: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        top, sep, inner = name.partition("/")
        if sep:
            stores.setdefault(top, {})[inner] = data
        else:
            atomic_write_bytes(folder / name, data)
    for top, inner_files in stores.items():
        _write_store(folder / top, inner_files)


def _write_store(target: Path, files: dict[str, bytes]) -> None:
    temp, old = target.with_name(f".{target.name}.tmp-{os.getpid()}"), target.with_name(f".{target.name}.old-{os.getpid()}")
    for stale in target.parent.glob(f".{target.name}.*-*"):  # a killed run's half store (the folder is this run's now)
        shutil.rmtree(stale, ignore_errors=True)
    for inner, data in files.items():
        path = temp / inner
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if target.exists():
        os.replace(target, old)
    os.replace(temp, target)
    shutil.rmtree(old, ignore_errors=True)


def slide_folder_complete(folder: str | os.PathLike[str]) -> bool:
    """Every output is there (each was written atomically, so present means whole)."""
    folder = Path(folder)
    return all((folder / name / "zarr.json" if name == ATTENTION_ZARR else folder / name).is_file() for name in SLIDE_FILES)
