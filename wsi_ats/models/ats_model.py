"""`ATSModel`: attention sampling on a slide, end to end.

attention net on the low level -> logits on the tissue cells -> softmax (optionally smoothed)
-> `sample` -> `patch_top_left` (actual level shapes, so any level pair works) ->
`fetch_patches` on the high level -> feature net -> `expectation` -> classifier.

The attention net never sees the whole low level: it runs on one *window* per tissue tile
(the box of the tile's tissue cells plus a halo of the net's radius, `SlidePlan.window`), and
`window_logits` keeps only the logits of the tissue cells -- exactly those of one pass over
the whole level, cell for cell. Background never reaches a network and gets zero attention,
so memory and time follow the tissue area and ``n``, not the slide's size. The same loop
serves both paths; only where the windows come from, and whether gradients flow, differ:

* inference (`logits_tiled`): windows read from the slide by `read_windows` (the next one
  decoded on a background thread while the net runs), under ``no_grad``;
* training (`forward`): windows read once per slide and cached by the trainer
  (``list(read_windows(...))``: memory follows the tissue too), with gradients through every
  tissue cell, as the softmax needs. The activations of all windows are kept for the
  backward pass, so a training step's memory also grows with the tissue area.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_ats.ats import entropy_regularizer, expectation, patch_top_left, sample
from wsi_ats.device import autocast
from wsi_ats.fetch import fetch_patches
from wsi_ats.models.config import LevelSpec, ModelConfig, TissueSpec
from wsi_ats.models.features import RunningCenter
from wsi_ats.models.grid import AttentionGrid, TissueCells
from wsi_ats.models.registry import build
from wsi_ats.prefetch import Prefetcher, to_tensor
from wsi_ats.readers.base import Slide
from wsi_ats.result import SlideResult
from wsi_ats.tissue import TissueMask, tissue_mask

#: Input normalisation of every net: uint8 RGB -> (x / 255 - MEAN) / STD.
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
#: Largest attention map a `SlideResult` carries (cells); a larger grid is summed over blocks.
MAX_MAP_CELLS = 1 << 22
#: Patches per feature-net batch at inference (bounds activation memory for large n).
FEATURE_CHUNK = 128


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """What the model needs to know about one slide before any network runs."""

    low_level: int
    high_level: int
    high_shape: tuple[int, int]
    high_downsample: float
    grid: AttentionGrid
    cells: TissueCells
    tissue: TissueMask | None

    def window(self, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The low-level window ``(top_left, size)`` of the ``k``-th tissue tile: its tissue's cells plus the net's context."""
        top_left, size, _ = self.grid.window(*self.cells.cell_box(k))
        return top_left, size

    def window_cells(self, k: int) -> np.ndarray:
        """Flat positions ``(m,)`` of the ``k``-th tile's tissue cells in the net's output on its window."""
        y0, x0, y1, x1 = self.cells.cell_box(k)
        _, (_, w), (cy, cx) = self.grid.window(y0, x0, y1, x1)
        cells = self.cells.coords[self.cells.offsets[k] : self.cells.offsets[k + 1]]
        width = w - self.grid.receptive_field  # of the net's output
        return (cells[:, 0] - (y0 - cy)) * width + (cells[:, 1] - (x0 - cx))


class ATSModel(nn.Module):
    """Attention net, feature net and classifier, with the slide geometry that joins them.

    ``attention_net`` must expose ``radius`` and ``padding`` (see `wsi_ats.models.attention`);
    the receptive field follows from them. ``feature_net`` maps ``[N, 3, P, P]`` to
    ``[N, D]`` (``center_features`` subtracts their running mean: see
    `wsi_ats.models.features.RunningCenter`); ``classifier`` maps ``[B, D]`` to class
    logits. ``config`` (set by
    `from_config`) is what a checkpoint stores to rebuild the model.
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
        tissue: TissueSpec = TissueSpec(),
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
        #: What the checkpoint says about the run that made the model (set by `load_checkpoint`).
        self.metadata: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: ModelConfig, class_names: Sequence[str]) -> "ATSModel":
        """Build the registered nets named in ``config``; the classifier gets one output per class."""
        feature_net = build("features", config.features.name, **config.features.kwargs)
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

    # -- geometry ------------------------------------------------------------------------------
    def plan(self, slide: Slide) -> SlidePlan:
        """Levels, attention grid and tissue cells of ``slide`` (reads only the coarse tissue level)."""
        low_level, high_level = self.low.resolve(slide), self.high.resolve(slide)
        low, high = slide.levels[low_level], slide.levels[high_level]
        grid = AttentionGrid(low.shape, low.downsample, self.attention_net.radius, self.attention_net.padding)
        if min(grid.shape) < 1:
            raise ValueError(
                f"{slide.name}: level {low_level} ({low.shape[0]}x{low.shape[1]}) is smaller than the "
                f"attention net's receptive field ({2 * grid.radius + 1} px)"
            )
        mask = None
        if self.tissue.enabled:
            mask = tissue_mask(slide, downsample=self.tissue.downsample, min_saturation=self.tissue.min_saturation)
        cells = grid.tissue_cells(mask, self.tile)
        if len(cells) == 0:
            warnings.warn(f"{slide.name}: no tissue found (saturation threshold {mask.threshold:.3f}); attending to the whole slide")
            cells = grid.tissue_cells(None, self.tile)
        return SlidePlan(low_level, high_level, high.shape, high.downsample, grid, cells, mask)

    def read_windows(self, slide: Slide, plan: SlidePlan) -> Iterator[np.ndarray]:
        """The low-level window of each tissue tile, ``(h, w, 3) uint8``, in order; the next is read while the caller works."""

        def read(k: int) -> np.ndarray:
            return slide.read_region(plan.low_level, *plan.window(k))

        with Prefetcher(range(len(plan.cells.tiles)), read) as windows:
            for _, image in windows:
                yield image

    # -- attention -----------------------------------------------------------------------------
    def window_logits(self, windows: Iterable[np.ndarray], plan: SlidePlan) -> torch.Tensor:
        """Float32 logits ``[N]`` of the tissue cells, one window (`read_windows`) at a time.

        Differentiable unless called under ``no_grad``; equal to the logits of one pass over
        the whole low level.
        """
        parts = []
        for k, image in enumerate(windows):
            _, size = plan.window(k)
            out = self.attention_net(_image_tensor(image, self.device))[0]
            expected = (size[0] - plan.grid.receptive_field, size[1] - plan.grid.receptive_field)
            if image.shape[:2] != size or tuple(out.shape) != expected:
                raise ValueError(
                    f"window {k}: the attention net gave a {tuple(out.shape)} grid on a {image.shape[:2]} window, "
                    f"the plan says {expected} on {size}"
                )
            index = torch.from_numpy(plan.window_cells(k)).to(self.device)
            parts.append(out.reshape(-1)[index].float())
        if len(parts) != len(plan.cells.tiles):
            raise ValueError(f"got {len(parts)} windows for {len(plan.cells.tiles)} tissue tiles")
        return torch.cat(parts)

    @torch.no_grad()
    def logits_tiled(self, slide: Slide, plan: SlidePlan) -> torch.Tensor:
        """Inference: `window_logits` on windows read from ``slide``, without gradients."""
        return self.window_logits(self.read_windows(slide, plan), plan)

    def attention(self, logits: torch.Tensor) -> torch.Tensor:
        """``[1, N]`` softmax over the tissue cells in float32, mixed with ``smooth`` of the uniform distribution."""
        a = torch.softmax(logits.float(), dim=0)
        if self.smooth > 0:
            a = (1 - self.smooth) * a + self.smooth / a.numel()
        return a[None]

    def draw(self, attention: torch.Tensor, *, generator: torch.Generator | None = None, topk: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
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
    def patch_corners(self, plan: SlidePlan, flat_indices: torch.Tensor) -> np.ndarray:
        """High-level ``(y, x)`` top-left corners, ``(n, 2)`` int64, of the patches of drawn cells."""
        cells = torch.from_numpy(plan.cells.coords)[flat_indices.cpu().reshape(-1)][None]
        top_left = patch_top_left(
            cells, plan.grid.shape, plan.grid.low_shape, plan.high_shape, self.patch_size, plan.grid.receptive_field
        )
        return top_left[0].numpy()

    def features(self, patches: np.ndarray) -> torch.Tensor:
        """Feature vectors ``[n, D]`` of ``(n, P, P, 3) uint8`` patches."""
        return self.feature_center(self.feature_net(to_tensor(patches, self.device, mean=MEAN, std=STD)))

    def forward(
        self,
        slide: Slide,
        plan: SlidePlan,
        windows: Sequence[np.ndarray],
        *,
        generator: torch.Generator | None = None,
        client: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass on one slide: class logits ``[1, C]`` and the attention ``[1, N]`` (for the regularizer).

        ``windows`` are the slide's cached tissue windows (``list(read_windows(slide, plan))``);
        patches come through `fetch_patches`.
        """
        attention = self.attention(self.window_logits(windows, plan))
        indices, probs = self.draw(attention, generator=generator)
        patches = fetch_patches(slide, plan.high_level, self.patch_corners(plan, indices), self.patch_size, client=client)
        pooled = expectation(self.features(patches)[None], probs, replace=self.replace)
        return self.classifier(pooled), attention

    @torch.no_grad()
    def predict_slide(
        self,
        slide: Slide,
        *,
        slide_id: str | None = None,
        seed: int = 0,
        draws: int = 1,
        topk: bool = False,
        client: Any = None,
    ) -> SlideResult:
        """Class probabilities of one slide, averaged over ``draws`` samples (or from the top-``n`` cells).

        Deterministic for a given ``seed``. Memory and time follow the tissue area and
        ``n``: the attention is computed tile by tile and all patches of all draws are
        fetched in one call.
        """
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws!r}")
        start, was_training = time.perf_counter(), self.training
        self.eval()
        try:
            plan = self.plan(slide)
            with autocast(self.device):
                attention = self.attention(self.logits_tiled(slide, plan))
            generator = torch.Generator(device=attention.device).manual_seed(int(seed))
            picks = [self.draw(attention, generator=generator, topk=topk) for _ in range(1 if topk else draws)]
            indices = torch.cat([i for i, _ in picks], dim=1)
            probs = torch.cat([p for _, p in picks], dim=0)  # [draws, n]
            top_left = self.patch_corners(plan, indices)
            patches = fetch_patches(slide, plan.high_level, top_left, self.patch_size, client=client)
            with autocast(self.device):
                features = torch.cat([self.features(patches[i : i + FEATURE_CHUNK]) for i in range(0, len(patches), FEATURE_CHUNK)])
                pooled = expectation(features.float().reshape(*probs.shape, -1), probs, replace=self.replace and not topk)
                logits = self.classifier(pooled)
            probabilities = torch.softmax(logits.float(), dim=-1).mean(dim=0)
        finally:
            self.train(was_training)

        attention_map, factor = _attention_map(plan.cells, attention[0].cpu().numpy())
        high_ds, low_ds = plan.high_downsample, plan.grid.low_downsample
        origin = float(plan.grid.offset * low_ds)
        return SlideResult(
            slide_id=slide_id if slide_id is not None else _default_id(slide),
            source=slide.source,
            class_names=self.class_names,
            probabilities=probabilities.cpu().numpy().astype(np.float64),
            attention=attention_map,
            attention_level=plan.low_level,
            attention_downsample=float(low_ds * factor),
            attention_origin=(origin, origin),
            patch_level=plan.high_level,
            patch_downsample=float(high_ds),
            patch_top_left=np.round(top_left * high_ds).astype(np.int64),
            patch_size_level0=int(round(self.patch_size * high_ds)),
            patch_attention=probs.reshape(-1).cpu().numpy().astype(np.float32),
            patches_fetched=len(patches),
            seconds=time.perf_counter() - start,
        )


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(H, W, 3) uint8`` -> normalised ``[1, 3, H, W]``, channels-last (2-3x faster convolutions on CPU)."""
    return to_tensor(image[None], device, mean=MEAN, std=STD).contiguous(memory_format=torch.channels_last)


def _attention_map(cells: TissueCells, attention: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense float32 map of the grid (zero off tissue); grids above `MAX_MAP_CELLS` are summed over ``f x f`` blocks."""
    Ay, Ax = cells.grid_shape
    factor = max(1, math.ceil(math.sqrt(Ay * Ax / MAX_MAP_CELLS)))
    while math.ceil(Ay / factor) * math.ceil(Ax / factor) > MAX_MAP_CELLS:
        factor += 1
    shape = (math.ceil(Ay / factor), math.ceil(Ax / factor))
    flat = (cells.coords[:, 0] // factor) * shape[1] + cells.coords[:, 1] // factor
    dense = np.bincount(flat, weights=attention, minlength=shape[0] * shape[1])
    return dense.reshape(shape).astype(np.float32), factor


def _default_id(slide: Slide) -> str:
    return Path(slide.source).stem if slide.source else "slide"
