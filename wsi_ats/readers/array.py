"""In-memory slide: an ``H x W x 3`` uint8 numpy array.

Lower levels have downsamples 4, 16, 64, ... for as long as the level's longer
side stays at least `MIN_LEVEL_SIDE` pixels (and its shorter one at least 1),
so a slide always offers a coarse level for tissue masks and attention. Level
``k`` with downsample ``d`` is ``floor(H / d) x floor(W / d)``: each pixel is
the mean of a ``d x d`` block of level 0, rounded half up (the partial blocks at
the bottom and right edges are left out). A level is computed on its first read
and kept (all of them together cost about 7% of level 0).

There is no source path, so pickling carries the array itself (it still works
with dask.distributed, at the price of shipping the pixels).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from wsi_ats.readers.base import Level, Slide, SlideError

#: Pyramid levels stop before the longer side drops under this.
MIN_LEVEL_SIDE = 64
#: Each level is this much smaller than the previous one along both axes.
LEVEL_FACTOR = 4


class ArraySlide(Slide):
    """A numpy image as a slide, lower levels built lazily by block means."""

    backend = "array"

    def __init__(self, array: np.ndarray) -> None:
        if not (isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8):
            shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", type(array).__name__)
            raise SlideError(f"<array>: expected an (H, W, 3) uint8 numpy array, got shape {shape} dtype {dtype}")
        if 0 in array.shape:
            raise SlideError(f"<array>: empty image of shape {array.shape}")
        H, W = array.shape[:2]
        levels, d = [Level((H, W), 1.0)], LEVEL_FACTOR
        while max(H, W) // d >= MIN_LEVEL_SIDE and min(H, W) // d >= 1:
            levels.append(Level((H // d, W // d), float(d)))
            d *= LEVEL_FACTOR
        super().__init__(None, tuple(levels))
        self._pixels: dict[int, np.ndarray] = {0: array}
        self._lock = threading.Lock()

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self._level_pixels(level)[y : y + h, x : x + w].copy()  # callers may write into what they get

    def _level_pixels(self, level: int) -> np.ndarray:
        pixels = self._pixels.get(level)
        if pixels is None:
            with self._lock:
                if level not in self._pixels:
                    self._pixels[level] = _block_mean(self._pixels[0], int(self.levels[level].downsample))
                pixels = self._pixels[level]
        return pixels

    def __reduce__(self):
        from wsi_ats.readers import open_slide

        return (functools.partial(open_slide, mpp=self.given_mpp), (self._pixels[0],))


def _block_mean(image: np.ndarray, d: int) -> np.ndarray:
    """Mean of each ``d x d`` block, rounded half up; partial edge blocks dropped."""
    h, w = image.shape[0] // d, image.shape[1] // d
    sums = image[: h * d, : w * d].reshape(h, d, w, d, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + d * d // 2) // (d * d)).astype(np.uint8)
