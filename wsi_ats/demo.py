"""``wsi-ats demo``: the whole job end to end on the built-in synthetic cohort.

synth (small cohort) -> info -> train the shipped recipe ``synthetic_wsi``
(`wsi_ats.recipes`, ``pipelines/synthetic_wsi.toml`` in a checkout) -> batch prediction
over the held-out slides. Steps whose outputs exist are reused, so a second ``make demo``
is quick. Needs no source tree: ``pip install wsi-ats && wsi-ats demo`` works anywhere.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from wsi_ats import recipes
from wsi_ats.manifest import read_manifest

RECIPE = recipes.path("synthetic_wsi")
#: The demo cohort: small enough to synthesise, train and predict in minutes on 2 cores.
#: 12 lesions (or mimics) per 4096-px slide, so that every training slide shows several; the
#: recipe also learns the synth default (3 per 8192-px slide, 0.05% of the tissue), thanks
#: to its attention's stain prior, in about the same time once the larger slides are written.
DEMO_COHORT = {"n": 16, "size": 4096, "formats": ("tiff", "zarr"), "seed": 0, "n_blobs": 12}


def synth_command(out: str | Path) -> list[str]:
    """The ``wsi-ats synth`` command line that writes the demo's cohort into ``out`` (the demo prints it)."""
    c = DEMO_COHORT
    return ["wsi-ats", "synth", str(out), "--n", str(c["n"]), "--size", str(c["size"]), "--format", ",".join(c["formats"]),
            "--seed", str(c["seed"]), "--n-blobs", str(c["n_blobs"])]  # fmt: skip


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: str | Path = "demo-output") -> int:
    """Run every step; returns the exit code of the final batch prediction."""
    from wsi_ats.evaluate import truth_boxes
    from wsi_ats.info import describe, format_description
    from wsi_ats.pipeline import Pipeline
    from wsi_ats.summary import report_labels
    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    out = Path(out)
    cohort, run_dir, pred_dir = out / "cohort", out / "run", out / "predictions"
    t_all = time.perf_counter()

    t = _step(f"1/4 synthetic cohort -> {cohort}")
    print("the same cohort from the command line: " + " ".join(synth_command(cohort)))
    manifest = cohort / "manifest.csv"
    if not manifest.exists():
        manifest = make_cohort(cohort, **DEMO_COHORT)
    rows = read_manifest(manifest)
    print(f"{len(rows)} slides ({time.perf_counter() - t:.1f} s)")

    _step("2/4 wsi-ats info, one slide of each format")
    seen: set[str] = set()
    for row in rows:
        kind = "zarr" if Path(row.path).is_dir() else "tiff"
        if kind not in seen:
            seen.add(kind)
            print(format_description(describe(row.path)))

    t = _step(f"3/4 train {RECIPE.name} -> {run_dir}")
    if not (run_dir / "metrics.json").exists():
        truth = truth_boxes(cohort / "annotations", [r.slide_id for r in rows])
        metrics = train(rows, RECIPE, run_dir, seed=0, truth=truth, resume=True)  # an interrupted demo goes on
    else:
        import json

        metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics.get("test", {})
    print(f"held-out accuracy: {test.get('accuracy', float('nan')):.3f} ({time.perf_counter() - t:.1f} s)")

    t = _step(f"4/4 predict held-out slides -> {pred_dir}")
    held_out = [r for r in rows if r.split == "test"] or rows
    results = Pipeline(run_dir / "model.pt", seed=0).run_many(held_out, pred_dir)
    ok = [r for r in results if r["status"] == "ok"]
    print(f"{len(ok)}/{len(results)} slides ok ({time.perf_counter() - t:.1f} s)")
    report_labels({r.slide_id: r.label for r in held_out}, results, pred_dir)
    with (pred_dir / "predictions.csv").open() as f:
        first = next((r["slide_id"] for r in csv.DictReader(f) if r["status"] == "ok"), None)
    if first:
        print(f"heatmaps: {pred_dir}/<slide_id>/attention.png, e.g. {pred_dir / first / 'attention.png'}")
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s")
    return 0 if len(ok) == len(results) else 1
