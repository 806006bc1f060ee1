"""Time and peak RSS per slide when the slide lacks the model's scales: native pyramid vs resampled levels vs one level.

    python benchmarks/resolution.py [--quick] [--out FILE.json] [--size 40000] [--pyramid 1 2 8 32]
                                    [--repeats 5] [--threads 1] [--seed 0]

One synthetic slide (`wsi_ats.synth.make_slide`, an Aperio-like JPEG TIFF, ``--size`` px per
side, levels 1, 4, 16, 64: exactly the scales the recipe reads at) stored three ways, all
cached in ``benchmarks/results/tmp/``:

- **native**: the synthetic file itself; the model reads its own levels;
- **resampled**: rewritten (`wsi_ats.synth.restore`) with levels at ``--pyramid`` (default
  1, 2, 8, 32: every level the model reads -- 4, 16, 64 -- is missing, so each is a
  resampled level built from the one twice finer: x4 from x2, x16 from x8, x64 from x32);
- **single-level**: rewritten with level 0 only; x4, x16 and x64 are built in a chain from
  the base, so the first run decodes the whole base level once.

The recipe's ATS model (``pipelines/synthetic_wsi.toml``, seeded, untrained: the weights
change which cells are drawn, not what a prediction costs; it reads by downsample, and all
three files have the same level-0 resolution) predicts each in a fresh process
(`run_child`) with torch on ``--threads`` threads, after a warm-up on a small in-memory
slide: ``--repeats`` timed predictions (the best kept), CPU seconds, and the peak RSS. Every
prediction plans the slide afresh, so every repeat builds the resampled levels again, as a
new slide would. The single-level slide is measured four times: a first run without a disk
cache, a first run filling a fresh disk cache (``cache=``, as ``wsi-ats predict --cache``),
and reruns served from that cache in another process.

Writes ``benchmarks/results/resolution.json`` and ``.png`` (``--quick``: a 4096 px slide,
one repeat, under ``benchmarks/results/tmp/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
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
    rss_mib,
    run_child,
    save_figure,
    summary_row,
    warm_up_slide,
)

RECIPE = ROOT / "pipelines" / "synthetic_wsi.toml"
#: Issue 16: resampled pyramid and cached single-level rerun at most this many times the native time; the
#: single-level first run at most this many times the native peak RSS.
TARGET_TIME_RATIO, TARGET_RSS_RATIO = 1.5, 1.2
#: The runs, in order: (name, file, disk cache).
RUNS = (
    ("native", "native", None),
    ("resampled", "resampled", None),
    ("single-level, first run", "single", None),
    ("single-level, first run filling the cache", "single", "fill"),
    ("single-level, cached rerun", "single", "reuse"),
)


def stored(native: Path, downsamples: tuple[int, ...]) -> Path:
    """``native`` rewritten with levels at ``downsamples`` (`wsi_ats.synth.restore`), written once into the cache."""
    from wsi_ats.readers import open_slide
    from wsi_ats.synth.restore import restore

    path = native.with_name(f"{native.name.removesuffix('.tiff')}-ds{'-'.join(map(str, downsamples))}.tiff")
    if not path.exists():
        print(f"writing {path} (once) ...", file=sys.stderr)
        with building(path) as part, open_slide(native) as slide:
            restore(slide, part, downsamples=downsamples)
    return path


def _child(path: Path, repeats: int, seed: int, recipe: Path, threads: int, cache: Path | None) -> dict[str, Any]:
    """Runs in a fresh process: ``repeats`` predictions of one slide; seconds, CPU seconds and peak RSS."""
    import torch

    from wsi_ats.engine import predict_slide
    from wsi_ats.engine.plan import target_downsamples
    from wsi_ats.models import ATSModel, load_config
    from wsi_ats.readers import open_slide
    from wsi_ats.readers.scaled import at_scales

    torch.set_num_threads(threads)
    cfg = load_config(recipe)
    torch.manual_seed(seed)
    model = ATSModel.from_config(cfg.model, ("negative", "positive")).eval()
    with warnings.catch_warnings():  # first-call costs are not the slide's
        warnings.simplefilter("ignore")
        predict_slide(model, warm_up_slide(), slide_id="warm-up")
    baseline = rss_mib()
    seconds, cpu_seconds = [], []
    with open_slide(path) as slide:
        for r in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            result = predict_slide(model, slide, slide_id="timed", seed=seed + r, cache=cache)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu)
        view = at_scales(slide, tuple(target_downsamples(model, slide).values()))  # what the plan read; lists, reads nothing
        file_levels = [round(lv.downsample, 3) for lv in slide.levels]
        resampled = sorted(round(view.levels[i].downsample, 3) for i in getattr(view, "resampled", {}))
    return {
        "shape": list(slide.levels[0].shape),
        "file_levels": file_levels,
        "resampled_levels": resampled,
        "attention_patch_downsamples": [result.attention_downsample, result.patch_downsample],
        "patches": result.patches_fetched,
        "probabilities": [round(float(p), 6) for p in result.probabilities],
        "seconds": [round(s, 4) for s in seconds],
        "seconds_best": round(min(seconds), 4),
        "cpu_seconds_best": round(min(cpu_seconds), 4),
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()  # before any work: the load average is the other processes'
    native = cached_slide(args.size, seed=args.seed)
    files = {"native": native, "resampled": stored(native, tuple(args.pyramid)), "single": stored(native, (1,))}
    child = ["--seed", args.seed, "--config", args.config, "--threads", args.threads]
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="resolution-cache-") as disk:
        for name, file, cache in RUNS:
            repeats = 1 if cache == "fill" else args.first_repeats if file == "single" and cache is None else args.repeats
            extra = ["--cache", disk] if cache else []
            measured[name] = run_child(__file__, ["--child", files[file], "--repeats", repeats, *child, *extra])
            print(f"{name}: {measured[name]['seconds_best']:.2f} s, {measured[name]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        cache_mib = sum(f.stat().st_size for f in Path(disk).rglob("*") if f.is_file()) / 2**20
    native_run = measured["native"]
    ratios = {
        name: {
            "time": round(m["seconds_best"] / native_run["seconds_best"], 3),
            "cpu_time": round(m["cpu_seconds_best"] / native_run["cpu_seconds_best"], 3),
            "peak_rss": round(m["peak_rss_mib"] / native_run["peak_rss_mib"], 3),
        }
        for name, m in measured.items()
    }
    return {
        "benchmark": "resolution",
        "machine": info,
        "seed": args.seed,
        "recipe": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "setup": {
            "native": f"synthetic Aperio-like JPEG TIFF {native_run['shape'][0]}^2, levels {native_run['file_levels']}",
            "resampled": f"the same rewritten with levels {list(args.pyramid)} (wsi_ats.synth.restore)",
            "single": "the same rewritten with level 0 only",
            "model": "the recipe's ATSModel by downsample (low 16, high 4, tissue 64), seeded, untrained",
            "repeats": args.repeats,
            "first_run_repeats": args.first_repeats,
            "torch_threads": args.threads,
        },
        "files_mib": {k: round(_size(p) / 2**20, 1) for k, p in files.items()},
        "disk_cache_mib": round(cache_mib, 1),
        "runs": measured,
        "ratios_to_native": ratios,
        "target": {"time_ratio_max": TARGET_TIME_RATIO, "first_run_peak_rss_ratio_max": TARGET_RSS_RATIO},
        "summary": _summary(measured, ratios, args.pyramid),
    }


def _summary(measured: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]], pyramid: list[int]) -> list[dict[str, Any]]:
    side = f"{measured['native']['shape'][0]}^2"

    def vs(name: str, key: str, unit: str) -> str:
        a, b = measured[name][key], measured["native"][key]
        return f"{a / b:.2f}x ({a:.{2 if unit == 's' else 0}f} / {b:.{2 if unit == 's' else 0}f} {unit})"

    resampled, first, cached = ratios["resampled"], ratios["single-level, first run"], ratios["single-level, cached rerun"]
    return [
        summary_row(f"seconds per slide, pyramid {'/'.join(map(str, pyramid))} (x4, x16, x64 resampled) / native, {side}",
                    vs("resampled", "seconds_best", "s") + f"; CPU {resampled['cpu_time']:.2f}x", f"<= {TARGET_TIME_RATIO}x",
                    resampled["time"] <= TARGET_TIME_RATIO),
        summary_row("peak RSS, single-level first run (no cache) / native", vs("single-level, first run", "peak_rss_mib", "MiB"),
                    f"<= {TARGET_RSS_RATIO}x", first["peak_rss"] <= TARGET_RSS_RATIO),
        summary_row("seconds per slide, single-level cached rerun / native",
                    vs("single-level, cached rerun", "seconds_best", "s") + f"; CPU {cached['cpu_time']:.2f}x", f"<= {TARGET_TIME_RATIO}x",
                    cached["time"] <= TARGET_TIME_RATIO),
        summary_row("seconds per slide, single-level first run / native (decodes the whole base once)",
                    vs("single-level, first run", "seconds_best", "s") + "; filling the disk cache "
                    + vs("single-level, first run filling the cache", "seconds_best", "s")),
        summary_row("peak RSS / native: resampled; single-level filling the cache; cached rerun",
                    "; ".join(f"{ratios[k]['peak_rss']:.2f}x" for k in
                              ("resampled", "single-level, first run filling the cache", "single-level, cached rerun"))),
    ]  # fmt: skip


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def plot(result: dict[str, Any], path: Path) -> Path:
    """Seconds per slide (wall, and CPU as a tick) and peak RSS (baseline and prediction) per run, with the targets' ceilings."""
    fig, (time_ax, rss_ax) = figure(2, width=6.5)
    runs = result["runs"]
    names = [n.replace("single-level, ", "single:\n").replace(" filling", "\nfilling") for n in runs]
    native = runs["native"]
    time_ax.bar(names, [m["seconds_best"] for m in runs.values()], color="tab:blue", label="wall")
    time_ax.plot(names, [m["cpu_seconds_best"] for m in runs.values()], "k_", markersize=30, label="CPU (all threads)")
    time_ax.axhline(TARGET_TIME_RATIO * native["seconds_best"], color="tab:red", ls="--", lw=1,
                    label=f"{TARGET_TIME_RATIO}x native (resampled, cached rerun)")  # fmt: skip
    time_ax.set_ylabel("seconds per slide (best of repeats)")
    time_ax.set_yscale("log")
    base = [m["baseline_rss_mib"] for m in runs.values()]
    rss_ax.bar(names, base, label="after imports + model", color="tab:gray")
    rss_ax.bar(names, [m["peak_rss_mib"] - b for m, b in zip(runs.values(), base)], bottom=base, label="prediction", color="tab:orange")
    rss_ax.axhline(
        TARGET_RSS_RATIO * native["peak_rss_mib"], color="tab:red", ls="--", lw=1, label=f"{TARGET_RSS_RATIO}x native (first run)"
    )
    rss_ax.set_ylabel("peak RSS (MiB)")
    for ax in (time_ax, rss_ax):
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, markerscale=0.3)
    fig.suptitle(f"{native['shape'][0]}^2 slide stored three ways -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [name, m["file_levels"], m["resampled_levels"] or "-", f"{m['seconds_best']:.2f}", f"{r['time']:.2f}x",
         f"{m['cpu_seconds_best']:.2f}", f"{r['cpu_time']:.2f}x", f"{m['peak_rss_mib']:.0f}", f"{r['peak_rss']:.2f}x"]
        for (name, m), r in zip(result["runs"].items(), result["ratios_to_native"].values())
    ]  # fmt: skip
    table = markdown_table(
        ["run", "file levels", "resampled", "s / slide", "vs native", "CPU s", "vs native", "peak RSS MiB", "vs native"], rows
    )
    met = ", ".join(f"{r['metric']}: {'yes' if r['met'] else 'NO'}" for r in result["summary"] if r["met"] is not None)
    return f"{table}\n\ntargets: {met}\n{machine_line(result['machine'])}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 4096 px slide, one repeat (a smoke run)")
    p.add_argument("--size", type=int, default=None, help="side of the slide (default 40000)")
    p.add_argument("--pyramid", type=int, nargs="+", default=[1, 2, 8, 32], help="levels of the resampled file (default 1 2 8 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed predictions per run, best kept (default 5)")
    p.add_argument("--first-repeats", type=int, default=None, help="the same for the single-level first run (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    p.add_argument("--config", type=Path, default=RECIPE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/resolution.json)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args.child, args.repeats, args.seed, args.config, args.threads, args.cache)))
        return 0
    args.size = args.size or (4096 if args.quick else 40000)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.first_repeats = args.first_repeats or (1 if args.quick else 2)
    args.config = args.config.resolve()
    out = args.out or (CACHE / "resolution-quick.json" if args.quick else RESULTS / "resolution.json")
    os.makedirs(CACHE, exist_ok=True)
    result = run(args)
    return publish(result, out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
