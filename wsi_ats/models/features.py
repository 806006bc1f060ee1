"""Feature networks: patches ``[N, 3, P, P]`` -> vectors ``[N, out_features]``.

Each exposes ``out_features`` so the classifier can be sized from the recipe alone.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


@register("features", "resnet18")
class ResNet18Features(nn.Module):
    """ResNet-18 layout (He et al. 2016) without torchvision: stem, four stages of basic blocks, average pool.

    ``width`` is the first stage's channels (64 in the paper; each stage doubles it) and
    ``blocks`` the blocks per stage; ``normalize`` L2-normalises the output like `SmallCNNFeatures`.
    Weights start random: no download ever happens.
    """

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), normalize: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, cin = [], width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            for j in range(count):
                stages.append(_BasicBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.normalize = normalize
        self.out_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stages(self.stem(x)).mean(dim=(2, 3))
        return F.normalize(y, dim=1) if self.normalize else y


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
