"""Training-step time of the ATS model for the same ``n`` on a slide and on a 4x larger one.

    python benchmarks/train_step.py [--quick] [--size 8192] [--steps 10] [--config pipelines/synthetic_wsi.toml]

Two synthetic slides (``wsi_ats.synth.make_slide``, cached under ``benchmarks/results/tmp/``):
``size`` and ``2 * size`` per side, i.e. 4x the area and about 4x the tissue. For each, a
fresh process builds the recipe's model (seeded), plans the slide and caches its low level
(as `wsi_ats.train` does), then times ``--steps`` full training steps (forward on the whole
low level, sampling, `fetch_patches`, features, backward, Adam) after two warm-up steps, and
separately the attention part alone (whole-level logits, softmax, backward) to show which part
grows with the slide. Reports medians, their large/small ratio, and each process's peak RSS.
On a shared machine, pass ``--threads 1``: OpenMP threads that wait for a descheduled peer
make two-thread timings several times slower and erratic.
Writes ``benchmarks/results/train_step.json`` (``--quick``: 2048/4096-px slides, 3 steps,
``benchmarks/results/tmp/train_step-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from wsi_ats.benchmarking import cached_slide, machine_info, peak_rss_mib, run_child, summary_row, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"


def measure(path: Path, config: Path, steps: int, threads: int | None = None) -> dict:
    """Runs in a fresh process: time training steps on one slide."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)

    from wsi_ats.models import ATSModel, load_config
    from wsi_ats.readers import open_slide

    cfg = load_config(config)
    torch.manual_seed(0)
    model = ATSModel.from_config(cfg.model, ("negative", "positive")).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    slide = open_slide(path)
    plan = model.plan(slide)
    image = model.low_image(slide, plan)
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([1])

    def step() -> None:
        logits, attention = model(slide, plan, image, generator=generator)
        loss = F.cross_entropy(logits, target) + model.regularizer(attention)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()

    def attention_only() -> None:
        model.regularizer(model.attention(model.logits_whole(image, plan))).backward()

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
        "n_patches": model.n_patches,
        "patch_size": model.patch_size,
        "step_seconds": round(statistics.median(step_s), 4),
        "attention_seconds": round(statistics.median(attention_s), 4),
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def run(size: int, steps: int, config: Path, cache: Path, threads: int | None = None) -> dict:
    info = machine_info()  # before the runs: the load average is the other processes'
    extra = ["--threads", threads] if threads else []
    rows = [
        run_child(__file__, ["--child", cached_slide(side, cache=cache), "--steps", steps, "--config", config, *extra])
        for side in (size, 2 * size)
    ]
    small, large = rows
    ratios = {key: round(large[key] / small[key], 3) for key in ("step_seconds", "attention_seconds", "peak_rss_mib")}
    return {
        "benchmark": "train_step",
        "machine": info,
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "cpus": os.cpu_count(),
        "slides": rows,
        "area_ratio": 4.0,
        "step_time_ratio": ratios["step_seconds"],
        "attention_time_ratio": ratios["attention_seconds"],
        "peak_rss_ratio": ratios["peak_rss_mib"],
        "summary": [
            summary_row(f"training step, {large['slide_shape'][0]}^2 over {small['slide_shape'][0]}^2 (4x area), same n",
                        f"{ratios['step_seconds']}x ({large['step_seconds']:.3f} / {small['step_seconds']:.3f} s)"),
            summary_row("of which the whole-level attention pass", f"{ratios['attention_seconds']}x"),
            summary_row("peak RSS, 4x area", f"{ratios['peak_rss_mib']}x ({large['peak_rss_mib']:.0f} MiB)"),
        ],  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2048/4096-px slides, 3 steps (a smoke run)")
    p.add_argument("--size", type=int, default=8192, help="side of the small slide (the large one is twice that)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--threads", type=int, default=None, help="torch threads in the measuring process (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.config, args.steps, args.threads)))
        return 0
    size, steps = (2048, 3) if args.quick else (args.size, args.steps)
    out = args.out or (RESULTS / "tmp" / "train_step-quick.json" if args.quick else RESULTS / "train_step.json")
    result = run(size, steps, args.config.resolve(), RESULTS / "tmp", args.threads)
    write_json(out, result)
    print(f"| slide | low level | tissue cells | step s | attention s | peak RSS MiB |\n|---|---|---|---|---|---|")
    for r in result["slides"]:
        print(f"| {r['slide_shape'][0]}x{r['slide_shape'][1]} | {r['low_level_shape'][0]}x{r['low_level_shape'][1]} | "
              f"{r['tissue_cells']} | {r['step_seconds']:.3f} | {r['attention_seconds']:.3f} | {r['peak_rss_mib']:.0f} |")
    print(f"4x area: step time x{result['step_time_ratio']}, attention x{result['attention_time_ratio']}, "
          f"peak RSS x{result['peak_rss_ratio']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
