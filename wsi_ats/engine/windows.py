"""Step 2: the low-level pixels the attention net sees, one window per tissue tile.

A window is the box of a tile's tissue cells plus a halo of the net's radius
(`SlidePlan.window`), so background never reaches a network and memory follows the tissue,
not the slide. The next window is decoded on a background thread while the net runs on
this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wsi_ats.engine.plan import SlidePlan
from wsi_ats.engine.prefetch import Prefetcher


def read_windows(plan: SlidePlan) -> Iterator[np.ndarray]:
    """The low-level window of each tissue tile of the plan's slide, ``(h, w, 3) uint8``, in tile order."""

    def read(k: int) -> np.ndarray:
        return plan.slide.read_region(plan.low_level, *plan.window(k))

    with Prefetcher(range(len(plan.cells.tiles)), read) as windows:
        for _, image in windows:
            yield image
