"""The slide engine: the one place where slides meet networks.

One module per step, in data-flow order: `plan` (levels, attention grid, tissue cells;
with `tissue` and `grid`) -> `windows` (low-level pixels, with `prefetch`) -> `attention`
(logits of the tissue cells) -> `coordinates` (drawn cells to patch corners) -> `fetch`
(covering tiles decoded once, dask) -> `assemble` (`SlideResult`). `run` drives them for
inference (`predict_slide`) and training (`forward_slide`); the networks themselves
(`wsi_ats.models`) never see a slide.

Names are imported lazily: a dask worker that only decodes tiles (`fetch`) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SlidePlan": "wsi_ats.engine.plan",
    "plan_slide": "wsi_ats.engine.plan",
    "read_windows": "wsi_ats.engine.windows",
    "tissue_logits": "wsi_ats.engine.attention",
    "patch_corners": "wsi_ats.engine.coordinates",
    "fetch_patches": "wsi_ats.engine.fetch",
    "slide_result": "wsi_ats.engine.assemble",
    "forward_slide": "wsi_ats.engine.run",
    "predict_slide": "wsi_ats.engine.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wsi_ats.engine' has no attribute {name!r}")
