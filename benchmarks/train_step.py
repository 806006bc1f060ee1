"""Training-step time and memory for the same ``n``: a slide, its tissue on a 4x-area slide, and 4x the tissue.

    python benchmarks/train_step.py [--quick] [--size 8192] [--steps 10] [--rounds 3] [--config pipelines/synthetic_wsi.toml] [--threads T]

Three synthetic OME-Zarr slides (cached under ``benchmarks/results/tmp/``):

* ``base``: `wsi_ats.synth.make_slide`, ``size`` px per side;
* ``same tissue, 4x area``: ``2 * size`` per side holding exactly the base slide's pixels in a
  window, every other chunk blank (`harness.sparse_copy`);
* ``4x tissue``: `make_slide` at ``2 * size`` per side, about four times the tissue.

For each, in ``--rounds`` fresh processes (`run_child`; the slides take turns, so a change in
the machine's load hits all alike) that each build the recipe's model (seeded), plan the slide
and cache the low-level windows of its tissue tiles (as `wsi_ats.train` does), then time
``--steps`` full training steps (attention net on the cached windows, softmax, sampling,
`fetch_patches`, features, backward, Adam) after two warm-up steps, and apart the attention
part alone (window logits, softmax, backward). Reports medians over all rounds' steps, the
peak RSS and the tissue cells per slide, and the ratios to the base slide: the same tissue on
a 4x-area slide must cost about the same (`TARGET_TIME_RATIO`, `TARGET_RSS_RATIO`); 4x the
tissue costs more, since the attention pass runs over every tissue cell by construction.
On a shared machine, pass ``--threads 1``: OpenMP threads that wait for a descheduled peer
make two-thread timings several times slower and erratic.
Writes ``benchmarks/results/train_step.json`` and ``.png`` (``--quick``: 2048/4096-px slides,
3 steps, one round, under ``benchmarks/results/tmp/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
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
    run_child,
    save_figure,
    sparse_copy,
    summary_row,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: Same tissue on a 4x-area slide over the base slide: step time (within noise) and peak RSS at most these.
TARGET_TIME_RATIO, TARGET_RSS_RATIO = 1.2, 1.2
#: The slides, in order: key, label.
CASES = (("base", "base"), ("same_tissue", "same tissue, 4x area"), ("more_tissue", "4x tissue, 4x area"))


def measure(path: Path, config: Path, steps: int, threads: int | None = None) -> dict[str, Any]:
    """Runs in a fresh process: time training steps on one slide."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)

    from wsi_ats.engine import forward_slide, plan_slide, read_windows, tissue_logits
    from wsi_ats.models import ATSModel, load_config
    from wsi_ats.readers import open_slide

    cfg = load_config(config)
    torch.manual_seed(0)
    model = ATSModel.from_config(cfg.model, ("negative", "positive")).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    slide = open_slide(path)
    plan = plan_slide(model, slide)
    windows = list(read_windows(plan))
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([1])

    def step() -> None:
        out = forward_slide(model, plan, windows, generator=generator)
        loss = F.cross_entropy(out.logits, target) + model.regularizer(out.attention)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()

    def attention_only() -> None:  # a loss that reaches every tissue cell, as the sampled one does
        model.attention(tissue_logits(model, windows, plan)).square().sum().backward()

    def timed(fn, count: int) -> list[float]:
        out = []
        for _ in range(count):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    timed(step, 2)
    load = os.getloadavg()[0]
    step_s, attention_s = timed(step, steps), timed(attention_only, steps)
    return {
        "slide_shape": list(slide.levels[0].shape),
        "low_level_shape": list(plan.grid.low_shape),
        "tissue_cells": len(plan.cells),
        "tissue_tiles": len(plan.cells.tiles),
        "window_mib": round(sum(w.nbytes for w in windows) / 2**20, 2),
        "n_patches": model.n_patches,
        "patch_size": model.patch_size,
        "step_seconds": [round(t, 4) for t in step_s],
        "attention_seconds": [round(t, 4) for t in attention_s],
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def run(size: int, steps: int, rounds: int, config: Path, threads: int | None = None) -> dict[str, Any]:
    info = machine_info()  # before the runs: the load average is the other processes'
    base = cached_slide(size, fmt="zarr")
    paths = {"base": base, "same_tissue": sparse_copy(base, 2), "more_tissue": cached_slide(2 * size, fmt="zarr")}
    extra = ["--threads", threads] if threads else []
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in CASES}
    for _ in range(rounds):  # interleaved: a change in the machine's load hits every slide alike
        for key, _ in CASES:
            runs[key].append(run_child(__file__, ["--child", paths[key], "--steps", steps, "--config", config, *extra]))
    slides = {key: _merge(r) for key, r in runs.items()}
    a = slides["base"]
    ratios = {
        key: {m: round(slides[key][m] / a[m], 3) for m in ("step_seconds", "attention_seconds", "peak_rss_mib", "tissue_cells")}
        for key in ("same_tissue", "more_tissue")
    }
    same, more = ratios["same_tissue"], ratios["more_tissue"]
    b, c = slides["same_tissue"], slides["more_tissue"]
    time_ok, rss_ok = same["step_seconds"] <= TARGET_TIME_RATIO, same["peak_rss_mib"] <= TARGET_RSS_RATIO
    return {
        "benchmark": "train_step",
        "machine": info,
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "steps": steps,
        "rounds": rounds,
        "setup": {key: str(paths[key].relative_to(ROOT) if paths[key].is_relative_to(ROOT) else paths[key]) for key, _ in CASES},
        "slides": slides,
        "ratios_to_base": ratios,
        "target": {"same_tissue_step_time_ratio_max": TARGET_TIME_RATIO, "same_tissue_peak_rss_ratio_max": TARGET_RSS_RATIO},
        "meets_target": {"step_time": time_ok, "peak_rss": rss_ok},
        "summary": [
            summary_row(
                f"training step, same tissue on a 4x-area slide ({b['slide_shape'][0]}^2 holding the {a['slide_shape'][0]}^2 one), same n",
                f"{same['step_seconds']}x ({b['step_seconds']:.3f} / {a['step_seconds']:.3f} s; attention part "
                f"{same['attention_seconds']}x)",
                f"<= {TARGET_TIME_RATIO}x",
                time_ok,
            ),
            summary_row(
                "peak RSS, same tissue on a 4x-area slide",
                f"{same['peak_rss_mib']}x ({b['peak_rss_mib']:.0f} / {a['peak_rss_mib']:.0f} MiB)",
                f"<= {TARGET_RSS_RATIO}x",
                rss_ok,
            ),
            summary_row(
                f"training step, {more['tissue_cells']}x tissue cells on a 4x-area slide ({c['slide_shape'][0]}^2)",
                f"{more['step_seconds']}x ({c['step_seconds']:.3f} s; attention part {more['attention_seconds']}x, "
                f"peak RSS {more['peak_rss_mib']}x): the attention pass runs over every tissue cell",
            ),
        ],  # fmt: skip
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One slide's rounds: medians over all their timed steps, the highest peak RSS, each round's load average."""
    return {
        **runs[0],
        "step_seconds": round(statistics.median(t for r in runs for t in r["step_seconds"]), 4),
        "attention_seconds": round(statistics.median(t for r in runs for t in r["attention_seconds"]), 4),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "load_average": [r["load_average"] for r in runs],
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Step time (attention part and the rest) and peak RSS per slide."""
    fig, (time_ax, rss_ax) = figure(2)
    slides = [result["slides"][key] for key, _ in CASES]
    names = [f"{label}\n{s['slide_shape'][0]}^2, {s['tissue_cells'] / 1000:.0f}k cells" for (_, label), s in zip(CASES, slides)]
    attention = [s["attention_seconds"] for s in slides]
    time_ax.bar(names, attention, label="attention part (windows, softmax, backward)")
    time_ax.bar(names, [max(s["step_seconds"] - t, 0) for s, t in zip(slides, attention)], bottom=attention, label="rest of the step")
    time_ax.set_ylabel("median seconds per training step")
    same = result["ratios_to_base"]["same_tissue"]
    time_ax.set_title(f"same tissue, 4x area: x{same['step_seconds']:.2f} (target <= {TARGET_TIME_RATIO})", fontsize=10)
    time_ax.set_ylim(top=1.3 * max(s["step_seconds"] for s in slides))  # room for the legend
    time_ax.legend(fontsize=8, loc="upper left")
    rss_ax.bar(names, [s["peak_rss_mib"] for s in slides])
    rss_ax.set_ylabel("peak RSS (MiB)")
    rss_ax.set_title(f"same tissue, 4x area: x{same['peak_rss_mib']:.2f} (target <= {TARGET_RSS_RATIO})", fontsize=10)
    for ax in (time_ax, rss_ax):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"ATS training step, n = {slides[0]['n_patches']} -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for key, label in CASES:
        s = result["slides"][key]
        rows.append([label, f"{s['slide_shape'][0]}x{s['slide_shape'][1]}", f"{s['low_level_shape'][0]}x{s['low_level_shape'][1]}",
                     s["tissue_cells"], f"{s['window_mib']:.2f}", f"{s['step_seconds']:.3f}", f"{s['attention_seconds']:.3f}",
                     f"{s['peak_rss_mib']:.0f}"])  # fmt: skip
    table = markdown_table(["slide", "level 0", "low level", "tissue cells", "windows MiB", "step s", "attention s", "peak RSS MiB"], rows)
    lines = [
        f"- {row['metric']}: {row['value']}" + (f" (target {row['target']}, met: {row['met']})" if row["target"] else "")
        for row in result["summary"]
    ]
    return "\n".join([table, "", *lines, machine_line(result["machine"])])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2048/4096-px slides, 3 steps (a smoke run)")
    p.add_argument("--size", type=int, default=None, help="side of the base slide (default 8192; the others are twice that)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per slide and round (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="fresh processes per slide, run in turn; medians over all steps (default 3)")
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--threads", type=int, default=None, help="torch threads in the measuring process (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/train_step.json)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.config, args.steps, args.threads)))
        return 0
    size = args.size or (2048 if args.quick else 8192)
    steps = args.steps or (3 if args.quick else 10)
    rounds = args.rounds or (1 if args.quick else 3)
    out = args.out or (CACHE / "train_step-quick.json" if args.quick else RESULTS / "train_step.json")
    result = run(size, steps, rounds, args.config.resolve(), args.threads)
    return publish(result, out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
