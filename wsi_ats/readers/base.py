"""The one slide interface every backend fills.

Backends implement two small hooks (`_read` and, when the format has a faster
native tile path, `read_tile`); padding, level choice, dask arrays and
thumbnails are written once here so that every format behaves the same.
Coordinates are ``(y, x)`` in the pixels of the level they refer to.
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Chunk edge used for levels whose format has no tiles (numpy, strips).
DEFAULT_TILE = 512
#: A scanner's 3.9998 counts as 4: downsamples within 1% match.
LEVEL_TOLERANCE = 0.01


class SlideError(ValueError):
    """A slide that no backend can read, or a read that failed; names the path and the reason."""


@dataclass(frozen=True)
class Level:
    """One pyramid level: ``shape=(H, W)``, downsample relative to level 0, format tile ``(th, tw)`` or None."""

    shape: tuple[int, int]
    downsample: float
    tile: tuple[int, int] | None = None


def blit(dst: np.ndarray, dst_origin: tuple[int, int], src: np.ndarray, src_origin: tuple[int, int]) -> None:
    """Copy the overlap of ``src`` into ``dst``; origins are both in the same level's pixel grid.

    The single place where boxes are intersected: region reads, tile assembly and
    patch fetching all paste pieces with it.
    """
    y0 = max(dst_origin[0], src_origin[0])
    x0 = max(dst_origin[1], src_origin[1])
    y1 = min(dst_origin[0] + dst.shape[0], src_origin[0] + src.shape[0])
    x1 = min(dst_origin[1] + dst.shape[1], src_origin[1] + src.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    dst[y0 - dst_origin[0] : y1 - dst_origin[0], x0 - dst_origin[1] : x1 - dst_origin[1]] = src[
        y0 - src_origin[0] : y1 - src_origin[0], x0 - src_origin[1] : x1 - src_origin[1]
    ]


class Slide(abc.ABC):
    """A pyramidal RGB image read region by region; also a context manager.

    Subclasses call ``super().__init__`` with their levels and implement `_read`.
    A slide with a ``source`` (path or URL) pickles as that source and `backend`
    and reopens on the other side, so dask workers never receive a native handle.
    """

    #: The `open_slide` backend that reopens this slide from its source (None: dispatch again).
    backend: str | None = None

    def __init__(
        self,
        source: str | None,
        levels: tuple[Level, ...],
        mpp: float | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        if not levels:
            raise SlideError(f"{source or 'array'}: no pyramid levels")
        self.source = source
        self.levels = tuple(levels)
        #: Micrometres per level-0 pixel, and where that figure came from (`wsi_ats.readers.resolution`).
        self.mpp = mpp
        self.mpp_source = "file" if mpp is not None else "unknown"
        #: The resolution the caller gave `open_slide` (kept when the slide is pickled and reopened).
        self.given_mpp: float | None = None
        #: fsspec options (credentials, endpoint) of a URL source, kept when the slide is pickled and reopened.
        self.storage_options: dict | None = None
        #: Folder keeping what is read from a URL source (`wsi_ats.readers.remote_cache`), kept when pickled.
        self.remote_cache: str | None = None
        self.properties = dict(properties or {})

    # -- hooks -----------------------------------------------------------------
    @abc.abstractmethod
    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Return ``(h, w, 3) uint8`` for a box that lies wholly inside ``level``."""

    def read_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        """Tile ``(ty, tx)`` of the level's tile grid, clipped at the right and bottom edges.

        Backends with a native tile decoder override this; it is what `to_dask`
        and `wsi_ats.engine.fetch` call, so each tile is decoded exactly once there.
        """
        return self._read(level, *self.tile_box(level, ty, tx))

    def read_tiles(self, level: int, tiles: list[tuple[int, int]]) -> list[np.ndarray]:
        """Several tiles of one level; a backend that reads by byte range requests them all at once."""
        return [self.read_tile(level, ty, tx) for ty, tx in tiles]

    def prefetch_tiles(self, level: int, tiles: list[tuple[int, int]]) -> None:  # noqa: B027 - an optional hook
        """A hint that these tiles are read next: a remote backend fetches their bytes in one round."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release native handles; reads after close may reopen lazily or fail, by backend."""

    # -- derived API -----------------------------------------------------------
    @property
    def name(self) -> str:
        """How errors name this slide: its path, or a description of the array."""
        return self.source if self.source is not None else f"<{type(self).__name__}>"

    def tile_shape(self, level: int) -> tuple[int, int]:
        """The format's tile at ``level``, or `DEFAULT_TILE` squares where it has none."""
        return self._level(level).tile or (DEFAULT_TILE, DEFAULT_TILE)

    def tile_grid(self, level: int) -> tuple[int, int]:
        """Number of tile rows and columns at ``level``."""
        (th, tw), (h, w) = self.tile_shape(level), self._level(level).shape
        return math.ceil(h / th), math.ceil(w / tw)

    def tile_box(self, level: int, ty: int, tx: int) -> tuple[int, int, int, int]:
        """``(y, x, h, w)`` of tile ``(ty, tx)`` in ``level`` pixels, clipped at the level's edges."""
        (th, tw), (H, W) = self.tile_shape(level), self._level(level).shape
        y, x = ty * th, tx * tw
        if not (0 <= y < H and 0 <= x < W):
            raise IndexError(f"{self.name}: tile ({ty}, {tx}) outside level {level}")
        return y, x, min(th, H - y), min(tw, W - x)

    def tiles_covering(self, level: int, top_left: tuple[int, int], size: tuple[int, int]) -> Iterator[tuple[int, int]]:
        """Tile indices of ``level`` that a box touches, clipped to the level."""
        (th, tw), (rows, cols) = self.tile_shape(level), self.tile_grid(level)
        (y, x), (h, w) = top_left, size
        ty0, tx0 = max(y // th, 0), max(x // tw, 0)
        ty1, tx1 = min((y + h - 1) // th, rows - 1), min((x + w - 1) // tw, cols - 1)
        return itertools.product(range(ty0, ty1 + 1), range(tx0, tx1 + 1))

    def read_region(self, level: int, top_left: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """``(h, w, 3) uint8`` at ``top_left=(y, x)`` of ``level``; outside the slide is zero."""
        lv = self._level(level)
        y, x = (int(v) for v in top_left)
        h, w = (int(v) for v in size)
        if h < 0 or w < 0:
            raise ValueError(f"{self.name}: region size must be non-negative, got {size}")
        H, W = lv.shape
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if (y0, x0, y1, x1) == (y, x, y + h, x + w) and h and w:
            return np.ascontiguousarray(self._read(level, y, x, h, w))
        out = np.zeros((h, w, 3), np.uint8)
        if y1 > y0 and x1 > x0:
            blit(out, (y, x), self._read(level, y0, x0, y1 - y0, x1 - x0), (y0, x0))
        return out

    def level_for(self, downsample: float | None = None, mpp: float | None = None) -> int:
        """The coarsest level at least as fine as asked (OpenSlide's rule, 1% tolerance)."""
        if (downsample is None) == (mpp is None):
            raise ValueError("level_for takes exactly one of downsample= or mpp=")
        if mpp is not None:
            if self.mpp is None:
                raise ValueError(f"{self.name}: resolution (mpp) unknown; ask by downsample instead")
            downsample = mpp / self.mpp
        assert downsample is not None
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= downsample * (1 + LEVEL_TOLERANCE) and lv.downsample >= self.levels[best].downsample:
                best = i
        return best

    def to_dask(self, level: int):
        """Lazy ``dask.array (H, W, 3) uint8`` chunked on the format's tiles, one task per tile."""
        import dask.array as da
        from dask.base import tokenize

        (H, W), (th, tw) = self._level(level).shape, self.tile_shape(level)
        rows, cols = self.tile_grid(level)
        name = f"wsi-level-{tokenize(self._token(), level)}"
        graph = {(name, i, j, 0): (self.read_tile, level, i, j) for i in range(rows) for j in range(cols)}
        chunks = (
            tuple(min(th, H - i * th) for i in range(rows)),
            tuple(min(tw, W - j * tw) for j in range(cols)),
            (3,),
        )
        return da.Array(graph, name, chunks, dtype=np.uint8)

    def thumbnail(self, max_size: int | tuple[int, int] = 512) -> np.ndarray:
        """Small RGB image, aspect kept, from the coarsest level (for overlays and reports)."""
        from PIL import Image

        mh, mw = (max_size, max_size) if isinstance(max_size, int) else max_size
        H0, W0 = self.levels[0].shape
        target = max(H0 / mh, W0 / mw, 1.0)
        level = self.level_for(downsample=target)
        img = Image.fromarray(self.read_region(level, (0, 0), self.levels[level].shape))
        img.thumbnail((mw, mh), Image.Resampling.LANCZOS)
        return np.asarray(img)

    # -- plumbing --------------------------------------------------------------
    def _level(self, level: int) -> Level:
        if not isinstance(level, (int, np.integer)) or not 0 <= level < len(self.levels):
            raise IndexError(f"{self.name}: level {level} does not exist (slide has {len(self.levels)})")
        return self.levels[level]

    def _token(self) -> str:
        """Identity for dask keys: backend and source (two backends may read one file), or the object."""
        return f"{self.backend}:{self.source}" if self.source is not None else f"{type(self).__name__}-{id(self)}"

    def __reduce__(self):
        if self.source is None:
            raise TypeError(f"{self.name} has no source path and cannot be pickled")
        from wsi_ats.readers import open_slide

        options = {"storage_options": self.storage_options} if self.storage_options else {}
        options |= {"remote_cache": self.remote_cache} if self.remote_cache else {}
        return (functools.partial(open_slide, backend=self.backend, mpp=self.given_mpp, **options), (self.source,))

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        dims = ", ".join(f"{lv.shape[0]}x{lv.shape[1]}@{lv.downsample:g}" for lv in self.levels)
        return f"{type(self).__name__}({self.name!r}, levels=[{dims}], mpp={self.mpp})"
