"""Draw grid positions from an attention distribution.

Three ways to draw ``n`` positions per batch row:

* with replacement: i.i.d. categorical draws (``torch.multinomial``);
* without replacement: Gumbel-top-k, i.e. ``n`` successive draws, each from the attention
  renormalised over the cells not drawn yet; the positions come back in draw order because
  :func:`wsi_ats.ats.expectation` needs that order;
* deterministic: the ``n`` cells of highest attention, for reproducible inference.

Only the choice of positions is random and non-differentiable; the returned ``probs`` are
gathered from ``attention`` so that gradients flow back into it.
"""

from __future__ import annotations

import torch

__all__ = ["sample"]

# How far a row may sum from 1: half-precision softmax outputs round every value.
_SUM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_DEFAULT_SUM_TOLERANCE = 1e-3


def sample(
    attention: torch.Tensor,
    n: int,
    *,
    replace: bool = False,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` positions per row of ``attention``.

    Args:
        attention: ``[B, *S]`` with 1 to 3 spatial dims; non-negative, each row sums to 1.
        n: positions per row (>= 1). Without replacement at most the number of cells.
        replace: i.i.d. draws if True, draws without replacement otherwise.
        generator: source of randomness (on ``attention``'s device); the global RNG if None.
        deterministic: return the ``n`` cells of highest attention, in decreasing attention,
            instead of random draws. It is a without-replacement selection, so it must be
            used with ``replace=False`` (``replace=True`` raises ``ValueError``).

    Returns:
        ``indices`` LongTensor ``[B, n, len(S)]`` (positions in ``S``) and ``probs``
        ``[B, n]``, the attention at those positions (differentiable w.r.t. ``attention``).
        Without replacement the order is the draw order (decreasing perturbed score);
        cells of zero attention come only after every non-zero cell has been drawn.

    Raises:
        ValueError: bad ``n``, bad shape or dtype, negative / non-finite values, a row that
            does not sum to 1, or ``n`` larger than the number of cells without replacement.
    """
    _check_attention(attention)
    batch, spatial = attention.shape[0], attention.shape[1:]
    cells = spatial.numel()
    _check_n(n, cells, replace=replace, deterministic=deterministic)

    flat = attention.reshape(batch, cells)
    with torch.no_grad():
        if deterministic:
            flat_indices = flat.topk(n, dim=1).indices
        elif replace:
            flat_indices = torch.multinomial(flat.to(_noise_dtype(flat)), n, replacement=True, generator=generator)
        else:
            flat_indices = _gumbel_top_k(flat, n, generator)

    probs = flat.gather(1, flat_indices)
    indices = torch.stack(torch.unravel_index(flat_indices, tuple(spatial)), dim=-1)
    return indices, probs


def _gumbel_top_k(flat: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Top-k of ``log(a) + Gumbel noise``: ``n`` ordered draws without replacement.

    Zero cells get the score ``-inf``, strictly below every finite score of a non-zero cell,
    so they are drawn only after all non-zero cells. Among themselves their order is
    irrelevant (they carry no probability); ``topk`` breaks those ties.
    """
    dtype = _noise_dtype(flat)
    uniform = torch.rand(flat.shape, generator=generator, device=flat.device, dtype=dtype)
    # rand() is in [0, 1); lifting 0 keeps every Gumbel value finite.
    gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(dtype).tiny)))
    a = flat.to(dtype)
    scores = torch.where(a > 0, a.log() + gumbel, float("-inf"))
    return scores.topk(n, dim=1).indices


def _noise_dtype(flat: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is drawn in float32 (half is too coarse)."""
    return torch.float64 if flat.dtype == torch.float64 else torch.float32


def _check_n(n: int, cells: int, *, replace: bool, deterministic: bool) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if deterministic and replace:
        raise ValueError("deterministic=True selects the n highest-attention cells, which is a draw without replacement: use replace=False")
    if not replace and n > cells:
        raise ValueError(f"cannot draw n={n} distinct positions without replacement from {cells} cells")


def _check_attention(attention: torch.Tensor) -> None:
    """Reject what would silently give a wrong sample; costs one device sync when valid."""
    if not isinstance(attention, torch.Tensor):
        raise ValueError(f"attention must be a torch.Tensor, got {type(attention).__name__}")
    if not attention.is_floating_point():
        raise ValueError(f"attention must be a floating-point tensor, got {attention.dtype}")
    if not 2 <= attention.dim() <= 4:
        raise ValueError(f"attention must have shape [B, *S] with 1 to 3 spatial dims, got shape {tuple(attention.shape)}")
    if attention.numel() == 0:
        raise ValueError(f"attention is empty: shape {tuple(attention.shape)}")

    flat = attention.detach().reshape(attention.shape[0], -1).to(torch.float64)
    tolerance = _SUM_TOLERANCE.get(attention.dtype, _DEFAULT_SUM_TOLERANCE)
    finite = torch.isfinite(flat).all(dim=1)
    non_negative = (flat >= 0).all(dim=1)
    sums = flat.sum(dim=1)
    normalised = (sums - 1).abs() <= tolerance
    if bool((finite & non_negative & normalised).all()):
        return

    # Slow path, only on error: name the first offending row.
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"attention row {row} contains NaN or infinite values")
    if not bool(non_negative.all()):
        row = int((~non_negative).nonzero()[0, 0])
        raise ValueError(f"attention row {row} has negative values (min {float(flat[row].min()):.6g})")
    row = int((~normalised).nonzero()[0, 0])
    raise ValueError(f"attention row {row} sums to {float(sums[row]):.6g}, expected 1 (tolerance {tolerance:g} for {attention.dtype})")
