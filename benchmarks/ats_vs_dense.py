"""ATS against dense tiling on the same synthetic slides with the same feature network.

    python benchmarks/ats_vs_dense.py [--quick] [--out FILE.json] [--cohort 16] [--train-size 8192]
                                      [--sizes 10000 20000 40000] [--epochs E] [--seed 0]

Both methods share the recipe's (``pipelines/synthetic_wsi.toml``) tissue mask, high level,
patch size and feature network (the registry's, by name):

- **ATS**: the recipe's `ATSModel`, trained with `wsi_ats.train.train` for the recipe's epochs
  on the ``train`` split of a synthetic cohort (`wsi_ats.synth.make_cohort`); inference is
  `ATSModel.predict_slide` (attention over the low level, ``n`` patches at the high level).
- **dense**: features of *every* tissue tile of the high level (tiles of the patch size, on
  the same tissue mask), pooled by CLAM-style gated attention (`GatedAttentionMIL`), then a
  linear classifier. As in CLAM the feature network is frozen and features are computed once:
  it is the trained ATS model's (same network, same weights), so the two differ only in what
  they look at; the small pooling head is trained on the same training slides until its
  training loss converges (below 0.01, or no better for 20 epochs).

Why this shape on two CPU cores in ten minutes: training happens on a small cohort of small
slides (``--train-size``, same generator, so same distribution) and accuracy is measured on
its held-out slides (``val`` + ``test`` splits, never trained on); time per slide, patches or
tiles processed and peak RSS are measured on one positive slide per size in ``--sizes``
(tissue area grows with the area), each method in a fresh process (`run_child`) for a clean
peak RSS, the best of ``--repeats`` timed predictions (the least disturbed by other processes:
on a shared machine torch's threads lose far more than their share). Slides and the cohort are cached in ``benchmarks/results/tmp/``.

Writes ``benchmarks/results/ats_vs_dense.json`` and ``.png`` (``--quick``: tiny sizes, one
epoch, under ``benchmarks/results/tmp/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from wsi_ats.benchmarking import (  # noqa: E402
    CACHE,
    RESULTS,
    cached_cohort,
    cached_slide,
    figure,
    machine_info,
    machine_line,
    markdown_table,
    peak_rss_mib,
    rss_mib,
    run_child,
    save_figure,
    summary_row,
    warm_up_slide,
    write_json,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: ATS at the largest size must be this many times faster per slide than dense, within this much accuracy.
TARGET_SPEEDUP, TARGET_ACCURACY_GAP = 20.0, 0.01
#: Patches per feature-net batch in the dense pass (bounds activation memory).
DENSE_BATCH = 256
#: Pooling-head training: Adam, one slide per step; converged when the mean training loss is below
#: HEAD_CONVERGED (every training slide fitted), or after PATIENCE epochs without a better one.
HEAD_LR, HEAD_CONVERGED, HEAD_PATIENCE = 1e-3, 0.01, 20


class GatedAttentionMIL(nn.Module):
    """CLAM-style gated attention pooling (Ilse et al. 2018; Lu et al. 2021) and a linear classifier.

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
        """``[N, D]`` features of one slide's tiles -> ``[1, C]`` class logits."""
        h = self.embed(features)
        a = torch.softmax(self.score(self.tanh_branch(h) * self.gate_branch(h))[:, 0], dim=0)
        return self.classifier((a[:, None] * h).sum(dim=0, keepdim=True))


# -- dense tiling ------------------------------------------------------------------------------------


def tissue_tiles(model, slide) -> tuple[int, np.ndarray]:
    """The high level and the ``(rows, cols)`` grid of its patch-sized tiles whose centre is tissue.

    The same tissue mask, high level and patch size as ``model`` (an `ATSModel`).
    """
    from wsi_ats.tissue import tissue_mask

    level = model.high.resolve(slide)
    lv, size = slide.levels[level], model.patch_size
    rows, cols = lv.shape[0] // size, lv.shape[1] // size
    if not model.tissue.enabled:
        return level, np.ones((rows, cols), bool)
    mask = tissue_mask(slide, downsample=model.tissue.downsample, min_saturation=model.tissue.min_saturation)

    def centres(count: int) -> np.ndarray:
        return (np.arange(count) + 0.5) * size * lv.downsample

    return level, mask.at(centres(rows), centres(cols))


@torch.no_grad()
def dense_features(model, slide) -> torch.Tensor:
    """Features ``[N, D]`` of every tissue tile of ``slide`` (`tissue_tiles`), through ``model.features``.

    The high level is read in blocks of whole tiles (256 px where the patch size divides it:
    the readers' tile), the next block while the network runs on this one; blocks without
    tissue are never read.
    """
    from wsi_ats.device import autocast
    from wsi_ats.prefetch import Prefetcher

    level, tiles = tissue_tiles(model, slide)
    size = model.patch_size
    per = max(1, 256 // size)  # tiles per block side
    blocks = [
        (by, bx)
        for by in range(math.ceil(tiles.shape[0] / per))
        for bx in range(math.ceil(tiles.shape[1] / per))
        if tiles[by * per : (by + 1) * per, bx * per : (bx + 1) * per].any()
    ]

    def read(block: tuple[int, int]) -> np.ndarray:
        by, bx = block
        keep = tiles[by * per : (by + 1) * per, bx * per : (bx + 1) * per]
        h, w = keep.shape
        image = slide.read_region(level, (by * per * size, bx * per * size), (h * size, w * size))
        return image.reshape(h, size, w, size, 3).transpose(0, 2, 1, 3, 4)[keep]

    out, pending = [], []
    with Prefetcher(blocks, read) as reads, autocast(model.device):
        for _, patches in reads:
            pending.append(patches)
            if sum(len(p) for p in pending) >= DENSE_BATCH:
                out.append(model.features(np.concatenate(pending)).float())
                pending = []
    if pending:
        out.append(model.features(np.concatenate(pending)).float())
    return torch.cat(out) if out else torch.zeros((0, model.feature_net.out_features), device=model.device)


def train_head(
    bags: list[tuple[torch.Tensor, int]], in_features: int, num_classes: int, seed: int, max_epochs: int
) -> tuple[GatedAttentionMIL, dict[str, Any]]:
    """Train the pooling head on precomputed ``(features, class index)`` bags until its training loss converges."""
    torch.manual_seed(seed)
    head = GatedAttentionMIL(in_features, num_classes)
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
    return head.eval(), {"epochs": len(losses), "final_train_loss": round(losses[-1], 5), "stopped": stopped}


@torch.no_grad()
def dense_predict(model, head: GatedAttentionMIL, slide) -> tuple[np.ndarray, int]:
    """Class probabilities of one slide by dense tiling, and the number of tiles it processed."""
    features = dense_features(model, slide)
    return torch.softmax(head(features.cpu()), dim=-1)[0].numpy(), len(features)


# -- measurement in a fresh process --------------------------------------------------------------------


def _child(method: str, slide_path: Path, run_dir: Path, repeats: int, seed: int) -> dict[str, Any]:
    """Runs in a fresh process: load the trained model(s), time ``repeats`` predictions of one slide, peak RSS."""
    from wsi_ats.checkpoint import load_checkpoint
    from wsi_ats.device import autocast
    from wsi_ats.readers import open_slide

    model = load_checkpoint(run_dir / "ats.pt")
    head = None
    if method == "dense":
        state = torch.load(run_dir / "dense_head.pt", weights_only=True)
        head = GatedAttentionMIL(model.feature_net.out_features, len(model.class_names))
        head.load_state_dict(state)
        head.eval()
    with warnings.catch_warnings():  # first-call costs are not the slide's
        warnings.simplefilter("ignore")
        if head is None:
            model.predict_slide(warm_up_slide())
        else:
            dense_predict(model, head, warm_up_slide())
    baseline = rss_mib()
    seconds, cpu_seconds, processed = [], [], 0
    with open_slide(slide_path) as slide:
        for r in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            if head is None:
                result = model.predict_slide(slide, seed=seed + r)
                probabilities, processed = result.probabilities, result.patches_fetched
            else:
                probabilities, processed = dense_predict(model, head, slide)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
        extra = {}
        if head is None:  # where ATS's time goes, once more apart: the plan, the attention pass over every tissue cell
            start = time.perf_counter()
            plan = model.plan(slide)
            middle = time.perf_counter()
            with autocast(model.device):
                model.logits_tiled(slide, plan)
            extra = {
                "attention_cells": len(plan.cells), "low_level_shape": list(plan.grid.low_shape),
                "plan_seconds": round(middle - start, 4), "attention_pass_seconds": round(time.perf_counter() - middle, 4),
            }  # fmt: skip
    return {
        "method": method,
        "seconds": [round(s, 4) for s in seconds],
        "seconds_best": round(min(seconds), 4),
        "cpu_seconds_best": round(min(cpu_seconds), 4),
        "patches": int(processed),
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
        "positive_probability": round(float(probabilities[list(model.class_names).index("positive")]), 4)
        if "positive" in model.class_names
        else None,
        **extra,
    }


# -- the benchmark -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from wsi_ats.checkpoint import load_checkpoint
    from wsi_ats.manifest import read_manifest
    from wsi_ats.models import load_config
    from wsi_ats.readers import open_slide
    from wsi_ats.train import evaluate, train

    info, started = machine_info(), time.perf_counter()  # before any work: the load average is the other processes'
    cfg = load_config(args.config)
    rows = read_manifest(cached_cohort(args.cohort, args.train_size, seed=args.seed))
    train_rows = [r for r in rows if r.split == "train"]
    held_out = [r for r in rows if r.split != "train"]
    slides = {size: cached_slide(size, seed=args.seed) for size in args.sizes}

    with tempfile.TemporaryDirectory(dir=CACHE, prefix="ats-vs-dense-") as tmp:
        run_dir = Path(tmp)
        start = time.perf_counter()
        metrics = train(train_rows, cfg, run_dir / "ats", seed=args.seed, epochs=args.epochs, progress=False)
        ats_train_s = time.perf_counter() - start
        (run_dir / "ats" / "model.pt").rename(run_dir / "ats.pt")
        model = load_checkpoint(run_dir / "ats.pt")
        index = {c: i for i, c in enumerate(model.class_names)}

        start = time.perf_counter()
        bags = []
        for row in train_rows:
            with open_slide(row.path) as slide:
                bags.append((dense_features(model, slide).cpu(), index[row.label]))
        features_s = time.perf_counter() - start
        head, head_log = train_head(bags, model.feature_net.out_features, len(index), args.seed, args.head_epochs)
        dense_train_s = time.perf_counter() - start
        torch.save(head.state_dict(), run_dir / "dense_head.pt")

        ats_eval = evaluate(model, held_out, seed=args.seed, draws=cfg.train.eval_draws, topk=cfg.train.eval_topk)
        dense_correct = []
        for row in held_out:
            with open_slide(row.path) as slide:
                probabilities, _ = dense_predict(model, head, slide)
            dense_correct.append(model.class_names[int(np.argmax(probabilities))] == row.label)

        sweep = []
        for size, path in slides.items():
            with open_slide(path) as slide:
                shape = slide.levels[0].shape
            measured = {
                method: run_child(__file__, ["--child", method, path, "--run", run_dir, "--repeats", args.repeats, "--seed", args.seed])
                for method in ("ats", "dense")
            }
            sweep.append({
                "size": size, "shape": list(shape), "megapixels": round(shape[0] * shape[1] / 1e6, 1),
                "ats": measured["ats"], "dense": measured["dense"],
                "speedup": round(measured["dense"]["seconds_best"] / measured["ats"]["seconds_best"], 2),
                "cpu_speedup": round(measured["dense"]["cpu_seconds_best"] / measured["ats"]["cpu_seconds_best"], 2),
                "rss_ratio_dense_over_ats": round(measured["dense"]["peak_rss_mib"] / measured["ats"]["peak_rss_mib"], 2),
            })  # fmt: skip

    accuracy = {"ats": round(float(ats_eval["accuracy"]), 4), "dense": round(float(np.mean(dense_correct)), 4)}
    speedups = [s["speedup"] for s in sweep]
    met = {
        "speedup": speedups[-1] >= TARGET_SPEEDUP,
        "accuracy": accuracy["dense"] - accuracy["ats"] <= TARGET_ACCURACY_GAP,
        "speedup_grows": all(b > a for a, b in zip(speedups, speedups[1:])),
    }
    largest = sweep[-1]
    summary = [
        summary_row(f"dense / ATS seconds per slide at {largest['shape'][0]}^2", f"{speedups[-1]:.1f}x "
                    f"({largest['dense']['seconds_best']:.1f} s / {largest['ats']['seconds_best']:.1f} s)",
                    f">= {TARGET_SPEEDUP:.0f}x", met["speedup"]),
        summary_row("dense / ATS speed-up by slide side", " -> ".join(f"{s['size']}: {s['speedup']:.1f}x" for s in sweep),
                    "grows with size", met["speedup_grows"]),
        summary_row("the same in CPU seconds (all threads; less sensitive to other load)",
                    " -> ".join(f"{s['size']}: {s['cpu_speedup']:.1f}x" for s in sweep)),
        summary_row(f"held-out accuracy, ATS vs dense ({len(held_out)} slides of {args.train_size}^2)",
                    f"{accuracy['ats']:.3f} vs {accuracy['dense']:.3f}", f"ATS >= dense - {TARGET_ACCURACY_GAP}", met["accuracy"]),
        summary_row(f"patches per slide at {largest['shape'][0]}^2, ATS vs dense",
                    f"{largest['ats']['patches']} vs {largest['dense']['patches']}"),
        summary_row(f"peak RSS MiB at {largest['shape'][0]}^2, ATS vs dense",
                    f"{largest['ats']['peak_rss_mib']:.0f} vs {largest['dense']['peak_rss_mib']:.0f}"),
    ]  # fmt: skip
    return {
        "benchmark": "ats_vs_dense",
        "machine": info,
        "seed": args.seed,
        "recipe": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "setup": {
            "cohort": {"slides": len(rows), "size": args.train_size, "train": len(train_rows), "held_out": len(held_out)},
            "accuracy_on": f"{len(held_out)} held-out {args.train_size}^2 slides (val + test splits of the cohort)",
            "timing_on": "one positive synthetic slide per size (wsi_ats.synth, JPEG TIFF), each method in a fresh process",
            "ats": f"ATSModel from the recipe, trained {len(metrics['epochs'])} epochs (the recipe's budget), n = {model.n_patches}",
            "dense": "every tissue tile of the high level through the trained ATS feature net (frozen), "
                     f"CLAM-style gated-attention pooling head trained until its training loss converged: {head_log['epochs']} "
                     f"epochs (stopped by {head_log['stopped']})",
            "patch_size": model.patch_size,
            "repeats": f"{args.repeats} timed predictions per slide and method, the best kept (the least disturbed by other processes)",
        },  # fmt: skip
        "training": {
            "ats_seconds": round(ats_train_s, 1), "ats_seconds_per_step": metrics.get("seconds_per_step"),
            "ats_last_epoch": metrics["epochs"][-1],
            "dense_feature_seconds": round(features_s, 1), "dense_seconds": round(dense_train_s, 1), "dense_head": head_log,
            "dense_tiles_per_training_slide": round(float(np.mean([len(b[0]) for b in bags])), 1),
        },  # fmt: skip
        "accuracy": accuracy,
        "accuracy_gap": round(accuracy["dense"] - accuracy["ats"], 4),
        "sizes": sweep,
        "target": {"speedup_at_largest_min": TARGET_SPEEDUP, "accuracy_gap_max": TARGET_ACCURACY_GAP, "speedup_grows_with_size": True},
        "meets_target": met,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 1),
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Time, patches processed and peak RSS per slide against slide area, log-log, both methods."""
    fig, (time_ax, patch_ax, rss_ax) = figure(3, width=4.6)
    area = [s["megapixels"] for s in result["sizes"]]
    for method, marker in (("ats", "o"), ("dense", "s")):
        label = "ATS" if method == "ats" else "dense + gated attention"
        time_ax.plot(area, [s[method]["seconds_best"] for s in result["sizes"]], marker=marker, label=label)
        patch_ax.plot(area, [s[method]["patches"] for s in result["sizes"]], marker=marker, label=label)
        rss_ax.plot(area, [s[method]["peak_rss_mib"] for s in result["sizes"]], marker=marker, label=label)
    for s in result["sizes"]:
        time_ax.annotate(f"{s['speedup']:.1f}x", (s["megapixels"], s["dense"]["seconds_best"]), textcoords="offset points", xytext=(-8, 6), fontsize=8)
    for ax, title in ((time_ax, "seconds per slide"), (patch_ax, "patches / tiles through the feature net"), (rss_ax, "peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("linear" if ax is rss_ax else "log")
        ax.set_xlabel("slide area (megapixels, level 0)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ATS vs dense tiling -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [f"{s['shape'][0]}x{s['shape'][1]}", f"{s['ats']['seconds_best']:.2f}", f"{s['dense']['seconds_best']:.2f}",
         f"{s['speedup']:.1f}x", s["ats"]["patches"], s["ats"].get("attention_cells", ""), s["dense"]["patches"],
         f"{s['ats']['peak_rss_mib']:.0f}", f"{s['dense']['peak_rss_mib']:.0f}"]
        for s in result["sizes"]
    ]  # fmt: skip
    table = markdown_table(
        ["slide", "ATS s", "dense s", "dense / ATS", "ATS patches", "ATS attention cells", "dense tiles", "ATS peak RSS MiB", "dense peak RSS MiB"], rows
    )
    acc, setup = result["accuracy"], result["setup"]
    return (
        f"{table}\n\naccuracy on {setup['accuracy_on']}: ATS {acc['ats']:.3f}, dense {acc['dense']:.3f}\n"
        f"targets met: {result['meets_target']}\n{machine_line(result['machine'])}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny cohort and slides, one epoch (a smoke run)")
    p.add_argument("--cohort", type=int, default=None, help="slides in the cohort: 8 train, 8 held out (default 16)")
    p.add_argument("--train-size", type=int, default=None, help="side of the cohort's slides (default 8192)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="slide sides timed (default 10000 20000 40000)")
    p.add_argument("--epochs", type=int, default=None, help="ATS epochs (default: the recipe's)")
    p.add_argument("--repeats", type=int, default=None, help="predictions timed per slide and method, best kept (default 3)")
    p.add_argument("--head-epochs", type=int, default=None, help="most epochs of the dense pooling head (default 300)")
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/ats_vs_dense.json)")
    p.add_argument("--child", choices=("ats", "dense"), default=None, help=argparse.SUPPRESS)
    p.add_argument("slide", nargs="?", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import json

        print(json.dumps(_child(args.child, args.slide, args.run, args.repeats, args.seed)))
        return 0
    quick = args.quick
    args.cohort = args.cohort or (4 if quick else 16)
    args.train_size = args.train_size or (2048 if quick else 8192)
    args.sizes = args.sizes or ([1024, 2048] if quick else [10000, 20000, 40000])
    args.epochs = args.epochs or (1 if quick else None)
    args.repeats = args.repeats or (1 if quick else 3)
    args.head_epochs = args.head_epochs or (10 if quick else 300)
    args.config = args.config.resolve()
    out = args.out or (CACHE / "ats_vs_dense-quick.json" if quick else RESULTS / "ats_vs_dense.json")
    CACHE.mkdir(parents=True, exist_ok=True)
    result = run(args)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
