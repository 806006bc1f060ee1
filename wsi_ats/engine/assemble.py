"""Step 6: one slide's `SlideResult`, in level-0 coordinates, from what the steps before produced (or why there is none)."""

from __future__ import annotations

import math

import numpy as np

from wsi_ats.engine.grid import TissueCells
from wsi_ats.engine.plan import SlidePlan
from wsi_ats.result import SlideResult, patch_ranking

#: Largest attention map a `SlideResult` carries (cells); a larger grid is summed over blocks.
MAX_MAP_CELLS = 1 << 22
#: Patches whose pixels a `SlideResult` keeps for people to look at: the most attended.
TOP_PATCHES = 8


def slide_result(
    *,
    slide_id: str,
    source: str | None,
    class_names: tuple[str, ...],
    plan: SlidePlan,
    probabilities: np.ndarray,
    attention: np.ndarray,
    top_left: np.ndarray,
    patch_pixels: np.ndarray,
    patch_size: int,
    patch_attention: np.ndarray,
    seconds: float,
) -> SlideResult:
    """``attention`` is per tissue cell (the plan's order); ``top_left`` are high-level patch corners, ``patch_pixels`` their pixels."""
    attention_map, factor = attention_map_of(plan.cells, attention)
    top = patch_ranking(top_left, patch_attention)[:TOP_PATCHES]
    high_ds, low_ds = plan.high_downsample, plan.grid.low_downsample
    origin = float(plan.grid.offset * low_ds)
    return SlideResult(
        slide_id=slide_id,
        source=source,
        class_names=class_names,
        probabilities=probabilities.astype(np.float64),
        attention=attention_map,
        attention_level=plan.low_level,
        attention_downsample=float(low_ds * factor),
        attention_origin=(origin, origin),
        patch_level=plan.high_level,
        patch_downsample=float(high_ds),
        patch_top_left=np.round(top_left * high_ds).astype(np.int64),
        patch_size_level0=round(patch_size * high_ds),
        patch_attention=patch_attention.astype(np.float32),
        patches_fetched=len(top_left),
        seconds=seconds,
        slide_shape=plan.slide.levels[0].shape,
        mpp=plan.slide.mpp,
        top_patches=np.ascontiguousarray(patch_pixels[top]),
        notes=plan.notes,
    )


def unjudged_result(*, slide_id: str, source: str | None, class_names: tuple[str, ...], plan: SlidePlan, seconds: float) -> SlideResult:
    """The result of a slide the model cannot judge (``plan.warnings``): no class (NaN probabilities), no attention, no patches."""
    origin = float(plan.grid.offset * plan.grid.low_downsample)
    return SlideResult(
        slide_id=slide_id,
        source=source,
        class_names=class_names,
        probabilities=np.full(len(class_names), np.nan),
        attention=np.zeros((0, 0), np.float32),
        attention_level=plan.low_level,
        attention_downsample=float(plan.grid.low_downsample),
        attention_origin=(origin, origin),
        patch_level=plan.high_level,
        patch_downsample=float(plan.high_downsample),
        patch_top_left=np.zeros((0, 2), np.int64),
        patch_size_level0=0,
        patch_attention=np.zeros(0, np.float32),
        patches_fetched=0,
        seconds=seconds,
        warnings=plan.warnings,
        slide_shape=plan.slide.levels[0].shape,
        mpp=plan.slide.mpp,
    )


def attention_map_of(cells: TissueCells, attention: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense float32 map of the grid (zero off tissue); grids above `MAX_MAP_CELLS` are summed over ``f x f`` blocks."""
    Ay, Ax = cells.grid_shape
    factor = max(1, math.ceil(math.sqrt(Ay * Ax / MAX_MAP_CELLS)))
    while math.ceil(Ay / factor) * math.ceil(Ax / factor) > MAX_MAP_CELLS:
        factor += 1
    shape = (math.ceil(Ay / factor), math.ceil(Ax / factor))
    flat = (cells.coords[:, 0] // factor) * shape[1] + cells.coords[:, 1] // factor
    dense = np.bincount(flat, weights=attention, minlength=shape[0] * shape[1])
    return dense.reshape(shape).astype(np.float32), factor
