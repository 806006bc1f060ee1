"""The megadigits networks, registered by name, and the four models the experiment compares.

Registered on import (``pipelines/megadigits.toml`` names them in ``[model.*]``):

* attention ``megadigits_ink``: the paper's megaNIST attention net plus an optional ink prior;
* features ``megadigits_convs``: a strided conv stack, global max, L2 norm (one grey channel);
* classifier ``megadigits_bn_linear``: batch norm + linear.

The models (:data:`MODELS`), all built from the recipe's ``[model]`` by `build_model`:

* ``ats``: attention on the low-resolution view, ``n`` patches drawn from the full-resolution
  canvas, the feature net on the patches, the expectation, the classifier;
* ``ats_plain``: the same with the attention's ink prior off (the paper's plain net);
* ``low`` / ``full``: a dense CNN on the whole low-resolution view / full-resolution canvas:
  the feature net's conv stack (unstrided on the low view) at every position, pooled by a
  learnt softmax attention (so it can count the digits of each class, as the ATS
  expectation does), then the same classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from experiments.megadigits.data import N_CLASSES
from wsi_ats.ats import attention_sampling, entropy_regularizer
from wsi_ats.models.config import ModelConfig, NetSpec
from wsi_ats.models.registry import build, register

__all__ = ["MIN_PATCH", "MODELS", "ATSClassifier", "DenseClassifier", "as_float", "build_model"]

MODELS = ("ats", "ats_plain", "low", "full")
MIN_PATCH = 32  # smallest input the strided conv stack maps to a non-empty output


@register("attention", "megadigits_ink")
class InkAttention(nn.Module):
    """The paper's megaNIST attention net: three 3x3 'same' convs (tanh) -> one logit per cell,
    plus an optional *ink prior*: ``gain * (3x3 mean of the low view)`` added to the logits.

    From a random start the attention has no reason to prefer digits: their features are not
    informative yet, and the sampled loss penalises the variance their patches add, so the
    attention wanders off the ink and error stays at chance unless training is as long as the
    paper's (500 epochs on 5000 canvases). The prior (a learnt ``gain``, started at
    ``ink_prior``; 0 = the paper's plain net) makes the first draws land on ink, digits and
    scribbles alike, and ATS learns in a few epochs on 2 CPU cores.
    """

    def __init__(self, channels: int = 8, ink_prior: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        self.gain = nn.Parameter(torch.tensor(float(ink_prior))) if ink_prior else None

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        """``[B, 1, h, w]`` low view -> ``[B, h, w]`` logits."""
        logits = self.net(low)
        if self.gain is not None:
            logits = logits + self.gain * F.avg_pool2d(low, 3, stride=1, padding=1, count_include_pad=False)
        return logits[:, 0]


def conv_stack(width: int, *, strided: bool) -> nn.Sequential:
    """Four valid convs + ReLU, ``width`` channels out.

    ``strided`` (for full-resolution pixels) strides the first three by 2: a 50 px patch
    becomes a 3 x 3 map whose global max is a translation-invariant feature, at ~1/30 of
    the paper's unstrided 7x7 + three 3x3 net (the digits are upscaled 8 x 8 scans, so the
    striding loses nothing). Without it (the low-resolution view) nothing is strided.
    """
    stride = 2 if strided else 1
    return nn.Sequential(
        nn.Conv2d(1, width // 2, 4, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width // 2, width, 3, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width, width, 3),
        nn.ReLU(),
    )


@register("features", "megadigits_convs")
class PatchFeatures(nn.Module):
    """Patch -> conv stack -> global max -> L2-normalised feature (as the paper's feature net)."""

    def __init__(self, width: int = 32, strided: bool = True) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"width must be an even number >= 2, got {width!r}")
        self.convs = conv_stack(width, strided=strided)
        self.out_features = width

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.convs(patches).amax(dim=(2, 3)), dim=1)


@register("classifier", "megadigits_bn_linear")
def bn_linear(in_features: int, num_classes: int) -> nn.Module:
    """Batch norm + linear, the same for every model.

    Early in training the pooled feature is mostly that of empty background, the same in
    every image; batch norm removes it and scales up what differs (the digits), which cuts
    the epochs needed from tens to a few on every model alike.
    """
    return nn.Sequential(nn.BatchNorm1d(in_features), nn.Linear(in_features, num_classes))


class ATSClassifier(nn.Module):
    """Attention sampling on in-memory canvases: ``(low, high) -> (logits, attention)``.

    ``high`` stays ``uint8``; only the sampled patches are converted to float.
    """

    def __init__(self, attention: nn.Module, features: nn.Module, head: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.attention = attention
        self.features = features
        self.head = head
        self.config = config

    def attention_map(self, low: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` softmax over the cells, mixed with ``smooth`` of the uniform distribution
        (so that no cell gets zero attention)."""
        flat = self.attention(low).flatten(1)
        smooth = self.config.smooth
        return ((1 - smooth) * flat.softmax(dim=1) + smooth / flat.shape[1]).view(low.shape[0], *low.shape[2:])

    def forward(
        self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self.attention_map(low)
        return self.head(self._expectation(attention, low, high, generator)), attention

    def regularizer(self, attention: torch.Tensor) -> torch.Tensor:
        """The entropy term added to the training loss (the paper's recipe)."""
        return entropy_regularizer(attention, self.config.entropy_strength)

    def probabilities(self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None, draws: int) -> torch.Tensor:
        """Class probabilities ``[B, classes]`` averaged over ``draws`` samples from one attention map.

        One draw of ``n`` patches is a noisy estimate (the expectation is unbiased, not
        exact); averaging draws lowers that noise at ``draws`` times the patches read.
        """
        attention = self.attention_map(low)
        per_draw = [self.head(self._expectation(attention, low, high, generator)).softmax(dim=1) for _ in range(draws)]
        return torch.stack(per_draw).mean(dim=0)

    def _expectation(
        self, attention: torch.Tensor, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The attention-weighted mean of the features of ``n`` patches drawn from ``attention``."""
        result = attention_sampling(
            attention, low, high, self._patch_features, self.config.n_patches,
            patch_size=self.config.patch_size, replace=self.config.replace, generator=generator,
        )  # fmt: skip
        return result.features

    def _patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        return self.features(as_float(patches))


class DenseClassifier(nn.Module):
    """A CNN on one whole view: conv stack -> L2-normalised features at every position ->
    softmax-attention pooling over positions (counts like the ATS expectation) -> the head."""

    def __init__(self, convs: nn.Module, score: nn.Module, head: nn.Module, *, view: str) -> None:
        super().__init__()
        self.view = view
        self.convs = convs
        self.score = score  # features [B, width, h, w] -> one logit per position
        self.head = head

    def forward(
        self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = F.normalize(self.convs(as_float(high) if self.view == "high" else low), dim=1)
        weights = self.score(features).flatten(1).softmax(dim=1)  # [B, positions]
        pooled = torch.einsum("bcp,bp->bc", features.flatten(2), weights)
        return self.head(pooled), None


def build_model(name: str, config: ModelConfig, *, seed: int) -> nn.Module:
    """One of :data:`MODELS` from the registered nets ``config`` names, weights drawn from ``seed``,
    channels-last like its inputs (`as_float`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    torch.manual_seed(seed)
    model: nn.Module
    if name in ("ats", "ats_plain"):
        spec = config.attention if name == "ats" else _without_prior(config.attention)
        attention = build("attention", spec.name, **spec.kwargs)
        features = build("features", config.features.name, **config.features.kwargs)
        model = ATSClassifier(attention, features, _head(config, features.out_features), config)
    else:
        strided = {"strided": name == "full"}
        features = build("features", config.features.name, **{**config.features.kwargs, **strided})
        score = nn.Conv2d(features.out_features, 1, 1)
        head = _head(config, features.out_features)
        model = DenseClassifier(features.convs, score, head, view="high" if name == "full" else "low")
    return model.to(memory_format=torch.channels_last)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32 in [0, 1], channels-last: every model's convolutions ran
    1.3-1.8x faster on CPU that way (forward + backward)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {images.dtype}")
    return (images.to(torch.float32) / 255).contiguous(memory_format=torch.channels_last)


def _head(config: ModelConfig, width: int) -> nn.Module:
    return build("classifier", config.classifier.name, in_features=width, num_classes=N_CLASSES, **config.classifier.kwargs)


def _without_prior(spec: NetSpec) -> NetSpec:
    """``spec`` with its ``ink_prior`` at 0: the paper's plain attention net."""
    return NetSpec(spec.name, tuple(sorted({**dict(spec.params), "ink_prior": 0.0}.items())))
