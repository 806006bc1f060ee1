"""What one slide's prediction produces: the hand-off from the model to the outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlideResult:
    """Class probabilities, the attention map and the sampled patches of one slide.

    ``attention`` is on the attention grid of level ``attention_level``; one cell covers
    ``attention_downsample`` level-0 pixels per side, starting at ``attention_origin``
    (level-0 ``(y, x)``; non-zero when valid convolutions trim the border).
    ``patch_top_left`` are level-0 ``(y, x)`` corners of the ``patch_size_level0`` squares
    fetched at level ``patch_level``; ``patch_attention`` is the attention of each draw.
    """

    slide_id: str
    source: str | None
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    attention: np.ndarray
    attention_level: int
    attention_downsample: float
    attention_origin: tuple[float, float]
    patch_level: int
    patch_downsample: float
    patch_top_left: np.ndarray
    patch_size_level0: int
    patch_attention: np.ndarray
    patches_fetched: int
    seconds: float

    @property
    def prediction(self) -> str:
        """Name of the most probable class."""
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def probability(self) -> float:
        """Probability of the predicted class."""
        return float(np.max(self.probabilities))
