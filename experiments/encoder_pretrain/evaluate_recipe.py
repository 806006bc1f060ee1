"""Held-out accuracy of a frozen-encoder recipe, ATS against dense ABMIL with the same encoder, on the demo cohort.

    python -m experiments.encoder_pretrain.evaluate_recipe [--recipe synthetic_resnet50_frozen] [--out /tmp/recipe-eval]
                                                         [--seed 0] [--without-cache]
                                                         [--fresh 32 [--fresh-size 4096] [--fresh-blobs 12]]

The cohort is `wsi_ats.demo.DEMO_COHORT` (16 slides of 4096^2, seed 0: 8 train, 4 val, 4 test),
written into ``OUT/cohort`` unless already there; the encoder's weights come from
``python -m experiments.encoder_pretrain.pretrain`` (another seed's cohort: never these slides).
Then, as a user would run them:

- **ATS**: ``wsi-ats train`` (`wsi_ats.commands.train_command`) into ``OUT/ats``: accuracy on
  the val and test splits, share of the sampled patches on a lesion or mimic, seconds.
- **dense**: ``wsi-ats dense-features`` (`wsi_ats.dense.dense_command`) into ``OUT/dense``: the
  same frozen encoder on every tissue tile, CLAM's gated ABMIL head on the train split.
- ``--without-cache``: ATS trained again with the embedding cache off, for what the cache buys.
- ``--fresh N``: both trained models also judged on N slides of a fresh cohort (seed 1, the
  demo's otherwise), all held out: 8 held-out slides resolve only 12.5 points of accuracy.
  ``--fresh-size``/``--fresh-blobs`` make it harder (`wsi-ats synth`'s default: 8192^2, 3
  lesions or mimics per slide); each such cohort is recorded under its own name.

A run already in ``OUT`` (its ``metrics.json``, the dense bags) is reused, so options can be
added in a second call. Writes the recipe's entry of ``experiments/encoder_pretrain/results.json`` (other entries kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from wsi_ats import recipes
from wsi_ats.checkpoint import load_checkpoint
from wsi_ats.commands import train_command
from wsi_ats.demo import DEMO_COHORT
from wsi_ats.dense import GatedABMIL, dense_command
from wsi_ats.evaluate import evaluate, truth_boxes
from wsi_ats.manifest import read_manifest
from wsi_ats.models import ats_model, load_config
from wsi_ats.outputs.atomic import atomic_write_text
from wsi_ats.outputs.bags import read_bag
from wsi_ats.synth import make_cohort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results.json"
#: Seed of the ``--fresh`` cohort: neither the recipe's cohort (0) nor the pretraining's (100).
FRESH_SEED = 1


def held_out_accuracy(splits: dict[str, dict[str, Any]]) -> float:
    """Accuracy over the val and test slides together, weighted by their counts."""
    parts = [splits[s] for s in ("val", "test") if s in splits]
    return round(sum(p["accuracy"] * p["slides"] for p in parts) / sum(p["slides"] for p in parts), 4)


def train_ats(manifest: Path, recipe: str, out: Path, seed: int) -> dict[str, Any]:
    """``wsi-ats train`` (unless ``out`` holds its metrics); the metrics it wrote, trimmed to what the record needs."""
    if not (out / "metrics.json").is_file() and train_command(manifest=manifest, config=recipe, out=out, seed=seed) != 0:
        raise SystemExit(f"wsi-ats train failed for {recipe}")
    metrics = json.loads((out / "metrics.json").read_text())
    last, chosen = metrics["epochs"][-1], metrics["epochs"][metrics["model_epoch"] - 1]
    val = {"accuracy": chosen["val_accuracy"], "slides": len(metrics["splits"]["val"])}  # the epoch whose model is tested
    test = {**metrics["test"], "slides": len(metrics["splits"]["test"])}
    first_perfect = next((e["epoch"] for e in metrics["epochs"] if e.get("val_accuracy") == 1.0), None)
    return {
        "held_out_accuracy": held_out_accuracy({"val": val, "test": test}),
        "test": test,
        "last_epoch": last,
        "model_epoch": metrics["model_epoch"],
        "first_epoch_with_val_accuracy_1": first_perfect,
        "train_seconds": metrics["train_seconds"],
        "seconds_per_step": metrics["seconds_per_step"],
    }


def judge_fresh(out: Path, recipe: str, cohort: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    """The trained ATS model (``out/ats/model.pt``) and dense head (``out/dense/abmil.pt``) on a fresh ``cohort``."""
    manifest = out / name / "manifest.csv"
    if not manifest.is_file():
        make_cohort(out / name, **cohort, progress=False)
    rows = read_manifest(manifest)
    model = load_checkpoint(out / "ats" / "model.pt").eval()
    ats = evaluate(model, rows, seed=seed, truth=truth_boxes(manifest.parent / "annotations", [r.slide_id for r in rows]))
    if dense_command(manifest=manifest, config=recipe, out=out / f"dense-{name}", seed=seed, train=False) != 0:
        raise SystemExit(f"wsi-ats dense-features failed on {manifest}")
    saved = torch.load(out / "dense" / "abmil.pt", weights_only=True)
    head = GatedABMIL(saved["in_features"], len(saved["class_names"]))
    head.load_state_dict(saved["state_dict"])
    truths = []  # the head's probability of each slide's true class
    with torch.no_grad():
        for r in rows:
            bag = read_bag(out / f"dense-{name}" / "features" / f"{r.slide_id}.h5")
            probabilities = torch.softmax(head(torch.from_numpy(bag.features)), dim=1)[0]
            truths.append((float(probabilities[saved["class_names"].index(r.label)]), float(probabilities.max())))
    dense = {
        "slides": len(truths),
        "accuracy": round(sum(p == top for p, top in truths) / len(truths), 4),
        "loss": round(-sum(math.log(max(p, 1e-12)) for p, _ in truths) / len(truths), 4),  # as `evaluate` reports ATS's
        "probability_of_truth": [round(min(p for p, _ in truths), 4), round(max(p for p, _ in truths), 4)],
    }
    return {
        "cohort": {**cohort, "formats": list(cohort["formats"])},
        "ats": {k: round(v, 4) if isinstance(v, float) else v for k, v in ats.items()},
        "dense_abmil": dense,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="synthetic_resnet50_frozen", help="a shipped recipe's name or a TOML file")
    p.add_argument("--out", type=Path, default=Path("/tmp/recipe-eval"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--without-cache", action="store_true", help="also train with the embedding cache off")
    p.add_argument("--fresh", type=int, default=0, help="also judge both on this many slides of a fresh cohort (seed 1)")
    p.add_argument("--fresh-size", type=int, default=DEMO_COHORT["size"], help="level-0 edge of the fresh slides")
    p.add_argument("--fresh-blobs", type=int, default=DEMO_COHORT["n_blobs"], help="lesions or mimics per fresh slide")
    args = p.parse_args(argv)
    recipe_file = recipes.resolve(args.recipe)
    features = load_config(recipe_file).model.features
    manifest = args.out / "cohort" / "manifest.csv"
    if not manifest.is_file():
        make_cohort(args.out / "cohort", **DEMO_COHORT, progress=False)

    ats = train_ats(manifest, args.recipe, args.out / "ats", args.seed)
    print(json.dumps({"ats": ats}), flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    reused = (args.out / "dense" / "features").is_dir()  # bags of an earlier call: its time is the one to keep
    start = time.perf_counter()
    if dense_command(manifest=manifest, config=args.recipe, out=args.out / "dense", seed=args.seed) != 0:
        raise SystemExit(f"wsi-ats dense-features failed for {args.recipe}")
    dense = json.loads((args.out / "dense" / "dense_metrics.json").read_text())
    tiles = [len(read_bag(f).features) for f in sorted((args.out / "dense" / "features").glob("*.h5"))]
    dense_record = {
        "held_out_accuracy": held_out_accuracy(dense),
        **{s: dense[s] for s in ("train", "val", "test") if s in dense},
        "head": dense["head"],
        "tiles_per_slide_mean": round(sum(tiles) / len(tiles), 1),
        "encoder": dense["encoder"],
        "seconds": results.get(recipe_file.stem, {}).get("dense_abmil", {}).get("seconds")
        if reused
        else round(time.perf_counter() - start, 1),
    }
    print(json.dumps({"dense": dense_record}), flush=True)
    record: dict[str, Any] = {
        "what": f"{recipe_file.name} on wsi_ats.demo.DEMO_COHORT ({DEMO_COHORT['n']} slides of {DEMO_COHORT['size']}^2, "
        f"seed {DEMO_COHORT['seed']}: 8 train, 4 val, 4 test), seed {args.seed}; dense: wsi-ats dense-features with the "
        f"same recipe (same frozen encoder); python -m experiments.encoder_pretrain.evaluate_recipe; "
        f"{platform.machine()} with {len(os.sched_getaffinity(0))} cores shared with other work, {time.strftime('%d %B %Y')}",
        "encoder": {
            "arch": features.kwargs["arch"],
            "freeze": features.kwargs.get("freeze", False),
            "weights": os.path.relpath(features.kwargs["weights"], ROOT),
            "made_by": f"python -m experiments.encoder_pretrain.pretrain --arch {features.kwargs['arch']} (record: "
            f"{Path(features.kwargs['weights']).with_suffix('.json').name})",
        },
        "ats": ats,
        "dense_abmil": dense_record,
        "accuracy_gap_dense_minus_ats": round(dense_record["held_out_accuracy"] - ats["held_out_accuracy"], 4),
    }
    if args.without_cache:
        ats_model.EMBEDDING_CACHE_ENTRIES = 0  # nothing kept: every draw goes through the encoder
        plain = train_ats(manifest, args.recipe, args.out / "ats-without-cache", args.seed)
        record["ats_without_embedding_cache"] = {k: plain[k] for k in ("train_seconds", "seconds_per_step", "held_out_accuracy")}
    record["fresh_cohorts"] = results.get(recipe_file.stem, {}).get("fresh_cohorts", {})  # earlier calls' kept
    if args.fresh:
        cohort = {**DEMO_COHORT, "n": args.fresh, "seed": FRESH_SEED, "size": args.fresh_size, "n_blobs": args.fresh_blobs}
        name = f"fresh-{args.fresh}x{args.fresh_size}-{args.fresh_blobs}blobs"
        record["fresh_cohorts"][name] = judge_fresh(args.out, args.recipe, cohort, name, args.seed)
        print(json.dumps({name: record["fresh_cohorts"][name]}), flush=True)
    results[recipe_file.stem] = record
    atomic_write_text(RESULTS, json.dumps(results, indent=1) + "\n")
    print(f"recorded: {RESULTS} [{recipe_file.stem!r}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
