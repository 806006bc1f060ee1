"""Pyramid geometry and the streaming of tile rows through every level.

Level 0 is rendered one row of tiles (256 px) at a time; each row is block-averaged into
the next level's rows, which fill a 256-row buffer per level that is emitted when full.
Memory stays a few tile rows per level whatever the slide size: nothing holds a whole level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from wsi_ats.synth.render import render_tile
from wsi_ats.synth.scene import TILE, Scene

#: Every reduced level is 4x smaller than the one above; 64 only for large slides.
STEP = 4
LARGE = 32768


def slide_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) rounded up to whole tiles, so every level's size is an exact fraction of level 0."""
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"slide size must be positive, got {size!r}")
    return (-(-h // TILE) * TILE, -(-w // TILE) * TILE)


def downsamples(shape: tuple[int, int]) -> tuple[int, ...]:
    """1, 4, 16 and, for slides of 32k px or more, 64."""
    return (1, 4, 16, 64) if max(shape) >= LARGE else (1, 4, 16)


def block_mean(rows: np.ndarray, f: int) -> np.ndarray:
    """Rounded mean of f x f blocks of an (h, w, 3) uint8 image (h, w multiples of f)."""
    h, w, c = rows.shape
    acc = rows[0::f].astype(np.uint16)
    for i in range(1, f):
        acc += rows[i::f]
    acc = acc.reshape(h // f, w // f, f * c)
    out = acc[:, :, :c].copy()
    for i in range(1, f):
        out += acc[:, :, i * c : (i + 1) * c]
    out += f * f // 2
    out //= f * f
    return out.astype(np.uint8)


def _render_row(scene: Scene, y: int) -> np.ndarray:
    row = np.empty((TILE, scene.shape[1], 3), dtype=np.uint8)
    for x in range(0, scene.shape[1], TILE):
        row[:, x : x + TILE] = render_tile(scene, y, x)
    return row


def level0_rows(scene: Scene, workers: int = 1) -> Iterator[np.ndarray]:
    """Rendered (256, W, 3) rows of level 0, top to bottom; `workers` threads render ahead."""
    ys = range(0, scene.shape[0], TILE)
    if workers <= 1:
        yield from (_render_row(scene, y) for y in ys)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for y in ys:
            pending.append(pool.submit(_render_row, scene, y))
            if len(pending) > workers:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def stream_levels(scene: Scene, *, workers: int = 1, on_row: Callable[[], None] | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(level, y, rows) for every tile row of every level, each row exactly once.

    Rows are (<=256, W_level, 3) uint8 and top-to-bottom within a level. The reduced rows that a
    level-0 row completes come just before it, so a consumer that stops at the last level-0 row
    (a TIFF writer that asked for exactly its tiles) has seen every level. `on_row` ticks per row.
    """
    heights = [scene.shape[0] // f for f in downsamples(scene.shape)]
    n = len(heights)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    done = [0] * n
    for y, rows in zip(range(0, scene.shape[0], TILE), level0_rows(scene, workers)):
        reduced = rows
        for lvl in range(1, n):
            reduced = block_mean(reduced, STEP)
            parts[lvl].append(reduced)
            filled = sum(len(p) for p in parts[lvl])
            if filled == TILE or done[lvl] + filled == heights[lvl]:
                yield lvl, done[lvl], np.concatenate(parts[lvl])
                done[lvl] += filled
                parts[lvl].clear()
        if on_row is not None:
            on_row()
        yield 0, y, rows
