"""The dense baseline (CLAM, TRIDENT): the encoder on every tissue tile, then a gated attention-MIL head on the bags.

What every user compares attention sampling against, built from the same parts: the recipe's
plan (levels read at the recipe's microns, its tissue mask), its patch size and its feature
net through `ATSModel.encode` (same normalisation). `dense_bag` gives one slide's bag
(`wsi_ats.outputs.bags.FeatureBag`, written in CLAM's HDF5 layout); `GatedABMIL` is CLAM's
single-branch head and `train_abmil` fits it on bags.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsi_ats.models import ATSModel
from wsi_ats.outputs.bags import FeatureBag
from wsi_ats.readers.base import Slide
from wsi_ats.result import SlideResult

#: Patches per encoder batch in the dense pass (bounds activation memory).
DENSE_BATCH = 256
#: Head training: Adam, one slide per step; converged when the mean training loss is below
#: HEAD_CONVERGED (every training slide fitted), or after HEAD_PATIENCE epochs without a better one.
HEAD_LR, HEAD_CONVERGED, HEAD_PATIENCE = 1e-3, 0.01, 20


class GatedABMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018), CLAM's single-branch head (Lu et al. 2021), and a linear classifier.

    ``h = ReLU(W x)``, ``a = softmax_k(w . (tanh(V h_k) * sigmoid(U h_k)))``, logits ``= C (sum_k a_k h_k)``.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64, attention: int = 32) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.tanh_branch = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh())
        self.gate_branch = nn.Sequential(nn.Linear(hidden, attention), nn.Sigmoid())
        self.score = nn.Linear(attention, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` embeddings of one slide's tiles -> ``[1, C]`` class logits."""
        h = self.embed(features)
        a = torch.softmax(self.score(self.tanh_branch(h) * self.gate_branch(h))[:, 0], dim=0)
        return self.classifier((a[:, None] * h).sum(dim=0, keepdim=True))


def train_abmil(
    bags: Sequence[tuple[torch.Tensor, int]], in_features: int, num_classes: int, *, seed: int, max_epochs: int = 300
) -> tuple[GatedABMIL, dict[str, Any]]:
    """Fit the head on ``(embeddings [N, D], class index)`` bags until its training loss converges (seeded order)."""
    torch.manual_seed(seed)
    head = GatedABMIL(in_features, num_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=HEAD_LR, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    best, since, losses, stopped = math.inf, 0, [], "max epochs"
    for _epoch in range(max_epochs):
        epoch_loss = 0.0
        for k in torch.randperm(len(bags), generator=generator).tolist():
            features, label = bags[k]
            loss = F.cross_entropy(head(features), torch.tensor([label]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() / len(bags)
        losses.append(epoch_loss)
        since = 0 if epoch_loss < best - 1e-4 else since + 1
        best = min(best, epoch_loss)
        if epoch_loss < HEAD_CONVERGED or since >= HEAD_PATIENCE:
            stopped = f"training loss < {HEAD_CONVERGED}" if epoch_loss < HEAD_CONVERGED else "training loss plateau"
            break
    return head.eval(), {"epochs": len(losses), "final_train_loss": round(losses[-1], 5) if losses else None, "stopped": stopped}


def tissue_tiles(model: ATSModel, plan: Any) -> np.ndarray:
    """The ``(rows, cols)`` grid of the high level's patch-sized tiles whose centre is tissue (the plan's mask)."""
    size, d = model.patch_size, plan.high_downsample
    rows, cols = plan.high_shape[0] // size, plan.high_shape[1] // size
    if plan.tissue is None:
        return np.ones((rows, cols), bool)

    def centres(count: int) -> np.ndarray:
        return (np.arange(count) + 0.5) * size * d

    return plan.tissue.at(centres(rows), centres(cols))


@torch.no_grad()
def dense_bag(model: ATSModel, slide: Slide, *, slide_id: str, cache: str | os.PathLike[str] | None = None) -> FeatureBag:
    """Embeddings of *every* tissue tile of ``slide``'s high level through ``model``'s encoder, and their corners.

    The level is read in blocks of whole tiles (256 px where the patch size divides it), the
    next block while the encoder runs on this one; blocks without tissue are never read.
    """
    from wsi_ats.device import autocast, to_device
    from wsi_ats.engine.plan import plan_slide
    from wsi_ats.engine.prefetch import Prefetcher

    was_training = model.training
    model.eval()
    try:
        plan = plan_slide(model, slide, cache=cache)
        tiles, size = tissue_tiles(model, plan), model.patch_size
        per = max(1, 256 // size)  # tiles per block side
        blocks = [
            (by, bx)
            for by in range(math.ceil(tiles.shape[0] / per))
            for bx in range(math.ceil(tiles.shape[1] / per))
            if tiles[by * per : (by + 1) * per, bx * per : (bx + 1) * per].any()
        ]

        def read(block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            by, bx = block
            keep = tiles[by * per : (by + 1) * per, bx * per : (bx + 1) * per]
            h, w = keep.shape
            image = plan.slide.read_region(plan.high_level, (by * per * size, bx * per * size), (h * size, w * size))
            rc = np.argwhere(keep) + (by * per, bx * per)
            return image.reshape(h, size, w, size, 3).transpose(0, 2, 1, 3, 4)[keep], rc

        out, corners, pending = [], [], []

        def flush() -> None:
            out.append(model.encode(to_device(np.concatenate(pending), model.device)).float().cpu())
            pending.clear()

        with Prefetcher(blocks, read) as reads, autocast(model.device):
            for _, (patches, rc) in reads:
                pending.append(patches)
                corners.append(rc)
                if sum(len(p) for p in pending) >= DENSE_BATCH:
                    flush()
            if pending:
                flush()
    finally:
        model.train(was_training)
    features = torch.cat(out).numpy() if out else np.zeros((0, model.feature_net.out_features), np.float32)
    rc = np.concatenate(corners) if corners else np.zeros((0, 2), np.int64)
    d = plan.high_downsample
    xy = np.round(rc[:, ::-1] * size * d).astype(np.int64)  # level-0 (x, y) top-left corners
    return FeatureBag(
        slide_id=slide_id,
        features=features,
        coords_xy=xy,
        patch_size=size,
        patch_size_level0=round(size * d),
        patch_level=int(plan.high_level),
        level0_mpp=slide.mpp,
        target_mpp=slide.mpp * d if slide.mpp else None,
        encoder=encoder_name(model),
        method="dense",
    )


@contextmanager
def captured_embeddings(model: ATSModel) -> Iterator[list[torch.Tensor]]:
    """Collects, in call order, what ``model``'s feature net returns inside the block (its raw embeddings)."""
    seen: list[torch.Tensor] = []
    handle = model.feature_net.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().float().cpu()))
    try:
        yield seen
    finally:
        handle.remove()


def sampled_bag(model: ATSModel, result: SlideResult, embeddings: Sequence[torch.Tensor], level0_mpp: float | None) -> FeatureBag:
    """The bag of the patches one prediction drew (``predict --save-features``): their embeddings and corners."""
    features = torch.cat(list(embeddings)).numpy() if embeddings else np.zeros((0, model.feature_net.out_features), np.float32)
    return FeatureBag(
        slide_id=result.slide_id,
        features=features,
        coords_xy=np.asarray(result.patch_top_left, np.int64).reshape(-1, 2)[:, ::-1],
        patch_size=model.patch_size,
        patch_size_level0=int(result.patch_size_level0),
        patch_level=int(result.patch_level),
        level0_mpp=level0_mpp,
        target_mpp=level0_mpp * result.patch_downsample if level0_mpp else None,
        encoder=encoder_name(model),
        method="ats",
    )


def encoder_name(model: ATSModel) -> str:
    """What a bag's ``encoder`` attribute says: the feature net's recipe entry (``timm:resnet50``, ``small_cnn``)."""
    spec = model.config.features if model.config is not None else None
    if spec is None:
        return type(model.feature_net).__name__
    kwargs = spec.kwargs
    return f"timm:{kwargs['arch']}" if spec.name == "timm" else spec.name


def dense_command(
    *,
    manifest: str | os.PathLike[str],
    config: str | os.PathLike[str],
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    train: bool = True,
) -> int:
    """``wsi-ats dense-features``: a bag per slide in ``OUT/features/<slide_id>.h5``, then (``train``) the ABMIL head.

    The recipe's encoder runs on every tissue tile of every slide of ``manifest`` (bags already
    in ``OUT`` are kept: a rerun resumes). With ``train`` the head is fitted on the ``train``
    split (the manifest's, or the recipe's seeded split) and its accuracy on ``val``/``test``
    written to ``OUT/dense_metrics.json``, the head to ``OUT/abmil.pt``. Exit code 0, 1 when a
    slide failed (named on stderr, the others go on), 2 for a bad manifest or recipe.
    """
    import json
    import sys
    import time
    from pathlib import Path

    from wsi_ats import recipes
    from wsi_ats.device import select_device
    from wsi_ats.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
    from wsi_ats.manifest import read_manifest
    from wsi_ats.models import load_config
    from wsi_ats.outputs.atomic import atomic_write_bytes, atomic_write_text
    from wsi_ats.outputs.bags import read_bag, write_bag
    from wsi_ats.readers import open_slide
    from wsi_ats.train import assign_splits

    try:
        recipe = load_config(recipes.resolve(config))
        rows = read_manifest(manifest, root=root)
        class_names = sorted({r.label for r in rows})
        torch.manual_seed(seed)
        try:
            model = ATSModel.from_config(recipe.model, class_names).to(select_device(device)).eval()
        except ValueError as err:
            raise ValueError(f"{recipe.source}: {err}") from None
    except (ValueError, FileNotFoundError) as err:
        print(f"wsi-ats dense-features: {err}", file=sys.stderr)
        return EXIT_USAGE
    folder = Path(out) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    bags: dict[str, FeatureBag] = {}
    failed, seconds = 0, {}
    for row in rows:
        path = folder / f"{row.slide_id}.h5"
        if path.is_file():
            bags[row.slide_id] = read_bag(path)
            continue
        start = time.perf_counter()
        try:
            with open_slide(row.path, mpp=row.mpp) as slide:
                bag = dense_bag(model, slide, slide_id=row.slide_id, cache=cache)
        except Exception as err:  # noqa: BLE001 - one bad slide fails its own line, the batch goes on
            print(f"wsi-ats dense-features: {row.path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        write_bag(path, bag)
        bags[row.slide_id], seconds[row.slide_id] = bag, round(time.perf_counter() - start, 3)
        print(f"{row.slide_id}: {len(bag.features)} tiles, {seconds[row.slide_id]:.1f} s")
    if train:
        splits = assign_splits([r for r in rows if r.slide_id in bags], recipe.train, seed)
        index = {c: i for i, c in enumerate(class_names)}

        def tensors(split: str) -> list[tuple[torch.Tensor, int]]:
            return [(torch.from_numpy(bags[r.slide_id].features), index[r.label]) for r in splits[split]]

        if not splits["train"]:
            print("wsi-ats dense-features: no training slide has a bag: no head trained", file=sys.stderr)
            return EXIT_FAILED
        head, log = train_abmil(tensors("train"), model.feature_net.out_features, len(class_names), seed=seed)
        metrics: dict[str, Any] = {"head": log, "class_names": class_names, "encoder": encoder_name(model), "seconds_per_slide": seconds}
        with torch.no_grad():
            for split in ("train", "val", "test"):
                pairs = tensors(split)
                if pairs:
                    correct = [int(head(f).argmax()) == y for f, y in pairs]
                    metrics[split] = {"accuracy": round(float(np.mean(correct)), 4), "slides": len(pairs)}
        buffer = io.BytesIO()
        torch.save({"state_dict": head.state_dict(), "in_features": model.feature_net.out_features, "class_names": class_names}, buffer)
        atomic_write_bytes(Path(out) / "abmil.pt", buffer.getvalue())
        atomic_write_text(Path(out) / "dense_metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(
            "; ".join(
                f"{s}: accuracy {metrics[s]['accuracy']:.3f} ({metrics[s]['slides']} slides)"
                for s in ("train", "val", "test")
                if s in metrics
            )
        )
    return EXIT_FAILED if failed else EXIT_OK
