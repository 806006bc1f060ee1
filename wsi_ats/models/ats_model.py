"""`ATSModel`: the networks of attention sampling and their tensor forward, nothing else.

attention logits (one per tissue cell) -> softmax (optionally smoothed) -> `sample` ->
the patches of the drawn cells (a callable the caller supplies) -> feature net ->
`expectation` -> classifier. The model never sees a slide: where the logits come from
(the attention net run window by window over a slide's low level) and how drawn cells
become pixels (coordinates, tile decoding) is the slide engine's job, `wsi_ats.engine`.
This is the original method's split: a patch extractor handed to the sampling step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsi_ats.ats import entropy_regularizer, expectation, sample
from wsi_ats.models.config import LevelSpec, ModelConfig, TissueSpec
from wsi_ats.models.features import RunningCenter
from wsi_ats.models.registry import build

#: Input normalisation of every net: uint8 RGB -> (x / 255 - MEAN) / STD.
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
#: Patches per feature-net batch without gradients (bounds activation memory for large n).
FEATURE_CHUNK = 128
#: Most frozen-encoder embeddings cached in training (100k x 2048 floats: 800 MB at most for a ResNet-50).
EMBEDDING_CACHE_ENTRIES = 100_000

#: Maps drawn cells ``[draws, n]`` (flat indices into the logits) to their patches, uint8 ``[draws * n, P, P, 3]``.
PatchSource = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ATSOutput:
    """One forward pass: class logits per draw, the attention it sampled, and what was drawn."""

    logits: torch.Tensor  # [draws, C]
    attention: torch.Tensor  # [1, N] over the cells of the logits
    indices: torch.Tensor  # [draws, n] flat cell indices, in draw order
    probs: torch.Tensor  # [draws, n] the attention of each draw


class ATSModel(nn.Module):
    """Attention net, feature net and classifier, joined by sampling and the expectation.

    ``attention_net`` maps a normalised image ``[1, 3, H, W]`` to logits ``[1, h, w]`` and
    exposes ``radius`` and ``padding`` (see `wsi_ats.models.attention`), which the engine
    needs to run it window by window. ``feature_net`` maps ``[N, 3, P, P]`` to ``[N, D]``
    (``center_features`` subtracts their running mean: see
    `wsi_ats.models.features.RunningCenter`); ``classifier`` maps ``[B, D]`` to class
    logits. ``low``, ``high``, ``tissue``, ``patch_size`` and ``tile`` are what the engine
    reads of a slide for this model; ``config`` (set by `from_config`) is what a
    checkpoint stores to rebuild it.
    """

    def __init__(
        self,
        attention_net: nn.Module,
        feature_net: nn.Module,
        classifier: nn.Module,
        *,
        class_names: Sequence[str],
        low: LevelSpec,
        high: LevelSpec,
        patch_size: int,
        n_patches: int,
        replace: bool = False,
        entropy_strength: float = 0.0,
        smooth: float = 0.0,
        tile: int = 256,
        tissue: TissueSpec = TissueSpec(),  # noqa: B008 - frozen, so one shared default is safe
        center_features: bool = False,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(getattr(attention_net, "radius", None), int) and getattr(attention_net, "padding", None) in ("valid", "same")):
            raise TypeError("attention_net must expose radius (int) and padding ('valid' or 'same')")
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError(f"need at least two distinct class names, got {list(class_names)}")
        self.attention_net = attention_net
        self.feature_net = feature_net
        self.feature_center = RunningCenter(feature_net.out_features) if center_features else nn.Identity()
        self.classifier = classifier
        self.class_names = tuple(str(c) for c in class_names)
        self.low, self.high = low, high
        self.patch_size, self.n_patches, self.replace = int(patch_size), int(n_patches), bool(replace)
        self.entropy_strength, self.smooth, self.tile = float(entropy_strength), float(smooth), int(tile)
        self.tissue = tissue
        self.config = config
        #: Micrometres per pixel at which the model reads ``"low"``, ``"high"`` and ``"tissue"``,
        #: where known: from a recipe that states them, or recorded by training from its slides.
        #: The engine then reads every slide at these microns, whatever its pyramid.
        self.microns: dict[str, float] = {k: spec.mpp for k, spec in (("low", low), ("high", high)) if spec.mpp is not None}
        #: What the checkpoint says about the run that made the model (set by `load_checkpoint`).
        self.metadata: dict[str, Any] = {}
        #: A frozen encoder's embeddings by patch content while training (see `encode`), and its hit count.
        self.embedding_cache: dict[bytes, torch.Tensor] = {}
        self.embedding_stats = {"hits": 0, "misses": 0}

    @classmethod
    def from_config(cls, config: ModelConfig, class_names: Sequence[str], *, load_weights: bool = True) -> ATSModel:
        """Build the registered nets named in ``config``; the classifier gets one output per class.

        ``load_weights = False`` skips the feature net's pretrained ``weights`` file: a checkpoint
        rebuilding the model carries every weight itself, and must load where that file is not.
        """
        features = config.features.kwargs
        if not load_weights:
            features.pop("weights", None)
        feature_net = build("features", config.features.name, **features)
        return cls(
            build("attention", config.attention.name, **config.attention.kwargs),
            feature_net,
            build(
                "classifier",
                config.classifier.name,
                in_features=feature_net.out_features,
                num_classes=len(class_names),
                **config.classifier.kwargs,
            ),
            class_names=class_names,
            low=config.low,
            high=config.high,
            patch_size=config.patch_size,
            n_patches=config.n_patches,
            replace=config.replace,
            entropy_strength=config.entropy_strength,
            smooth=config.smooth,
            tile=config.tile,
            tissue=config.tissue,
            center_features=config.center_features,
            config=config,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def receptive_field(self) -> int:
        """Low-level pixels per dim that the attention grid loses (0 with same padding)."""
        return 2 * self.attention_net.radius if self.attention_net.padding == "valid" else 0

    # -- inputs --------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]``, ``(x / 255 - mean) / std``, channels-last.

        The attention net and the small nets use `MEAN`/`STD`; a pretrained feature net brings its
        own (`feature_stats`). Channels-last because convolutions run faster so on CPU
        (``benchmarks/results/NOTES.md``); the values are the same either way.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 [B, H, W, 3] images, got {tuple(images.shape)} {images.dtype}")
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)

    # -- attention -----------------------------------------------------------------------------
    def attention_logits(self, window: torch.Tensor) -> torch.Tensor:
        """The attention net on one uint8 window ``[H, W, 3]``: logits ``[h, w]`` (float32 not guaranteed)."""
        return self.attention_net(self.normalize(window[None]))[0]

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """``[1, N]`` softmax over the cells in float32, mixed with ``smooth`` of the uniform distribution."""
        a = torch.softmax(logits.float(), dim=0)
        if self.smooth > 0:
            a = (1 - self.smooth) * a + self.smooth / a.numel()
        return a[None]

    def draw(
        self, attention: torch.Tensor, *, generator: torch.Generator | None = None, topk: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` cells (flat indices ``[1, n]``) and their attention ``[1, n]``: sampled, or the top ``n``.

        ``n`` is capped at the number of cells of non-zero attention when drawing without
        replacement, so no draw ever has zero probability.
        """
        n = self.n_patches
        if topk or not self.replace:
            n = min(n, int((attention > 0).sum()))
        indices, probs = sample(attention, n, replace=self.replace and not topk, generator=generator, deterministic=topk)
        return indices[..., 0], probs

    def regularizer(self, attention: torch.Tensor) -> torch.Tensor:
        """The entropy term added to the training loss."""
        return entropy_regularizer(attention, self.entropy_strength)

    # -- patches and classification ------------------------------------------------------------
    @property
    def feature_stats(self) -> tuple[Sequence[float], Sequence[float]]:
        """The mean and std the feature net's inputs are normalised with: its own (pretrained) ones, else `MEAN`/`STD`."""
        return getattr(self.feature_net, "mean", MEAN), getattr(self.feature_net, "std", STD)

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """The feature net alone on uint8 patches ``[m, P, P, 3]``: ``[m, D]``, in chunks when no gradient is kept.

        A frozen encoder keeps none, so it is chunked in training too, and in training its
        embeddings are cached by patch content (`embedding_cache`). The dense baseline and
        ``--save-features`` call this: the same normalisation and net as the sampled forward.
        """
        if getattr(self.feature_net, "frozen", False) and self.training:
            return self._cached(patches)
        return self._encode(patches)

    def _cached(self, patches: torch.Tensor) -> torch.Tensor:
        """`_encode` through the cache: a frozen encoder gives the same vector for the same pixels in every epoch.

        Keyed by a 128-bit hash of the patch's bytes, which names (slide, level, position) without
        the engine having to pass them; at most `EMBEDDING_CACHE_ENTRIES` are kept. Only in
        training: across the slides of a prediction run nothing repeats.
        """
        keys = [hashlib.blake2b(p.numpy().tobytes(), digest_size=16).digest() for p in patches.cpu()]
        found = {k: self.embedding_cache[k] for k in keys if k in self.embedding_cache}
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            for i, vector in zip(missing, self._encode(patches[missing])):
                found[keys[i]] = vector
                if len(self.embedding_cache) < EMBEDDING_CACHE_ENTRIES:
                    self.embedding_cache[keys[i]] = vector
        self.embedding_stats["hits"] += len(keys) - len(missing)
        self.embedding_stats["misses"] += len(missing)
        return torch.stack([found[k] for k in keys]) if keys else self._encode(patches)

    def _encode(self, patches: torch.Tensor) -> torch.Tensor:
        frozen = getattr(self.feature_net, "frozen", False)
        chunk = len(patches) if torch.is_grad_enabled() and not frozen else FEATURE_CHUNK
        mean, std = self.feature_stats
        parts = [self.feature_net(self.normalize(patches[i : i + chunk], mean, std)) for i in range(0, len(patches), max(chunk, 1))]
        return torch.cat(parts) if parts else torch.zeros(0, self.feature_net.out_features, device=self.device)

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """Feature vectors ``[m, D]`` of uint8 patches ``[m, P, P, 3]`` (`encode`, then the running centre)."""
        return self.feature_center(self.encode(patches))

    def forward(
        self,
        logits: torch.Tensor,
        patches: PatchSource,
        *,
        draws: int = 1,
        topk: bool = False,
        generator: torch.Generator | None = None,
    ) -> ATSOutput:
        """Class logits from attention ``logits`` ``[N]``: ``draws`` samples of ``n`` cells (or the top ``n``), their patches,
        the expectation.

        All draws' patches are asked for in one call of ``patches``, so the engine can
        decode every covering tile once.
        """
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws!r}")
        attention = self.attention(logits)
        picks = [self.draw(attention, generator=generator, topk=topk) for _ in range(1 if topk else draws)]
        indices = torch.cat([i for i, _ in picks], dim=0)
        probs = torch.cat([p for _, p in picks], dim=0)
        features = self.features(patches(indices))
        pooled = expectation(features.float().reshape(*probs.shape, -1), probs, replace=self.replace and not topk)
        return ATSOutput(self.classifier(pooled), attention, indices, probs)
