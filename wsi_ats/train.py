"""Train an ATS model on a manifest: ``train(manifest, config, out_dir) -> metrics``.

One slide per forward pass (slides differ in size), ``batch_size`` slides accumulated per
Adam step, gradient-norm clipping, cross-entropy plus the entropy regularizer. Each
training slide's plan and the low-level windows of its tissue tiles are read once and
cached in memory for the run (`wsi_ats.engine.read_windows`: memory follows the tissue, not
the slide; the attention net runs on them with gradients, see `wsi_ats.engine.attention`);
each step is the engine's `forward_slide`, the same path as inference. Evaluation runs
the inference path (`wsi_ats.evaluate`).

Outputs in ``out_dir``: ``model.pt`` (the epoch best on the validation slides: highest
accuracy, then lowest loss; the last epoch when there are none), ``last.pt`` (model,
optimizer, history and the best epoch's weights after the last finished epoch: ``resume``
continues from it) and ``metrics.json``. A folder that already holds a run is refused
unless ``resume`` is given, so a second ``wsi-ats train`` never quietly continues, or
overwrites, an old one. Every random step derives from ``seed``: same seed, same metrics.

Every slide of the manifest (all splits) is opened, and every training slide read, before
the first step: all unreadable ones are listed at once, or, with ``skip_unreadable``,
left out and listed in ``metrics.json`` (``skipped_slides``).

Ground truth, when given (``truth``: level-0 boxes per slide id, e.g. from
`wsi_ats.evaluate.truth_boxes`), measures where the attention goes: see `wsi_ats.evaluate`.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wsi_ats.checkpoint import read_checkpoint, save_checkpoint
from wsi_ats.device import autocast, peak_memory, select_device
from wsi_ats.engine.plan import plan_slide
from wsi_ats.engine.run import forward_slide
from wsi_ats.engine.windows import read_windows
from wsi_ats.evaluate import evaluate
from wsi_ats.manifest import ManifestRow, read_manifest
from wsi_ats.manifest_build import split_by_case
from wsi_ats.models import ATSModel, PipelineConfig, TrainConfig, load_config
from wsi_ats.outputs.atomic import atomic_write_text
from wsi_ats.progress import progress_bar
from wsi_ats.readers import Slide, check_remote_options, open_slide
from wsi_ats.readers.remote import read_stats

#: How ``model.pt`` is chosen among the epochs, as ``metrics.json`` records it.
SELECTION = {True: "highest val accuracy, then lowest val loss", False: "last epoch (no validation slides)"}
TrainingCache = dict[str, tuple[Slide, Any, list[np.ndarray]]]


class RunFolderError(ValueError):
    """An output folder that already holds a run (without ``resume``), or one that cannot be resumed."""


def train(
    manifest: str | Path | Sequence[ManifestRow],
    config: str | Path | PipelineConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    truth: Mapping[str, np.ndarray] | None = None,
    root: str | Path | None = None,
    resampled_cache: str | Path | None = None,
    resume: bool = False,
    skip_unreadable: bool = False,
    stage: str | Path | None = None,
    remote_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Train on the manifest's ``train`` split, validate each epoch, test at the end; returns the metrics written to ``metrics.json``.

    ``truth`` (level-0 ``(y0, x0, y1, x1)`` boxes per slide id) adds where the attention goes
    to the validation and test metrics; ``root`` resolves the manifest's relative paths
    (default: its folder); ``resampled_cache`` keeps the slides' resampled levels on disk.
    ``resume`` continues the run in ``out_dir`` (`RunFolderError` without it when there is
    one); ``skip_unreadable`` trains without the slides that cannot be read instead of
    refusing them all. ``progress`` prints the epochs, notes and (on a terminal) bars. Slides
    given by URL are downloaded into ``stage`` once, or read by range keeping what was read in
    ``remote_cache`` so later epochs and runs read it from disk (`wsi_ats.readers.open_slide`);
    each epoch's record says how many bytes of the slides it read (``bytes_read``: from the
    server for URLs, cache hits not counted), ``bytes_read_setup`` those read before the first.

    The model records the microns per pixel it reads at (`training_microns`).
    """
    say: Callable[[str], None] = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    rows = read_manifest(manifest, root=root) if isinstance(manifest, (str, Path)) else list(manifest)
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    epochs = cfg.train.epochs if epochs is None else int(epochs)
    out = Path(out_dir)
    check_run_folder(out, resume)
    unlabelled = [r.slide_id for r in rows if not r.label]
    if unlabelled:
        raise ValueError(f"training needs the label of every slide; none for {', '.join(unlabelled[:10])}")
    splits = assign_splits(rows, cfg.train, seed)
    if not splits["train"]:
        raise ValueError("the manifest has no training slides")
    class_names = tuple(sorted({r.label for r in rows}))
    check_remote_options(stage, remote_cache)
    remote = {"stage": stage, "remote_cache": remote_cache}
    opener = functools.partial(open_slide, **remote)
    read_before = _bytes_read(rows)
    splits, skipped = _drop_unreadable(splits, _open_errors(splits, opener), skip_unreadable, say)
    if not splits["train"]:
        raise ValueError("no training slide can be read")
    device = select_device(device)

    torch.manual_seed(seed)
    model = ATSModel.from_config(cfg.model, class_names).to(device)
    model.microns = training_microns(model, splits["train"], opener)
    optimizer = _optimizer(model, cfg.train)
    identity = _run_identity(cfg, seed, splits)
    out.mkdir(parents=True, exist_ok=True)  # only once the recipe has built a model: a bad one leaves no folder
    history, best = _resume(out / "last.pt", model, optimizer, identity)
    if resume and history:
        say(f"resuming {out}: {len(history)} of {epochs} epochs done")

    cache: TrainingCache = {}
    step_seconds: list[float] = []
    started = time.perf_counter()
    read_setup = None
    try:
        if len(history) < epochs:
            errors = _read_training_slides(model, splits["train"], cache, resampled_cache, progress, opener)
            splits, more = _drop_unreadable(splits, errors, skip_unreadable, say)
            skipped += more
            if not splits["train"]:
                raise ValueError("no training slide can be read")
        read_setup = _bytes_read(rows) - read_before
        for epoch in range(len(history), epochs):
            epoch_start, read_start = time.perf_counter(), _bytes_read(rows)
            stats = _train_epoch(model, optimizer, splits["train"], cache, cfg.train, seed, epoch, epochs, progress, step_seconds)
            record = {"epoch": epoch + 1, **stats}
            if splits["val"]:
                val = evaluate(model, splits["val"], seed=seed, draws=cfg.train.eval_draws, topk=cfg.train.eval_topk, truth=truth, **remote)
                record.update({f"val_{k}": v for k, v in val.items() if k != "slides"})
                if best is None or _score(record) > _score(history[best["epoch"] - 1]):
                    best = {"epoch": epoch + 1, "state_dict": _copy_state(model)}
            record["seconds"] = round(time.perf_counter() - epoch_start, 3)
            record["bytes_read"] = _bytes_read(rows) - read_start
            history.append(record)
            if progress:
                tqdm.write(_epoch_line(record, epochs))
            training = {"optimizer": optimizer.state_dict(), "history": history, **({"best": best} if best else {})}
            save_checkpoint(out / "last.pt", model, metadata=identity, training=training)
    finally:
        for slide, _, _ in cache.values():
            slide.close()

    if best is not None:
        model.load_state_dict(best["state_dict"])
    chosen = best["epoch"] if best is not None else len(history)
    held_out = "test" if splits["test"] else "val"
    test = {}
    if splits[held_out]:
        test = evaluate(model, splits[held_out], seed=seed, draws=cfg.train.eval_draws, topk=cfg.train.eval_topk, truth=truth, **remote)
    metrics = {
        "class_names": list(class_names),
        "seed": seed,
        "device": str(device),
        "splits": {k: [r.slide_id for r in v] for k, v in splits.items()},
        "skipped_slides": skipped,
        "held_out_split": held_out,
        "model_epoch": chosen,
        "model_selection": SELECTION[best is not None],
        "epochs": history,
        "test": test,
        "seconds_per_step": round(float(np.mean(step_seconds)), 4) if step_seconds else None,
        "train_seconds": round(time.perf_counter() - started, 2),
        "bytes_read_setup": read_setup,
        **peak_memory(device),
        "config": cfg.to_dict(),
    }
    save_checkpoint(out / "model.pt", model, metadata={**identity, "test": test, "epochs": len(history), "epoch": chosen})
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse a folder that holds a run unless resuming it, and one that holds a model but nothing to resume from."""
    last, model = out / "last.pt", out / "model.pt"
    if resume:
        if model.exists() and not last.exists():
            raise RunFolderError(f"{out}: holds model.pt but no last.pt to resume from; choose another --out")
        return
    if last.exists():
        done = len((read_checkpoint(last).get("training") or {}).get("history") or [])
        raise RunFolderError(
            f"{out}: already holds a run ({done} epochs done in last.pt); pass --resume to continue it "
            "(a larger --epochs trains on), or choose another --out"
        )
    if model.exists():
        raise RunFolderError(f"{out}: already holds model.pt; choose another --out (training would replace it)")


def assign_splits(rows: Sequence[ManifestRow], cfg: TrainConfig, seed: int) -> dict[str, list[ManifestRow]]:
    """The manifest's ``split`` column (rows without one train).

    Without any, a seeded split of whole cases (patients), stratified by label.
    """
    if not any(r.split for r in rows):
        fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
        rows = split_by_case(rows, fractions, seed)
    splits: dict[str, list[ManifestRow]] = {"train": [], "val": [], "test": []}
    for r in rows:
        splits[r.split or "train"].append(r)
    return splits


def training_microns(model: ATSModel, rows: Sequence[ManifestRow], opener: Callable[..., Slide] = open_slide) -> dict[str, float]:
    """The microns per pixel the model reads at: the recipe's, else its downsamples at the training slides' resolution.

    With mixed resolutions (20x and 40x scans) the median sets the scale and every slide is
    then read at those microns. Slides without a resolution (none in the file nor the
    manifest) leave a downsample model as it is when no training slide has one, and are an
    error when others have one. Opening every slide here also finds every unreadable one
    before the first step. ``opener`` is `open_slide` with the run's options for URLs.
    """
    mpps: dict[str, float | None] = {}
    errors = []
    for r in rows:
        try:
            with opener(r.path, mpp=r.mpp) as slide:
                mpps[r.slide_id] = slide.mpp
        except (OSError, ValueError) as err:
            errors.append(f"{r.slide_id} ({r.path}): {err}")
    if errors:
        raise ValueError(f"{len(errors)} training slide(s) cannot be read; fix or remove them:\n  " + "\n  ".join(errors))
    known = [v for v in mpps.values() if v is not None]
    if not known:
        return dict(model.microns)
    unknown = [sid for sid, v in mpps.items() if v is None]
    if unknown:
        raise ValueError(
            f"training slides without a resolution while others state one: {', '.join(unknown)}; "
            "give their level-0 micrometres per pixel in the manifest's mpp column"
        )
    reference = float(np.median(known))
    scales = {"low": model.low.downsample, "high": model.high.downsample, "tissue": model.tissue.downsample}
    return {**{k: d * reference for k, d in scales.items() if d is not None}, **model.microns}


# -- internals -----------------------------------------------------------------------------------


def _train_epoch(
    model: ATSModel,
    optimizer: torch.optim.Optimizer,
    rows: Sequence[ManifestRow],
    cache: TrainingCache,
    cfg: TrainConfig,
    seed: int,
    epoch: int,
    epochs: int,
    progress: bool,
    step_seconds: list[float],
) -> dict[str, float]:
    device = model.device
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(_derive(seed, epoch, 0))).tolist()
    generator = torch.Generator(device=device).manual_seed(_derive(seed, epoch, 1))
    index = {c: i for i, c in enumerate(model.class_names)}
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses, correct = [], []
    bar = progress_bar(order, enabled=progress, desc=f"epoch {epoch + 1}/{epochs}", unit="slide", leave=False)
    for i, k in enumerate(bar):
        row = rows[k]
        _, plan, windows = cache[row.slide_id]
        start = time.perf_counter()
        target = torch.tensor([index[row.label]], device=device)
        with autocast(device, cfg.amp):
            out = forward_slide(model, plan, windows, generator=generator)
        logits = out.logits
        loss = F.cross_entropy(logits.float(), target) + model.regularizer(out.attention)
        (loss / cfg.batch_size).backward()
        if (i + 1) % cfg.batch_size == 0 or i + 1 == len(order):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        correct.append(int(logits.argmax(dim=1)) == index[row.label])
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{np.mean(correct):.2f}")
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(correct))}


def _open_errors(splits: Mapping[str, Sequence[ManifestRow]], opener: Callable[..., Slide]) -> dict[str, str]:
    """Slide id -> why it cannot be opened, for every slide of every split (all found before any training)."""
    errors = {}
    for row in (r for part in splits.values() for r in part):
        try:
            with opener(row.path, mpp=row.mpp):
                pass
        except Exception as err:  # noqa: BLE001 - any failure makes the slide unusable; all are listed
            errors[row.slide_id] = _one_line(err)
    return errors


def _read_training_slides(
    model: ATSModel,
    rows: Sequence[ManifestRow],
    cache: TrainingCache,
    resampled_cache: str | Path | None,
    progress: bool,
    opener: Callable[..., Slide],
) -> dict[str, str]:
    """Plan every training slide and read its tissue windows into ``cache`` (once for the run); slide id -> error for the rest."""
    errors = {}
    for row in progress_bar(rows, enabled=progress, desc="reading training slides", unit="slide", leave=False):
        slide = None
        try:
            slide = opener(row.path, mpp=row.mpp)
            plan = plan_slide(model, slide, cache=resampled_cache)
            cache[row.slide_id] = (slide, plan, list(read_windows(plan)))
        except Exception as err:  # noqa: BLE001 - a slide that opens but cannot be read: listed like the others
            errors[row.slide_id] = _one_line(err)
            if slide is not None:
                slide.close()
    return errors


def _drop_unreadable(
    splits: dict[str, list[ManifestRow]], errors: Mapping[str, str], skip: bool, say: Callable[[str], None]
) -> tuple[dict[str, list[ManifestRow]], list[dict[str, str]]]:
    """``splits`` without the slides in ``errors`` and what was dropped; without ``skip``, a ValueError listing them all."""
    bad = [{"slide_id": r.slide_id, "path": r.path, "split": name, "error": errors[r.slide_id]}
           for name, part in splits.items() for r in part if r.slide_id in errors]  # fmt: skip
    if not bad:
        return splits, []
    listing = "\n  ".join(f"{b['slide_id']} ({b['split']}, {b['path']}): {b['error']}" for b in bad)
    if not skip:
        raise ValueError(f"{len(bad)} slide(s) cannot be read; fix or remove them, or pass --skip-unreadable:\n  {listing}")
    say(f"skipping {len(bad)} unreadable slide(s) (listed in metrics.json):\n  {listing}")
    return {name: [r for r in part if r.slide_id not in errors] for name, part in splits.items()}, bad


def _bytes_read(rows: Sequence[ManifestRow]) -> int:
    """Bytes this process has read of the rows' slides so far (from the server, for URLs: `remote.read_stats`)."""
    return sum(read_stats(path).bytes for path in {r.path for r in rows})


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _score(record: Mapping[str, Any]) -> tuple[float, float]:
    """How good an epoch is on the validation slides: higher is better (accuracy, then lower loss; NaN: none judged)."""
    loss = record["val_loss"]
    return record["val_accuracy"], -math.inf if math.isnan(loss) else -loss


def _copy_state(model: ATSModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f} acc {record['accuracy']:.2f}"
    if "val_accuracy" in record:
        line += f" | val loss {record['val_loss']:.3f} acc {record['val_accuracy']:.2f}"
    if "val_patches_on_truth" in record:
        line += f", patches on lesions/mimics {record['val_patches_on_truth']:.0%} (x{record['val_concentration']:.1f} uniform)"
    return line + f" | {record['seconds']:.1f} s"


def _optimizer(model: ATSModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam in three groups: attention net (``attention_lr``), feature net, classifier (``weight_decay``).

    Weight decay on the classifier alone bounds its margin, so the loss, and with it the
    attention's gradient, never vanishes once the training slides are fitted. Decaying the
    feature net too would slow the start, where its gradients are as small as the decay;
    decaying the attention net would only flatten it.
    """
    return torch.optim.Adam(
        [
            {"params": list(model.attention_net.parameters()), "lr": cfg.attention_lr or cfg.lr},
            {"params": list(model.feature_net.parameters())},
            {"params": list(model.classifier.parameters()), "weight_decay": cfg.weight_decay},
        ],
        lr=cfg.lr,
    )


def _derive(seed: int, *keys: int) -> int:
    """A 63-bit seed for one random stream of the run (numpy's SeedSequence mixes the keys)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _run_identity(cfg: PipelineConfig, seed: int, splits: dict[str, list[ManifestRow]]) -> dict[str, Any]:
    """What a resumed run must share with the one that wrote ``last.pt`` (the epoch count may grow)."""
    recipe = cfg.to_dict()
    recipe["train"].pop("epochs", None)
    return {"recipe": recipe, "seed": seed, "train_slides": [r.slide_id for r in splits["train"]]}


def _resume(
    path: Path, model: ATSModel, optimizer: torch.optim.Optimizer, identity: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Load ``last.pt`` when it exists; returns the history of the epochs already done and the best one so far (or None)."""
    if not path.exists():
        return [], None
    payload = read_checkpoint(path)
    meta = payload.get("metadata") or {}
    if {k: meta.get(k) for k in identity} != identity:
        raise RunFolderError(f"{path}: belongs to a different run (recipe, seed or training slides differ); use a new output folder")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["training"]["optimizer"])
    return list(payload["training"]["history"]), payload["training"].get("best")
