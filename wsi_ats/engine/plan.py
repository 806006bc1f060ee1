"""Step 1: what the engine needs to know about a slide before any network runs.

The scales the model reads at (by microns when it knows them, else by downsample) become
levels of the slide -- its own within a small tolerance, or resampled ones
(`wsi_ats.readers.scaled`) -- the attention net's geometry gives the attention grid on the
low level, and the tissue mask (read at a coarse level) picks the grid cells the attention
will cover, tile by tile. Only the coarse tissue level is read.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_ats.engine.grid import AttentionGrid, TissueCells
from wsi_ats.engine.tissue import TissueMask, tissue_mask
from wsi_ats.readers.base import Slide, SlideError
from wsi_ats.readers.scaled import at_scales, matching_level

if TYPE_CHECKING:
    from wsi_ats.models import ATSModel


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """Levels, attention grid and tissue cells of one slide, for one model; ``slide`` is what to read (with any resampled levels)."""

    slide: Slide
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


def plan_slide(model: "ATSModel", slide: Slide, *, cache: str | os.PathLike[str] | None = None) -> SlidePlan:
    """The plan of ``slide`` for ``model``; ``cache``: a folder where resampled levels are kept between runs.

    A slide smaller than the net's receptive field, or of unknown resolution when the model
    reads by microns, is an error naming it.
    """
    scales = target_downsamples(model, slide)
    slide = at_scales(slide, tuple(scales.values()), cache=cache)
    low_level, high_level, tissue_level = (matching_level(slide, scales[k]) for k in ("low", "high", "tissue"))
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
        mask = tissue_mask(slide, level=tissue_level, min_saturation=model.tissue.min_saturation)
    cells = grid.tissue_cells(mask, model.tile)
    if len(cells) == 0:
        warnings.warn(f"{slide.name}: no tissue found (saturation threshold {mask.threshold:.3f}); attending to the whole slide")
        cells = grid.tissue_cells(None, model.tile)
    return SlidePlan(slide, low_level, high_level, high.shape, high.downsample, grid, cells, mask)


def target_downsamples(model: "ATSModel", slide: Slide) -> dict[str, float]:
    """Level-0 downsamples at which ``model`` reads ``slide``: ``low``, ``high`` and ``tissue``.

    By microns where the model knows them (``model.microns``: from its recipe or its
    training slides), which needs the slide's resolution; by the recipe's downsample
    otherwise.
    """
    by_downsample = {"low": model.low.downsample, "high": model.high.downsample, "tissue": model.tissue.downsample}
    if model.microns:
        if slide.mpp is None:
            wanted = ", ".join(f"{k} {v:g}" for k, v in model.microns.items())
            raise SlideError(
                f"{slide.name}: resolution unknown (the file states no microns per pixel nor objective power) and this "
                f"model reads tissue at fixed microns per pixel ({wanted}); give the slide's level-0 resolution with "
                f"the manifest's mpp column or --mpp"
            )
        if slide.mpp_source == "objective-power":
            warnings.warn(f"{slide.name}: no microns per pixel in the file; using {slide.mpp:.4g} from its objective power")
    scales = {k: model.microns[k] / slide.mpp if k in model.microns else d for k, d in by_downsample.items()}
    missing = [k for k, d in scales.items() if d is None]
    if missing:
        raise ValueError(f"the model gives no scale for {', '.join(missing)}")
    return scales  # type: ignore[return-value]
