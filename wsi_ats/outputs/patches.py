"""The sampled patches of a result as a flat list, each with the Monte-Carlo draw it came from.

`wsi_ats.engine.predict_slide` returns all draws concatenated, draw after draw:
``patch_top_left`` ``(draws * n, 2)`` and ``patch_attention`` ``(draws * n,)``; the caller
knows ``draws`` (1 with top-k), and every draw has the same ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_ats.result import SlideResult


@dataclass(frozen=True)
class Patch:
    """One fetched patch: level-0 ``(y, x)`` corner and edge, its draw and rank within the draw."""

    y: int
    x: int
    size: int
    attention: float
    draw: int
    rank: int

    def box(self, slide_shape: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` in level-0 pixels, clipped to a slide of ``slide_shape`` ``(H, W)`` when given.

        A patch near the border reaches past the slide (its outside is read as zero); what
        is written for people and other tools stays on the slide.
        """
        y0, x0, y1, x1 = self.y, self.x, self.y + self.size, self.x + self.size
        if slide_shape is None:
            return y0, x0, y1, x1
        H, W = slide_shape
        return min(max(y0, 0), H), min(max(x0, 0), W), min(max(y1, 0), H), min(max(x1, 0), W)


def result_patches(result: SlideResult, draws: int = 1) -> list[Patch]:
    """Every patch of every draw, draw by draw, in sampling order."""
    top_left = np.asarray(result.patch_top_left)
    attention = np.asarray(result.patch_attention, dtype=np.float64)
    if top_left.ndim != 2 or top_left.shape[1] != 2 or attention.shape != top_left.shape[:1] or len(top_left) % draws:
        raise ValueError(
            f"{result.slide_id}: patch_top_left {top_left.shape} and patch_attention {attention.shape} "
            f"must be (draws * n, 2) and (draws * n,) with draws = {draws}"
        )
    n, size = len(top_left) // draws, int(result.patch_size_level0)
    return [Patch(int(y), int(x), size, float(a), i // n, i % n) for i, ((y, x), a) in enumerate(zip(top_left, attention))]
