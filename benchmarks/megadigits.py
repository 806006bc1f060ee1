"""megadigits benchmark: the ATS paper's megaNIST experiment, scaled to 2 CPU cores.

Trains attention sampling (with the attention's ink prior, and with the paper's plain
attention net) and two dense CNNs (low-resolution view only; full-resolution canvas) the
same way, then reports test error and the per-sample cost of a training step
(forward + backward: wall time, and the activation memory autograd saves), plus that cost
at larger canvases up to the paper's 1500^2 (untrained models: cost does not depend on
the weights). Claim under test: ATS matches the full-resolution model's error with an order
of magnitude less time and memory.

    python benchmarks/megadigits.py [--quick] [--config pipelines/megadigits.toml] [--out FILE.json] [--threads N]

Writes ``benchmarks/results/megadigits.json`` and ``.png`` beside it (``--quick``:
``benchmarks/results/tmp/megadigits-quick.*``, so a smoke run never overwrites the real
figures) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from harness import (
    CACHE,
    RESULTS,
    ROOT,
    figure,
    machine_info,
    machine_line,
    save_figure,
    summary_row,
    write_json,
)

from experiments.megadigits.cost import cost_at_canvas
from experiments.megadigits.nets import MODELS
from experiments.megadigits.recipe import Recipe, load_recipe
from experiments.megadigits.run import run_experiment

LABELS = {"ats": "ATS", "ats_plain": "ATS, plain attention", "low": "CNN low-res", "full": "CNN full-res"}
COLOURS = {"ats": "tab:green", "ats_plain": "tab:olive", "low": "tab:grey", "full": "tab:blue"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megadigits", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s): a smoke test")
    parser.add_argument("--config", type=Path, default=ROOT / "pipelines" / "megadigits.toml")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/megadigits.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    args = parser.parse_args(argv)
    out = args.out or (CACHE / "megadigits-quick.json" if args.quick else RESULTS / "megadigits.json")

    recipe = load_recipe(args.config, quick=args.quick)
    threads = args.threads or recipe.experiment.threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the bench runner calls main in its own process: leave its thread count as found
        report = _measure(recipe, quick=args.quick, config=args.config)
    finally:
        torch.set_num_threads(before)
    report["summary"] = summary(report)
    write_json(out, report)
    _plot(report, out.with_suffix(".png"))
    print(markdown(report))
    print(f"\nwritten: {out}, {out.with_suffix('.png')}")
    return 0


def _measure(recipe: Recipe, *, quick: bool, config: Path) -> dict[str, Any]:
    """Train and test every model, then time them at each canvas size: the report's body."""
    started, info = time.perf_counter(), machine_info()  # the load average before the run
    results = run_experiment(recipe, log=lambda line: print(line, flush=True))
    scaling = {
        str(canvas): {name: cost_at_canvas(name, canvas, recipe) for name in ("ats", "full")} for canvas in recipe.experiment.cost_canvases
    }
    return {
        "benchmark": "megadigits",
        "mode": "quick" if quick else "default",
        "config": str(config),
        "seed": recipe.experiment.seed,
        "recipe": recipe.to_dict(),
        "machine": {**info, "torch_threads": torch.get_num_threads(),
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "wall_seconds": time.perf_counter() - started,
        "models": results["models"],
        "data_seconds": results["data_seconds"],
        "cost_vs_canvas": scaling,
    }  # fmt: skip


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows for the results README: errors, and full-res over ATS cost at the largest canvas."""
    models = report["models"]
    canvas = max(report["cost_vs_canvas"], key=int)
    ats, full = report["cost_vs_canvas"][canvas]["ats"], report["cost_vs_canvas"][canvas]["full"]
    draws = report["recipe"]["train"].get("eval_draws", 1)
    rows = [
        summary_row(f"test error: ATS ({draws} draws averaged) / CNN full-res / CNN low-res / ATS with plain attention",
                    " / ".join(f"{models[name]['test_error']:.3f}" for name in ("ats", "full", "low", "ats_plain")),
                    "ATS <= full-res + 0.02", models["ats"]["test_error"] <= models["full"]["test_error"] + 0.02),
    ]  # fmt: skip
    by_draws = models["ats"].get("test_error_by_draws", {})
    if len(by_draws) > 1:
        rows.append(summary_row(f"ATS test error by test-time draws of n patches ({' / '.join(by_draws)})",
                                " / ".join(f"{error:.3f}" for error in by_draws.values())))  # fmt: skip
    return rows + [
        summary_row(f"full-res / ATS time per sample, {canvas}^2 canvas (wall; CPU)",
                    f"{full['seconds'] / ats['seconds']:.1f}x; {full['cpu_seconds'] / ats['cpu_seconds']:.1f}x",
                    ">= 10x", full["seconds"] / ats["seconds"] >= 10),
        summary_row(f"full-res / ATS activation memory per sample, {canvas}^2 canvas",
                    f"{full['activation_mib'] / ats['activation_mib']:.1f}x", ">= 10x",
                    full["activation_mib"] / ats["activation_mib"] >= 10),
    ]  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table (one row per model), then the cost-vs-canvas table."""
    lines = [
        (
            "| model | test error | train error | ms / sample (fwd+bwd) | CPU ms / sample "
            "| activation MiB / sample | pixels read / sample | epochs | training s |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        row = report["models"][name]
        lines.append(
            f"| {LABELS[name]} | {_error(row, 'test')} | {_error(row, 'train')} "
            f"| {1000 * row['seconds_per_sample']:.2f} | {1000 * row['cpu_seconds_per_sample']:.2f} "
            f"| {row['activation_mib_per_sample']:.2f} "
            f"| {row['pixels_per_sample']:,} | {row['epochs']} | {row['train_seconds']:.0f} |"
        )
    lines += [
        "",
        ("| canvas | ATS ms | full ms | ATS MiB | full MiB | time ratio (wall) | time ratio (CPU) | memory ratio |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for canvas, costs in report["cost_vs_canvas"].items():
        ats, full = costs["ats"], costs["full"]
        lines.append(
            f"| {canvas}^2 | {1000 * ats['seconds']:.2f} | {1000 * full['seconds']:.2f} "
            f"| {ats['activation_mib']:.2f} | {full['activation_mib']:.2f} "
            f"| {full['seconds'] / ats['seconds']:.1f}x | {full['cpu_seconds'] / ats['cpu_seconds']:.1f}x "
            f"| {full['activation_mib'] / ats['activation_mib']:.1f}x |"
        )
    return "\n".join(lines)


def _error(row: dict[str, Any], split: str) -> str:
    """``0.083`` or, where draws were averaged, ``0.083 (draws 1: 0.193, 4: 0.101, 16: 0.083)``."""
    by_draws = row.get(f"{split}_error_by_draws", {})
    detail = ", ".join(f"{draws}: {error:.3f}" for draws, error in by_draws.items())
    return f"{row[f'{split}_error']:.3f}" + (f" (draws {detail})" if len(by_draws) > 1 else "")


def _plot(report: dict[str, Any], path: Path) -> None:
    names = list(MODELS)
    rows = [report["models"][name] for name in names]
    panels = [
        ("test error", [r["test_error"] for r in rows]),
        ("ms / sample (train step)", [1000 * r["seconds_per_sample"] for r in rows]),
        ("activation MiB / sample", [r["activation_mib_per_sample"] for r in rows]),
    ]
    fig, axes = figure(4, width=4.2, height=3.8)
    for ax, (title, values) in zip(axes, panels):
        ax.bar([LABELS[n] for n in names], values, color=[COLOURS[n] for n in names])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=25)
    canvases = [int(c) for c in report["cost_vs_canvas"]]
    for name in ("ats", "full"):
        seconds = [1000 * report["cost_vs_canvas"][str(c)][name]["seconds"] for c in canvases]
        axes[3].plot(canvases, seconds, "o-", color=COLOURS[name], label=LABELS[name])
    axes[3].set(title="ms / sample vs canvas edge", xlabel="canvas edge (px)", yscale="log")
    axes[3].legend()
    recipe = report["recipe"]
    epochs = ", ".join(f"{LABELS[name]} {row['epochs']}" for name, row in report["models"].items())
    fig.suptitle(
        f"megadigits ({report['mode']}): {recipe['dataset']['canvas']}^2 canvas, "
        f"{recipe['experiment']['n_train']} train / {recipe['experiment']['n_test']} test, epochs {epochs}, "
        f"seed {report['seed']}; {machine_line(report['machine'])}, torch threads {report['machine']['torch_threads']}",
        fontsize=9,
    )
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
