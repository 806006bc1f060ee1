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
    ``slide_shape`` is level 0's ``(H, W)`` and ``mpp`` its micrometres per pixel (None: unknown).
    ``top_patches`` ``(k, P, P, 3) uint8`` are the pixels of the first ``k`` patches of
    `patch_ranking` (the most attended, each place once), for people to look at.

    ``warnings`` say why the slide cannot be judged (too small, blank, no tissue, an
    implausible resolution); a result with any carries no class: its probabilities are NaN,
    its attention map and patches empty, and `prediction` is None.

    ``notes`` are what a user should know about a judged slide (a resolution guessed from
    the objective power); they do not stop the judgement.

    ``probability_se`` are the standard errors of ``probabilities`` over the ``draws`` draws
    (NaN with one draw), ``interval`` the top class's probability interval, and ``confident``
    whether the predicted class is settled (`wsi_ats.engine.confidence`); never on a result
    with warnings (``draws`` 0).
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
    warnings: tuple[str, ...] = ()
    slide_shape: tuple[int, int] | None = None
    mpp: float | None = None
    top_patches: np.ndarray | None = None
    probability_se: np.ndarray | None = None
    interval: tuple[float, float] | None = None
    draws: int = 0
    confident: bool = False
    notes: tuple[str, ...] = ()

    @property
    def judged(self) -> bool:
        """Whether the model could judge the slide: no warnings."""
        return not self.warnings

    @property
    def prediction(self) -> str | None:
        """Name of the most probable class; None when the slide could not be judged."""
        return self.class_names[int(np.argmax(self.probabilities))] if self.judged else None

    @property
    def probability(self) -> float | None:
        """Probability of the predicted class; None when the slide could not be judged."""
        return float(np.max(self.probabilities)) if self.judged else None


def patch_ranking(top_left: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Indices of the patches by falling attention, each place once (draws may repeat one): rank 1 first.

    Ties keep the sampling order, so the ranking is deterministic.
    """
    order = np.argsort(-np.asarray(attention, dtype=np.float64), kind="stable")
    _, first = np.unique(np.asarray(top_left).reshape(-1, 2)[order], axis=0, return_index=True)
    return order[np.sort(first)]
