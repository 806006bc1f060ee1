"""Peak memory and time of ``wsi-ats predict`` on slides without a pyramid: bounded, or a quick clear error.

    python benchmarks/bad_input_memory.py [--quick] [--out FILE.json] [--seed 0]

Slides with one level only made memory explode (issue 20: 17 GiB on a 28k^2 TIFF, a
``MemoryError`` on a sparse 200k^2 one, no progress on a 10^6 x 10^6 one). Each slide here is a
one-level TIFF, predicted by ``wsi-ats predict`` (the command's own function, one slide,
``--scheduler threads`` so all the work is in one process) in a fresh process (`run_child`),
which reports its peak RSS (``VmHWM``), wall and CPU time, and the row:

- ``28k``: a synthetic 28672^2 slide (`harness.cached_slide`) rewritten with its level 0
  only (`wsi_ats.synth.restore`, JPEG tiles): dense tissue, every tile decoded;
- ``200k``: 200000^2, that synthetic slide's 4096^2 version pasted in the middle and every
  other tile empty (`wsi_ats.synth.sparse`): the engine still streams all 40 gigapixels to
  build the levels the model reads;
- ``1M``: 10^6 x 10^6, empty: over `wsi_ats.engine.plan.MAX_STREAMED_PIXELS`, refused.

The model is the demo recipe's (``pipelines/synthetic_wsi.toml``), seeded and untrained: the
weights change which cells are drawn, not what reading the slide costs. Target (issue 20):
peak RSS under 2 GiB for every slide, or a clear error, quickly. Inputs are cached in
``benchmarks/results/tmp/``. Writes ``benchmarks/results/bad_input_memory.json`` and ``.png``
(``--quick``: 4096^2, 20000^2 and an empty 300000^2 one, under ``benchmarks/results/tmp/``) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    CACHE,
    RESULTS,
    ROOT,
    building,
    cached_slide,
    figure,
    machine_info,
    machine_line,
    markdown_table,
    peak_rss_mib,
    publish,
    run_child,
    save_figure,
    summary_row,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: Issue 20: peak RSS of `wsi-ats predict` under 2 GiB on any input.
TARGET_RSS_MIB = 2048
#: name -> (level-0 edge, how it is made), full and quick runs.
SLIDES = {"28k": (28672, "dense"), "200k": (200_000, "sparse"), "1M": (1_000_000, "empty")}
QUICK = {"4k": (4096, "dense"), "20k": (20_000, "sparse"), "300k": (300_000, "empty")}
#: Edge of the synthetic slide pasted into the sparse one.
PASTED = 4096


def one_level(edge: int, kind: str, seed: int) -> Path:
    """The one-level TIFF of ``edge`` px per side and ``kind`` (see the module), written once into the cache."""
    from wsi_ats.readers import open_slide
    from wsi_ats.synth.restore import restore
    from wsi_ats.synth.sparse import write_sparse_tiff

    path = CACHE / f"one-level-{kind}-{edge}-seed{seed}.tiff"
    if path.exists():
        return path
    print(f"writing {path} (once) ...", file=sys.stderr)
    with building(path) as part:
        if kind == "dense":
            with open_slide(cached_slide(edge, seed=seed)) as slide:
                restore(slide, part, downsamples=(1,))
        elif kind == "sparse":
            with open_slide(cached_slide(PASTED, seed=seed)) as slide:
                image = slide.read_region(0, (0, 0), slide.levels[0].shape)
            write_sparse_tiff(part, (edge, edge), image, ((edge - PASTED) // 2, (edge - PASTED) // 2))
        else:
            write_sparse_tiff(part, (edge, edge), tile=512)
    return path


def model_file(seed: int) -> Path:
    """The recipe's model, seeded and untrained, as a checkpoint (written once)."""
    import torch

    from wsi_ats.checkpoint import save_checkpoint
    from wsi_ats.models import ATSModel, load_config

    path = CACHE / f"bad-input-model-seed{seed}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        model = ATSModel.from_config(load_config(RECIPE).model, ("negative", "positive"))
        with building(path) as part:
            save_checkpoint(part, model)
    return path


def _child(slide: Path, model: Path) -> dict[str, Any]:
    """Runs in a fresh process: ``wsi-ats predict`` on one slide; peak RSS, times and the row."""
    from wsi_ats.commands import predict_command

    with tempfile.TemporaryDirectory(prefix="bad-input-") as out:
        start, cpu = time.perf_counter(), time.process_time()
        code = predict_command(model=str(model), slides=[str(slide)], out=out, scheduler="threads", device="cpu")
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        with open(Path(out) / "predictions.csv", newline="", encoding="utf-8") as f:
            (row,) = csv.DictReader(f)
    return {
        "exit_code": code, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "peak_rss_mb": peak_rss_mib(),
        "status": row["status"], "error": row["error"], "warning": row.get("warning", ""), "prediction": row["prediction"],
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()  # before the runs: the load average is the other processes'
    model = model_file(args.seed)
    slides = []
    for name, (edge, kind) in (QUICK if args.quick else SLIDES).items():
        path = one_level(edge, kind, args.seed)
        figures = run_child(__file__, ["--child", path, "--model", model])
        slides.append({"name": name, "edge": edge, "kind": kind, "file_mb": round(os.path.getsize(path) / 2**20, 1), **figures})
        print(f"{name}: {figures}", file=sys.stderr)
    return {"benchmark": "bad_input_memory", "machine": info, "model": f"{RECIPE.name}, seeded, untrained", "seed": args.seed,
            "target": {"peak_rss_mb_max": TARGET_RSS_MIB}, "slides": slides, "summary": summarize(slides, info)}  # fmt: skip


def summarize(slides: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline rows: peak RSS against the target, then the times."""
    return [
        summary_row(f"peak RSS of wsi-ats predict, one-level {s['edge']}^2 {s['kind']} TIFF (MiB); {_outcome(s)}",
                    round(s["peak_rss_mb"]), f"< {TARGET_RSS_MIB}", s["peak_rss_mb"] < TARGET_RSS_MIB)
        for s in slides
    ] + [
        summary_row(f"time, one-level {s['edge']}^2 {s['kind']} TIFF: wall s (CPU s), load average {info['load_average'][0]}",
                    f"{s['seconds']:.0f} ({s['cpu_seconds']:.0f})")
        for s in slides
    ]  # fmt: skip


def _outcome(s: dict[str, Any]) -> str:
    """The row's status; for an error, its reason up to the first colon after the path."""
    return s["status"] if s["status"] != "error" else f"error: {s['error'].split(': ', 2)[-1].split(':')[0]}"


def plot(result: dict[str, Any], path: Path) -> Path:
    fig, (rss_ax, time_ax) = figure(2)
    names = [f"{s['edge']}^2 {s['kind']}" for s in result["slides"]]
    rss_ax.bar(names, [s["peak_rss_mb"] for s in result["slides"]])
    rss_ax.axhline(TARGET_RSS_MIB, color="red", linestyle="--", linewidth=1, label="2 GiB target")
    rss_ax.set_ylabel("peak RSS of wsi-ats predict (MiB)")
    rss_ax.legend(fontsize=8)
    time_ax.bar(names, [s["seconds"] for s in result["slides"]], label="wall")
    time_ax.bar(names, [s["cpu_seconds"] for s in result["slides"]], alpha=0.6, label="CPU")
    time_ax.set_ylabel("seconds")
    time_ax.legend(fontsize=8)
    for ax in (rss_ax, time_ax):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"one-level TIFFs -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = [[f"{s['edge']}^2", s["kind"], s["file_mb"], s["status"], f"{s['seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
             f"{s['peak_rss_mb']:.0f}", s["error"] or s["warning"] or s["prediction"]]
            for s in result["slides"]]  # fmt: skip
    table = markdown_table(["slide", "kind", "file MiB", "status", "wall s", "CPU s", "peak RSS MiB", "row says"], rows)
    return f"{table}\n\n{machine_line(result['machine'])} (before the runs)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4096^2, 20000^2 and 300000^2 slides, results under benchmarks/results/tmp/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.model)))
        return 0
    out = args.out or (CACHE / "quick" / "bad_input_memory.json" if args.quick else RESULTS / "bad_input_memory.json")
    result = run(args)
    return publish(result, out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
