"""One call for in-memory tensors: attention map -> sample -> patches -> features -> expectation.

This mirrors the original method's entry point for images that fit in memory; slides use the
same building blocks with a lazy patch fetch instead of :func:`extract_patches`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .coords import Shape, extract_patches, patch_top_left
from .expectation import expectation
from .sampling import sample

__all__ = ["AttentionSamplingResult", "attention_sampling"]


@dataclass(frozen=True)
class AttentionSamplingResult:
    """What one attention-sampling pass produced (``B`` images, ``n`` patches each)."""

    features: torch.Tensor  # [B, *D] the expectation of the patch features
    attention: torch.Tensor  # [B, *S] the attention map that was sampled
    patches: torch.Tensor  # [B, n, C, *P] the patches cut from the high-resolution input
    indices: torch.Tensor  # [B, n, d] the sampled attention-grid positions, in draw order
    probs: torch.Tensor  # [B, n] the attention at those positions
    top_left: torch.Tensor  # [B, n, d] patch corners in high-resolution pixels


def attention_sampling(
    attention: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    x_low: torch.Tensor,
    x_high: torch.Tensor,
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    patch_size: Shape,
    receptive_field: Shape = 0,
    replace: bool = False,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> AttentionSamplingResult:
    """Process ``x_high`` through ``n`` patches chosen by attention computed on ``x_low``.

    Args:
        attention: the attention map ``[B, *S]`` (rows sum to 1), or a callable (e.g. a
            network ending in a softmax over all cells) that maps ``x_low`` to it.
        x_low: ``[B, C, *L]`` low-resolution view; only its spatial shape is used when
            ``attention`` is already a map.
        x_high: ``[B, C, *H]`` high-resolution tensor the patches are cut from.
        feature_fn: maps patches ``[B * n, C, *P]`` to features ``[B * n, *D]``.
        n, replace, generator, deterministic: as in :func:`wsi_ats.ats.sample`.
        patch_size, receptive_field: as in :func:`wsi_ats.ats.patch_top_left`.

    Gradients reach the attention (through the expectation's estimator) and ``feature_fn``'s
    parameters, never ``x_high``.
    """
    attention_map = attention if isinstance(attention, torch.Tensor) else attention(x_low)
    indices, probs = sample(attention_map, n, replace=replace, generator=generator, deterministic=deterministic)
    top_left = patch_top_left(
        indices,
        tuple(attention_map.shape[1:]),
        tuple(x_low.shape[2:]),
        tuple(x_high.shape[2:]),
        patch_size,
        receptive_field,
    )
    patches = extract_patches(x_high, top_left, patch_size)
    features = feature_fn(patches.flatten(0, 1))
    features = features.unflatten(0, patches.shape[:2])
    return AttentionSamplingResult(
        features=expectation(features, probs, replace=replace),
        attention=attention_map,
        patches=patches,
        indices=indices,
        probs=probs,
        top_left=top_left,
    )
