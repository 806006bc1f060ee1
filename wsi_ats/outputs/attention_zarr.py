"""``attention.ome.zarr``: the attention map as an OME-Zarr 0.5 image that overlays the slide in napari and NGFF viewers.

float32, ``(y, x)``, a multiscale pyramid (each level the 2 x 2 mean of the one before, down
to a few cells), with ``coordinateTransformations`` in micrometres (level-0 pixels when the
slide's resolution is unknown): array index ``(i, j)`` of level ``k`` is the centre of the
square it covers, ``origin + (i + 0.5) * downsample * 2**k`` level-0 pixels, times the mpp.
Rendered in memory as ``{relative path: bytes}`` so it travels with the other files and is
written like them (`wsi_ats.outputs.folder.write_slide_folder`: a temporary folder, then a rename).
"""

from __future__ import annotations

import numpy as np

from wsi_ats.result import SlideResult

ATTENTION_ZARR = "attention.ome.zarr"
#: Levels stop once the coarser side would fall below this many cells.
MIN_LEVEL_CELLS = 4


def pyramid(attention: np.ndarray) -> list[np.ndarray]:
    """The map and its 2 x 2 means (cells past an odd edge averaged over those present), coarsest last."""
    levels = [np.asarray(attention, dtype=np.float32)]
    while min(levels[-1].shape) // 2 >= MIN_LEVEL_CELLS:
        a = levels[-1]
        h, w = -(-a.shape[0] // 2) * 2, -(-a.shape[1] // 2) * 2
        padded = np.full((h, w), np.nan, np.float32)
        padded[: a.shape[0], : a.shape[1]] = a
        levels.append(np.nanmean(padded.reshape(h // 2, 2, w // 2, 2), axis=(1, 3)).astype(np.float32))
    return levels


def attention_zarr_files(result: SlideResult) -> dict[str, bytes]:
    """The store's files, keyed ``attention.ome.zarr/<key>``."""
    import zarr

    keys: dict = {}
    store = zarr.storage.MemoryStore(keys)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    unit, mpp = ("micrometer", float(result.mpp)) if result.mpp else (None, 1.0)
    ds, origin = float(result.attention_downsample), result.attention_origin
    levels = pyramid(result.attention if np.size(result.attention) else np.zeros((1, 1), np.float32))
    datasets = []
    for k, level in enumerate(levels):
        array = group.create_array(str(k), shape=level.shape, dtype="float32", chunks=level.shape, fill_value=0.0)
        array[:] = level
        step = ds * 2**k
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [step * mpp, step * mpp]},
                    {"type": "translation", "translation": [(o + step / 2) * mpp for o in origin]},
                ],
            }
        )
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in ("y", "x")]
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"name": f"attention of {result.slide_id}", "axes": axes, "datasets": datasets}],
    }
    return {f"{ATTENTION_ZARR}/{key}": buf.to_bytes() for key, buf in keys.items()}
