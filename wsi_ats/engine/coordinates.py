"""Step 4: drawn attention cells -> top-left corners of their patches on the high level.

`wsi_ats.ats.patch_top_left` with the slide's actual level shapes, so any pair of levels
works, whatever their downsamples.
"""

from __future__ import annotations

import numpy as np
import torch

from wsi_ats.ats import patch_top_left
from wsi_ats.engine.plan import SlidePlan


def patch_corners(plan: SlidePlan, flat_indices: torch.Tensor, patch_size: int) -> np.ndarray:
    """High-level ``(y, x)`` corners, ``(n, 2)`` int64, of the patches of the tissue cells ``flat_indices`` (any shape, flattened)."""
    cells = torch.from_numpy(plan.cells.coords)[flat_indices.cpu().reshape(-1)][None]
    top_left = patch_top_left(cells, plan.grid.shape, plan.grid.low_shape, plan.high_shape, patch_size, plan.grid.receptive_field)
    return top_left[0].numpy()
