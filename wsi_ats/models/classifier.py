"""Classifiers: the attention-weighted feature vector ``[B, D]`` -> class logits ``[B, C]``."""

from __future__ import annotations

from torch import nn

from wsi_ats.models.registry import register


@register("classifier", "linear")
def linear(in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """One linear layer (the original method's classifier), optionally after dropout."""
    layer = nn.Linear(in_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), layer) if dropout > 0 else layer
