"""OpenSlide backend: every format OpenSlide reads (.svs, .ndpi, .mrxs, .scn, .tif, DICOM, ...).

Sources: a slide file, or a folder holding a DICOM WSI series (OpenSlide opens the
series from any one of its ``.dcm`` files; the slide keeps the folder as its source).

Coordinates: OpenSlide's ``read_region`` takes ``(x, y)`` in level-0 pixels; ours
are ``(y, x)`` in the level's own pixels. OpenSlide maps the level-0 point back by
dividing by the level's downsample, and where that lands a fraction of a pixel off
(non-integer downsamples: a generic TIFF's x3 pyramid of odd sizes is 3.0015) it
paints the level's pixels resampled at that sub-pixel offset, not the stored ones.
So the read starts at the nearest column and row at or before the asked ones whose
level-0 point maps back within `EXACT_OFFSET` of a whole pixel (searching
`EXACT_SEARCH` pixels back; integer downsamples need no search) and is cropped: the
pixels are the stored ones, equal to the TIFF fast path's. A level whose downsample
is just off an integer (4.00012) may have no such start within reach; there the read
falls back to OpenSlide's own mapping, a sub-pixel resampling.

Pixels: OpenSlide paints premultiplied RGBA, which openslide-python hands back
un-premultiplied (``255 * p // a``); the premultiplied values are recovered exactly
(``(v * a + 254) // 255``) and composited. Alpha 0 inside the slide means "not scanned" and
is composited onto ``openslide.background-color`` when the slide declares one,
else white (`wsi_ats.readers.pixels`). Parts outside the level never reach this
module (`Slide.read_region` zero-pads them). A generic TIFF whose samples are not
an RGB picture (float, fluorescence channels) is refused, as by the TIFF fast path.

Handles: opened lazily into a bounded per-process LRU (`MAX_OPEN`) that all share
one OpenSlide tile cache (`TILE_CACHE_BYTES`). OpenSlide handles are thread-safe,
so every thread reads through the same one. An OpenSlide error latches a handle
for good, so a failed read drops it from the LRU (the next read reopens) and
raises `SlideError` naming the path, level and region.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import openslide

from wsi_ats.readers.base import Level, Slide, SlideError
from wsi_ats.readers.handles import FileKey, HandleCache, check_unchanged, file_key
from wsi_ats.readers.metadata import mean_mpp, parse_float
from wsi_ats.readers.pixels import WHITE, to_rgb
from wsi_ats.readers.tiff import check_tiff_samples

#: Open OpenSlide handles kept per process.
MAX_OPEN = 32
#: One decoded-tile cache shared by every handle of the process.
TILE_CACHE_BYTES = 128 << 20
#: How far (in level pixels) OpenSlide's mapped-back origin may sit off a whole pixel and still paint the
#: stored pixels: cairo keeps 8 fractional bits, so an offset under half a step is none (measured: exact
#: below 1/300, resampled from 1/256).
EXACT_OFFSET = 1 / 512
#: How many level pixels before the asked box a read may start to find such an origin.
EXACT_SEARCH = 512
#: OpenSlide's name for a DICOM series, and the files it is stored in.
DICOM_VENDOR = "dicom"
DICOM_SUFFIX = ".dcm"


class _Handle:
    """An open OpenSlide object and what was parsed from it once."""

    def __init__(self, path: str) -> None:
        try:
            osr = openslide.OpenSlide(path)
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise SlideError(f"{path}: OpenSlide does not recognise this format") from err
        except openslide.OpenSlideError as err:
            raise SlideError(f"{path}: OpenSlide cannot open it: {err}") from err
        osr.set_cache(_tile_cache())
        props = dict(osr.properties)
        if props.get(openslide.PROPERTY_NAME_VENDOR) == "generic-tiff":
            check_tiff_samples(path)
        self.osr = osr
        self.properties = props
        self.levels = tuple(
            Level((h, w), float(ds), _tile(props, i)) for i, ((w, h), ds) in enumerate(zip(osr.level_dimensions, osr.level_downsamples))
        )
        self.mpp = mean_mpp(parse_float(props.get(openslide.PROPERTY_NAME_MPP_X)), parse_float(props.get(openslide.PROPERTY_NAME_MPP_Y)))
        color = props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR)
        self.background = tuple(bytes.fromhex(color)) if color else WHITE


_HANDLES: HandleCache[_Handle] = HandleCache(MAX_OPEN)


@functools.cache
def _tile_cache() -> openslide.OpenSlideCache:
    return openslide.OpenSlideCache(TILE_CACHE_BYTES)


def _tile(props: dict[str, str], level: int) -> tuple[int, int] | None:
    th = props.get(f"openslide.level[{level}].tile-height")
    tw = props.get(f"openslide.level[{level}].tile-width")
    return (int(th), int(tw)) if th and tw else None


def _cached(path: str, key: FileKey) -> _Handle:
    def open_() -> _Handle:
        check_unchanged(path, key)
        return _Handle(path)

    return _HANDLES.get(key, open_)


def detect_vendor(path: str) -> str | None:
    """OpenSlide's name for the file's format (``"aperio"``, ``"generic-tiff"``, ...), None if it does not know it."""
    return openslide.OpenSlide.detect_format(path)


def dicom_file(folder: str) -> str | None:
    """The first ``.dcm`` file (by name) of ``folder`` that OpenSlide reads as DICOM WSI, or None."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(DICOM_SUFFIX))
    return next((p for n in names if detect_vendor(p := os.path.join(folder, n)) == DICOM_VENDOR), None)


def _premultiplied(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's own premultiplied RGBA, recovered exactly from openslide-python's ``255 * p // a``."""
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return rgba
    out = rgba.copy()
    out[..., :3] = (rgba[..., :3].astype(np.uint32) * alpha + 254) // 255
    return out


def exact_origin(coord: int, downsample: float) -> tuple[int, int]:
    """``(start, level-0 start)``: the nearest level coordinate at or before ``coord`` that OpenSlide maps back exactly.

    Falls back to ``(coord, round(coord * downsample))`` when none lies within `EXACT_SEARCH`.
    """
    if downsample.is_integer():
        return coord, coord * int(downsample)
    starts = np.arange(coord, max(coord - EXACT_SEARCH, -1), -1)
    level0 = np.rint(starts * downsample)
    exact = np.flatnonzero(np.abs(level0 / downsample - starts) < EXACT_OFFSET)
    if exact.size == 0:
        return coord, round(coord * downsample)
    return int(starts[exact[0]]), int(level0[exact[0]])


def levels_of(path: str) -> tuple[Level, ...]:
    """The levels OpenSlide reports for ``path`` (opens, and caches, its handle)."""
    return _cached(path, file_key(path)).levels


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide; reads borrow the process's cached handle."""

    backend = "openslide"

    def __init__(self, path: str) -> None:
        self._file = path
        if os.path.isdir(path):
            found = dicom_file(path)
            if found is None:
                raise SlideError(f"{path}: a folder without a DICOM WSI (.dcm) file OpenSlide reads")
            self._file = found
        self._key = file_key(self._file)
        handle = _cached(self._file, self._key)
        super().__init__(path, handle.levels, handle.mpp, handle.properties)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        handle = _cached(self._file, self._key)
        ds = self.levels[level].downsample
        (y0, Y), (x0, X) = exact_origin(y, ds), exact_origin(x, ds)
        try:
            rgba = np.asarray(handle.osr.read_region((X, Y), level, (w + x - x0, h + y - y0)))
        except openslide.OpenSlideError as err:
            _HANDLES.discard(self._key, handle)
            raise SlideError(f"{self.source}: OpenSlide failed reading level {level} region (y={y}, x={x}, h={h}, w={w}): {err}") from err
        return to_rgb(_premultiplied(rgba[y - y0 :, x - x0 :]), handle.background, premultiplied=True)

    def close(self) -> None:
        """Drop the cached handle; it closes once no read uses it, and a later read reopens it."""
        _HANDLES.discard(self._key)
