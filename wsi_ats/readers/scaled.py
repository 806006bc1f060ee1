"""Levels at exact scales: a slide's own level when one is close enough, else a resampled one.

A model sees tissue at fixed scales (its recipe's downsamples or microns per pixel). A
slide whose pyramid lacks one of them -- an NDPI stepping by 2 where the model wants
1/16 of a 20x scan, a x3 OME-Zarr, a TIFF with one level only -- gets a *resampled level*
at exactly that scale, behaving like any other `Level` (`read_region`, `read_tile`,
`to_dask`, tile grid), so the engine and every coordinate above it do not change.

Why these rules:

* A level within `SCALE_TOLERANCE` (2.5%) of the asked downsample is used as it is: two
  scanners' "40x" differ by about that much (0.2465 vs 0.2527 um/px), far less than a
  network notices, and a real level costs nothing to resample.
* A resampled level is computed tile by tile from the nearest finer level, never from one
  more than `MAX_STEP` times finer: a missing 1/64 level of a one-level slide is built from
  a resampled 1/16 level, built from 1/4, built from the base. So one tile never reads more
  than ``(MAX_TILE * MAX_STEP)^2`` source pixels, and memory stays bounded whatever the
  slide's size.
* A tile's footprint on its source is about one source tile (its edge is the source's tile
  edge over the scale, a power of two from `MIN_TILE` to `MAX_TILE`): a patch read decodes
  little more than the patch, and a whole-level read decodes each source tile about once.
* Resampling averages the source pixels under each output pixel (a box filter: an area
  average, the antialiasing a pyramid's own downsampling does); PIL's ``reduce`` where the
  scale is a whole number, its box ``resize`` elsewhere.
* A resampled level's pixels are *defined* by its tiles: `read_region` assembles them, so
  a region read, a tile read and a fetched patch always agree exactly.
* Recently used tiles are kept in memory (`CACHE_BYTES`); over budget, the finest level's
  oldest go first: a coarser tile stands for many finer ones and costs far more to make
  again (on a one-level slide, a 1/64 tile is the base decoded under it).
* With ``cache`` (a folder), tiles are also kept on disk, one small zstd file per tile in a
  folder keyed by the file's identity, so reruns and training epochs do not decode the base
  level again. (Not a zarr store: its per-chunk overhead, about 2 ms to write and 0.7 ms to
  read, cost more than decoding the tile's source.)
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from wsi_ats.readers.base import DEFAULT_TILE, Level, Slide, blit

#: A slide level within this fraction of the asked downsample is used as it is.
SCALE_TOLERANCE = 0.025
#: A resampled level is built from a level at most this many times finer per side.
MAX_STEP = 4.0
#: Bounds of the edge of a resampled level's tiles, in its own pixels.
MIN_TILE, MAX_TILE = 128, 512
#: Bytes of resampled tiles kept in memory per slide.
CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class Resampled:
    """How resampled level ``level`` is made: from level ``source``, ``scale`` source pixels per output pixel, in ``tile`` px squares."""

    level: int
    source: int
    scale: float
    tile: int


def matching_level(slide: Slide, downsample: float) -> int | None:
    """The slide's level within `SCALE_TOLERANCE` of ``downsample`` (the closest), or None."""
    best = min(range(len(slide.levels)), key=lambda i: abs(slide.levels[i].downsample / downsample - 1))
    return best if abs(slide.levels[best].downsample / downsample - 1) <= SCALE_TOLERANCE else None


def at_scales(slide: Slide, downsamples: tuple[float, ...], *, cache: str | os.PathLike[str] | None = None) -> Slide:
    """``slide`` itself when it has a level close to every downsample, else a `ScaledSlide` adding the missing ones."""
    if all(matching_level(slide, d) is not None for d in downsamples):
        return slide
    return ScaledSlide(slide, downsamples, cache=cache)


class ScaledSlide(Slide):
    """``base`` plus resampled levels at the downsamples it lacks; its own levels keep their indices.

    Resampled levels come after the base's (so level numbers in outputs still name the
    file's levels) and are listed in `resampled`. Pickles as its base and downsamples.
    """

    def __init__(self, base: Slide, downsamples: tuple[float, ...], *, cache: str | os.PathLike[str] | None = None) -> None:
        self.base, self.downsamples, self.cache_dir = base, tuple(float(d) for d in downsamples), cache
        levels = list(base.levels)
        self.resampled: dict[int, Resampled] = {}
        H0, W0 = base.levels[0].shape
        for target in sorted(set(self.downsamples)):
            if not target > 0:
                raise ValueError(f"{base.name}: downsample must be positive, got {target}")
            for d in _chain(levels, target):
                source = max(
                    (i for i, lv in enumerate(levels) if lv.downsample <= d * (1 + SCALE_TOLERANCE)), key=lambda i: levels[i].downsample
                )
                shape = (max(1, math.floor(H0 / d)), max(1, math.floor(W0 / d)))
                scale = d / levels[source].downsample
                edge = tile_edge(min(levels[source].tile or (DEFAULT_TILE, DEFAULT_TILE)), scale)
                self.resampled[len(levels)] = Resampled(len(levels), source, scale, edge)
                levels.append(Level(shape, d, (edge, edge)))
        super().__init__(base.source, tuple(levels), base.mpp, base.properties)
        self.backend = base.backend
        finest_first = sorted(self.resampled, key=lambda i: levels[i].downsample)
        #: In-memory tiles, one LRU order per resampled level, finest level first (evicted first).
        self._tiles: dict[int, OrderedDict[tuple[int, int], np.ndarray]] = {i: OrderedDict() for i in finest_first}
        self._bytes = 0
        self._lock = threading.Lock()
        self._disk: dict[int, tuple[str, set[str]]] = {}

    def _read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if level not in self.resampled:
            return self.base._read(level, y, x, h, w)
        out = np.empty((h, w, 3), np.uint8)
        th, tw = self.tile_shape(level)
        for ty, tx in self.tiles_covering(level, (y, x), (h, w)):
            blit(out, (y, x), self.read_tile(level, ty, tx), (ty * th, tx * tw))
        return out

    def prefetch_tiles(self, level: int, tiles: list[tuple[int, int]]) -> None:
        if level not in self.resampled:  # the base's own tiles: a remote base fetches them in one round
            self.base.prefetch_tiles(level, tiles)

    def read_tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        if level not in self.resampled:
            return self.base.read_tile(level, ty, tx)
        kept = self._tiles[level]
        with self._lock:
            tile = kept.get((ty, tx))
            if tile is not None:
                kept.move_to_end((ty, tx))
                return tile
        tile = self._stored(level, ty, tx)
        if tile is None:
            tile = self._resample(level, ty, tx)
            self._store_tile(level, ty, tx, tile)
        with self._lock:
            if (ty, tx) not in kept:  # another thread may have made it meanwhile
                kept[(ty, tx)] = tile
                self._bytes += tile.nbytes
            while self._bytes > CACHE_BYTES:
                _, old = next(lru for lru in self._tiles.values() if lru).popitem(last=False)
                self._bytes -= old.nbytes
        return tile

    def _resample(self, level: int, ty: int, tx: int) -> np.ndarray:
        """Tile ``(ty, tx)`` of a resampled level: the box filter over its footprint on the source level."""
        from PIL import Image

        how = self.resampled[level]
        y, x, h, w = self.tile_box(level, ty, tx)
        sh, sw = self.levels[how.source].shape
        s, k = how.scale, round(how.scale)
        if abs(s - k) < 1e-9 and (y + h) * k <= sh and (x + w) * k <= sw:  # whole k x k blocks: reduce, 2-3x faster than resize
            return np.asarray(Image.fromarray(self.read_region(how.source, (y * k, x * k), (h * k, w * k))).reduce(k))
        y0, x0 = min(math.floor(y * s), sh - 1), min(math.floor(x * s), sw - 1)
        y1, x1 = max(min(math.ceil((y + h) * s), sh), y0 + 1), max(min(math.ceil((x + w) * s), sw), x0 + 1)
        region = self.read_region(how.source, (y0, x0), (y1 - y0, x1 - x0))
        box = (x * s - x0, y * s - y0, min((x + w) * s, sw) - x0, min((y + h) * s, sh) - y0)
        image = Image.fromarray(region).resize((w, h), Image.Resampling.BOX, box=box)
        return np.asarray(image)

    # -- the on-disk cache ---------------------------------------------------------------------
    def _disk_level(self, level: int) -> tuple[str, set[str]] | None:
        """The disk cache's folder for a resampled level and the tile files in it, or None without a cache.

        One folder per file identity and level, named by how its pixels are made (downsample,
        source downsample, tile edge): a cache written by other rules is never read as this
        one. Listed once, then kept up to date with this slide's own writes: a tile that is
        not there costs no failed open (a tile another process writes meanwhile is made again).
        """
        if self.cache_dir is None or self.source is None:
            return None
        entry = self._disk.get(level)
        if entry is None:
            how, lv = self.resampled[level], self.levels[level]
            name = f"ds{lv.downsample:.6g}-from{self.levels[how.source].downsample:.6g}-tile{how.tile}"
            folder = os.path.join(os.fspath(self.cache_dir), _identity(self.source), name)
            os.makedirs(folder, exist_ok=True)
            entry = self._disk[level] = (folder, set(os.listdir(folder)))
        return entry

    def _stored(self, level: int, ty: int, tx: int) -> np.ndarray | None:
        """Tile ``(ty, tx)`` from the disk cache, or None when it is not there whole (never made, or lost in a crash)."""
        import imagecodecs

        disk, name = self._disk_level(level), f"{ty}_{tx}.zst"
        if disk is None or name not in disk[1]:
            return None
        try:
            with open(os.path.join(disk[0], name), "rb") as f:
                data = imagecodecs.zstd_decode(f.read())
        except (FileNotFoundError, imagecodecs.ZstdError):
            return None
        _, _, h, w = self.tile_box(level, ty, tx)
        return np.frombuffer(data, np.uint8).reshape(h, w, 3) if len(data) == h * w * 3 else None

    def _store_tile(self, level: int, ty: int, tx: int, tile: np.ndarray) -> None:
        """Write-then-rename, unsynced: a tile file is whole or absent, at a tenth of a zarr chunk write's cost."""
        import imagecodecs

        from wsi_ats.outputs.atomic import atomic_write_bytes

        disk, name = self._disk_level(level), f"{ty}_{tx}.zst"
        if disk is None:
            return
        data = imagecodecs.zstd_encode(np.ascontiguousarray(tile).tobytes(), level=1)
        atomic_write_bytes(os.path.join(disk[0], name), data, durable=False)
        disk[1].add(name)

    # -- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self.base.close()

    def _token(self) -> str:
        return f"scaled:{self.downsamples}:{self.base._token()}"

    def __reduce__(self):
        return (_reopen, (self.base, self.downsamples, self.cache_dir))


def _reopen(base: Slide, downsamples: tuple[float, ...], cache: str | None) -> ScaledSlide:
    return ScaledSlide(base, downsamples, cache=cache)


def tile_edge(source_tile: int, scale: float) -> int:
    """Tile edge of a level resampled by ``scale`` from one tiled ``source_tile``: a footprint of about one source tile."""
    return int(min(MAX_TILE, max(MIN_TILE, 2 ** round(math.log2(source_tile / scale)))))


def _chain(levels: list[Level], target: float) -> list[float]:
    """Downsamples to add, finest first, so that ``target`` exists and each is at most `MAX_STEP` from a finer one."""
    existing = [lv.downsample for lv in levels]
    if any(abs(d / target - 1) <= SCALE_TOLERANCE for d in existing):
        return []
    finer = max((d for d in existing if d <= target * (1 + SCALE_TOLERANCE)), default=1.0)
    steps = []
    d = target
    while d / finer > MAX_STEP * (1 + SCALE_TOLERANCE):
        steps.append(d)
        d /= MAX_STEP
    steps.append(d)
    return sorted(steps)


def _identity(source: str) -> str:
    """A cache folder name for a file: its name, size and modification time (a changed file is a new entry)."""
    import hashlib

    try:
        st = os.stat(source)
        key = f"{os.path.abspath(source)}\0{st.st_size}\0{st.st_mtime_ns}"
    except OSError:  # a URL: its text is its identity
        key = source
    return f"{os.path.basename(source.rstrip('/'))[:64]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.zarr"
