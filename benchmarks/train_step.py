"""Training-step time of the ATS model for the same ``n`` on a slide and on a 4x larger one.

    python benchmarks/train_step.py [--quick] [--size 8192] [--steps 10] [--config pipelines/synthetic_wsi.toml]

Two synthetic slides (``wsi_ats.synth.make_slide``, cached under ``benchmarks/results/tmp/``):
``size`` and ``2 * size`` per side, i.e. 4x the area and about 4x the tissue. For each, a
fresh process builds the recipe's model (seeded), plans the slide and caches its low level
(as `wsi_ats.train` does), then times ``--steps`` full training steps (forward on the whole
low level, sampling, `fetch_patches`, features, backward, Adam) after two warm-up steps, and
separately the attention part alone (whole-level logits, softmax, backward) to show which part
grows with the slide. Reports medians, their large/small ratio, and each process's peak RSS.
Writes ``benchmarks/results/train_step.json`` (``--quick``: 2048/4096-px slides, 3 steps,
``benchmarks/results/tmp/train_step-quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"


def synthetic_slide(size: int, cache: Path) -> Path:
    """The cached positive synthetic TIFF of ``size`` px per side (written once)."""
    from wsi_ats.synth import make_slide

    path = cache / f"train-step-{size}.tiff"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        make_slide(path, size, positive=True, seed=0, workers=os.cpu_count() or 1)
    return path


def measure(path: Path, config: Path, steps: int) -> dict:
    """Runs in a fresh process: time training steps on one slide."""
    import resource

    import torch
    import torch.nn.functional as F

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
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def run(size: int, steps: int, config: Path, cache: Path) -> dict:
    rows = []
    for side in (size, 2 * size):
        path = synthetic_slide(side, cache)
        cmd = [sys.executable, __file__, "--child", str(path), "--steps", str(steps), "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"benchmark child failed ({done.returncode}):\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = rows
    return {
        "benchmark": "train_step",
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "cpus": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "slides": rows,
        "area_ratio": 4.0,
        "step_time_ratio": round(large["step_seconds"] / small["step_seconds"], 3),
        "attention_time_ratio": round(large["attention_seconds"] / small["attention_seconds"], 3),
        "peak_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2048/4096-px slides, 3 steps (a smoke run)")
    p.add_argument("--size", type=int, default=8192, help="side of the small slide (the large one is twice that)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.config, args.steps)))
        return 0
    size, steps = (2048, 3) if args.quick else (args.size, args.steps)
    out = args.out or (RESULTS / "tmp" / "train_step-quick.json" if args.quick else RESULTS / "train_step.json")
    result = run(size, steps, args.config.resolve(), RESULTS / "tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| slide | low level | tissue cells | step s | attention s | peak RSS MiB |\n|---|---|---|---|---|---|")
    for r in result["slides"]:
        print(f"| {r['slide_shape'][0]}x{r['slide_shape'][1]} | {r['low_level_shape'][0]}x{r['low_level_shape'][1]} | "
              f"{r['tissue_cells']} | {r['step_seconds']:.3f} | {r['attention_seconds']:.3f} | {r['peak_rss_mib']:.0f} |")
    print(f"4x area: step time x{result['step_time_ratio']}, attention x{result['attention_time_ratio']}, "
          f"peak RSS x{result['peak_rss_ratio']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
