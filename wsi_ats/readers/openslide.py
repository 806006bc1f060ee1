"""OpenSlide backend: every format OpenSlide reads (.svs, .ndpi, .mrxs, .scn, .tif, DICOM, ...).

Coordinates: OpenSlide's ``read_region`` takes ``(x, y)`` in level-0 pixels; ours
are ``(y, x)`` in the level's own pixels, so the location passed is
``round(x * downsample), round(y * downsample)``. For integer downsamples this is
exact; for a scanner's non-integer ones (e.g. 4.0003) OpenSlide maps the level-0
point back into the level itself and may land a fraction of a pixel away, as it
does for its own callers.

Pixels: OpenSlide returns RGBA; alpha 0 inside the slide means "not scanned" and
is composited onto ``openslide.background-color`` when the slide declares one,
else white. Parts outside the level never reach this module (`Slide.read_region`
zero-pads them).

Handles: opened lazily into a bounded per-process LRU (`MAX_OPEN`) that all share
one OpenSlide tile cache (`TILE_CACHE_BYTES`). OpenSlide handles are thread-safe,
so every thread reads through the same one. An OpenSlide error latches a handle
for good, so a failed read drops it from the LRU (the next read reopens) and
raises `SlideError` naming the path, level and region.
"""

from __future__ import annotations

import functools

import numpy as np
import openslide

from wsi_ats.readers.base import Level, Slide, SlideError
from wsi_ats.readers.handles import FileKey, HandleCache, check_unchanged, file_key
from wsi_ats.readers.metadata import mean_mpp, parse_float
from wsi_ats.readers.pixels import WHITE, to_rgb

#: Open OpenSlide handles kept per process.
MAX_OPEN = 32
#: One decoded-tile cache shared by every handle of the process.
TILE_CACHE_BYTES = 128 << 20


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
        self.osr = osr
        self.properties = props
        self.levels = tuple(
            Level((h, w), float(ds), _tile(props, i))
            for i, ((w, h), ds) in enumerate(zip(osr.level_dimensions, osr.level_downsamples))
        )
        self.mpp = mean_mpp(
            parse_float(props.get(openslide.PROPERTY_NAME_MPP_X)), parse_float(props.get(openslide.PROPERTY_NAME_MPP_Y))
        )
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


def levels_of(path: str) -> tuple[Level, ...]:
    """The levels OpenSlide reports for ``path`` (opens, and caches, its handle)."""
    return _cached(path, file_key(path)).levels


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide; reads borrow the process's cached handle."""

    backend = "openslide"

    def __init__(self, path: str) -> None:
        self._key = file_key(path)
        handle = _cached(path, self._key)
        super().__init__(path, handle.levels, handle.mpp, handle.properties)

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        handle = _cached(self.source, self._key)
        ds = self.levels[level].downsample
        try:
            rgba = np.asarray(handle.osr.read_region((round(x * ds), round(y * ds)), level, (w, h)))
        except openslide.OpenSlideError as err:
            _HANDLES.discard(self._key, handle)
            raise SlideError(
                f"{self.source}: OpenSlide failed reading level {level} region (y={y}, x={x}, h={h}, w={w}): {err}"
            ) from err
        return to_rgb(rgba, handle.background)

    def close(self) -> None:
        """Drop the cached handle; it closes once no read uses it, and a later read reopens it."""
        _HANDLES.discard(self._key)
