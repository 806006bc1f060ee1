"""Step 1: what the engine needs to know about a slide before any network runs, and whether it can judge it at all.

The scales the model reads at (by microns when it knows them, else by downsample) become
levels of the slide -- its own within a small tolerance, or resampled ones
(`wsi_ats.readers.scaled`) -- the attention net's geometry gives the attention grid on the
low level, and the tissue mask (read at a coarse level) picks the grid cells the attention
will cover, tile by tile. Only the coarse tissue level is read.

A slide the model cannot judge gets a plan with ``warnings`` and no tissue cells, never a
guess: a resolution no scanner makes, a slide coarser than the model's patches, a slide
smaller than one patch or the attention net's field, a blank slide (one colour: an empty
scan, a store whose chunks are missing), no tissue found. The checks cost nothing but the
tissue level the plan reads anyway.

Memory stays bounded on any slide, since every level the engine reads is resampled tile by
tile; time does not: a slide whose pyramid lacks the model's scales is decoded whole once to
build them. Beyond `MAX_STREAMED_PIXELS` of that, the slide is an error naming the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_ats.engine.grid import AttentionGrid, TissueCells
from wsi_ats.engine.tissue import TissueMask, tissue_mask
from wsi_ats.readers.base import Level, Slide, SlideError
from wsi_ats.readers.scaled import SCALE_TOLERANCE, at_scales, matching_level

if TYPE_CHECKING:
    from wsi_ats.models import ATSModel

#: Level-0 micrometres per pixel that slide scanners make (a 100x oil objective to a 1.25x overview).
PLAUSIBLE_MPP = (0.05, 20.0)
#: Most pixels of one of its own levels the engine decodes to build the levels a slide lacks (a 262144^2 slide).
MAX_STREAMED_PIXELS = 1 << 36
#: How to give a slide the pyramid it lacks.
PYRAMID_FIX = "build a pyramid first, e.g. `vips tiffsave SLIDE OUT.tiff --tile --pyramid --compression jpeg`"
_MPP_SOURCE = {"file": "the file says", "given": "given as", "objective-power": "from the objective power,"}


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """Levels, attention grid and tissue cells of one slide, for one model; ``slide`` is what to read (with any resampled levels).

    ``warnings`` say why the model cannot judge the slide; such a plan has no tissue cells.
    ``notes`` are what a user should know that does not stop the judgement (a resolution
    guessed from the objective power): they reach the row's ``warning`` column.
    """

    slide: Slide
    low_level: int
    high_level: int
    high_shape: tuple[int, int]
    high_downsample: float
    grid: AttentionGrid
    cells: TissueCells
    tissue: TissueMask | None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

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


def plan_slide(model: ATSModel, slide: Slide, *, cache: str | os.PathLike[str] | None = None) -> SlidePlan:
    """The plan of ``slide`` for ``model``; ``cache``: a folder where resampled levels are kept between runs.

    A slide of unknown resolution when the model reads by microns, or one whose missing
    levels would mean decoding more than `MAX_STREAMED_PIXELS`, is a `SlideError` naming
    the fix. A slide the model cannot judge is a plan with ``warnings`` (see the module).
    """
    scales = target_downsamples(model, slide)
    warnings = resolution_warnings(model, slide, scales)
    if warnings:  # not judged: levels the slide can give, no finer than level 0, for its outputs
        scales = {k: max(d, 1.0) for k, d in scales.items()}
    else:
        check_streamed(slide, scales.values())
    view = at_scales(slide, tuple(scales.values()), cache=cache)
    low_level, high_level, tissue_level = (matching_level(view, scales[k]) for k in ("low", "high", "tissue"))
    low, high = view.levels[low_level], view.levels[high_level]
    net = model.attention_net
    grid = AttentionGrid(low.shape, low.downsample, net.radius, net.padding)
    if not warnings:
        warnings = size_warnings(view, grid, model.patch_size, high)
    mask = None
    if not warnings:  # the mask finds blank slides also when the model attends everywhere
        mask = tissue_mask(view, level=tissue_level, min_saturation=model.tissue.min_saturation)
        warnings = blank_warnings(mask)
    if warnings:
        cells = no_cells(grid, model.tile)
    else:
        cells = grid.tissue_cells(mask if model.tissue.enabled else None, model.tile)
        if len(cells) == 0:
            warnings = (f"no tissue found: nothing more saturated than the threshold {mask.threshold:.3f} at 1/{mask.downsample:.4g}",)
    tissue = mask if model.tissue.enabled else None
    notes = resolution_notes(model, slide)
    return SlidePlan(view, low_level, high_level, high.shape, high.downsample, grid, cells, tissue, warnings, notes)


def target_downsamples(model: ATSModel, slide: Slide) -> dict[str, float]:
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
    scales = {k: model.microns[k] / slide.mpp if k in model.microns else d for k, d in by_downsample.items()}
    missing = [k for k, d in scales.items() if d is None]
    if missing:
        raise ValueError(f"the model gives no scale for {', '.join(missing)}")
    return scales  # type: ignore[return-value]


# -- why a slide cannot be judged -------------------------------------------------------------------


def resolution_notes(model: ATSModel, slide: Slide) -> tuple[str, ...]:
    """A resolution guessed from the objective power, when the model reads by microns: judged, but worth a look."""
    if model.microns and slide.mpp_source == "objective-power":
        return (
            f"resolution guessed: the file states no microns per pixel; {slide.mpp:.4g} um/px from its objective power; "
            "if that is wrong, give the slide's level-0 resolution with the manifest's mpp column or --mpp",
        )
    return ()


def resolution_warnings(model: ATSModel, slide: Slide, scales: dict[str, float]) -> tuple[str, ...]:
    """A resolution no slide scanner makes, or a slide coarser than a scale the model reads at (it would be enlarged)."""
    fix = "if that is wrong, give the slide's level-0 resolution with the manifest's mpp column or --mpp"
    if slide.mpp is not None and not PLAUSIBLE_MPP[0] <= slide.mpp <= PLAUSIBLE_MPP[1]:
        lo, hi = PLAUSIBLE_MPP
        said = _MPP_SOURCE.get(slide.mpp_source, "")
        return (
            f"implausible resolution: {said} {slide.mpp:.4g} um/px at level 0, outside the {lo:g}-{hi:g} um/px of slide scanners; {fix}",
        )
    key = min(scales, key=lambda k: scales[k])
    if scales[key] * (1 + SCALE_TOLERANCE) < 1:
        wanted = f"{model.microns[key]:.4g} um/px" if key in model.microns else f"downsample {scales[key]:.4g}"
        level0 = f"level 0 ({slide.mpp:.4g} um/px)" if slide.mpp is not None else "level 0"
        return (
            f"too coarse: {level0} has less detail than the model's {key} scale ({wanted}): "
            f"it would be enlarged {1 / scales[key]:.3g}x; {fix}",
        )
    return ()


def size_warnings(slide: Slide, grid: AttentionGrid, patch_size: int, high: Level) -> tuple[str, ...]:
    """A slide smaller than the attention net's field at the low level, or than one patch at the high level."""
    H0, W0 = slide.levels[0].shape
    if min(grid.shape) < 1:
        field = math.ceil((grid.receptive_field + 1) * grid.low_downsample)
        return (f"slide too small: {H0}x{W0} px, less than the attention net's field ({field}x{field} px at level 0)",)
    if min(high.shape) < patch_size:
        size = math.ceil(patch_size * high.downsample)
        return (f"slide too small: {H0}x{W0} px, less than one patch ({size}x{size} px at level 0)",)
    return ()


def blank_warnings(mask: TissueMask) -> tuple[str, ...]:
    """A slide of one colour: an empty scan, or a store whose chunks are all missing (read as their fill value)."""
    if mask.uniform_colour is None:
        return ()
    r, g, b = mask.uniform_colour
    return (f"blank slide: every pixel is RGB ({r}, {g}, {b}) (an empty scan, or a file whose tiles or chunks are missing)",)


def no_cells(grid: AttentionGrid, tile: int) -> TissueCells:
    """The tissue cells of a slide that is not judged: none."""
    empty = np.zeros((0, 2), np.int64)
    return TissueCells(grid.shape, tile, empty, np.zeros(1, np.int64), empty, np.zeros((0, 4), np.int64))


# -- bounded work on any slide ----------------------------------------------------------------------


def streamed_pixels(slide: Slide, downsamples: Iterable[float]) -> tuple[int, int]:
    """``(pixels, level)``: the largest of the slide's own levels decoded whole to build the ``downsamples`` it lacks ((0, -1): none).

    A missing level is resampled from the slide's coarsest level at least as fine
    (`wsi_ats.readers.scaled`); reading the missing level whole (the tissue mask does)
    decodes all of that source.
    """
    worst = (0, -1)
    for d in downsamples:
        if matching_level(slide, d) is not None:
            continue
        finer = [i for i, lv in enumerate(slide.levels) if lv.downsample <= d * (1 + SCALE_TOLERANCE)] or [0]
        source = max(finer, key=lambda i: slide.levels[i].downsample)
        h, w = slide.levels[source].shape
        worst = max(worst, (h * w, source))
    return worst


def check_streamed(slide: Slide, downsamples: Iterable[float]) -> None:
    """A `SlideError` naming the fix when building the missing ``downsamples`` means decoding over `MAX_STREAMED_PIXELS`."""
    pixels, level = streamed_pixels(slide, downsamples)
    if pixels > MAX_STREAMED_PIXELS:
        h, w = slide.levels[level].shape
        raise SlideError(
            f"{slide.name}: no pyramid level near the model's scales: reading it means decoding all of level {level} "
            f"({h}x{w} px, {pixels / 1e9:.0f} gigapixels; the limit is {MAX_STREAMED_PIXELS / 1e9:.0f}); {PYRAMID_FIX}"
        )


def thumbnail(plan: SlidePlan, max_size: int) -> np.ndarray | None:
    """The whole slide at most ``max_size`` px a side, resampled from the plan's levels; None when that is too costly.

    Read at exactly that scale, from the coarsest level the plan has (resampled ones
    included), so memory stays bounded whatever the slide's pyramid. None when it would mean
    decoding more than `MAX_STREAMED_PIXELS` (a slide not judged before its levels were built).
    """
    H0, W0 = plan.slide.levels[0].shape
    scale = max(H0 / max_size, W0 / max_size, 1.0)
    if streamed_pixels(plan.slide, (scale,))[0] > MAX_STREAMED_PIXELS:
        return None
    return at_scales(plan.slide, (scale,)).thumbnail(max_size)
