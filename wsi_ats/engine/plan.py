"""Step 1: what the engine needs to know about a slide before any network runs.

The model's level specs resolve to the slide's levels, the attention net's geometry gives
the attention grid on the low level, and the tissue mask (read at a coarse level) picks the
grid cells the attention will cover, tile by tile. Only the coarse tissue level is read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_ats.engine.grid import AttentionGrid, TissueCells
from wsi_ats.engine.tissue import TissueMask, tissue_mask
from wsi_ats.readers.base import Slide

if TYPE_CHECKING:
    from wsi_ats.models import ATSModel


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """Levels, attention grid and tissue cells of one slide, for one model."""

    low_level: int
    high_level: int
    high_shape: tuple[int, int]
    high_downsample: float
    grid: AttentionGrid
    cells: TissueCells
    tissue: TissueMask | None

    def window(self, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The low-level window ``(top_left, size)`` of the ``k``-th tissue tile: its tissue's cells plus the net's context."""
        top_left, size, _ = self.grid.window(*self.cells.cell_box(k))
        return top_left, size

    def window_cells(self, k: int) -> np.ndarray:
        """Flat positions ``(m,)`` of the ``k``-th tile's tissue cells in the net's output on its window."""
        y0, x0, y1, x1 = self.cells.cell_box(k)
        _, (_, w), (cy, cx) = self.grid.window(y0, x0, y1, x1)
        cells = self.cells.coords[self.cells.offsets[k] : self.cells.offsets[k + 1]]
        width = w - self.grid.receptive_field  # of the net's output
        return (cells[:, 0] - (y0 - cy)) * width + (cells[:, 1] - (x0 - cx))


def plan_slide(model: "ATSModel", slide: Slide) -> SlidePlan:
    """The plan of ``slide`` for ``model``; a slide smaller than the net's receptive field is an error naming it."""
    low_level, high_level = model.low.resolve(slide), model.high.resolve(slide)
    low, high = slide.levels[low_level], slide.levels[high_level]
    net = model.attention_net
    grid = AttentionGrid(low.shape, low.downsample, net.radius, net.padding)
    if min(grid.shape) < 1:
        raise ValueError(
            f"{slide.name}: level {low_level} ({low.shape[0]}x{low.shape[1]}) is smaller than the "
            f"attention net's receptive field ({2 * grid.radius + 1} px)"
        )
    mask = None
    if model.tissue.enabled:
        mask = tissue_mask(slide, downsample=model.tissue.downsample, min_saturation=model.tissue.min_saturation)
    cells = grid.tissue_cells(mask, model.tile)
    if len(cells) == 0:
        warnings.warn(f"{slide.name}: no tissue found (saturation threshold {mask.threshold:.3f}); attending to the whole slide")
        cells = grid.tissue_cells(None, model.tile)
    return SlidePlan(low_level, high_level, high.shape, high.downsample, grid, cells, mask)
