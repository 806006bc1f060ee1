"""Fetch many small patches from one slide level, decoding each covering tile once.

Why not slice ``slide.to_dask(level)`` once per patch: stacking the slices costs
gigabytes of graph and copies for a few hundred unaligned patches. Here the plan is
made first, in plain Python — which format tiles each patch touches — and every such
tile is decoded exactly once per call, whatever the overlap, then pasted into each
patch that needs it and dropped.

On threads (the default, and `wsi_ats.engine.run.predict_slide` without a client) there is
no graph at all: the covering tiles, in row-major order, are one shared queue; each
thread takes the next tile, decodes it (``slide.read_tile``: imagecodecs releases the
GIL) and pastes it straight into the output rows of the patches it covers. A tile's
part of a patch is disjoint from every other tile's part, so threads never wait on
each other but for the queue, a thread is never left with a backlog while another
idles (work-stealing over single tiles: no straddler group), and memory holds one
tile per thread. The caller first hints all the tiles to the slide
(``slide.prefetch_tiles``): a slide behind a URL fetches their byte ranges in one round
of concurrent requests, so the fetch waits for the network once.

On a ``dask.distributed`` client decoded tiles must not cross processes, so the work
is a small hand-built graph of tile *groups* (`plan_fetch`):

* The covering tiles are split into groups that own disjoint tiles. One task per
  group prefetches and decodes its tiles and, in the same task, assembles every
  patch whose tiles all lie in the group: a decoded tile never leaves the worker
  that decoded it.
* Groups keep whole the connected components of patches that share tiles and are
  cut, in row-major order, to equal tile counts (a component larger than a group
  is cut too). The few patches that then straddle two groups are assembled in one
  extra task from the tiles their groups export.
* There are ``tasks_per_worker`` groups per worker (fewer for small calls: at least
  `MIN_TILES_PER_TASK` tiles each). Tasks receive the slide itself, which pickles as
  its path and reopens on a worker through the readers' per-process handle cache
  (in-memory slides pickle their array).

Why these two schedulers and these constants, the measurements that chose them:
``benchmarks/results/NOTES.md``; current figures: ``benchmarks/results/fetch.json``, made
by ``benchmarks/fetch.py``.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import getitem
from typing import Any

import numpy as np
from dask.base import tokenize

from wsi_ats.readers.base import Slide, blit

#: Decode-and-assemble tasks per worker on a distributed client (every task costs scheduler time and a transfer).
TASKS_PER_DISTRIBUTED_WORKER = 1
#: Below this many tiles a task costs more to schedule than to run.
MIN_TILES_PER_TASK = 8

Tile = tuple[int, int]


@dataclass(frozen=True)
class FetchStats:
    """What one fetch cost: ``tiles`` decoded (each at most once), their uncompressed bytes, wall time.

    ``tasks``: the graph's tasks on a client, the threads that decoded on threads.
    """

    patches: int
    tiles: int
    bytes_decoded: int
    tasks: int
    seconds: float


@dataclass(frozen=True)
class TileGroup:
    """One task's work: decode ``tiles``, assemble ``patches`` (indices), hand ``exports`` to straddlers."""

    tiles: tuple[Tile, ...]
    patches: np.ndarray
    exports: tuple[Tile, ...]


@dataclass(frozen=True)
class FetchPlan:
    """Which tiles each group decodes and which patches straddle groups; made before any decode."""

    level: int
    top_left: np.ndarray
    size: tuple[int, int]
    groups: tuple[TileGroup, ...]
    straddlers: np.ndarray

    @property
    def outside(self) -> np.ndarray:
        """Indices of the patches that touch no tile: wholly outside the level, all zero."""
        inside = np.zeros(len(self.top_left), bool)
        for g in self.groups:
            inside[g.patches] = True
        inside[self.straddlers] = True
        return np.flatnonzero(~inside)


def fetch_patches(
    slide: Slide,
    level: int,
    top_left: Any,
    patch_size: int | Sequence[int],
    *,
    client: Any = None,
    num_workers: int | None = None,
    tasks_per_worker: int | None = None,
) -> np.ndarray:
    """``(n, ph, pw, 3) uint8`` patches at ``top_left`` (``(n, 2)`` ints, ``(y, x)`` in ``level`` pixels).

    Parts outside the slide are zero. Runs on ``num_workers`` threads (default: dask's
    ``num_workers`` setting, else all cores), or on ``client`` when given, with
    ``tasks_per_worker`` groups per worker (default `TASKS_PER_DISTRIBUTED_WORKER`).
    """
    patches, _ = fetch_patches_with_stats(
        slide, level, top_left, patch_size, client=client, num_workers=num_workers, tasks_per_worker=tasks_per_worker
    )
    return patches


def fetch_patches_with_stats(
    slide: Slide,
    level: int,
    top_left: Any,
    patch_size: int | Sequence[int],
    *,
    client: Any = None,
    num_workers: int | None = None,
    tasks_per_worker: int | None = None,
) -> tuple[np.ndarray, FetchStats]:
    """`fetch_patches` plus the `FetchStats` of the call, counted where the tiles were decoded."""
    start = time.perf_counter()
    workers = _worker_count(client, num_workers)
    if client is None:
        if tasks_per_worker is not None:
            raise ValueError("tasks_per_worker applies on a client only: threads take the tiles one at a time")
        tops, size = _validate(slide, top_left, patch_size)
        out, tiles, nbytes, threads = _fetch_threaded(slide, level, tops, size, workers)
        return out, FetchStats(len(tops), tiles, nbytes, threads, time.perf_counter() - start)
    if tasks_per_worker is None:
        tasks_per_worker = TASKS_PER_DISTRIBUTED_WORKER
    if tasks_per_worker < 1:
        raise ValueError(f"tasks_per_worker must be at least 1, got {tasks_per_worker}")
    plan = plan_fetch(slide, level, top_left, patch_size, n_groups=workers * tasks_per_worker)
    n, (ph, pw) = len(plan.top_left), plan.size
    out = np.empty((n, ph, pw, 3), np.uint8)
    graph, group_keys, straddle_key = _graph(slide, plan)
    keys = [*group_keys, *([straddle_key] if straddle_key else [])]
    results = client.get(graph, keys, sync=True)
    tiles = nbytes = 0
    for group, (patches, _, n_tiles, n_bytes) in zip(plan.groups, results):
        out[group.patches] = patches
        tiles, nbytes = tiles + n_tiles, nbytes + n_bytes
    if straddle_key:
        out[plan.straddlers] = results[-1]
    out[plan.outside] = 0
    return out, FetchStats(n, tiles, nbytes, len(graph) - 1, time.perf_counter() - start)


def _validate(slide: Slide, top_left: Any, patch_size: int | Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    tops = np.asarray(top_left)
    if tops.size == 0:
        tops = tops.reshape(0, 2)
    if tops.ndim != 2 or tops.shape[1] != 2:
        raise ValueError(f"{slide.name}: top_left must be an (n, 2) array of (y, x), got shape {tops.shape}")
    if tops.size and not np.issubdtype(tops.dtype, np.integer):
        raise ValueError(f"{slide.name}: top_left must hold integers (pixels), got {tops.dtype}")
    size = (patch_size, patch_size) if np.ndim(patch_size) == 0 else tuple(patch_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"{slide.name}: patch_size must be a positive int or (ph, pw), got {patch_size!r}")
    return tops.astype(np.int64), (int(size[0]), int(size[1]))


def _worker_count(client: Any, num_workers: int | None) -> int:
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    import dask

    # dask's own setting first: a cluster worker sets it to its share of the cores.
    return num_workers or dask.config.get("num_workers", None) or os.cpu_count() or 1


# -- threads: one queue of tiles -------------------------------------------------------------------
def _fetch_threaded(slide: Slide, level: int, tops: np.ndarray, size: tuple[int, int], workers: int) -> tuple[np.ndarray, int, int, int]:
    """The patches, the tiles decoded, their bytes and the threads used (module docstring: "On threads")."""
    (th, tw), (H, W), (ph, pw) = slide.tile_shape(level), slide.levels[level].shape, size  # validates the level
    corners = [(y, x) for y, x in tops.tolist()]
    users: dict[Tile, list[int]] = {}
    for row, corner in enumerate(corners):
        for tile in slide.tiles_covering(level, corner, size):
            users.setdefault(tile, []).append(row)
    out = np.empty((len(tops), ph, pw, 3), np.uint8)
    ys, xs = tops[:, 0], tops[:, 1]
    out[(ys < 0) | (xs < 0) | (ys + ph > H) | (xs + pw > W)] = 0  # tiles will not cover these whole
    if not users:
        return out, 0, 0, 0
    tiles = sorted(users)  # row-major: a patch's tiles come close together
    slide.prefetch_tiles(level, tiles)  # over a URL: one round of range requests
    todo: queue.SimpleQueue[Tile] = queue.SimpleQueue()
    for tile in tiles:
        todo.put(tile)
    failed = threading.Event()

    def work() -> tuple[int, int]:
        decoded = nbytes = 0
        try:
            while not failed.is_set():
                try:
                    ty, tx = todo.get_nowait()
                except queue.Empty:
                    break
                pixels = slide.read_tile(level, ty, tx)
                decoded, nbytes = decoded + 1, nbytes + pixels.nbytes
                for row in users[ty, tx]:
                    blit(out[row], corners[row], pixels, (ty * th, tx * tw))
        except BaseException:
            failed.set()  # the other threads stop at their next tile
            raise
        return decoded, nbytes

    threads = min(workers, len(tiles))
    if threads == 1:
        counts = [work()]
    else:
        with ThreadPoolExecutor(threads - 1, thread_name_prefix="wsi-ats-fetch") as pool:
            helpers = [pool.submit(work) for _ in range(threads - 1)]
            counts = [work(), *(h.result() for h in helpers)]  # the caller decodes too
    return out, sum(c[0] for c in counts), sum(c[1] for c in counts), threads


# -- a distributed client: a graph of tile groups -----------------------------------------------------
def plan_fetch(slide: Slide, level: int, top_left: Any, patch_size: int | Sequence[int], n_groups: int) -> FetchPlan:
    """Split the tiles that the patches touch into at most ``n_groups`` balanced, disjoint groups."""
    tops, size = _validate(slide, top_left, patch_size)
    slide.tile_shape(level)  # validates the level before any work
    covers = [list(slide.tiles_covering(level, (int(y), int(x)), size)) for y, x in tops]
    root = _components(covers)
    comp_size: dict[Tile, int] = {}
    for t in root:
        comp_size[root[t]] = comp_size.get(root[t], 0) + 1

    # Row-major by first tile, then components kept contiguous in order of first appearance.
    order = sorted((i for i, c in enumerate(covers) if c), key=lambda i: covers[i][0])
    rank: dict[Tile, int] = {}
    for i in order:
        rank.setdefault(root[covers[i][0]], len(rank))
    order.sort(key=lambda i: rank[root[covers[i][0]]])

    groups = max(1, min(n_groups, len(root) // MIN_TILES_PER_TASK))
    target = math.ceil(len(root) / groups)
    owner: dict[Tile, int] = {}
    owned: list[list[Tile]] = [[]]
    for k, i in enumerate(order):
        for t in covers[i]:
            if t not in owner:
                owner[t] = len(owned) - 1
                owned[-1].append(t)
        if len(owned[-1]) >= target and k + 1 < len(order):
            comp, nxt = root[covers[i][0]], root[covers[order[k + 1]][0]]
            if nxt != comp or comp_size[comp] > target:
                owned.append([])

    local: list[list[int]] = [[] for _ in owned]
    exports: list[set[Tile]] = [set() for _ in owned]
    straddlers = []
    for i in order:
        homes = {owner[t] for t in covers[i]}
        if len(homes) == 1:
            local[homes.pop()].append(i)
        else:
            straddlers.append(i)
            for t in covers[i]:
                exports[owner[t]].add(t)
    plan_groups = tuple(
        TileGroup(tuple(tiles), np.asarray(patches, np.intp), tuple(sorted(ex)))
        for tiles, patches, ex in zip(owned, local, exports)
        if tiles
    )
    return FetchPlan(level, tops, size, plan_groups, np.asarray(straddlers, np.intp))


def _components(covers: list[list[Tile]]) -> dict[Tile, Tile]:
    """Each tile's component representative, tiles joined when one patch covers both (union-find)."""
    parent: dict[Tile, Tile] = {}

    def find(t: Tile) -> Tile:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for cover in covers:
        for t in cover:
            parent.setdefault(t, t)
        for t in cover[1:]:
            parent[find(t)] = find(cover[0])
    return {t: find(t) for t in parent}


def _graph(slide: Slide, plan: FetchPlan) -> tuple[dict, list, Any]:
    """A decode-and-assemble task per group, plus one task for the patches that straddle groups."""
    token = tokenize(slide._token(), plan.level, plan.top_left, plan.size, [g.patches for g in plan.groups])
    slide_key = f"fetch-slide-{token}"
    graph: dict[Any, Any] = {slide_key: slide}
    group_keys = []
    export_keys = []
    for g, group in enumerate(plan.groups):
        key = (f"fetch-group-{token}", g)
        exports = np.asarray(group.exports, np.int64).reshape(-1, 2)
        graph[key] = (_decode_group, slide_key, plan.level, plan.top_left[group.patches], plan.size, exports)
        group_keys.append(key)
        if group.exports:
            graph[(f"fetch-exports-{token}", g)] = (getitem, key, 1)
            export_keys.append((f"fetch-exports-{token}", g))
    if not len(plan.straddlers):
        return graph, group_keys, None
    straddle_key = f"fetch-straddlers-{token}"
    graph[straddle_key] = (_assemble_straddlers, slide_key, plan.level, plan.top_left[plan.straddlers], plan.size, export_keys)
    return graph, group_keys, straddle_key


class _LiveTiles:
    """A group's tiles, each decoded at its first use and dropped after its last.

    Holding only the tiles that patches still need keeps a task's memory to a
    few tile rows, and lets the allocator hand freed (already mapped) tile
    buffers to the next decode instead of faulting in fresh pages (about a
    fifth less CPU than decoding the whole group first; NOTES.md).
    """

    def __init__(self, slide: Slide, level: int, uses: Counter[Tile], exports: set[Tile]) -> None:
        self.slide, self.level, self.uses, self.exports = slide, level, uses, exports
        self.live: dict[Tile, np.ndarray] = {}
        self.exported: dict[Tile, np.ndarray] = {}
        self.decoded = self.nbytes = 0

    def use(self, tile: Tile) -> np.ndarray:
        """The tile, for one of the uses counted in ``uses``."""
        pixels = self.live.get(tile)
        if pixels is None:
            pixels = self.live[tile] = self._decode(tile)
        self.uses[tile] -= 1
        if not self.uses[tile]:
            del self.live[tile]
        return pixels

    def export_rest(self) -> dict[Tile, np.ndarray]:
        """The tiles other groups' patches need, decoding those no patch here used."""
        for tile in self.exports - self.exported.keys():
            self._decode(tile)
        return self.exported

    def _decode(self, tile: Tile) -> np.ndarray:
        pixels = self.slide.read_tile(self.level, *tile)
        self.decoded, self.nbytes = self.decoded + 1, self.nbytes + pixels.nbytes
        if tile in self.exports:
            self.exported[tile] = pixels
        return pixels


def _decode_group(
    slide: Slide, level: int, tops: np.ndarray, size: tuple[int, int], exports: np.ndarray
) -> tuple[np.ndarray, dict[Tile, np.ndarray], int, int]:
    """Decode a group's tiles once while assembling its patches; return them, the exports, the counts."""
    covers = _covers(slide, level, tops, size)
    uses = Counter(t for cover in covers for t in cover)
    exported = {(int(y), int(x)) for y, x in exports}
    slide.prefetch_tiles(level, [*uses, *(exported - uses.keys())])  # over a URL: one round of range requests
    tiles = _LiveTiles(slide, level, uses, exported)
    patches = _assemble(slide, level, tops, size, covers, tiles.use)
    return patches, tiles.export_rest(), tiles.decoded, tiles.nbytes


def _assemble_straddlers(
    slide: Slide, level: int, tops: np.ndarray, size: tuple[int, int], exports: list[dict[Tile, np.ndarray]]
) -> np.ndarray:
    tiles = {t: a for part in exports for t, a in part.items()}
    return _assemble(slide, level, tops, size, _covers(slide, level, tops, size), tiles.__getitem__)


def _covers(slide: Slide, level: int, tops: np.ndarray, size: tuple[int, int]) -> list[list[Tile]]:
    return [list(slide.tiles_covering(level, (int(y), int(x)), size)) for y, x in tops]


def _assemble(
    slide: Slide, level: int, tops: np.ndarray, size: tuple[int, int], covers: list[list[Tile]], tile: Callable[[Tile], np.ndarray]
) -> np.ndarray:
    """New patches, each pasted from its covering tiles (from ``tile``); zero what lies outside the level."""
    (th, tw), (H, W), (ph, pw) = slide.tile_shape(level), slide.levels[level].shape, size
    out = np.empty((len(tops), ph, pw, 3), np.uint8)
    for patch, (y, x), cover in zip(out, tops, covers):
        origin = (int(y), int(x))
        if y < 0 or x < 0 or y + ph > H or x + pw > W:
            patch[...] = 0  # only partly inside: tiles will not cover it all
        for ty, tx in cover:
            blit(patch, origin, tile((ty, tx)), (ty * th, tx * tw))
    return out
