"""The attention grid over one low level, and the tissue cells on it.

Geometry only (numpy): which low-level pixels a grid cell is centred on, which window of the
low level a block of cells needs, and which cells are tissue. Cells are numbered
*tile-major* (tiles of ``tile x tile`` cells in raster order, cells in raster order within
a tile): the order in which the attention net's tile-by-tile pass produces their logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_ats.engine.tissue import TissueMask


@dataclass(frozen=True)
class AttentionGrid:
    """The grid an attention net of ``radius`` and ``padding`` produces on a low level of ``low_shape``.

    Cell ``i`` (per dim) is centred on low-level pixel ``i + offset`` (``offset = radius`` for
    valid padding, 0 for same), so its level-0 box starts at ``(i + offset) * low_downsample``.
    """

    low_shape: tuple[int, int]
    low_downsample: float
    radius: int
    padding: str

    @property
    def offset(self) -> int:
        return self.radius if self.padding == "valid" else 0

    @property
    def receptive_field(self) -> int:
        """Low-level pixels per dim the grid loses (`wsi_ats.ats.patch_top_left`'s ``receptive_field``)."""
        return 2 * self.offset

    @property
    def shape(self) -> tuple[int, int]:
        return (self.low_shape[0] - self.receptive_field, self.low_shape[1] - self.receptive_field)

    def window(self, y0: int, x0: int, y1: int, x1: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Low-level ``(top_left, size)`` to read for cells ``[y0, y1) x [x0, x1)``, and where cell ``(y0, x0)`` lands in the net's output.

        The window extends ``radius`` pixels of context each side, clipped to the level, so
        the net sees exactly what a whole-level pass would (its own zero padding at the
        slide border included).
        """
        (H, W), r, o = self.low_shape, self.radius, self.offset
        ty0, tx0 = max(y0 + o - r, 0), max(x0 + o - r, 0)
        ty1, tx1 = min(y1 + o + r, H), min(x1 + o + r, W)
        return (ty0, tx0), (ty1 - ty0, tx1 - tx0), (y0 - ty0, x0 - tx0)

    def cell_centres(self, start: int, stop: int) -> np.ndarray:
        """Level-0 positions of the centres of cells ``start..stop-1`` along one dim."""
        return (np.arange(start, stop) + self.offset + 0.5) * self.low_downsample

    def tissue_cells(self, mask: TissueMask | None, tile: int) -> TissueCells:
        """The cells whose centre is tissue (all cells when ``mask`` is None), tile-major.

        Tiles are first screened on the small mask, only where it may hold tissue, so a
        mostly blank slide costs little more than its tissue.
        """
        Ay, Ax = self.shape
        rows, cols = math.ceil(Ay / tile), math.ceil(Ax / tile)
        candidates = np.ones((rows, cols), bool) if mask is None else self._tiles_touching(mask, tile)
        tiles, counts, coords, boxes = [], [], [], []
        for ty, tx in zip(*np.nonzero(candidates)):
            y0, y1 = ty * tile, min((ty + 1) * tile, Ay)
            x0, x1 = tx * tile, min((tx + 1) * tile, Ax)
            if mask is None:
                cy, cx = (a.ravel() for a in np.mgrid[0 : y1 - y0, 0 : x1 - x0])
            else:
                cy, cx = np.nonzero(mask.at(self.cell_centres(y0, y1), self.cell_centres(x0, x1)))
            if len(cy):
                tiles.append((ty, tx))
                counts.append(len(cy))
                coords.append(np.stack([cy + y0, cx + x0], axis=1))
                boxes.append((y0 + cy[0], x0 + cx.min(), y0 + cy[-1] + 1, x0 + cx.max() + 1))  # cy ascends
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        return TissueCells(
            grid_shape=(Ay, Ax),
            tile=tile,
            tiles=np.asarray(tiles, np.int64).reshape(-1, 2),
            offsets=offsets,
            coords=np.concatenate(coords).astype(np.int64) if coords else np.zeros((0, 2), np.int64),
            boxes=np.asarray(boxes, np.int64).reshape(-1, 4),
        )

    def _tiles_touching(self, mask: TissueMask, tile: int) -> np.ndarray:
        """Tiles whose cell centres may fall on tissue: ``(rows, cols)`` bool, a superset of the true ones.

        Only tiles that meet the mask's ``regions`` are looked at, each on the slice of mask
        rows and columns its cell centres span.
        """
        Ay, Ax = self.shape
        rows, cols = math.ceil(Ay / tile), math.ceil(Ax / tile)
        ry = mask.rows(self.cell_centres(0, Ay))
        cx = mask.cols(self.cell_centres(0, Ax))
        r0, r1 = ry[::tile], ry[np.minimum(np.arange(rows) * tile + tile - 1, Ay - 1)] + 1
        c0, c1 = cx[::tile], cx[np.minimum(np.arange(cols) * tile + tile - 1, Ax - 1)] + 1
        regions = mask.regions if mask.regions is not None else ((0, 0, *mask.mask.shape),)
        near = np.zeros((rows, cols), bool)
        for y0, x0, y1, x1 in regions:
            near |= ((r0 < y1) & (r1 > y0))[:, None] & ((c0 < x1) & (c1 > x0))[None, :]
        out = np.zeros((rows, cols), bool)
        for ty, tx in zip(*np.nonzero(near)):
            out[ty, tx] = mask.mask[r0[ty] : r1[ty], c0[tx] : c1[tx]].any()
        return out


@dataclass(frozen=True, eq=False)
class TissueCells:
    """Tissue cells of a grid: ``coords[offsets[k]:offsets[k+1]]`` are the ``(y, x)`` cells of tile ``tiles[k]``.

    ``boxes[k]`` is ``(y0, x0, y1, x1)``, the cells bounding them (see `cell_box`).
    """

    grid_shape: tuple[int, int]
    tile: int
    tiles: np.ndarray
    offsets: np.ndarray
    coords: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.coords)

    def cell_box(self, k: int) -> tuple[int, int, int, int]:
        """Cells ``(y0, x0, y1, x1)`` bounding the tissue of the ``k``-th tissue tile.

        Tighter than the tile where tissue covers part of it, so the attention net runs on
        little more than the tissue wherever the tile grid happens to fall on the slide.
        """
        y0, x0, y1, x1 = (int(v) for v in self.boxes[k])
        return y0, x0, y1, x1
