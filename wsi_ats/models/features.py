"""Feature networks: patches ``[N, 3, P, P]`` -> vectors ``[N, out_features]``.

Each exposes ``out_features`` so the classifier can be sized from the recipe alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_ats.models.registry import register


@register("features", "small_cnn")
class SmallCNNFeatures(nn.Module):
    """The original method's patch net: Conv ``channels`` 7x7, ``layers`` x Conv 3x3, global max pool, L2 norm.

    ReLU after each convolution; no normalisation layers, so a batch of patches from one
    slide behaves the same in training and evaluation. ``stride`` applies to the first
    convolution and makes large patches cheap. ``normalize = false`` drops the L2 norm:
    unit-norm features of similar patches differ by little, and a linear classifier then
    needs large weights (many steps) to tell them apart.
    """

    def __init__(self, channels: int = 32, layers: int = 3, stride: int = 1, normalize: bool = True) -> None:
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(3, channels, 7, stride=stride), nn.ReLU(inplace=True)]
        for _ in range(layers):
            body += [nn.Conv2d(channels, channels, 3), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*body)
        self.normalize = normalize
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x).amax(dim=(2, 3))
        return F.normalize(y, dim=1) if self.normalize else y


@register("features", "resnet18")
def resnet18_features(width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), normalize: bool = False, **timm: Any) -> nn.Module:
    """Old recipes' ``name = "resnet18"``: now timm's ResNet-18 (same layout), random weights unless ``weights`` is given.

    The hand-written net it replaces took ``width``/``blocks``; other sizes are a clear error
    (timm has ``resnet10t``, ``resnet14t``, ... and any other architecture by ``name = "timm"``).
    Other keys (``weights``, ``freeze``, ...) go to `TimmFeatures`.
    """
    from wsi_ats.models.config import ConfigError
    from wsi_ats.models.timm_features import TimmFeatures

    if width != 64 or tuple(blocks) != (2, 2, 2, 2):
        raise ConfigError(
            f"[model.features] resnet18: width/blocks ({width}, {list(blocks)}) are gone with the hand-written ResNet-18; "
            'use name = "timm" with arch = "resnet18" or a smaller timm net (e.g. "resnet10t")'
        )
    return TimmFeatures(arch="resnet18", normalize=normalize, **timm)


class RunningCenter(nn.Module):
    """Subtract a running mean of the features (updated in training, frozen in evaluation).

    Why: the attention's gradient in `wsi_ats.ats.expectation` is a score-function estimator,
    linear in the features. Features of ordinary tissue share a large common part, which
    pushes every sampled cell's attention up or down together and drowns the signal of the
    informative cells. Centring subtracts exactly the REINFORCE baseline ``g . mean`` from
    that gradient; the classifier is unaffected (its bias absorbs the shift, as the
    attention weights sum to one).
    """

    def __init__(self, features: int, momentum: float = 0.05) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                batch = x.detach().float().mean(dim=0)
                self.mean.copy_(batch if int(self.seen) == 0 else torch.lerp(self.mean, batch, self.momentum))
                self.seen += 1
        return x - self.mean.to(x.dtype)
