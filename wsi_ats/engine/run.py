"""The slide engine: a slide passes each step once, in order; inference and training share it.

plan (`plan_slide`) -> windows (`read_windows`) -> attention logits (`tissue_logits`) ->
the model samples cells -> patch corners (`patch_corners`) -> covering tiles decoded once
(`fetch_patches`) -> the model's features, expectation and classifier -> `slide_result`.

Memory and time follow the tissue area and ``n``, not the slide's size: the attention runs
window by window over tissue only, and all patches of all draws are fetched in one call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from wsi_ats.device import autocast, to_device
from wsi_ats.engine.assemble import slide_result, unjudged_result
from wsi_ats.engine.attention import tissue_logits
from wsi_ats.engine.confidence import AUTO, AUTO_BATCH, AUTO_FIRST, Draws, confidence, settled
from wsi_ats.engine.coordinates import patch_corners
from wsi_ats.engine.fetch import fetch_patches
from wsi_ats.engine.plan import SlidePlan, plan_slide
from wsi_ats.engine.windows import read_windows
from wsi_ats.models import ATSModel
from wsi_ats.models.ats_model import ATSOutput
from wsi_ats.readers.base import Slide, SlideError
from wsi_ats.result import SlideResult


class SlidePatches:
    """The model's patch source on one slide: drawn cells -> their corners -> one fetch of all their patches.

    Keeps the corners and pixels of its last call, which the result reports (corners in level-0 pixels).
    """

    def __init__(self, model: ATSModel, plan: SlidePlan, client: Any = None) -> None:
        self.model, self.plan, self.client = model, plan, client
        self.corners = np.zeros((0, 2), np.int64)
        self.pixels = np.zeros((0, model.patch_size, model.patch_size, 3), np.uint8)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        size = self.model.patch_size
        self.corners = patch_corners(self.plan, indices, size)
        self.pixels = fetch_patches(self.plan.slide, self.plan.high_level, self.corners, size, client=self.client)
        return to_device(self.pixels, self.model.device)


def forward_slide(
    model: ATSModel,
    plan: SlidePlan,
    windows: Sequence[np.ndarray],
    *,
    generator: torch.Generator | None = None,
    client: Any = None,
) -> ATSOutput:
    """Training pass on one slide (one draw, gradients on): ``windows`` are its cached `read_windows`.

    A slide the model cannot judge (``plan.warnings``) cannot teach it either: a `SlideError` saying why.
    """
    if plan.warnings:
        raise SlideError(f"{plan.slide.name}: cannot train on this slide: {'; '.join(plan.warnings)}")
    return model(tissue_logits(model, windows, plan), SlidePatches(model, plan, client), generator=generator)


@torch.no_grad()
def predict_slide(
    model: ATSModel,
    slide: Slide,
    *,
    slide_id: str,
    seed: int = 0,
    draws: Draws = 1,
    topk: bool = False,
    client: Any = None,
    cache: str | os.PathLike[str] | None = None,
    plan: SlidePlan | None = None,
) -> SlideResult:
    """Class probabilities of one slide, averaged over ``draws`` samples (or from the top-``n`` cells), with their confidence.

    ``draws="auto"`` draws in batches until the predicted class is settled, its margin is known
    closely enough, or a cap is reached (`wsi_ats.engine.confidence`); the draws are the first
    ones a fixed count would make with the same ``seed``. Deterministic for a given ``seed``;
    the model is put in eval mode for the call.
    ``cache``: a folder keeping the slide's resampled levels between runs (`plan_slide`);
    ``plan``: the slide's plan when the caller made it already. A slide the model cannot
    judge gets a result with its ``warnings`` and no class, and no network runs on it.
    """
    if draws != AUTO and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
        raise ValueError(f"draws must be a positive integer or {AUTO!r}, got {draws!r}")
    start, was_training = time.perf_counter(), model.training
    if plan is None:
        plan = plan_slide(model, slide, cache=cache)
    if plan.warnings:
        return unjudged_result(
            slide_id=slide_id, source=slide.source, class_names=model.class_names, plan=plan, seconds=time.perf_counter() - start
        )
    model.eval()
    outs, corners, pixels = [], [], []
    try:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))
        patches = SlidePatches(model, plan, client)
        with autocast(model.device):
            logits = tissue_logits(model, read_windows(plan), plan)
            while True:
                outs.append(
                    model(
                        logits,
                        patches,
                        draws=(AUTO_BATCH if outs else AUTO_FIRST) if draws == AUTO else draws,
                        topk=topk,
                        generator=generator,
                    )
                )
                corners.append(patches.corners)
                pixels.append(patches.pixels)
                per_draw = torch.softmax(torch.cat([o.logits.float() for o in outs]), dim=-1).cpu().numpy()
                conf = confidence(per_draw)
                if draws != AUTO or topk or settled(conf):
                    break
    finally:
        model.train(was_training)
    result = slide_result(
        slide_id=slide_id,
        source=slide.source,
        class_names=model.class_names,
        plan=plan,
        probabilities=conf.probabilities,
        attention=outs[0].attention[0].cpu().numpy(),
        top_left=np.concatenate(corners),
        patch_pixels=np.concatenate(pixels),
        patch_size=model.patch_size,
        patch_attention=torch.cat([o.probs.reshape(-1) for o in outs]).cpu().numpy(),
        seconds=time.perf_counter() - start,
    )
    return replace(result, probability_se=conf.standard_error, interval=conf.interval, draws=conf.draws, confident=conf.confident)
