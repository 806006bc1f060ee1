"""Peak memory and time of writing a synthetic slide tile by tile: bounded whatever the slide's size.

    python benchmarks/synth_memory.py [--size 100000] [--halvings 2] [--format tiff|zarr] [--workers N]
                                      [--seed 0] [--dir DIR] [--out benchmarks/results/synth_memory.json]

Writes slides of ``--size`` px per side and, for the growth, of half and a quarter of it
(``--halvings``), smallest first, each in a fresh child process (`run_child`): its peak RSS
(``VmHWM``) is the generator's own, and ``baseline_rss_mb`` (the child's peak after its
imports, before any slide work) says how much of it the slide cost. A thread in the child
samples the resident memory as it goes, for the plot: memory that stays flat while rows are
written is what "tile by tile" means. ``cpu_seconds`` and the load average sit beside the
wall time because a busy machine stretches the latter. The slides go to a temporary folder
(``--dir`` to choose where) and are deleted afterwards. The JSON holds the ``--size`` slide's
figures at the top level and the halved slides' under ``smaller``.

Target (issue 3): a 100k x 100k slide in well under 2 GB peak RSS. Writes
``benchmarks/results/synth_memory.json`` and ``.png`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
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
)

SUFFIX = {"tiff": ".tiff", "zarr": ".ome.zarr"}
#: Issue 3: a 100k^2 slide in well under 2 GB peak RSS.
TARGET_RSS_MB = 2048
#: Memory samples kept per slide in the JSON (the largest of each stretch, so no peak is lost).
TRACE_POINTS = 150


class MemoryTrace:
    """Samples this process's resident memory in a background thread: (seconds since start, MiB)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryTrace:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:  # one last sample after the stop
            self.samples.append((time.perf_counter() - self._start, rss_mib()))
            if self._stop.is_set():
                return
            self._stop.wait(self.every_s)

    def thinned(self, points: int = TRACE_POINTS) -> dict[str, list[float]]:
        """At most ``points`` samples: each stretch of the trace stands for itself by its largest sample."""
        step = -(-len(self.samples) // points)
        kept = [max(self.samples[i : i + step], key=lambda s: s[1]) for i in range(0, len(self.samples), step)]
        return {"seconds": [round(t, 2) for t, _ in kept], "rss_mb": [m for _, m in kept]}


def _disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _child(size: int, fmt: str, workers: int, seed: int, directory: str) -> dict[str, Any]:
    """Runs in the child: make the slide, report figures."""
    import openslide

    from wsi_ats.synth import make_slide

    baseline = peak_rss_mib()
    path = Path(directory) / f"bench{SUFFIX[fmt]}"
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    with MemoryTrace() as trace:
        scene = make_slide(path, size, positive=True, seed=seed, fmt=fmt, workers=workers)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report = {
        "size": size, "shape": list(scene.shape), "format": fmt, "workers": workers, "seed": seed,
        "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
        "megapixels_per_second": round(scene.shape[0] * scene.shape[1] / 1e6 / seconds, 1),
        # Other work on the machine inflates `seconds`; the 1-minute load average says how much.
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "peak_rss_mb": peak_rss_mib(), "baseline_rss_mb": baseline,
        "output_mb": round(_disk_mb(path), 1), "rss_trace": trace.thinned(),
    }  # fmt: skip
    if fmt == "tiff":
        with openslide.OpenSlide(path) as slide:
            report["level_dimensions"] = [list(d) for d in slide.level_dimensions]
    return report


def measure(size: int, fmt: str, workers: int, seed: int, directory: str | None = None) -> dict[str, Any]:
    """Make one ``size`` x ``size`` slide in a fresh Python process and return its figures."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="synth-bench-") as tmp:
        args = ["--child", "--size", size, "--format", fmt, "--workers", workers, "--seed", seed, "--dir", tmp]
        return run_child(__file__, args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--size`` slide's figures at the top level, the halved ones under ``smaller`` (for the growth)."""
    info = machine_info()  # before the runs: the load average is the other processes'
    sizes = sorted({args.size >> k for k in range(1, args.halvings + 1)} - {0})
    smaller = [measure(size, args.format, args.workers, args.seed, args.dir) for size in sizes]
    big = measure(args.size, args.format, args.workers, args.seed, args.dir)
    side = f"{big['shape'][0]}^2 {big['format'].upper()}"
    work = big["peak_rss_mb"] - big["baseline_rss_mb"]
    summary = [
        summary_row(f"peak RSS writing a {side} slide, {big['workers']} workers (MiB; {work:.0f} for the slide)",
                    big["peak_rss_mb"], f"< {TARGET_RSS_MB} (well under 2 GB)", big["peak_rss_mb"] < TARGET_RSS_MB),
        summary_row(f"time for the {side} slide: wall s (CPU s), load average {big['load_average'][0]}",
                    f"{big['seconds']:.0f} ({big['cpu_seconds']:.0f})"),
    ]  # fmt: skip
    if smaller:
        small = smaller[0]
        area = big["shape"][0] * big["shape"][1] / (small["shape"][0] * small["shape"][1])
        summary.append(summary_row(f"peak RSS {big['shape'][0]}^2 / {small['shape'][0]}^2 ({area:.0f}x the area)",
                                   f"{big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x"))  # fmt: skip
    return {
        "benchmark": "synth_memory",
        "machine": info,
        "generator": "wsi_ats.synth.make_slide, positive slide",
        **big,
        "target": {"peak_rss_mb_max": TARGET_RSS_MB},
        "smaller": smaller,
        "summary": summary,
    }


def _slides(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every slide measured, smallest first (the top level is the largest)."""
    return [*result["smaller"], result]


def plot(result: dict[str, Any], path: Path) -> Path:
    """Resident memory while each slide is written, and peak RSS and time against slide area."""
    fig, (trace_ax, size_ax) = figure(2)
    slides = _slides(result)
    for s in slides:
        trace_ax.plot(s["rss_trace"]["seconds"], s["rss_trace"]["rss_mb"], label=f"{s['shape'][0]}^2")
    trace_ax.axhline(TARGET_RSS_MB, color="red", linestyle="--", linewidth=1, label="2 GiB: issue 3 limit")
    trace_ax.set_xlabel("seconds since the slide started")
    trace_ax.set_ylabel("resident memory (MiB)")
    trace_ax.set_ylim(0, TARGET_RSS_MB * 1.1)
    trace_ax.set_title("RSS while writing, tile by tile", fontsize=10)
    trace_ax.legend(fontsize=8)
    area = [s["shape"][0] * s["shape"][1] / 1e9 for s in slides]
    size_ax.plot(area, [s["peak_rss_mb"] for s in slides], "o-", label="peak RSS (MiB)")
    size_ax.set_xlabel("slide area (gigapixels)")
    size_ax.set_ylabel("peak RSS (MiB)")
    size_ax.set_ylim(0, TARGET_RSS_MB * 1.1)
    time_ax = size_ax.twinx()
    time_ax.plot(area, [s["seconds"] for s in slides], "s--", color="C1", label="wall seconds")
    time_ax.plot(area, [s["cpu_seconds"] for s in slides], "^:", color="C2", label="CPU seconds")
    time_ax.set_ylabel("seconds")
    size_ax.legend(handles=size_ax.lines + time_ax.lines, fontsize=8, loc="upper left")
    size_ax.set_title(f"{result['format']}, {result['workers']} workers, seed {result['seed']}", fontsize=10)
    fig.suptitle(f"synthetic slide writing -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [f"{s['shape'][0]}^2", s["format"], s["workers"], f"{s['seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
         s["megapixels_per_second"], f"{s['baseline_rss_mb']:.0f}", f"{s['peak_rss_mb']:.0f}", f"{s['output_mb']:.0f}",
         s["load_average"][0]]
        for s in _slides(result)
    ]  # fmt: skip
    table = markdown_table(
        ["slide", "format", "workers", "wall s", "CPU s", "Mpx/s", "baseline RSS MiB", "peak RSS MiB", "file MiB", "load"],
        rows,
    )
    return f"{table}\n\n{machine_line(result['machine'])} (before the runs), seed {result['seed']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000, help="level-0 edge of the largest slide")
    p.add_argument("--halvings", type=int, default=2, help="also write slides this many times halved per side")
    p.add_argument("--format", choices=sorted(SUFFIX), default="tiff")
    # Each worker holds rows of tiles in flight, so memory grows with workers: the targets are set for 2 cores.
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="render/encode threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the temporary slides go")
    p.add_argument("--out", type=Path, default=RESULTS / "synth_memory.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.size, args.format, args.workers, args.seed, args.dir)))
        return 0
    result = run(args)
    return publish(result, args.out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
