"""Step 3: attention logits of the tissue cells, one window at a time.

`tissue_logits` keeps, of the net's output on each window, only the logits of that tile's
tissue cells: exactly those of one pass over the whole low level, cell for cell. The same
loop serves inference (windows streamed from the slide, under ``no_grad``) and training
(windows cached once per slide, with gradients through every tissue cell, as the softmax
needs; the activations of all windows are then kept for the backward pass).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from wsi_ats.device import to_device
from wsi_ats.engine.plan import SlidePlan
from wsi_ats.models import ATSModel


def tissue_logits(model: ATSModel, windows: Iterable[np.ndarray], plan: SlidePlan) -> torch.Tensor:
    """Float32 logits ``[N]`` of the plan's tissue cells, in the plan's (tile-major) order."""
    device = model.device
    parts = []
    for k, image in enumerate(windows):
        _, size = plan.window(k)
        out = model.attention_logits(to_device(image, device))
        expected = (size[0] - plan.grid.receptive_field, size[1] - plan.grid.receptive_field)
        if image.shape[:2] != size or tuple(out.shape) != expected:
            raise ValueError(
                f"window {k}: the attention net gave a {tuple(out.shape)} grid on a {image.shape[:2]} window, "
                f"the plan says {expected} on {size}"
            )
        index = torch.from_numpy(plan.window_cells(k)).to(device)
        parts.append(out.reshape(-1)[index].float())
    if len(parts) != len(plan.cells.tiles):
        raise ValueError(f"got {len(parts)} windows for {len(plan.cells.tiles)} tissue tiles")
    return torch.cat(parts)
