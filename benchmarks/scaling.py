"""Batch prediction throughput on a local dask cluster: 1 against 2 workers, and the cost of distributed per slide.

    python benchmarks/scaling.py [--quick] [--out FILE.json] [--n 16] [--size 4096] [--repeats 2] [--seed 0]

On one cached synthetic TIFF cohort (`harness.cached_cohort`) and the recipe's
model (``pipelines/synthetic_wsi.toml``, seeded, untrained: weights change which cells are
drawn, not what a slide costs), it times `Pipeline.run_many` over the whole cohort:

- ``threads``: in this process, no distributed (torch and the decoders on every core);
- ``workers=1`` and ``workers=2``: the cluster ``wsi-ats predict --scheduler local --workers K``
  starts (`wsi_ats.cluster.local_cluster`: K processes, one slide at a time each, the cores
  shared out as torch threads).

Each configuration is warmed up first (torch imported and the model loaded in every worker,
a few slides predicted into a scratch folder), then timed writing into a fresh folder, as
in a real run; the best of ``--repeats`` counts (the least disturbed by other processes).
Reported: slides per second, the 2-over-1-worker ratio (issue 9 asks >= 1.7 on 2 cores),
and the distributed overhead per slide: the time the one worker of ``workers=1`` spends
outside slides (wall time - the slides' own seconds, per slide: scheduling, transfers,
waiting for the next slide), an upper bound of what distributed adds per slide, since
threads spend that time too writing the outputs that the client writes while the worker
computes. Taken from inside one run, it does not depend on how fast the slides went,
which other processes change. The load average before and after says whether other
processes shared the cores; under load the throughput figures are not reliable.

Writes ``benchmarks/results/scaling.json`` and ``.png`` (``--quick``: 6 slides of 1024 px,
one repeat, under ``benchmarks/results/tmp/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
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
    cached_cohort,
    figure,
    machine_info,
    machine_line,
    markdown_table,
    publish,
    save_figure,
    summary_row,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: Throughput of 2 workers over 1 that issue 9 asks for, on 2 cores.
TARGET_RATIO = 1.7


def cached_model(seed: int, cache: Path = CACHE) -> Path:
    """The recipe's model with seeded initial weights, saved once as a checkpoint (workers load it by path)."""
    path = cache / f"scaling-model-seed{seed}.pt"
    if not path.exists():
        import torch

        from wsi_ats.checkpoint import save_checkpoint
        from wsi_ats.models import ATSModel
        from wsi_ats.models.config import load_config

        torch.manual_seed(seed)
        model = ATSModel.from_config(load_config(RECIPE).model, ("negative", "positive")).eval()
        with building(path) as part:
            save_checkpoint(part, model)
    return path


def _warm_worker(model_path: str) -> None:
    """Import torch and load the model in a worker process, so no timed slide pays for it."""
    from wsi_ats.pipeline import load_model

    load_model(model_path, "cpu")


def time_run(model: Path, sources: list, workers: int | None, warm: int, scratch: Path) -> tuple[float, float]:
    """Wall seconds of one `run_many` over ``sources`` (on threads when ``workers`` is None), after a
    warm-up, and the sum of the slides' own seconds (`predict_one`'s timing, inside the task)."""
    from wsi_ats.cluster import LOCAL, THREADS, session
    from wsi_ats.pipeline import Pipeline

    pipeline = Pipeline(model, device="cpu", seed=0)
    with session(THREADS if workers is None else LOCAL, workers, device="cpu", say=lambda _: None) as client:
        if client is not None:
            client.wait_for_workers(workers)
            client.run(_warm_worker, str(model))
        pipeline.run_many(sources[:warm], Path(tempfile.mkdtemp(dir=scratch)), client=client, verbose=False)
        out = Path(tempfile.mkdtemp(dir=scratch))
        start = time.perf_counter()
        rows = pipeline.run_many(sources, out, client=client, verbose=False)
        seconds = time.perf_counter() - start
    bad = [r["slide_id"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"slides failed in the {workers or 'threads'} run: {', '.join(bad)}")
    return seconds, sum(r["seconds"] for r in rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from wsi_ats.cluster import local_layout
    from wsi_ats.manifest import read_manifest

    manifest = cached_cohort(args.n, args.size, seed=args.seed, cache=args.cache)
    model = cached_model(args.seed, args.cache)
    sources = read_manifest(manifest)
    configs: list[tuple[str, int | None]] = [("threads", None), ("workers=1", 1), ("workers=2", 2)]
    info = machine_info()  # before the runs: the load average is the other processes'
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.cache, prefix=".scaling-") as scratch:
        for r in range(args.repeats):
            for name, workers in configs if r % 2 == 0 else configs[::-1]:  # alternate: no position bias
                seconds, busy = time_run(model, sources, workers, args.warm, Path(scratch))
                best[name] = min(best.get(name, (float("inf"), 0.0)), (seconds, busy))
                print(f"{name}: {seconds:.2f} s", file=sys.stderr)
    load_after = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for name, workers in configs:
        layout = None if workers is None else local_layout(workers)
        seconds, busy = best[name]
        rows.append({
            "config": name, "workers": workers, "torch_threads": None if layout is None else layout.torch_threads,
            "seconds": round(seconds, 3), "slides_per_s": round(args.n / seconds, 3),
            "slide_seconds_sum": round(busy, 3),
            "idle_s_per_slide": round(((workers or 1) * seconds - busy) / args.n, 4),
        })  # fmt: skip
    by = {row["config"]: row for row in rows}
    ratio = round(by["workers=2"]["slides_per_s"] / by["workers=1"]["slides_per_s"], 3)
    overhead = by["workers=1"]["idle_s_per_slide"]
    cores = info["usable_cores"]
    # The load after the run includes this benchmark's own busy cores; only more than that means sharing.
    reliable = info["load_average"][0] < 0.5 * cores and load_after[0] <= cores
    return {
        "benchmark": "scaling",
        "cohort": {"n": args.n, "size": args.size, "format": "synthetic TIFF (wsi_ats.synth)", "seed": args.seed},
        "model": "recipe pipelines/synthetic_wsi.toml, untrained (seeded)",
        "repeats": args.repeats, "warm_up_slides": args.warm, "machine": info, "load_average_after": load_after,
        "reliable": reliable, "results": rows,
        "ratio_2_over_1_workers": ratio, "distributed_overhead_s_per_slide": overhead,
        "target": {"ratio_2_over_1_workers_min": TARGET_RATIO, "on_cores": 2},
        "summary": [
            summary_row(f"slides/s, 2 workers over 1 ({args.n} slides of {args.size} px, {cores} cores"
                        f"{'' if reliable else ', machine under load: unreliable'})",
                        ratio, f">= {TARGET_RATIO}", ratio >= TARGET_RATIO),
            summary_row("distributed overhead per slide: the worker's time outside slides, 1 worker (s)", overhead),
        ],
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    table = markdown_table(
        ["configuration", "torch threads / worker", "seconds", "slides / s", "idle per slide (ms)"],
        [
            [
                r["config"],
                r["torch_threads"] or "all",
                f"{r['seconds']:.2f}",
                f"{r['slides_per_s']:.2f}",
                f"{r['idle_s_per_slide'] * 1000:.0f}",
            ]
            for r in result["results"]
        ],
    )
    return "\n".join([
        table, "",
        f"2 workers / 1 worker: {result['ratio_2_over_1_workers']:.2f}x (target >= {TARGET_RATIO}); "
        f"distributed overhead at most {result['distributed_overhead_s_per_slide'] * 1000:.0f} ms per slide "
        "(1 worker's time outside slides)",
        f"{machine_line(result['machine'])} (before), load average {result['load_average_after'][0]} after"
        + ("" if result["reliable"] else " -- other processes shared the cores: figures unreliable"),
    ])  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    fig, (ax,) = figure()
    rows = result["results"]
    ax.bar([r["config"] for r in rows], [r["slides_per_s"] for r in rows], color=["#888", "#4a7", "#27a"])
    ax.set_ylabel("slides / second")
    ax.set_title(f"{result['cohort']['n']} slides of {result['cohort']['size']} px; 2/1 workers = "
                 f"{result['ratio_2_over_1_workers']:.2f}x", fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="6 slides of 1024 px, one repeat (a smoke run)")
    p.add_argument("--n", type=int, default=None, help="slides in the cohort (default 16)")
    p.add_argument("--size", type=int, default=None, help="level-0 edge of each slide (default 4096)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per configuration, best kept (default 2)")
    p.add_argument("--warm", type=int, default=2, help="slides predicted before timing, per configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=CACHE, help="where the cohort and the model are kept")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/scaling.json)")
    args = p.parse_args(argv)
    args.n = args.n or (6 if args.quick else 16)
    args.size = args.size or (1024 if args.quick else 4096)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.out = args.out or (CACHE / "scaling-quick.json" if args.quick else RESULTS / "scaling.json")
    args.cache.mkdir(parents=True, exist_ok=True)
    result = run(args)
    return publish(result, args.out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
