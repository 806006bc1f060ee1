"""What every script in ``benchmarks/`` shares: where results go, the machine, clean memory figures, output files.

Why one module: each benchmark must state the machine and versions it ran on, measure peak
memory in a fresh process (a process that has already imported or allocated something else
says nothing about the work), reuse the same cached synthetic slides, and write its JSON,
plot and table the same way -- so `run.py` can collect them into one README.

Benchmarks run from a source checkout, as scripts: ``python benchmarks/NAME.py``, where
``benchmarks/`` is ``sys.path[0]``, so each starts with ``from harness import ...``. Importing
this module puts the checkout's root first on ``sys.path``: the code measured is the code
beside the benchmark, whatever copy of wsi-ats is installed.

Layout: results in ``benchmarks/results/<name>.json`` (+ ``.png``), synthetic slides and
other regenerable inputs in ``benchmarks/results/tmp/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The checkout root: benchmarks live in ``ROOT/benchmarks``, the package in ``ROOT/wsi_ats``.
ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results"
#: Regenerable inputs (synthetic slides, cohorts) and quick-run outputs; git-ignored.
CACHE = RESULTS / "tmp"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_VERSIONS = ("numpy", "torch", "dask", "distributed", "zarr", "tifffile", "imagecodecs", "openslide-python", "scikit-learn")


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, GPU, library versions and load average: what a figure depends on.

    Call it before measuring: the load average then says how busy the machine was with
    other work (on a shared machine, wall times stretch by about ``load / cores``).
    """
    import psutil

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONS},
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        import openslide

        info["versions"]["libopenslide"] = openslide.__library_version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    """Names of the CUDA devices torch sees (empty without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# -- memory ----------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB), from ``VmHWM``.

    Not ``getrusage``: on Linux its ``ru_maxrss`` carries over the high-water mark of the
    process image replaced by ``exec``, so a child started from a large parent reports the
    parent's size. ``VmHWM`` belongs to the current image only.
    """
    return _status_mib("VmHWM")


def rss_mib() -> float:
    """This process's current resident memory (MiB): the baseline to subtract from `peak_rss_mib`."""
    return _status_mib("VmRSS")


def _status_mib(key: str) -> float:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):  # not Linux: the best figure there is, the lifetime peak
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, 1)
    return round(kib / 1024, 1)


def warm_up_slide(size: int = 1024, seed: int = 0):
    """A small in-memory slide of saturated noise: one prediction on it before timing takes the
    first-call costs (kernel selection, thread pools, lazy imports) out of the first slide's time."""
    import numpy as np

    from wsi_ats.readers import open_slide

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return open_slide(pixels, mpp=0.25)  # the synthetic slides' resolution: models that read by microns need one


def run_child(script: str | Path, args: Sequence[str]) -> dict[str, Any]:
    """Run ``python script *args`` in a fresh process and return the JSON object on its last stdout line.

    ``script`` is a benchmark (it imports this module first, so this checkout's ``wsi_ats``);
    its memory and time are its own work's; a failure raises with the child's stderr.
    """
    cmd = [sys.executable, str(script), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(cmd)} printed nothing")
    return json.loads(lines[-1])


# -- cached inputs ---------------------------------------------------------------------------------


@contextlib.contextmanager
def building(path: Path) -> Iterator[Path]:
    """A private place to build the cache entry ``path`` (file or folder), moved to ``path`` once complete.

    Concurrent runs (two test sessions, say) then never read or clobber a half-written
    entry: each builds its own and the first to finish wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        part = Path(tmp) / path.name
        yield part
        try:
            os.rename(part, path)
        except OSError:
            if not path.exists():
                raise


def cached_slide(size: int, *, seed: int = 0, positive: bool = True, fmt: str = "tiff", cache: Path = CACHE) -> Path:
    """The synthetic slide (`wsi_ats.synth.make_slide`) of ``size`` px per side, written once into ``cache``.

    Named by everything that sets its pixels, so every benchmark that asks for the same
    slide shares one file.
    """
    from wsi_ats.synth import make_slide

    suffix = {"tiff": ".tiff", "zarr": ".ome.zarr"}[fmt]
    path = cache / f"synth-{size}-seed{seed}{'' if positive else '-negative'}{suffix}"
    if not path.exists():
        print(f"writing {path} (once) ...", file=sys.stderr)
        with building(path) as part:
            make_slide(part, size, positive=positive, seed=seed, fmt=fmt, workers=os.cpu_count() or 1)
    return path


#: Rows of level-0 chunks copied at once (bounded memory whatever the size).
BAND = 256


def sparse_copy(source: Path, factor: int, cache: Path = CACHE) -> Path:
    """An OME-Zarr ``factor`` times the size of ``source`` per side holding only ``source``'s pixels (cached).

    ``source`` (a synthetic OME-Zarr) is copied into a chunk-aligned window near the centre;
    every other chunk is absent and reads as the fill value (the synthetic glass), so the
    large slide costs the small one's disk space: the same tissue on a mostly blank slide.
    """
    import zarr

    from wsi_ats.readers import open_slide
    from wsi_ats.synth.pyramid import downsamples, slide_shape

    dest = cache / f"{source.name.removesuffix('.ome.zarr')}-in-x{factor}.ome.zarr"
    if dest.exists():
        return dest
    print(f"writing {dest} (once) ...", file=sys.stderr)
    with open_slide(source) as slide:
        src_shape, mpp = slide.levels[0].shape, slide.mpp or 0.25
        src_ds = tuple(round(lv.downsample) for lv in slide.levels)
    src = zarr.open_group(source, mode="r")
    shape = slide_shape((src_shape[0] * factor, src_shape[1] * factor))
    ds = downsamples(shape)
    if src_ds != ds[: len(src_ds)]:
        raise ValueError(f"{source}: levels {src_ds} are not the first levels of {ds}")
    align = src["0"].chunks[-1] * ds[-1]  # the window starts on every level's chunk grid
    offset = tuple(max(0, (shape[i] - src_shape[i]) // 2 // align * align) for i in (0, 1))
    with building(dest) as part:
        root = zarr.open_group(part, mode="w", zarr_format=3)
        _write_sparse(root, src, len(src_ds), shape, ds, offset, mpp, dest.name.split(".")[0])
    return dest


def _write_sparse(
    root, src, copied: int, shape: tuple[int, int], ds: tuple[int, ...], offset: tuple[int, int], mpp: float, name: str
) -> None:
    """Fill ``root``: the first ``copied`` levels of ``src`` in the window at ``offset``, further levels block means of the last."""
    import numpy as np

    from wsi_ats.synth.ngff import multiscales
    from wsi_ats.synth.pyramid import STEP, block_mean

    first, window = src["0"], None
    for level, f in enumerate(ds):
        array = root.create_array(
            str(level), shape=(3, shape[0] // f, shape[1] // f), chunks=first.chunks, dtype=first.dtype,
            fill_value=first.metadata.fill_value, compressors=first.compressors, dimension_names=("c", "y", "x"),
            config={"write_empty_chunks": False},
        )  # fmt: skip
        oy, ox = offset[0] // f, offset[1] // f
        if level < copied:
            part = src[str(level)]
            for y in range(0, part.shape[1], BAND):
                band = part[:, y : y + BAND]
                array[:, oy + y : oy + y + band.shape[1], ox : ox + band.shape[2]] = band
            continue
        if window is None:  # the last copied level, 1/16 of level 0 per side or less: small
            window = np.asarray(src[str(copied - 1)][:]).transpose(1, 2, 0)
        window = block_mean(window, STEP)
        array[:, oy : oy + window.shape[0], ox : ox + window.shape[1]] = window.transpose(2, 0, 1)
    root.attrs.update({"ome": {"version": "0.5", "multiscales": multiscales(name, ds, mpp, "0.5")}})


def cached_cohort(n: int, size: int, *, seed: int = 0, n_blobs: int = 3, cache: Path = CACHE) -> Path:
    """``manifest.csv`` of a synthetic TIFF cohort (`wsi_ats.synth.make_cohort`), written once into ``cache``.

    The manifest's paths are relative to its folder, so the finished folder can be moved into place.
    """
    from wsi_ats.synth import make_cohort

    folder = cache / f"cohort-n{n}-{size}-seed{seed}{'' if n_blobs == 3 else f'-blobs{n_blobs}'}"
    if not folder.exists():
        print(f"writing {folder} (once) ...", file=sys.stderr)
        with building(folder) as part:
            make_cohort(part, n=n, size=size, formats=("tiff",), seed=seed, n_blobs=n_blobs, progress=False)
    return folder / "manifest.csv"


def demo_model(quick: bool = False, cache: Path = CACHE) -> tuple[Path, Path]:
    """``(model.pt, manifest.csv)``: the demo cohort (`wsi_ats.demo.DEMO_COHORT`) and the synthetic recipe's model on it, made once.

    The model `wsi-ats demo` trains (60 epochs, about a minute on 2 cores), shared by the
    benchmarks that need a trained one. ``quick``: 4 slides of 1024 px and one epoch, a smoke
    run. Cohort and run are each built aside and moved into place (`building`).
    """
    from wsi_ats.demo import DEMO_COHORT
    from wsi_ats.evaluate import truth_boxes
    from wsi_ats.manifest import read_manifest
    from wsi_ats.recipes import path as recipe
    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    folder = cache / ("demo-model-quick" if quick else "demo-model")
    model, manifest = folder / "run" / "model.pt", folder / "cohort" / "manifest.csv"
    if not manifest.exists():
        print(f"writing {manifest.parent} (once) ...", file=sys.stderr)
        with building(manifest.parent) as part:
            make_cohort(part, **({**DEMO_COHORT, "n": 4, "size": 1024, "n_blobs": 3} if quick else DEMO_COHORT), progress=False)
    if not model.exists():
        print(f"training {model} (once) ...", file=sys.stderr)
        rows = read_manifest(manifest)
        truth = truth_boxes(manifest.parent / "annotations", [r.slide_id for r in rows])
        with building(model.parent) as part:
            train(rows, recipe("synthetic_wsi"), part, seed=0, epochs=1 if quick else None, progress=False, truth=truth)
    return model, manifest


# -- outputs ---------------------------------------------------------------------------------------


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (`wsi_ats.outputs.atomic`), creating the folder."""
    from wsi_ats.outputs.atomic import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path


def publish(result: dict[str, Any], out: str | Path, plot: Any, table: Any) -> int:
    """How every benchmark ends: its JSON at ``out``, ``plot(result, path)`` beside it as PNG, ``table(result)`` printed; exit 0."""
    write_json(out, result)
    plot(result, Path(out).with_suffix(".png"))
    print(table(result))
    return 0


def summary_row(metric: str, value: Any, target: Any = None, met: bool | None = None) -> dict[str, Any]:
    """One headline figure for the JSON's ``summary`` list, which `run.py` puts in the results README."""
    return {"metric": metric, "value": value, "target": target, "met": None if met is None else bool(met)}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers keep the formatting the caller gave them."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(ncols: int = 1, *, width: float = 5.0, height: float = 4.0):
    """A new matplotlib figure and its axes (a list), on the Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine_line(info: dict[str, Any]) -> str:
    """One line saying where figures were measured, for tables and plot titles."""
    gpu = ", ".join(info.get("gpu") or []) or "no GPU"
    load = info.get("load_average", [None])[0]
    return f"{info.get('cpu')}, {info.get('usable_cores')} cores, {gpu}, load average {load}"
