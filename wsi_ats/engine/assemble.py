"""Step 6: one slide's `SlideResult`, in level-0 coordinates, from what the steps before produced."""

from __future__ import annotations

import math

import numpy as np

from wsi_ats.engine.grid import TissueCells
from wsi_ats.engine.plan import SlidePlan
from wsi_ats.result import SlideResult

#: Largest attention map a `SlideResult` carries (cells); a larger grid is summed over blocks.
MAX_MAP_CELLS = 1 << 22


def slide_result(
    *,
    slide_id: str,
    source: str | None,
    class_names: tuple[str, ...],
    plan: SlidePlan,
    probabilities: np.ndarray,
    attention: np.ndarray,
    top_left: np.ndarray,
    patch_size: int,
    patch_attention: np.ndarray,
    seconds: float,
) -> SlideResult:
    """``attention`` is per tissue cell (the plan's order); ``top_left`` are high-level patch corners."""
    attention_map, factor = attention_map_of(plan.cells, attention)
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
        patch_size_level0=int(round(patch_size * high_ds)),
        patch_attention=patch_attention.astype(np.float32),
        patches_fetched=len(top_left),
        seconds=seconds,
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
