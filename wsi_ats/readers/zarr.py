"""Zarr backend: OME-Zarr (NGFF 0.4 ``.zattrs``, 0.5 ``zarr.json`` under ``"ome"``) and plain level groups.

Sources are local directories or any URL zarr opens through fsspec
(``file://``, ``s3://``, ...). Remote stores are assumed not to change while a
process runs (their parsed metadata is cached by URL); local ones are cached by
the modification time of their group metadata.

OME-Zarr: the first ``multiscales`` entry; levels are its ``datasets`` in order,
at their ``path`` (writers name them ``0``, ``s0``, ...). A level's downsample is
its y/x ``scale`` relative to dataset 0's (mean of the two, as OpenSlide
averages), or the shape ratio when a dataset has no scale (NGFF < 0.4). mpp is
dataset 0's y/x scale times the multiscale-wide scale, in the axes' unit
converted to micrometres (nanometer, millimeter, ... see
`metadata.MICRONS_PER_UNIT`); None without a known unit. Translations are
ignored: levels share the level-0 origin.

Layout: any axes order holding ``y`` and ``x``, an optional channel axis
(``type: channel`` or named ``c``) of 1 (grey), 3 (RGB) or 4 channels (RGB +
straight alpha, composited onto white), and any other axis (``t``, ``z``) of size 1.
Samples are uint8 as stored, or uint16 mapped to uint8 through the channel's
``omero`` display window when every channel has one (``(v - start) * 255 / (end -
start)``, rounded, clipped) and the full range otherwise. Floats, other integer
types and 2 or more than 4 channels (fluorescence) are refused with
`pixels.UnsupportedPixels`: the format does not say how they become RGB
(`wsi_ats.readers.pixels` has the rules).

Plain group: arrays ``"0"``, ``"1"``, ... shaped ``H x W x C`` (or ``H x W``),
downsample from the shape ratio, mpp unknown.

Tiles are the arrays' y/x chunks, so `Slide.read_tile` reads exactly one chunk
(per channel chunk). tifffile's zarr view of stripped TIFFs reuses `Pyramid`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from wsi_ats.readers.base import Level, Slide, SlideError, blit
from wsi_ats.readers.handles import SMALL_LEVEL_BYTES, SMALL_PIXELS, HandleCache
from wsi_ats.readers.metadata import downsample, mean_mpp, openslide_properties, to_microns
from wsi_ats.readers.pixels import WHITE, check_samples, to_rgb, to_uint8

#: Parsed zarr pyramids kept per process.
MAX_OPEN = 64
_METADATA_FILES = ("zarr.json", ".zattrs", ".zgroup")


@dataclass(frozen=True)
class Pyramid:
    """Level arrays of one image (finest first) and how to read ``(y, x, c)`` out of them."""

    arrays: tuple[Any, ...]
    axes: tuple[str, ...]
    levels: tuple[Level, ...]
    mpp: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    #: Per-channel ``(start, end)`` display window for uint16 samples, or None for the full range.
    window: tuple[tuple[float, float], ...] | None = None
    #: The `open_slide` backend that reopens this source.
    backend: str = "zarr"
    #: Whether a fourth channel is associated (premultiplied) alpha, as a TIFF may say; zarr has straight alpha.
    premultiplied: bool = False


def pyramid_levels(source: str, arrays: Sequence[Any], axes: Sequence[str], downsamples: Sequence[float]) -> tuple[Level, ...]:
    """Check that ``arrays`` hold one RGB-like image per level and describe them as `Level`s."""
    axes = _checked_axes(source, axes)
    levels = []
    for i, (array, ds) in enumerate(zip(arrays, downsamples, strict=True)):
        if array.ndim != len(axes):
            raise SlideError(f"{source}: level {i} has {array.ndim} dimensions for axes {axes}")
        check_samples(source, array.dtype, array.shape[axes.index("c")] if "c" in axes else 1)
        for axis, size in zip(axes, array.shape):
            if axis not in ("y", "x", "c") and size != 1:
                raise SlideError(f"{source}: axis {axis!r} has {size} planes; only single-plane images are slides")
        y, x = axes.index("y"), axes.index("x")
        levels.append(Level((array.shape[y], array.shape[x]), float(ds), (array.chunks[y], array.chunks[x])))
    return tuple(levels)


def _checked_axes(source: str, axes: Sequence[str]) -> tuple[str, ...]:
    axes = tuple(axes)
    if "y" not in axes or "x" not in axes or len(set(axes)) != len(axes):
        raise SlideError(f"{source}: axes {axes} need y and x, each axis once")
    return axes


class ZarrSlide(Slide):
    """A slide whose levels are zarr arrays (OME-Zarr, plain groups, tifffile's view of a TIFF)."""

    def __init__(self, source: str, pyramid: Pyramid) -> None:
        self._pyramid = pyramid
        self.backend = pyramid.backend
        super().__init__(source, pyramid.levels, pyramid.mpp, pyramid.properties)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        H, W = self.levels[level].shape
        if H * W * 3 > SMALL_LEVEL_BYTES:
            return self._read_array(level, y, x, h, w)
        out = np.empty((h, w, 3), np.uint8)  # a small level: tile by tile, each decoded once per process
        th, tw = self.tile_shape(level)
        for ty, tx in self.tiles_covering(level, (y, x), (h, w)):
            key = ("zarr", id(self._pyramid), level, ty, tx)  # the cache keeps the pyramid alive: its id stays its own
            tile = SMALL_PIXELS.get(key)
            if tile is None:
                tile = self._read_array(level, *self.tile_box(level, ty, tx))
                SMALL_PIXELS.put(key, tile, owner=self._pyramid)
            blit(out, (y, x), tile, (ty * th, tx * tw))
        return out

    def _read_array(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        p = self._pyramid
        bounds = {"y": slice(y, y + h), "x": slice(x, x + w), "c": slice(None)}
        try:
            block = np.asarray(p.arrays[level][tuple(bounds.get(a, 0) for a in p.axes)])
        except Exception as err:  # store and codec errors come in many classes
            box = f"(y={y}, x={x}, h={h}, w={w})"
            raise SlideError(f"{self.source}: cannot read level {level} region {box}: {err}") from err
        kept = [a for a in p.axes if a in bounds]
        block = block.transpose([kept.index(a) for a in "yxc" if a in kept])
        if "c" not in kept:
            block = block[..., None]
        return to_rgb(to_uint8(block, p.window), WHITE, premultiplied=p.premultiplied)


# -- opening -------------------------------------------------------------------
_PYRAMIDS: HandleCache[Pyramid] = HandleCache(MAX_OPEN)


def open_zarr(source: str, storage_options: dict[str, Any] | None = None, remote_cache: str | None = None) -> ZarrSlide:
    """An OME-Zarr or plain level group at a local path or fsspec URL (its reads counted: `remote.read_stats`).

    ``remote_cache``: a folder keeping the objects read from a URL (`wsi_ats.readers.remote_cache`).
    """
    key = (_store_key(source), remote_cache)
    slide = ZarrSlide(source, _PYRAMIDS.get(key, lambda: _load(source, storage_options, remote_cache)))
    slide.storage_options, slide.remote_cache = storage_options, remote_cache
    return slide


def _store_key(source: str) -> tuple:
    if "://" in source:
        return ("url", source)
    paths = [os.path.join(source, name) for name in _METADATA_FILES]
    stamps = tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else None for p in paths)
    return (os.path.realpath(source), stamps)


def _load(source: str, storage_options: dict[str, Any] | None, remote_cache: str | None = None) -> Pyramid:
    from wsi_ats.readers.remote import counting_store

    try:
        group = zarr.open_group(counting_store(source, storage_options, remote_cache), mode="r")
        attrs = group.attrs.asdict()
    except (zarr.errors.BaseZarrError, OSError, ValueError) as err:
        raise SlideError(f"{source}: not a zarr group: {err}") from err
    ome = attrs.get("ome", attrs)
    if ome.get("multiscales"):
        return _ome_pyramid(source, group, ome, attrs)
    if "0" in group:
        return _plain_pyramid(source, group)
    raise SlideError(f"{source}: zarr group without OME-Zarr multiscales metadata or a level array '0'")


def _array(source: str, group: zarr.Group, path: str) -> Any:
    try:
        array = group[path]
    except KeyError as err:
        raise SlideError(f"{source}: level array {path!r} is missing") from err
    if not isinstance(array, zarr.Array):
        raise SlideError(f"{source}: {path!r} is a group, not a level array")
    return array


def _plain_pyramid(source: str, group: zarr.Group) -> Pyramid:
    names = list(itertools.takewhile(lambda name: name in group, map(str, itertools.count())))
    arrays = tuple(_array(source, group, name) for name in names)
    axes = ("y", "x", "c")[: arrays[0].ndim]
    shapes = [a.shape[:2] for a in arrays]
    levels = pyramid_levels(source, arrays, axes, [downsample(shapes[0], s) for s in shapes])
    return Pyramid(arrays, axes, levels, properties=openslide_properties("zarr", levels))


def _ome_pyramid(source: str, group: zarr.Group, ome: dict, attrs: dict) -> Pyramid:
    ms = ome["multiscales"][0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise SlideError(f"{source}: OME-Zarr multiscales lists no datasets")
    arrays = tuple(_array(source, group, str(d.get("path"))) for d in datasets)
    ndim = arrays[0].ndim
    axes_meta = ms.get("axes") or list("tczyx"[-ndim:])  # NGFF 0.1/0.2 fixed the order
    axes = _checked_axes(source, [_axis_name(a) for a in axes_meta])
    y, x = axes.index("y"), axes.index("x")
    scales = [_scale(d.get("coordinateTransformations"), ndim) for d in datasets]
    if all(s is not None for s in scales):
        downsamples = [(s[y] / scales[0][y] + s[x] / scales[0][x]) / 2 for s in scales]
    else:
        yx = [(a.shape[y], a.shape[x]) for a in arrays]
        downsamples = [downsample(yx[0], s) for s in yx]
    levels = pyramid_levels(source, arrays, axes, downsamples)
    overall = _scale(ms.get("coordinateTransformations"), ndim) or [1.0] * ndim
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
    base = scales[0] or [1.0] * ndim
    mpp_y, mpp_x = (to_microns(base[i] * overall[i], units[i]) for i in (y, x))
    channels = arrays[0].shape[axes.index("c")] if "c" in axes else 1
    window = _omero_window(ome.get("omero"), channels) if arrays[0].dtype == np.uint16 else None
    properties = {
        "ome-zarr.version": str(ome.get("version") or ms.get("version")),
        "zarr.attributes": json.dumps(attrs),
        **openslide_properties("ome-zarr", levels, mpp_x, mpp_y),
    }
    return Pyramid(arrays, axes, levels, mean_mpp(mpp_x, mpp_y), properties, window)


def _axis_name(axis: str | dict) -> str:
    if isinstance(axis, str):
        return axis.lower()
    return "c" if axis.get("type") == "channel" else str(axis.get("name", "")).lower()


def _scale(transforms: list[dict] | None, ndim: int) -> list[float] | None:
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", ())) == ndim and all(v > 0 for v in t["scale"]):
            return [float(v) for v in t["scale"]]
    return None


def _omero_window(omero: dict | None, channels: int) -> tuple[tuple[float, float], ...] | None:
    windows = [c.get("window", {}) for c in (omero or {}).get("channels", [])]
    if len(windows) < channels:
        return None
    pairs = tuple((float(w.get("start", 0)), float(w.get("end", 0))) for w in windows[:channels])
    return pairs if all(end > start for start, end in pairs) else None
