"""How well a model does on labelled slides, and, given ground-truth boxes, where its attention goes.

Evaluation runs the inference path (`wsi_ats.engine.predict_slide`). Ground truth is an
argument, level-0 ``(y0, x0, y1, x1)`` boxes per slide id, so any source works: `truth_boxes`
reads a folder of ``<slide_id>.geojson`` files (QuPath's GeoJSON export, or the
``annotations/`` folder `wsi-ats synth` writes beside its manifest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ats.engine.coordinates import patch_corners
from wsi_ats.engine.plan import SlidePlan, plan_slide
from wsi_ats.engine.run import predict_slide
from wsi_ats.manifest import ManifestRow
from wsi_ats.models import ATSModel
from wsi_ats.readers import open_slide
from wsi_ats.result import SlideResult


def evaluate(
    model: ATSModel,
    rows: Sequence[ManifestRow],
    *,
    seed: int = 0,
    draws: int = 1,
    topk: bool = False,
    client: Any = None,
    truth: Mapping[str, np.ndarray] | None = None,
    stage: str | Path | None = None,
    remote_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy and mean negative log-likelihood of the model's predictions on ``rows``.

    A slide the model cannot judge (no tissue, blank, too small: ``result.judged`` is False)
    has no probability: it counts as not correct in ``accuracy`` (the model gave no answer),
    is left out of ``loss`` (there is no likelihood to score) and is counted in ``unjudged``.
    ``loss`` is NaN only when no slide could be judged.

    With ``truth`` boxes for a slide, also where the attention goes, averaged over those
    slides: ``patches_on_truth``, the fraction of sampled patches that overlap a box;
    ``truth_tissue_fraction``, the fraction of the tissue area the boxes cover;
    ``patches_on_truth_uniform``, what ``patches_on_truth`` would be if the patches were
    drawn uniformly over the tissue cells (the fair baseline: a patch overlaps a box from
    further away than the box's own area); ``concentration``, the ratio of the first to the
    last. ``stage`` and ``remote_cache`` say how slides given by URL are read (`wsi_ats.readers.open_slide`).
    """
    index = {c: i for i, c in enumerate(model.class_names)}
    truth = truth or {}
    nll, correct, where, unjudged = [], [], [], 0
    for row in rows:
        with open_slide(row.path, mpp=row.mpp, stage=stage, remote_cache=remote_cache) as slide:
            plan = plan_slide(model, slide)  # once: the prediction and the truth scoring share it
            result = predict_slide(model, slide, slide_id=row.slide_id, seed=seed, draws=draws, topk=topk, client=client, plan=plan)
            if row.slide_id in truth:
                where.append(attention_on_truth(model, plan, result, truth[row.slide_id]))
        correct.append(result.judged and result.prediction == row.label)
        if not result.judged:
            unjudged += 1
            continue
        p = float(result.probabilities[index[row.label]]) if row.label in index else 0.0
        nll.append(-math.log(max(p, 1e-12)))
    out: dict[str, Any] = {
        "slides": len(rows),
        "unjudged": unjudged,
        "accuracy": float(np.mean(correct)),
        "loss": float(np.mean(nll)) if nll else math.nan,
    }
    if where:
        out.update({k: float(np.mean([w[k] for w in where])) for k in where[0]})
        out["concentration"] = out["patches_on_truth"] / max(out["patches_on_truth_uniform"], 1e-12)
    return out


def attention_on_truth(model: ATSModel, plan: SlidePlan, result: SlideResult, boxes: np.ndarray) -> dict[str, float]:
    """Sampled-patch hits, their uniform-sampling baseline, and the tissue share of the boxes on the slide of ``plan``."""
    size = result.patch_size_level0
    drawn = _overlaps(result.patch_top_left.astype(np.float64), size, boxes)
    # Every tissue cell's patch, as the engine would place it if that cell were drawn.
    every = patch_corners(plan, torch.arange(len(plan.cells)), model.patch_size) * plan.high_downsample
    uniform = _overlaps(every, size, boxes)
    area = float(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1).sum())
    tissue = plan.tissue.mask.sum() * plan.tissue.downsample**2 if plan.tissue is not None else np.prod(plan.slide.levels[0].shape)
    return {
        "patches_on_truth": float(drawn.mean()) if len(drawn) else 0.0,
        "patches_on_truth_uniform": float(uniform.mean()) if len(uniform) else 0.0,
        "truth_tissue_fraction": area / max(float(tissue), 1.0),
    }


def truth_boxes(folder: str | Path, slide_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """Boxes of each slide that has a ``<slide_id>.geojson`` in ``folder`` (none when the folder is missing)."""
    boxes = {sid: read_truth_boxes(Path(folder) / f"{sid}.geojson") for sid in slide_ids}
    return {sid: b for sid, b in boxes.items() if b is not None}


def read_truth_boxes(path: Path) -> np.ndarray | None:
    """Level-0 ``(y0, x0, y1, x1)`` bounding boxes of the polygons of a GeoJSON file, or None when there is none."""
    if not path.is_file():
        return None
    try:
        features = json.loads(path.read_text(encoding="utf-8"))["features"]
        rings = [np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64) for f in features]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection of polygons ({err})") from None
    boxes = [(r[:, 1].min(), r[:, 0].min(), r[:, 1].max(), r[:, 0].max()) for r in rings]  # GeoJSON is (x, y)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _overlaps(top_left: np.ndarray, size: float, boxes: np.ndarray) -> np.ndarray:
    """Whether each square ``[y, y + size) x [x, x + size)`` meets any box."""
    y, x = top_left[:, :1], top_left[:, 1:]
    hit = (y < boxes[:, 2]) & (y + size > boxes[:, 0]) & (x < boxes[:, 3]) & (x + size > boxes[:, 1])
    return hit.any(axis=1)
