"""How sure a sampled prediction is: the spread of its Monte-Carlo draws.

Each draw's class probabilities are one sample of the slide's expected probabilities;
their mean is the prediction, and the standard error of that mean says how far another
run with other draws may land. The interval is a Student-t interval on the mean over
draws (``LEVEL`` two-sided), which is exact for normal per-draw values and conservative
at the few draws where a normal approximation would be too narrow.

A slide is *confident* when the interval of the margin (top class minus runner-up,
paired per draw) excludes 0: more draws would not change the predicted class. With
two classes this is the top class's interval lying wholly above 0.5.
One draw has no spread to measure, so it is never confident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: ``draws=AUTO``: draw `AUTO_FIRST`, then batches of `AUTO_BATCH`, until the class is settled (`settled`).
AUTO = "auto"
Draws = int | Literal["auto"]
#: Two-sided coverage of the reported intervals.
LEVEL = 0.95
#: ``--draws auto``: draws of the first batch, of each later batch, the most draws a slide gets, and
#: the interval half-width (of the margin) below which more draws are not worth it even if the class
#: stays open. The first batch is 8, not 4: on a slide with a few lesions among mimics, 4 draws can
#: all miss the lesions and agree, a small spread that says "confident" about the wrong class
#: (`benchmarks/draws.py` met it once in 96); 8 draws rarely all miss.
AUTO_FIRST, AUTO_BATCH, AUTO_CAP, AUTO_TOLERANCE = 8, 4, 64, 0.02


@dataclass(frozen=True)
class Confidence:
    """Mean probabilities, their standard errors, the top class's interval, and whether the class is settled."""

    probabilities: np.ndarray  # [C] mean over draws
    standard_error: np.ndarray  # [C] NaN with one draw
    interval: tuple[float, float]  # of the top class's probability, within [0, 1]; (NaN, NaN) with one draw
    margin_halfwidth: float  # half-width of the margin's interval; NaN with one draw
    confident: bool
    draws: int


def t_quantile(draws: int) -> float:
    """The two-sided ``LEVEL`` Student-t quantile for a mean of ``draws`` values (NaN below two)."""
    if draws < 2:
        return math.nan
    from scipy.stats import t  # scikit-learn's dependency; imported on first use

    return float(t.ppf(0.5 + LEVEL / 2, draws - 1))


def confidence(per_draw: np.ndarray) -> Confidence:
    """`Confidence` of per-draw class probabilities ``[draws, C]``."""
    p = np.asarray(per_draw, dtype=np.float64)
    k = len(p)
    mean = p.mean(axis=0)
    q = t_quantile(k)
    se = p.std(axis=0, ddof=1) / math.sqrt(k) if k > 1 else np.full(p.shape[1], np.nan)
    order = np.argsort(-mean, kind="stable")
    top = int(order[0])
    half = q * float(se[top])
    if p.shape[1] > 1:
        margin = p[:, top] - p[:, int(order[1])]
        margin_half = q * float(margin.std(ddof=1)) / math.sqrt(k) if k > 1 else math.nan
        confident = k > 1 and float(margin.mean()) - margin_half > 0
    else:
        margin_half, confident = math.nan, False
    interval = (max(float(mean[top]) - half, 0.0), min(float(mean[top]) + half, 1.0))  # a probability
    return Confidence(mean, se, interval, margin_half, bool(confident), k)


def settled(conf: Confidence, *, tolerance: float = AUTO_TOLERANCE, cap: int = AUTO_CAP) -> bool:
    """Whether ``--draws auto`` stops: the class is settled, the margin is known to within ``tolerance``, or ``cap`` is spent."""
    return conf.confident or conf.margin_halfwidth < tolerance or conf.draws >= cap
