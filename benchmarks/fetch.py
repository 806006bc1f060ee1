"""Patch fetch (`wsi_ats.engine.fetch`) against the physical decode limit and naive per-patch OpenSlide reads.

On a synthetic Aperio-like JPEG TIFF (``wsi_ats.synth.make_slide``, 40k x 40k by default,
cached under ``benchmarks/results/tmp/``), for n = 16, 64, 256 patches of 256 px at level 0
placed uniformly at random inside tissue (Otsu tissue mask of the slide, fresh positions
each repeat, seeded), it times, in the same run and with the same number of threads:

- ``limit``: the physical limit -- the compressed bytes of exactly the covering tiles, read
  beforehand, decoded in a tight loop (tifffile ``page.decode``, imagecodecs under it), the
  tiles split evenly across the threads; nothing is assembled;
- ``fetch``: `wsi_ats.engine.fetch.fetch_patches_with_stats` on threads (the tile queue);
- ``naive``: one ``openslide.OpenSlide.read_region`` per patch, one thread;
- the peers (`peers.py`): OpenSlide, tiffslide and pyvips per patch on 1 and the same number
  of threads, local and (tiffslide) over HTTP Range, with and without latency, beside wsi-ats
  over the same URL, under the JSON's ``peers`` key (``--quick``: the first n only, no latency).

Wall time and process CPU time (all threads) are both recorded: on a shared, busy machine
the CPU ratio still shows the overhead of fetch over pure decoding.

Optionally also the same fetch on a local ``dask.distributed`` cluster (``--distributed``), and the peak RSS
of a fresh process that fetches the largest n once (its ``VmHWM``).
Medians of ``--repeats`` runs; ``fetch_over_limit`` is the median of the per-repeat ratios
(limit and fetch run back to back on the same positions, in alternating order, so a busy
machine slows both alike). Writes ``benchmarks/results/fetch.json`` and ``.png`` (``--quick``: a small slide, two
repeats, ``benchmarks/results/tmp/fetch-quick.json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from harness import (
    CACHE,
    RESULTS,
    cached_slide,
    figure,
    machine_info,
    machine_line,
    peak_rss_mib,
    publish,
    run_child,
    save_figure,
    summary_row,
)
from peers import Peers, plot_onto
from peers import markdown as peers_markdown
from peers import summary as peers_summary

from wsi_ats.engine.fetch import fetch_patches_with_stats
from wsi_ats.readers import open_slide

#: Fetch time over the physical limit that issue 18 asks for (n >= 64), and the RSS ceiling (n = 256).
TARGET_RATIO, TARGET_RSS_MB = 1.2, 1024


def tissue_corners(slide, n: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """n level-0 top-left corners of patches centred uniformly at random in tissue."""
    from wsi_ats.engine.tissue import tissue_mask

    mask = tissue_mask(slide)
    cells = np.argwhere(mask.mask)
    if not len(cells):
        raise SystemExit(f"{slide.name}: no tissue found")
    pick = cells[rng.integers(0, len(cells), n)]
    centres = (pick + rng.random((n, 2))) * mask.downsample
    return np.floor(centres - patch / 2).astype(np.int64)


def covering_tiles(slide, tops: np.ndarray, patch: int) -> list[tuple[int, int]]:
    return sorted(set().union(*(slide.tiles_covering(0, (int(y), int(x)), (patch, patch)) for y, x in tops)))


class DecodeLimit:
    """Raw level-0 tile decoding with tifffile, the same decoder the fast TIFF reader ends in."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.tif = tifffile.TiffFile(path)
        self.page = self.tif.pages.first
        self.cols = -(-self.page.imagewidth // self.page.tilewidth)
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, tiles: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        page, out = self.page, []
        for ty, tx in tiles:
            i = ty * self.cols + tx
            out.append((i, os.pread(self.fd, page.databytecounts[i], page.dataoffsets[i])))
        return out

    def seconds(self, segments: list[tuple[int, bytes]], threads: int) -> float:
        decode, tables = self.page.decode, self.page.jpegtables

        def loop(part: list[tuple[int, bytes]]) -> None:
            for i, data in part:
                decode(data, i, jpegtables=tables)

        parts = [segments[k::threads] for k in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            list(pool.map(loop, parts))
            return time.perf_counter() - start

    def close(self) -> None:
        os.close(self.fd)
        self.tif.close()


def naive_seconds(path: Path, tops: np.ndarray, patch: int) -> float:
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        start = time.perf_counter()
        for y, x in tops:
            np.asarray(osr.read_region((int(x), int(y)), 0, (patch, patch)))[..., :3]
        return time.perf_counter() - start


def peak_rss(path: Path, n: int, patch: int, threads: int, seed: int) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process that opens the slide and fetches n patches once."""
    return run_child(__file__, ["--rss-probe", path, "--n", n, "--patch", patch, "--threads", threads, "--seed", seed])


def _rss_probe(path: Path, n: int, patch: int, threads: int, seed: int) -> None:
    slide = open_slide(path)
    tops = tissue_corners(slide, n, patch, np.random.default_rng(seed))
    before = peak_rss_mib()
    patches, _ = fetch_patches_with_stats(slide, 0, tops, patch, num_workers=threads)
    print(json.dumps({"before_fetch_mb": before, "peak_mb": peak_rss_mib(), "patches_mb": patches.nbytes / 2**20}))


def run(args: argparse.Namespace) -> dict[str, object]:
    path = cached_slide(args.size, seed=args.seed, cache=args.cache)
    info = machine_info()  # before the runs, so the load average is the other processes'
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_local_client(args.threads)) if args.distributed else None
        peers = stack.enter_context(Peers(path, args.patch, args.threads, latency=not args.quick))
        rows = _time_all(args, path, client, peers)
    rss = peak_rss(path, max(args.n), args.patch, args.threads, args.seed)
    checked = [row["fetch_over_limit"] for row in rows if row["n"] >= 64]
    worst = max(checked, default=float("nan"))
    slide, others = open_slide(path), peers.result()
    return {
        "benchmark": "fetch",
        "slide": {"size": list(slide.levels[0].shape), "tile": list(slide.tile_shape(0)), "format": "Aperio-like "
                  "JPEG TIFF (wsi_ats.synth, Q90)", "file_mb": round(path.stat().st_size / 2**20, 1)},
        "patch": args.patch, "threads": args.threads, "repeats": args.repeats, "seed": args.seed,
        "positions": "uniform in tissue (Otsu mask)", "machine": info, "results": rows,
        "peak_rss_mb": rss,
        "peers": others,
        "target": {"fetch_over_limit_max": TARGET_RATIO, "for_n_at_least": 64, "peak_rss_mb_max": TARGET_RSS_MB},
        "meets_target": bool(checked and worst <= TARGET_RATIO and rss["peak_mb"] <= TARGET_RSS_MB),
        "summary": [
            summary_row(f"fetch / decode limit, worst n >= 64 ({args.patch}-px patches, {args.threads} threads)",
                        round(worst, 3), f"<= {TARGET_RATIO}", bool(checked) and worst <= TARGET_RATIO),
            summary_row(f"the same in CPU time, all threads (load average {info['load_average'][0]} before the run)",
                        round(max((row["fetch_over_limit_cpu"] for row in rows if row["n"] >= 64), default=float("nan")), 3)),
            summary_row(f"peak RSS fetching n = {max(args.n)} (MB)", rss["peak_mb"], f"<= {TARGET_RSS_MB}",
                        rss["peak_mb"] <= TARGET_RSS_MB),
            summary_row(f"naive OpenSlide / fetch at n = {rows[-1]['n']}", f"{rows[-1]['naive_over_fetch']}x"),
            *peers_summary(others),
        ],
    }  # fmt: skip


@contextlib.contextmanager
def _local_client(workers: int):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def _time_all(args: argparse.Namespace, path: Path, client, peers: Peers) -> list[dict]:
    slide, limit = open_slide(path), DecodeLimit(path)
    threads, patch = args.threads, args.patch
    warm = tissue_corners(slide, 16, patch, np.random.default_rng([args.seed, 1]))
    fetch_patches_with_stats(slide, 0, warm, patch, num_workers=threads)  # thread pool, handle cache
    rows = []
    for n in args.n:
        times: dict[str, list[float]] = defaultdict(list)
        tiles = []
        for r in range(args.repeats):
            tops = tissue_corners(slide, n, patch, np.random.default_rng([args.seed, n, r]))
            cover = covering_tiles(slide, tops, patch)
            segments = limit.read(cover)
            steps = {"limit": partial(limit.seconds, segments, threads),
                     "fetch": partial(fetch_patches_with_stats, slide, 0, tops, patch, num_workers=threads)}  # fmt: skip
            done = {}
            for name in sorted(steps, reverse=bool(r % 2)):  # alternate the order: no order bias
                cpu = time.process_time()
                done[name] = steps[name]()
                times[f"{name}_cpu"].append(time.process_time() - cpu)
            stats = done["fetch"][1]
            assert stats.tiles == len(cover), (stats.tiles, len(cover))
            times["limit"].append(done["limit"])
            times["fetch"].append(stats.seconds)
            tiles.append(stats.tiles)
            if client is not None:
                times["distributed"].append(fetch_patches_with_stats(slide, 0, tops, patch, client=client)[1].seconds)
            times["naive"].append(naive_seconds(path, tops, patch))
            if not args.quick or n == args.n[0]:  # --quick: the peers at the first n only (seconds, not a minute)
                peers.measure(n, tops, {k: v[-1] for k, v in times.items()})
        med = {k: statistics.median(v) for k, v in times.items()}
        paired = statistics.median(f / lim for f, lim in zip(times["fetch"], times["limit"]))
        paired_cpu = statistics.median(f / lim for f, lim in zip(times["fetch_cpu"], times["limit_cpu"]))
        rows.append({
            "n": n, "tiles": int(statistics.median(tiles)), **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "fetch_over_limit": round(paired, 3), "fetch_over_limit_of_medians": round(med["fetch"] / med["limit"], 3),
            "fetch_over_limit_cpu": round(paired_cpu, 3), "naive_over_fetch": round(med["naive"] / med["fetch"], 2),
        })  # fmt: skip
    limit.close()
    return rows


def plot(result: dict, path: Path) -> Path:
    """Seconds per fetch against n for the decode limit, fetch and naive reads; fetch / limit against the target."""
    fig, (time_ax, ratio_ax) = figure(2)
    rows = result["results"]
    ns = [r["n"] for r in rows]
    labels = {"limit_s": "decode limit (covering tiles)", "fetch_s": "fetch_patches",
              "distributed_s": "fetch_patches, dask.distributed", "naive_s": "naive OpenSlide, 1 thread"}  # fmt: skip
    for key, label in labels.items():
        if key in rows[0]:
            time_ax.plot(ns, [r[key] for r in rows], "o-", label=label)
    if "peers" in result:
        plot_onto(time_ax, result["peers"])
    time_ax.set_yscale("log")
    time_ax.set_ylabel(f"seconds (median of {result['repeats']})")
    time_ax.legend(fontsize=7, framealpha=0.6)  # many lines with the peers: let them show through
    time_ax.set_title(f"{result['slide']['size'][0]}^2 JPEG TIFF, {result['threads']} threads", fontsize=10)
    ratio_ax.plot(ns, [r["fetch_over_limit"] for r in rows], "o-", label="wall")
    ratio_ax.plot(ns, [r["fetch_over_limit_cpu"] for r in rows], "s--", label="CPU (all threads)")
    ratio_ax.axhline(TARGET_RATIO, color="red", linestyle="--", linewidth=1, label=f"target (n >= 64) {TARGET_RATIO}")
    ratio_ax.axhline(1.0, color="grey", linewidth=0.8)
    for ax in (time_ax, ratio_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xticks([], minor=True)
        ax.set_xlabel(f"n patches of {result['patch']} px")
    ratio_ax.set_ylabel("fetch / decode limit")
    ratio_ax.set_ylim(0, max(2.0, *(max(r["fetch_over_limit"], r["fetch_over_limit_cpu"]) for r in rows)) * 1.05)
    ratio_ax.legend(fontsize=8)
    ratio_ax.set_title("fetch over the physical limit (median of paired ratios)", fontsize=10)
    fig.suptitle(f"patch fetch -- {machine_line(result['machine'])}", fontsize=9)
    return save_figure(fig, path)


def markdown(result: dict) -> str:
    dist = any("distributed_s" in r for r in result["results"])
    head = "| n | tiles | limit (s) | fetch (s) | fetch / limit | CPU fetch / limit |"
    head += (" distributed (s) |" if dist else "") + " naive OpenSlide (s) | naive / fetch |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["results"]:
        line = f"| {r['n']} | {r['tiles']} | {r['limit_s']:.3f} | {r['fetch_s']:.3f} | {r['fetch_over_limit']:.2f} |"
        line += f" {r['fetch_over_limit_cpu']:.2f} |"
        line += f" {r['distributed_s']:.3f} |" if dist else ""
        lines.append(line + f" {r['naive_s']:.3f} | {r['naive_over_fetch']:.1f} |")
    rss = result["peak_rss_mb"]
    n = max(r["n"] for r in result["results"])
    lines.append(f"peak RSS fetching n = {n}: {rss['peak_mb']:.0f} MB ({rss['before_fetch_mb']:.0f} MB before the "
                 f"fetch); target met: {result['meets_target']}")  # fmt: skip
    lines.append(f"{machine_line(result['machine'])} (before the run), "
                 f"{result['threads']} threads, {result['repeats']} repeats (median)")  # fmt: skip
    if "peers" in result:
        lines += ["", peers_markdown(result["peers"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small slide, two repeats (a smoke run)")
    p.add_argument("--size", type=int, default=None, help="level-0 edge of the synthetic slide (default 40000)")
    p.add_argument("--n", type=int, nargs="+", default=[16, 64, 256], help="patch counts")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None, help="runs per figure, median reported (default 7)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distributed", action="store_true", help="also time a local dask.distributed cluster")
    p.add_argument("--cache", type=Path, default=CACHE, help="where the synthetic slide is kept")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/fetch.json)")
    p.add_argument("--rss-probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_probe is not None:
        _rss_probe(args.rss_probe, max(args.n), args.patch, args.threads, args.seed)
        return 0
    args.size = args.size or (8192 if args.quick else 40000)
    args.repeats = args.repeats or (2 if args.quick else 7)
    args.out = args.out or (CACHE / "fetch-quick.json" if args.quick else RESULTS / "fetch.json")
    args.cache.mkdir(parents=True, exist_ok=True)
    result = run(args)
    return publish(result, args.out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
