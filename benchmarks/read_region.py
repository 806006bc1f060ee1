"""Read throughput per backend: random 256-px patches and aligned tiles, 1 vs 2 threads.

Builds one synthetic slide (tissue-like texture, 256-px tiles) as an Aperio-like
JPEG TIFF (read by OpenSlide and by the TIFF fast path), an OME-Zarr 0.4 store
(zstd, 256 chunks) and a numpy array, then times:

- ``patch``: ``read_region`` of 256 x 256 patches at random (unaligned) level-0
  positions, so most patches touch 4 tiles;
- ``tile``: ``read_tile`` of random tiles (what `wsi_ats.engine.fetch` and ``to_dask`` call).

Each figure is the median of ``--repeats`` runs, each on fresh random positions
(OpenSlide's tile cache, 128 MiB, holds about an eighth of the decoded slide).
Writes ``benchmarks/results/read_region.json`` and ``.png`` and prints a markdown table.

    python benchmarks/read_region.py [--size 16384] [--reads 400] [--repeats 3]

The load average before and after is recorded: on a shared machine, thread
scaling says more about the neighbours than about the readers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
import zarr
from harness import figure, machine_info, machine_line, save_figure, summary_row, write_json

from wsi_ats.readers import open_slide

TILE = 256
PATCH = 256
THREADS = (1, 2)


def texture(size: int, seed: int) -> np.ndarray:
    """Tissue-like RGB: smooth stain variation plus grain, so JPEG tiles cost what real ones do."""
    rng = np.random.default_rng(seed)
    block = 2048
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float32)
    base = np.stack([200 - 60 * np.sin(xx / 41) ** 2, 150 + 50 * np.cos(yy / 29), 190 + 30 * np.sin((xx + yy) / 57)], axis=-1)
    base += rng.normal(0, 18, base.shape).astype(np.float32)
    block_img = np.clip(base, 0, 255).astype(np.uint8)
    reps = -(-size // block)
    return np.tile(block_img, (reps, reps, 1))[:size, :size]


def write_svs(path: Path, image: np.ndarray) -> None:
    description = (
        f"Aperio Image Library v12.0.0 \n{image.shape[1]}x{image.shape[0]} [0,0 {TILE}x{TILE}] JPEG/RGB Q=90|AppMag = 40|MPP = 0.25"
    )
    tifffile.imwrite(
        path,
        image,
        tile=(TILE, TILE),
        compression="jpeg",
        compressionargs={"level": 90},
        photometric="rgb",
        description=description,
        metadata=None,
        maxworkers=os.cpu_count(),
    )


def write_ome_zarr(path: Path, image: np.ndarray) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.moveaxis(image, -1, 0), chunks=(3, TILE, TILE))
    axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.25, 0.25]}]}
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [dataset]}]


def throughput(read, jobs: list, threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for job in jobs:
            read(job)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, jobs))
    return len(jobs) / (time.perf_counter() - start)


def measure(slide, mode: str, reads: int, repeats: int, seed: int) -> dict[int, float]:
    H, W = slide.levels[0].shape
    rows, cols = slide.tile_grid(0)

    def read(job: tuple[int, int]) -> np.ndarray:
        return slide.read_region(0, job, (PATCH, PATCH)) if mode == "patch" else slide.read_tile(0, *job)

    results = {}
    for threads in THREADS:
        runs = []
        for r in range(repeats):
            rng = np.random.default_rng([seed, threads, r])
            if mode == "patch":
                jobs = list(zip(rng.integers(0, H - PATCH, reads).tolist(), rng.integers(0, W - PATCH, reads).tolist()))
            else:
                jobs = list(zip(rng.integers(0, rows, reads).tolist(), rng.integers(0, cols, reads).tolist()))
            runs.append(throughput(read, jobs, threads))
        results[threads] = statistics.median(runs)
    return results


def plot(result: dict, path: Path) -> Path:
    """Reads per second per backend, 1 and 2 threads side by side, patches and tiles in their own panels."""
    fig, axes = figure(2)
    width = 0.8 / len(THREADS)
    for ax, mode in zip(axes, ("patch", "tile")):
        rows = [r for r in result["results"] if r["read"] == mode]
        for k, t in enumerate(THREADS):
            key = f"per_s_{t}_thread{'s' if t > 1 else ''}"
            xs = [i + (k - (len(THREADS) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, [r[key] for r in rows], width, label=f"{t} thread{'s' if t > 1 else ''}")
        ax.set_xticks(range(len(rows)), [r["backend"] for r in rows])
        ax.set_yscale("log")
        ax.set_ylabel("reads / second (log)")
        ax.set_title(f"{mode} reads, {PATCH} px" + (" at random positions" if mode == "patch" else ""), fontsize=10)
        ax.legend(fontsize=8)
    info = result["machine"]
    fig.suptitle(f"{result['config']['size']}^2 slide -- {machine_line(info)} -> {info['loadavg_1min_after']} after",
                 fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="level-0 edge of the synthetic slide")
    parser.add_argument("--reads", type=int, default=400, help="reads per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "read_region.json")
    args = parser.parse_args(argv)

    info = {**machine_info(), "libjpeg-turbo": imagecodecs.jpeg8_version()}  # the load average before the runs
    with tempfile.TemporaryDirectory() as tmp:
        image = texture(args.size, args.seed)
        svs, zarr_dir = Path(tmp) / "bench.svs", Path(tmp) / "bench.ome.zarr"
        write_svs(svs, image)
        write_ome_zarr(zarr_dir, image)
        slides = {
            "openslide": open_slide(svs, backend="openslide"),
            "tiff": open_slide(svs),
            "ome-zarr": open_slide(zarr_dir),
            "numpy": open_slide(image),
        }
        assert slides["tiff"].backend == "tiff"
        rows = []
        for mode in ("patch", "tile"):
            for name, slide in slides.items():
                rate = measure(slide, mode, args.reads, args.repeats, args.seed)
                rows.append(
                    {
                        "backend": name,
                        "read": mode,
                        **{f"per_s_{t}_thread{'s' if t > 1 else ''}": round(rate[t], 1) for t in THREADS},
                        "scaling_2_over_1": round(rate[2] / rate[1], 2),
                    }
                )
        file_mib = round(svs.stat().st_size / 2**20, 1)

    per_s = {(r["read"], r["backend"]): r["per_s_2_threads"] for r in rows}
    result = {
        "benchmark": "read_region",
        "seed": args.seed,
        "machine": {**info, "loadavg_1min_after": round(os.getloadavg()[0], 2)},
        "config": {
            "size": args.size,
            "tile": TILE,
            "patch": PATCH,
            "reads": args.reads,
            "repeats": args.repeats,
            "seed": args.seed,
            "svs_mib": file_mib,
            "jpeg_quality": 90,
        },
        "results": rows,
        "summary": [
            summary_row(
                f"{mode} reads per second, 2 threads ({args.size}^2 slide)", ", ".join(f"{name} {per_s[mode, name]:.0f}" for name in slides)
            )
            for mode in ("patch", "tile")
        ],  # fmt: skip
    }
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))

    info = result["machine"]
    print(
        f"{info['cpu']}, {info['usable_cores']} cores,"
        f" load {info['load_average'][0]:.1f} -> {info['loadavg_1min_after']:.1f};"
        f" {args.size}^2 slide, {file_mib} MiB JPEG TIFF\n"
    )
    print("| read | backend | 1 thread /s | 2 threads /s | scaling |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        cells = [row["read"], row["backend"], row["per_s_1_thread"], row["per_s_2_threads"], row["scaling_2_over_1"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
