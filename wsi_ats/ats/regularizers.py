"""Regularizers on the attention distribution."""

from __future__ import annotations

import torch

__all__ = ["entropy_regularizer"]

_EPS = 1e-6  # keeps log finite at zero attention, as in the original method


def entropy_regularizer(attention: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength * mean_b sum_i a_i log(a_i + 1e-6)``: minus ``strength`` times the entropy.

    Added to the loss, a positive ``strength`` spreads the attention (more patches get a
    chance to be seen early in training); a negative one sharpens it. Computed in float32
    (float64 for float64 input); ``attention`` is ``[B, *S]``.
    """
    a = attention.to(torch.float64 if attention.dtype == torch.float64 else torch.float32)
    per_row = (a * torch.log(a + _EPS)).reshape(a.shape[0], -1).sum(dim=1)
    return strength * per_row.mean()
