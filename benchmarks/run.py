"""Run the benchmarks and collect their headline figures in one README.

    python benchmarks/run.py [NAME ...] [--quick] [--out DIR]      (``wsi-ats bench`` and ``make bench`` run this)

A benchmark is a script ``benchmarks/<name>.py`` whose ``main(argv) -> int`` takes
``--out FILE.json`` (and ``--quick``, or the small arguments listed in `BENCHMARKS`), writes
its figures there as JSON -- with the machine (`harness.machine_info`) and a ``summary``:
rows ``{"metric", "value", "target", "met"}`` (`harness.summary_row`) -- and a plot of
the same name with ``.png``. The runner imports each script by path and calls ``main`` in
this process (the scripts measure memory in fresh child processes of their own), goes on
past a failure, and then writes ``README.md`` beside the JSON files: one table of every
summary found there, so running one benchmark refreshes its rows and keeps the others'.

Scripts that are not there yet are skipped with a note, not failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BENCH_DIR, CACHE, RESULTS, machine_line, markdown_table

from wsi_ats.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from wsi_ats.outputs.atomic import atomic_write_text


@dataclass(frozen=True)
class Benchmark:
    """A script in ``benchmarks/``, what it measures, and the arguments of its small (``--quick``) run."""

    name: str
    what: str
    quick: tuple[str, ...] = ("--quick",)

    @property
    def script(self) -> Path:
        return BENCH_DIR / f"{self.name}.py"


#: Every benchmark, in the order ``wsi-ats bench`` runs them.
BENCHMARKS = (
    Benchmark("read_region", "tile and patch reads per second, per backend, 1 and 2 threads",
              quick=("--size", "2048", "--reads", "40", "--repeats", "1")),
    Benchmark("fetch", "fetch_patches against the decode limit; the same patches read by OpenSlide, tiffslide, pyvips (local, HTTP)",
              quick=("--quick", "--size", "4096")),
    Benchmark("synth_memory", "peak RSS and time of writing a 100k^2 synthetic slide (and 25k^2, 50k^2)", quick=("--size", "2048")),
    Benchmark("train_step", "training-step time and peak RSS for the same n: a slide, its tissue on a 4x-area slide, 4x the tissue",
              quick=("--size", "1024", "--steps", "1", "--rounds", "1")),
    Benchmark("ats_vs_dense", "ATS against dense tiling + gated-attention MIL: accuracy, time, patches, RSS"),
    Benchmark("flat_memory", "ATS inference peak RSS and time on a 20k and a 200k slide of the same tissue"),
    Benchmark("same_answer", "a trained model on slides stored four other ways: same class as the originals, by microns and by downsample"),
    Benchmark("resolution", "ATS time and peak RSS on a 40k slide stored natively, as a pyramid lacking the model's scales, as one level"),
    Benchmark("bad_input_memory", "peak RSS and time of wsi-ats predict on one-level TIFFs: 28k^2, sparse 200k^2, 10^6^2 (refused)"),
    Benchmark("scaling", "batch prediction throughput against the number of workers"),
    Benchmark("remote", "prediction on slides in S3 / over HTTP Range: bytes read / file size, requests, time vs local disk"),
    Benchmark("remote_cache", "training over S3 URLs: bytes fetched per epoch without a cache, with --remote-cache, with --stage"),
    Benchmark("draws", "draws spent, accuracy and agreement with a many-draw answer: fixed K = 1, 4, 16 against --draws auto"),
    Benchmark("megadigits", "Megapixel MNIST-style task: ATS accuracy and time against baselines"),
)  # fmt: skip
_BY_NAME = {b.name: b for b in BENCHMARKS}
#: Hand-written, beside the generated README.
NOTES = "NOTES.md"


def run_benchmarks(names: Sequence[str] = (), quick: bool = False, out: Path | None = None) -> int:
    """Run the named benchmarks (all when ``names`` is empty) and write ``out/README.md``.

    ``out`` is where the JSON, PNG and README go: ``benchmarks/results`` by default,
    ``benchmarks/results/tmp/quick`` for ``quick`` runs (small sizes: a smoke test that
    leaves the committed figures alone). Returns 0 when every benchmark that exists ran,
    1 when one failed, 2 for an unknown name.
    """
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        print(f"benchmarks/run.py: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(out) if out is not None else (CACHE / "quick" if quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    statuses: dict[str, str] = {}
    for bench in [_BY_NAME[n] for n in names] if names else BENCHMARKS:
        statuses[bench.name] = _run_one(bench, quick, out)
        print(f"[bench] {bench.name}: {statuses[bench.name]}", file=sys.stderr)
    readme = write_readme(out, statuses)
    print(f"[bench] summary: {readme}", file=sys.stderr)
    return EXIT_FAILED if any(s.startswith("failed") for s in statuses.values()) else EXIT_OK


def _run_one(bench: Benchmark, quick: bool, out: Path) -> str:
    """Call the script's ``main``; the status line the README shows for this run."""
    if not bench.script.is_file():
        return f"skipped: {bench.script.relative_to(BENCH_DIR.parent)} does not exist yet"
    argv = [*(bench.quick if quick else ()), "--out", str(out / f"{bench.name}.json")]
    start = time.perf_counter()
    try:
        code = _load(bench).main(argv)
    except SystemExit as stop:  # argparse and scripts that exit
        code = stop.code
    except Exception:  # noqa: BLE001 -- one benchmark's crash is reported, and the others still run
        traceback.print_exc()
        code = 1
    seconds = time.perf_counter() - start
    if code not in (0, None):
        return f"failed (exit {code}) after {seconds:.0f} s"
    if not (out / f"{bench.name}.json").is_file():
        return f"failed: wrote no {bench.name}.json"
    return f"ok in {seconds:.0f} s" + (" (--quick)" if quick else "")


def _load(bench: Benchmark) -> Any:
    """Import ``benchmarks/<name>.py`` by path (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{bench.name}", bench.script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_readme(folder: Path, statuses: dict[str, str] | None = None) -> Path:
    """``folder/README.md``: every benchmark's summary rows from its JSON in ``folder``, targets beside them."""
    statuses = statuses or {}
    rows, notes = [], []
    for bench in BENCHMARKS:
        path = folder / f"{bench.name}.json"
        result = _read(path)
        if result is None:
            status = statuses.get(bench.name) or (
                "not run" if bench.script.is_file() else f"skipped: benchmarks/{bench.name}.py does not exist yet"
            )
            rows.append([bench.name, "-", "-", "-", "-", status])
            continue
        summary = result.get("summary") or [{"metric": "(no summary in the JSON)", "value": "-"}]
        where = machine_line(result["machine"]) if isinstance(result.get("machine"), dict) else "machine not recorded"
        for i, row in enumerate(summary):
            met = row.get("met")
            rows.append([
                f"[{bench.name}]({path.name})" if i == 0 else "", row.get("metric", ""), _fmt(row.get("value")),
                _fmt(row.get("target")), "-" if met is None else ("yes" if met else "**no**"), where if i == 0 else "",
            ])  # fmt: skip
        plot = path.with_suffix(".png")
        notes.append(f"- **{bench.name}** ({bench.what}): `benchmarks/{bench.name}.py`"
                     + (f", plot [{plot.name}]({plot.name})" if plot.is_file() else "")
                     + (f"; this run: {statuses[bench.name]}" if bench.name in statuses else ""))  # fmt: skip
    intro = (
        "Generated by `wsi-ats bench` (`benchmarks/run.py`) from the JSON files in this folder; do not edit by hand. "
        "Rerun one benchmark with `wsi-ats bench NAME`, all with `make bench`; `--quick` runs them small "
        "(into `benchmarks/results/tmp/quick/`). Wall times depend on the machine's load, recorded beside each figure."
    )
    if (folder / NOTES).is_file():
        intro += f" Figures measured by hand while building, which no script reruns: [{NOTES}]({NOTES})."
    table = markdown_table(["benchmark", "figure", "measured", "target", "met", "measured on"], rows)
    text = "\n\n".join(["# Benchmarks", intro, table, "\n".join(notes)])
    readme = folder / "README.md"
    atomic_write_text(readme, text + "\n")
    return readme


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {"summary": [{"metric": f"{path.name} is not valid JSON", "value": "-"}]}
    return data if isinstance(data, dict) else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description="Run the benchmarks; JSON, plots and README.md into DIR.")
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(_BY_NAME)}")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results, or its tmp/quick with --quick)")
    args = p.parse_args(argv)
    return run_benchmarks(args.names, quick=args.quick, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
