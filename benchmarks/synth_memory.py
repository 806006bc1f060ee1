"""Peak memory and time of writing one synthetic slide tile by tile.

    python benchmarks/synth_memory.py [--size 100000] [--format tiff|zarr] [--workers N]
                                      [--out benchmarks/results/synth_memory.json]

The slide is made in a child process so that its peak RSS (`ru_maxrss`) is the generator's
own; `baseline_rss_mb` is the child's peak after its imports, before any slide work, so
`peak_rss_mb - baseline_rss_mb` is what the slide itself cost. `cpu_seconds` and the load
average sit next to the wall time because a busy machine stretches the latter. The slide goes
to a temporary folder (`--dir` to choose where) and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from wsi_ats.benchmarking import machine_info, peak_rss_mib, run_child, summary_row, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "synth_memory.json"
SUFFIX = {"tiff": ".tiff", "zarr": ".ome.zarr"}


def _disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def _child(size: int, fmt: str, workers: int, directory: str) -> dict:
    """Runs in the child: make the slide, report figures."""
    import openslide

    from wsi_ats.synth import make_slide

    baseline = peak_rss_mib()
    path = Path(directory) / f"bench{SUFFIX[fmt]}"
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    scene = make_slide(path, size, positive=True, seed=0, fmt=fmt, workers=workers)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report = {
        "size": size, "shape": list(scene.shape), "format": fmt, "workers": workers,
        "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
        "megapixels_per_second": round(scene.shape[0] * scene.shape[1] / 1e6 / seconds, 1),
        # Other work on the machine inflates `seconds`; the 1-minute load average says how much.
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
        "peak_rss_mb": peak_rss_mib(), "baseline_rss_mb": baseline,
        "output_mb": round(_disk_mb(path), 1),
    }
    if fmt == "tiff":
        with openslide.OpenSlide(path) as slide:
            report["level_dimensions"] = [list(d) for d in slide.level_dimensions]
    return report


def measure(size: int, fmt: str = "tiff", workers: int = 1, directory: str | None = None) -> dict:
    """Make one `size` x `size` slide in a fresh Python process and return its figures."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="synth-bench-") as tmp:
        return run_child(__file__, ["--child", "--size", size, "--format", fmt, "--workers", workers, "--dir", tmp])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--format", choices=sorted(SUFFIX), default="tiff")
    p.add_argument("--workers", type=int, default=1, help="render/encode threads")
    p.add_argument("--dir", default=None, help="where the temporary slide goes")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.size, args.format, args.workers, args.dir)))
        return 0
    info = machine_info()  # before the run: the load average is the other processes'
    report = measure(args.size, args.format, args.workers, args.dir)
    side = f"{report['shape'][0]}^2 {report['format']}"
    report = {"benchmark": "synth_memory", "machine": info, **report, "summary": [
        summary_row(f"peak RSS writing a {side} slide (MiB, after imports)",
                    f"{report['peak_rss_mb']:.0f} ({report['peak_rss_mb'] - report['baseline_rss_mb']:.0f} for the slide)"),
        summary_row(f"write speed, {report['workers']} workers (megapixels/s)", report["megapixels_per_second"]),
    ]}  # fmt: skip
    write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
