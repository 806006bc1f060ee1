"""The same patches read the way users otherwise would: OpenSlide, tiffslide and pyvips, beside wsi-ats.

Issue 18 asks that wsi-ats's patch fetch be ahead of each common way to read the same
patches. `benchmarks/fetch.py` hands `Peers` its positions, repeat by repeat, so the
peers read exactly the patches its ``fetch`` and ``naive`` rows read, in the same run.
Each peer reads each patch with one call, the way its documentation shows:

- OpenSlide: ``OpenSlide(path).read_region((x, y), 0, (P, P))`` (RGBA, alpha dropped);
- tiffslide: ``TiffSlide(path_or_url).read_region((x, y), 0, (P, P), as_array=True)``;
- pyvips: ``Image.new_from_file(path, page=0, access="random")`` and
  ``Region.new(image).fetch(x, y, P, P)``, libvips' call for small random reads: it decodes
  in the calling thread (``crop(...).numpy()`` runs libvips' own thread pool, which would
  make thread counts incomparable). libvips' operation cache is off so that every
  thread's image is its own open file.

Threads, the same count for every reader: wsi-ats is ``fetch_patches_with_stats(...,
num_workers=T)`` (``fetch.py``'s ``fetch`` row, reused) and ``num_workers=1``; a peer
runs a ``ThreadPoolExecutor(T)`` over the patches, each task borrowing one of T handles
(one per thread: tiffslide and libvips images are not safe to share, and OpenSlide is
given the same), or a plain loop for one thread (OpenSlide's one-thread figure is
``fetch.py``'s ``naive`` row, reused). Handles are opened before the clock starts and
afresh each repeat, so no library's tile cache carries over from earlier positions.
Readers run in a rotating order from repeat to repeat. Wall and process CPU time
(all threads) are both kept: on a busy machine the CPU ratio is the steadier one.

Remote: the slide is served over HTTP with Range (`wsi_ats.testing.servers.range_http_server`,
in this process, on 127.0.0.1: the server ``benchmarks/remote.py`` uses; moto copies the whole
object per range GET, which would measure moto). tiffslide opens the URL through fsspec,
with fsspec's defaults, as a user would (its HTTP file reads ahead 5 MiB on every miss),
and once more with ``storage_options={"block_size": 65536}`` (what a user who read fsspec's
docs would set); wsi-ats through ``open_slide(url)``. Bytes fetched are counted for each
(wsi-ats: `wsi_ats.readers.remote.read_stats`; tiffslide: its fsspec file's cache counters).
OpenSlide and libvips read local files only: their remote cells say so. Loopback answers at
once, which flatters a client that sends one request at a time, so every remote read runs
twice: on loopback, and on a second server whose every answer waits `LATENCY_S` (an
object store's time to first byte is tens of milliseconds; concurrent requests wait side by
side, as they do there).

Pixels: on the first repeat of every n, the first `CHECKED` patches of every reader, local
and remote, must equal wsi-ats's local patches within `TOLERANCE` (JPEG decoders may
round differently); the largest difference seen is recorded.
"""

from __future__ import annotations

import contextlib
import queue
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import markdown_table, summary_row

from wsi_ats.engine.fetch import fetch_patches_with_stats
from wsi_ats.readers import open_slide
from wsi_ats.readers.remote import read_stats
from wsi_ats.testing.servers import range_http_server

#: Patches per reader compared with wsi-ats's, and the largest difference allowed (8-bit levels).
CHECKED, TOLERANCE = 4, 2
#: fsspec block size of the tuned tiffslide (its default, 5 MiB, reads ahead far past a 256-px tile).
SMALL_BLOCK = 2**16
WSI = "wsi-ats"
#: Time to first byte of the slower HTTP server (s).
LATENCY_S = 0.02
LOCAL, HTTP, LATENT = "local", "HTTP Range", f"HTTP Range +{LATENCY_S * 1000:.0f} ms"
PLACES = (LOCAL, HTTP, LATENT)
LATENCIES = {HTTP: 0.0, LATENT: LATENCY_S}


@dataclass(frozen=True)
class Peer:
    """One other library: how it opens a slide and reads one RGB patch (``read(handle, y, x, size)``)."""

    name: str
    call: str
    open: Callable[[str], Any]
    read: Callable[[Any, int, int, int], np.ndarray]
    urls: str | None = None  # None: it reads URLs; else why it cannot
    local: bool = True  # False: a remote-only variant (locally it is another peer)
    fetched: Callable[[Any], int] | None = None  # bytes a handle has fetched from a URL so far
    close: Callable[[Any], None] = lambda h: h.close()


def _openslide() -> Peer:
    import openslide

    def read(h, y: int, x: int, p: int) -> np.ndarray:
        return np.asarray(h.read_region((x, y), 0, (p, p)))[..., :3]

    return Peer("OpenSlide", "OpenSlide(path).read_region((x, y), 0, (P, P))", openslide.OpenSlide, read,
                urls="cannot read URLs (local files only)")  # fmt: skip


def _tiffslide() -> list[Peer]:
    import tiffslide

    def read(h, y: int, x: int, p: int) -> np.ndarray:
        return h.read_region((x, y), 0, (p, p), as_array=True)

    def fetched(h) -> int:
        return h.ts_tifffile.filehandle._fh.cache.total_requested_bytes  # fsspec's HTTPFile and its BytesCache

    def small_blocks(url: str):
        return tiffslide.TiffSlide(url, storage_options={"block_size": SMALL_BLOCK})

    call = "TiffSlide(path_or_url).read_region((x, y), 0, (P, P), as_array=True)"
    return [Peer("tiffslide", call, tiffslide.TiffSlide, read, fetched=fetched),
            Peer("tiffslide 64 KiB", f'the same, TiffSlide(url, storage_options={{"block_size": {SMALL_BLOCK}}})', small_blocks, read,
                 local=False, fetched=fetched)]  # fmt: skip


def _pyvips() -> Peer:
    import pyvips

    pyvips.cache_set_max(0)  # new_from_file is a cached operation: without this every thread shares one image

    def open_(path: str):
        return pyvips.Image.new_from_file(path, page=0, access="random")

    def read(h, y: int, x: int, p: int) -> np.ndarray:
        data = pyvips.Region.new(h).fetch(x, y, p, p)
        return np.ndarray((p, p, h.bands), np.uint8, data)[..., :3]

    return Peer("pyvips", 'Image.new_from_file(path, page=0, access="random"), Region.new(image).fetch(x, y, P, P)', open_, read,
                urls="cannot read URLs (libvips loads local files and memory only)", close=lambda h: None)  # fmt: skip


def peers() -> list[Peer]:
    """The peers, imported here: a missing one is an ImportError naming it and the extras that install it."""
    try:
        return [_openslide(), *_tiffslide(), _pyvips()]
    except ImportError as e:
        raise ImportError(f"benchmarks/peers.py needs {e.name}: pip install -e '.[test]' (tiffslide, pyvips, pyvips-binary)") from e


@contextlib.contextmanager
def opened(peer: Peer, source: str, count: int) -> Iterator[list[Any]]:
    """``count`` fresh handles of ``source`` (one per thread), closed on exit."""
    handles: list[Any] = []
    try:
        handles.extend(peer.open(source) for _ in range(count))
        yield handles
    finally:
        for h in handles:
            peer.close(h)


def read_all(peer: Peer, handles: Sequence[Any], tops: np.ndarray, patch: int) -> tuple[list[np.ndarray], float, float]:
    """Every patch read by ``peer`` on ``len(handles)`` threads, one handle each; (patches, wall s, CPU s)."""
    corners = [(int(y), int(x)) for y, x in tops]
    if len(handles) == 1:
        cpu, start = time.process_time(), time.perf_counter()
        out = [peer.read(handles[0], y, x, patch) for y, x in corners]
        return out, time.perf_counter() - start, time.process_time() - cpu
    free: queue.SimpleQueue = queue.SimpleQueue()
    for h in handles:
        free.put(h)

    def one(corner: tuple[int, int]) -> np.ndarray:
        h = free.get()
        try:
            return peer.read(h, *corner, patch)
        finally:
            free.put(h)

    with ThreadPoolExecutor(len(handles)) as pool:
        list(pool.map(lambda _: time.sleep(0.001), range(len(handles))))  # the threads exist before the clock starts
        cpu, start = time.process_time(), time.perf_counter()
        out = list(pool.map(one, corners))
        return out, time.perf_counter() - start, time.process_time() - cpu


def max_difference(patches: Sequence[np.ndarray], reference: np.ndarray) -> int:
    """Largest absolute difference between ``patches`` and the first ``len(patches)`` reference patches."""
    return max(int(np.abs(p.astype(np.int16) - reference[i]).max()) for i, p in enumerate(patches))


@dataclass(frozen=True)
class Sample:
    """One timed read of all n patches: wall and process CPU seconds, and the bytes fetched from a URL."""

    wall: float
    cpu: float | None = None  # None: not measured (fetch.py's naive row)
    fetched: int | None = None  # None: local, or not counted


class Peers:
    """The peers' reads of ``fetch.py``'s positions; `result` is its JSON's ``peers`` entry.

    A context manager: it serves the slide's folder over HTTP with Range while open.
    """

    def __init__(self, path: Path, patch: int, threads: int, latency: bool = True) -> None:
        """``latency=False`` leaves out the server with latency (``fetch.py --quick``: it costs seconds)."""
        self.path, self.patch, self.threads = path, patch, threads
        self.places = PLACES if latency else PLACES[:2]
        self.peers = {p.name: p for p in peers()}
        self._stack = contextlib.ExitStack()
        #: n -> (where, threads, reader) -> one `Sample` per repeat
        self._samples: dict[int, dict[tuple[str, int, str], list[Sample]]] = defaultdict(lambda: defaultdict(list))
        self._diff: dict[str, int] = {}
        self._checked: set[int] = set()
        self._rotation = 0

    def __enter__(self) -> Peers:
        self.sources = {LOCAL: str(self.path)}
        for where in self.places[1:]:
            base = self._stack.enter_context(range_http_server(self.path.parent, latency=LATENCIES[where]))
            self.sources[where] = f"{base}/{self.path.name}"
        self.slides = {where: open_slide(source) for where, source in self.sources.items()}
        warm = np.array([[0, 0]])
        for slide in self.slides.values():  # first-call costs (handle cache, thread pool) out of the timing
            fetch_patches_with_stats(slide, 0, warm, self.patch, num_workers=self.threads)
        for peer in self.peers.values():
            for where in self._places(peer):
                with opened(peer, self.sources[where], 1) as handles:
                    read_all(peer, handles, warm, self.patch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _places(self, peer: Peer) -> list[str]:
        return [*([LOCAL] if peer.local else []), *([] if peer.urls else self.places[1:])]

    def _jobs(self) -> list[tuple[str, int, str]]:
        """What `measure` times itself: every reader, place and thread count but fetch.py's two rows."""
        jobs = [(where, t, WSI) for where in self.places for t in (self.threads, 1)]
        jobs += [(where, t, p.name) for p in self.peers.values() for where in self._places(p) for t in (self.threads, 1)]
        return [j for j in dict.fromkeys(jobs) if j not in ((LOCAL, self.threads, WSI), (LOCAL, 1, "OpenSlide"))]

    def measure(self, n: int, tops: np.ndarray, fetched: dict[str, float]) -> None:
        """Time every reader on ``tops`` (one repeat); ``fetched``: this repeat's ``fetch``, ``fetch_cpu`` and ``naive`` seconds."""
        samples = self._samples[n]
        samples[LOCAL, self.threads, WSI].append(Sample(fetched["fetch"], fetched["fetch_cpu"]))
        samples[LOCAL, 1, "OpenSlide"].append(Sample(fetched["naive"]))
        reference = None
        if n not in self._checked:  # the first repeat at this n: check the pixels too
            self._checked.add(n)
            reference = fetch_patches_with_stats(self.slides[LOCAL], 0, tops[:CHECKED], self.patch, num_workers=1)[0]
        jobs = self._jobs()
        self._rotation = (self._rotation + 1) % len(jobs)
        for where, threads, name in jobs[self._rotation :] + jobs[: self._rotation]:
            sample, got = self._read(where, threads, name, tops)
            samples[where, threads, name].append(sample)
            if reference is not None:
                self._check(f"{name}, {where}", got, reference)

    def _read(self, where: str, threads: int, name: str, tops: np.ndarray) -> tuple[Sample, Sequence[np.ndarray]]:
        if name == WSI:
            source = self.sources[where]
            before, cpu = read_stats(source), time.process_time()
            patches, stats = fetch_patches_with_stats(self.slides[where], 0, tops, self.patch, num_workers=threads)
            cpu = time.process_time() - cpu
            return Sample(stats.seconds, cpu, (read_stats(source) - before).bytes if where != LOCAL else None), patches[:CHECKED]
        peer = self.peers[name]
        count = peer.fetched if where != LOCAL else None
        with opened(peer, self.sources[where], threads) as handles:
            before = sum(map(count, handles)) if count else 0
            patches, wall, cpu = read_all(peer, handles, tops, self.patch)
            return Sample(wall, cpu, sum(map(count, handles)) - before if count else None), patches[:CHECKED]

    def _check(self, key: str, got: Sequence[np.ndarray], reference: np.ndarray) -> None:
        diff = max_difference(got, reference)
        self._diff[key] = max(diff, self._diff.get(key, 0))
        if diff > TOLERANCE:
            raise AssertionError(f"{key}: patches differ from wsi-ats's by up to {diff} levels (> {TOLERANCE})")

    def result(self) -> dict[str, Any]:
        """Medians per n, place, threads and reader, and "wsi-ats ahead" ratios (medians of per-repeat ratios)."""
        rows = [{"n": n, "where": where, "threads": t, **self._row(samples, where, t)}
                for n, samples in self._samples.items() for where in self.places for t in (self.threads, 1)]  # fmt: skip
        return {
            "readers": {WSI: "fetch_patches_with_stats(slide, 0, tops, P, num_workers=T)"} | {p.name: p.call for p in self.peers.values()},
            "cannot_read_urls": {p.name: p.urls for p in self.peers.values() if p.urls},
            "remote": "HTTP with Range (wsi_ats.testing.servers.range_http_server) in the benchmark's process, on 127.0.0.1; "
            f"'{LATENT}': every answer waits {LATENCY_S} s first",
            "threads": self.threads,
            "pixels": {"patches_checked_per_reader": CHECKED, "tolerance": TOLERANCE, "max_abs_difference": self._diff},
            "results": rows,
            "samples": {f"n={n} | {where} | {t} threads | {name}": [[round(s.wall, 4), s.cpu and round(s.cpu, 4), s.fetched] for s in runs]
                        for n, samples in self._samples.items() for (where, t, name), runs in samples.items()},
            "samples_are": "per repeat, in order: [wall s, process CPU s or null, bytes fetched or null]",
        }  # fmt: skip

    def _row(self, samples: dict[tuple[str, int, str], list[Sample]], where: str, threads: int) -> dict[str, Any]:
        ours = samples[where, threads, WSI]
        row: dict[str, Any] = {"seconds": {}, "cpu_seconds": {}, "ahead": {}, "ahead_cpu": {}, "mib_fetched": {}}
        for name in (WSI, *self.peers):
            theirs = samples.get((where, threads, name))
            if not theirs:
                continue
            row["seconds"][name] = round(statistics.median(s.wall for s in theirs), 4)
            if theirs[0].cpu is not None:
                row["cpu_seconds"][name] = round(statistics.median(s.cpu for s in theirs), 4)
            if theirs[0].fetched is not None:
                row["mib_fetched"][name] = round(statistics.median(s.fetched for s in theirs) / 2**20, 2)
            if name != WSI:
                row["ahead"][name] = round(statistics.median(s.wall / o.wall for s, o in zip(theirs, ours)), 2)
                if theirs[0].cpu is not None:
                    row["ahead_cpu"][name] = round(statistics.median(s.cpu / o.cpu for s, o in zip(theirs, ours)), 2)
        return row


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows for ``fetch.json``'s summary: wsi-ats ahead of each peer at the largest n on T threads, local and with latency."""
    n, t = max(r["n"] for r in result["results"]), result["threads"]
    rows = []
    for r in result["results"]:
        if r["n"] == n and r["threads"] == t and r["where"] != HTTP:
            for name, wall in r["ahead"].items():
                cpu = r["ahead_cpu"][name]
                metric = f"{name} / wsi-ats, n = {n}, {t} threads, {r['where']}: time (process CPU time)"
                rows.append(summary_row(metric, f"{wall}x ({cpu}x)", "> 1", min(wall, cpu) > 1))
    return rows


def markdown(result: dict[str, Any]) -> str:
    """Seconds per reader and "wsi-ats ahead of each" (their time / ours, wall and CPU), one row per n, place and threads."""
    names = [p for p in result["readers"] if p != WSI]
    headers = ["n", "where", "threads", f"{WSI} (s)", *(f"{p} (s)" for p in names), *(f"ahead of {p} (wall / CPU)" for p in names)]
    rows = []
    for r in result["results"]:
        cannot = "cannot read URLs" if r["where"] != LOCAL else "-"
        secs = [f"{r['seconds'][p]:.3f}" if p in r["seconds"] else cannot if p in result["cannot_read_urls"] else "-" for p in names]
        ahead = [f"{r['ahead'][p]:.2f}x / " + (f"{r['ahead_cpu'][p]:.2f}x" if p in r["ahead_cpu"] else "-") if p in r["ahead"] else "-"
                 for p in names]  # fmt: skip
        rows.append([r["n"], r["where"], r["threads"], f"{r['seconds'][WSI]:.3f}", *secs, *ahead])
    fetched = [r for r in result["results"] if r["mib_fetched"]]
    remote = [p for p in result["readers"] if any(p in r["mib_fetched"] for r in fetched)]
    bytes_rows = [[r["n"], r["where"], r["threads"], *(f"{r['mib_fetched'][p]:.1f}" for p in remote)] for r in fetched]
    diff = ", ".join(f"{k} {v}" for k, v in result["pixels"]["max_abs_difference"].items())
    return "\n\n".join([
        "Peers: the same patches read by other libraries (ahead = their time / wsi-ats's, median of per-repeat ratios)",
        markdown_table(headers, rows),
        "MiB fetched over HTTP for the n patches",
        markdown_table(["n", "where", "threads", *remote], bytes_rows),
        f"Largest pixel difference from wsi-ats (first {result['pixels']['patches_checked_per_reader']} patches per n): {diff}.",
    ])  # fmt: skip


def plot_onto(ax, result: dict[str, Any]) -> None:
    """The peers' seconds against n on ``fetch.py``'s time axis: local and over HTTP (with latency if measured), on T threads."""
    t = result["threads"]
    remote = LATENT if any(r["where"] == LATENT for r in result["results"]) else HTTP
    for where, style in ((LOCAL, ":"), (remote, "-.")):
        rows = [r for r in result["results"] if r["where"] == where and r["threads"] == t]
        for name in result["readers"]:
            if (name == WSI and where == LOCAL) or name not in rows[0]["seconds"]:
                continue  # wsi-ats local on T threads is fetch.py's own line
            ax.plot([r["n"] for r in rows], [r["seconds"][name] for r in rows], "x" + style, label=f"{name}, {where}, {t} threads")
