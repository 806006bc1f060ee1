"""Monte-Carlo estimate of ``sum_i a_i f_i`` from sampled features, with the original
method's gradients (Katharopoulos & Fleuret, ICML 2019).

The features of only ``n`` sampled cells are known, so the expectation over all cells is
estimated from them. The forward value is unbiased; the backward pass is *not* the autograd
derivative of the forward: for the attention it is the method's estimator of the gradient of
the full expectation (the forward of the with-replacement estimator does not even depend on
the attention). Both estimators are ``torch.autograd.Function`` s for that reason.

Notation (``w = 1/n``, ``g`` the incoming gradient, ``a_k`` the attention of the k-th draw):

* with replacement: ``F = sum_k w f_k``; ``dL/df_k = w g``; ``dL/da_k = w (g . f_k) / a_k``.
* without replacement, in draw order, ``pm_k = 1 - sum_{j<k} a_j``,
  ``E_k = sum_{j<k} a_j f_j + pm_k f_k``, ``F = sum_k w E_k``;
  ``dL/df_k = w (pm_k + (n-1-k) a_k) g``;
  ``dL/da_k = w sum_d g_d [E_kd / (a_k / pm_k) + sum_{j<k} f_jd - k f_kd]``.

A draw with ``a_k = 0`` (possible without replacement once every non-zero cell is drawn)
makes the ``/ a_k`` terms 0/0; they are defined as 0 there, since a cell of zero
probability carries no information about its own probability.

Everything is accumulated in float32 (float64 for float64 inputs), also under autocast; the
result has the dtype of ``features``.
"""

from __future__ import annotations

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["expectation"]


def expectation(features: torch.Tensor, probs: torch.Tensor, *, replace: bool = False) -> torch.Tensor:
    """Estimate ``sum_i a_i f_i`` from ``n`` sampled features.

    Args:
        features: ``[B, n, *D]``, the features of the sampled cells, in the order returned
            by :func:`wsi_ats.ats.sample` (the draw order matters without replacement).
        probs: ``[B, n]``, the attention at the sampled cells (``sample``'s ``probs``).
        replace: whether the cells were drawn with replacement.

    Returns:
        ``[B, *D]`` in ``features.dtype``.
    """
    if features.dim() < 2 or probs.dim() != 2 or features.shape[:2] != probs.shape:
        raise ValueError(
            "expected features [B, n, *D] and probs [B, n] with the same B and n, got "
            f"features {tuple(features.shape)} and probs {tuple(probs.shape)}"
        )
    if not (features.is_floating_point() and probs.is_floating_point()):
        raise ValueError(f"features and probs must be floating point, got {features.dtype} and {probs.dtype}")
    estimator = _WithReplacement if replace else _WithoutReplacement
    return estimator.apply(features, probs)


class _WithReplacement(torch.autograd.Function):
    """``n`` i.i.d. draws: the plain mean, with a score-function gradient for ``a``."""

    @staticmethod
    def forward(ctx: FunctionCtx, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        f, _ = _accumulation(features, probs)
        ctx.save_for_backward(features, probs)
        return f.mean(dim=1).to(features.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        features, probs = ctx.saved_tensors
        f, a = _accumulation(features, probs)
        n = f.shape[1]
        g = grad.to(f.dtype).unsqueeze(1)

        grad_features = grad_probs = None
        if ctx.needs_input_grad[0]:
            grad_features = (g.expand_as(f) / n).to(features.dtype)
        if ctx.needs_input_grad[1]:
            g_dot_f = _sum_feature_dims(g * f)
            grad_probs = (_safe_divide(g_dot_f, a) / n).to(probs.dtype)
        return grad_features, grad_probs


class _WithoutReplacement(torch.autograd.Function):
    """``n`` successive draws, each renormalised over the cells not drawn yet."""

    @staticmethod
    def forward(ctx: FunctionCtx, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        f, a = _accumulation(features, probs)
        estimates, _ = _per_draw_estimates(f, a)
        ctx.save_for_backward(features, probs)
        return estimates.mean(dim=1).to(features.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        features, probs = ctx.saved_tensors
        f, a = _accumulation(features, probs)
        n = f.shape[1]
        g = grad.to(f.dtype).unsqueeze(1)
        estimates, pm = _per_draw_estimates(f, a)
        k = torch.arange(n, device=a.device, dtype=a.dtype)

        grad_features = grad_probs = None
        if ctx.needs_input_grad[0]:
            weight = (pm + (n - 1 - k) * a) / n
            grad_features = (_expand_like(weight, f) * g).to(features.dtype)
        if ctx.needs_input_grad[1]:
            inverse_conditional = _safe_divide(pm, a)  # 1 / (a_k / pm_k)
            terms = estimates * _expand_like(inverse_conditional, f) + _exclusive_cumsum(f) - _expand_like(k, f) * f
            grad_probs = (_sum_feature_dims(g * terms) / n).to(probs.dtype)
        return grad_features, grad_probs


def _per_draw_estimates(f: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``E_k`` (each an unbiased estimate on its own) and the mass ``pm_k`` left before draw k."""
    pm = 1 - _exclusive_cumsum(a)
    a_f = _expand_like(a, f)
    estimates = _exclusive_cumsum(a_f * f) + _expand_like(pm, f) * f
    return estimates, pm


def _accumulation(features: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs in the accumulation dtype: float64 if either is float64, else float32."""
    wide = torch.float64 in (features.dtype, probs.dtype)
    dtype = torch.float64 if wide else torch.float32
    return features.to(dtype), probs.to(dtype)


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the draws strictly before each draw (dim 1)."""
    shifted = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    return shifted.cumsum(dim=1)


def _expand_like(per_draw: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``[B, n]`` (or ``[n]``) viewed so it broadcasts against ``f`` ``[B, n, *D]``."""
    return per_draw.reshape(*per_draw.shape, *([1] * (f.dim() - 2)))


def _sum_feature_dims(x: torch.Tensor) -> torch.Tensor:
    """``[B, n, *D] -> [B, n]``; a no-op when there are no feature dims."""
    return x.reshape(x.shape[0], x.shape[1], -1).sum(dim=-1)


def _safe_divide(numerator: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``numerator / a`` with 0 where ``a == 0`` (see the module docstring)."""
    positive = a > 0
    return torch.where(positive, numerator / torch.where(positive, a, 1), 0)
