"""ATS inference memory and time flat in slide size: the same tissue on a 20k and a 200k slide.

    python benchmarks/flat_memory.py [--quick] [--out FILE.json] [--size 20000] [--factor 10] [--repeats 3] [--seed 0]

The small slide is a synthetic OME-Zarr (`wsi_ats.synth.make_slide`, ``--size`` px per side).
The large one is ``--factor`` times wider and taller, and holds exactly the same pixels: its
arrays copy the small slide's into a chunk-aligned window near the centre and store nothing
else, so every other chunk is absent and reads as the fill value (the synthetic glass). Its
pyramid gets the levels a slide of its size has (`wsi_ats.synth.pyramid.downsamples`: a
1/64 level from 32k px on), the extra ones block means of the copied content. Both are cached
in ``benchmarks/results/tmp/``; the large one costs the small one's disk space.

The recipe's ATS model (``pipelines/synthetic_wsi.toml``, seeded, untrained: weights change
which cells are drawn, not what inference costs) predicts each slide with the same ``n`` in
a fresh process (`run_child`): ``--repeats`` timed predictions after a warm-up on a small
in-memory slide (the best reported: the least disturbed by other processes), the peak RSS,
and, timed apart, the plan (tissue mask and tissue cells over the whole attention grid: the
part that scans the whole slide).

Writes ``benchmarks/results/flat_memory.json`` and ``.png`` (``--quick``: 2048 px and
20480 px, under ``benchmarks/results/tmp/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from harness import (
    CACHE,
    RESULTS,
    ROOT,
    cached_slide,
    figure,
    machine_info,
    machine_line,
    markdown_table,
    peak_rss_mib,
    publish,
    rss_mib,
    run_child,
    save_figure,
    sparse_copy,
    summary_row,
    warm_up_slide,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: Large over small slide: peak RSS and time per slide at most these (issue 10).
TARGET_RSS_RATIO, TARGET_TIME_RATIO = 1.2, 1.5


def _child(path: Path, repeats: int, seed: int, recipe: Path) -> dict[str, Any]:
    """Runs in a fresh process: the recipe's model predicts one slide; time, plan time and peak RSS."""
    import torch

    from wsi_ats.engine import plan_slide, predict_slide
    from wsi_ats.models import ATSModel, load_config
    from wsi_ats.readers import open_slide

    cfg = load_config(recipe)
    torch.manual_seed(seed)
    model = ATSModel.from_config(cfg.model, ("negative", "positive")).eval()
    with warnings.catch_warnings():  # first-call costs are not the slide's
        warnings.simplefilter("ignore")
        predict_slide(model, warm_up_slide(), slide_id="warm-up")
    baseline = rss_mib()
    with open_slide(path) as slide:
        start = time.perf_counter()
        plan = plan_slide(model, slide)
        plan_s = time.perf_counter() - start
        plan_peak = peak_rss_mib()
        seconds, cpu_seconds = [], []
        for r in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            result = predict_slide(model, slide, slide_id="timed", seed=seed + r)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
        shape = slide.levels[0].shape
    return {
        "shape": list(shape),
        "levels": len(slide.levels),
        "low_level_shape": list(plan.grid.low_shape),
        "attention_cells": len(plan.cells),
        "tissue_mask_shape": list(plan.tissue.mask.shape) if plan.tissue is not None else None,
        "patches": result.patches_fetched,
        "seconds": [round(s, 4) for s in seconds],
        "seconds_best": round(min(seconds), 4),
        "cpu_seconds_best": round(min(cpu_seconds), 4),
        "plan_seconds": round(plan_s, 4),
        "baseline_rss_mib": baseline,
        "peak_rss_after_plan_mib": plan_peak,
        "peak_rss_mib": peak_rss_mib(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()  # before any work: the load average is the other processes'
    small = cached_slide(args.size, seed=args.seed, fmt="zarr")
    large = sparse_copy(small, args.factor)
    child = ["--repeats", args.repeats, "--seed", args.seed, "--config", args.config]
    measured = [run_child(__file__, ["--child", path, *child]) for path in (small, large)]
    a, b = measured
    rss_ratio = b["peak_rss_mib"] / a["peak_rss_mib"]
    time_ratio = b["seconds_best"] / a["seconds_best"]
    return {
        "benchmark": "flat_memory",
        "machine": info,
        "seed": args.seed,
        "recipe": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "setup": {
            "small": f"synthetic OME-Zarr {a['shape'][0]}^2 (wsi_ats.synth)",
            "large": f"{b['shape'][0]}^2 OME-Zarr holding the same pixels in a window, every other chunk absent (fill value)",
            "model": "the recipe's ATSModel, seeded, untrained (inference cost does not depend on the weights)",
            "repeats": args.repeats,
        },
        "slides": {"small": a, "large": b},
        "area_ratio": round((b["shape"][0] * b["shape"][1]) / (a["shape"][0] * a["shape"][1]), 1),
        "peak_rss_ratio": round(rss_ratio, 3),
        "work_rss_ratio": round((b["peak_rss_mib"] - b["baseline_rss_mib"]) / max(a["peak_rss_mib"] - a["baseline_rss_mib"], 1.0), 3),
        "time_ratio": round(time_ratio, 3),
        "cpu_time_ratio": round(b["cpu_seconds_best"] / a["cpu_seconds_best"], 3),
        "plan_time_ratio": round(b["plan_seconds"] / max(a["plan_seconds"], 1e-6), 3),
        "target": {"peak_rss_ratio_max": TARGET_RSS_RATIO, "time_ratio_max": TARGET_TIME_RATIO},
        "meets_target": {"peak_rss": rss_ratio <= TARGET_RSS_RATIO, "time": time_ratio <= TARGET_TIME_RATIO},
        "summary": [
            summary_row(
                f"peak RSS {b['shape'][0]}^2 / {a['shape'][0]}^2, same tissue and n",
                f"{rss_ratio:.2f}x ({b['peak_rss_mib']:.0f} / {a['peak_rss_mib']:.0f} MiB)",
                f"<= {TARGET_RSS_RATIO}x",
                rss_ratio <= TARGET_RSS_RATIO,
            ),
            summary_row(
                f"seconds per slide {b['shape'][0]}^2 / {a['shape'][0]}^2",
                f"{time_ratio:.2f}x ({b['seconds_best']:.2f} / {a['seconds_best']:.2f} s; plan "
                f"{b['plan_seconds']:.2f} / {a['plan_seconds']:.2f} s; CPU seconds "
                f"{b['cpu_seconds_best'] / a['cpu_seconds_best']:.2f}x)",
                f"<= {TARGET_TIME_RATIO}x",
                time_ratio <= TARGET_TIME_RATIO,
            ),
        ],  # fmt: skip
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Peak RSS (baseline and work) and time (plan and the rest) per slide, small against large."""
    fig, (rss_ax, time_ax) = figure(2)
    slides = result["slides"]
    names = [f"{s['shape'][0] // 1000}k^2" for s in slides.values()]
    base = [s["baseline_rss_mib"] for s in slides.values()]
    rss_ax.bar(names, base, label="after imports + model")
    rss_ax.bar(names, [s["peak_rss_mib"] - s["baseline_rss_mib"] for s in slides.values()], bottom=base, label="prediction")
    rss_ax.set_ylabel("peak RSS (MiB)")
    rss_ax.set_title(f"peak RSS: x{result['peak_rss_ratio']:.2f} (target <= {TARGET_RSS_RATIO})", fontsize=10)
    plan = [s["plan_seconds"] for s in slides.values()]
    time_ax.bar(names, plan, label="plan (tissue mask, cells)")
    time_ax.bar(names, [max(s["seconds_best"] - p, 0) for s, p in zip(slides.values(), plan)], bottom=plan, label="rest of predict_slide")
    time_ax.set_ylabel("seconds per slide")
    time_ax.set_title(f"time: x{result['time_ratio']:.2f} (target <= {TARGET_TIME_RATIO})", fontsize=10)
    for ax in (rss_ax, time_ax):
        ax.legend(fontsize=8)
    fig.suptitle(f"ATS memory flat in slide size -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [f"{s['shape'][0]}x{s['shape'][1]}", s["levels"], f"{s['low_level_shape'][0]}x{s['low_level_shape'][1]}", s["attention_cells"],
         s["patches"], f"{s['seconds_best']:.2f}", f"{s['plan_seconds']:.2f}", f"{s['baseline_rss_mib']:.0f}",
         f"{s['peak_rss_after_plan_mib']:.0f}", f"{s['peak_rss_mib']:.0f}"]
        for s in result["slides"].values()
    ]  # fmt: skip
    table = markdown_table(
        [
            "slide",
            "levels",
            "low level",
            "attention cells",
            "n",
            "s / slide",
            "plan s",
            "baseline RSS MiB",
            "peak after plan MiB",
            "peak RSS MiB",
        ],
        rows,
    )
    return (
        f"{table}\n\nlarge / small: peak RSS x{result['peak_rss_ratio']} (target <= {TARGET_RSS_RATIO}), "
        f"time x{result['time_ratio']} (target <= {TARGET_TIME_RATIO}); targets met: {result['meets_target']}\n"
        f"{machine_line(result['machine'])}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2048 px against 20480 px, one repeat (a smoke run)")
    p.add_argument("--size", type=int, default=None, help="side of the small slide (default 20000)")
    p.add_argument("--factor", type=int, default=10, help="the large slide is this many times wider and taller")
    p.add_argument("--repeats", type=int, default=None, help="timed predictions per slide, best kept (default 3)")
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/flat_memory.json)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.repeats, args.seed, args.config)))
        return 0
    args.size = args.size or (2048 if args.quick else 20000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.config = args.config.resolve()
    out = args.out or (CACHE / "flat_memory-quick.json" if args.quick else RESULTS / "flat_memory.json")
    CACHE.mkdir(parents=True, exist_ok=True)
    result = run(args)
    return publish(result, out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
