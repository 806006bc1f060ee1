"""From attention-grid positions to high-resolution patches.

The attention grid (``A`` cells per dim) covers the low-resolution input minus what a
valid-convolution attention net loses at its borders (``receptive_field``); each cell is
centred on its share of that area, and the patch is centred on the cell's centre mapped to
the high-resolution level.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

__all__ = ["patch_top_left", "extract_patches"]

Shape = int | Sequence[int]


def patch_top_left(
    indices: torch.Tensor,
    attention_shape: Shape,
    low_shape: Shape,
    high_shape: Shape,
    patch_size: Shape,
    receptive_field: Shape = 0,
) -> torch.Tensor:
    """Top-left corner, in high-level pixels, of the patch of each sampled grid position.

    Per dim: ``scale = high / low``, ``steps = (low - receptive_field) * scale / A``,
    ``offset = receptive_field / 2 * scale``,
    ``top_left = round(offset + s * steps + steps / 2 - patch_size / 2)``, rounding half to
    even. An int shape means the same size in every dim.

    Args:
        indices: integer ``[B, n, d]`` grid positions (``sample``'s ``indices``).

    Returns:
        LongTensor ``[B, n, d]``; may be negative or past the edge (patches are padded).
    """
    if indices.dim() != 3 or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"indices must be an integer tensor [B, n, d], got {indices.dtype} {tuple(indices.shape)}")
    dims = indices.shape[-1]
    grid = _per_dim(attention_shape, dims, "attention_shape")
    low = _per_dim(low_shape, dims, "low_shape")
    high = _per_dim(high_shape, dims, "high_shape")
    patch = _per_dim(patch_size, dims, "patch_size")
    field = _per_dim(receptive_field, dims, "receptive_field", minimum=0)
    for axis in range(dims):
        if low[axis] - field[axis] <= 0:
            raise ValueError(f"receptive_field {field[axis]} leaves nothing of low_shape {low[axis]} in dim {axis}")

    def as_tensor(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=indices.device)

    scale = as_tensor(high) / as_tensor(low)
    steps = (as_tensor(low) - as_tensor(field)) * scale / as_tensor(grid)
    offset = as_tensor(field) / 2 * scale
    centre = offset + indices.to(torch.float64) * steps + steps / 2
    return torch.round(centre - as_tensor(patch) / 2).to(torch.long)


def extract_patches(images: torch.Tensor, top_left: torch.Tensor, patch_size: Shape) -> torch.Tensor:
    """Cut ``n`` patches per image, zero outside the image; no gradient reaches ``images``.

    Args:
        images: ``[B, C, *S]`` with 1 to 3 spatial dims (any dtype).
        top_left: integer ``[B, n, d]`` corners in ``images`` pixels (``patch_top_left``).
        patch_size: int or per-dim sizes.

    Returns:
        ``[B, n, C, *P]`` in ``images.dtype``.
    """
    if not 3 <= images.dim() <= 5:
        raise ValueError(f"images must be [B, C, *S] with 1 to 3 spatial dims, got {tuple(images.shape)}")
    batch, spatial = images.shape[0], images.shape[2:]
    dims = len(spatial)
    if top_left.dim() != 3 or top_left.shape[0] != batch or top_left.shape[2] != dims or top_left.is_floating_point():
        raise ValueError(
            f"top_left must be an integer tensor [{batch}, n, {dims}] for images "
            f"{tuple(images.shape)}, got {top_left.dtype} {tuple(top_left.shape)}"
        )
    patch = _per_dim(patch_size, dims, "patch_size")
    count = top_left.shape[1]
    top_left = top_left.to(images.device)

    # One broadcastable index tensor per spatial dim: [B, n, 1.., P_axis, 1..].
    positions = []
    inside = torch.ones((), dtype=torch.bool, device=images.device)
    for axis in range(dims):
        view = [batch, count] + [1] * dims
        view[2 + axis] = patch[axis]
        offsets = torch.arange(patch[axis], device=images.device)
        position = (top_left[..., axis, None] + offsets).reshape(view)
        inside = inside & (position >= 0) & (position < spatial[axis])
        positions.append(position.clamp(0, spatial[axis] - 1))
    rows = torch.arange(batch, device=images.device).reshape([batch] + [1] * (dims + 1))

    channels_last = images.detach().movedim(1, -1)  # [B, *S, C]
    patches = channels_last[(rows, *positions)]  # [B, n, *P, C]
    patches = torch.where(inside.unsqueeze(-1), patches, 0)
    return patches.movedim(-1, 2)


def _per_dim(value: Shape, dims: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """An int for every dim, or one int per dim; each at least ``minimum``."""
    items = list(value) if isinstance(value, Sequence) else [value] * dims
    if len(items) != dims:
        raise ValueError(f"{name} has {len(items)} dims, expected {dims}: {value!r}")
    try:
        values = tuple(operator.index(v) for v in items if not isinstance(v, bool))
    except TypeError:
        values = ()
    if len(values) != dims or min(values) < minimum:
        raise ValueError(f"{name} must be integers >= {minimum}, got {value!r}")
    return values
