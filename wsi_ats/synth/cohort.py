"""Synthetic labelled cohorts: slides, ground truth and `manifest.csv`, all from one seed.

Slide i of n (everything a function of (seed, i), so a cohort is reproducible slide by slide):
- `slide_id` = `slide_{i:03d}`; label `COHORTS[classes][i % classes]`: with 2 classes `positive`
  (lesions) for even i, `negative` (mimics) for odd i; with 3, `lesion_a` (solid lesions),
  `lesion_b` (acinar lesions), `negative` (mimics) in turn;
- format = `formats[(i // classes) % len(formats)]`: each label gets every format equally often, so
  the container (JPEG TIFF or lossless zarr) says nothing about the label;
- split, per label in index order: the first 60 % train, then 20 % val, the last 20 % test
  (one test slide per label as soon as a label has two; the test slides are the highest indices).

Layout: `OUT/manifest.csv`, `OUT/slides/<slide_id>.tiff` or `.ome.zarr`,
`OUT/annotations/<slide_id>.geojson`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_ats.manifest import ManifestRow, write_manifest
from wsi_ats.progress import progress_bar
from wsi_ats.synth.annotations import write_geojson
from wsi_ats.synth.ngff import write_ome_zarr
from wsi_ats.synth.pyramid import slide_shape
from wsi_ats.synth.scene import TILE, Scene, make_scene
from wsi_ats.synth.tiff import write_tiff

SUFFIXES = {"tiff": ".tiff", "zarr": ".ome.zarr"}
#: Per number of classes, each class's label and the kind of blob (`wsi_ats.synth.scene.BLOB_KINDS`) its slides hold.
COHORTS = {
    2: (("positive", "lesion"), ("negative", "mimic")),
    3: (("lesion_a", "lesion_a"), ("lesion_b", "lesion_b"), ("negative", "mimic")),
}
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


@dataclass(frozen=True)
class SlideSpec:
    """One slide of a cohort plan."""

    slide_id: str
    label: str
    kind: str
    fmt: str
    seed: int
    split: str

    @property
    def relpath(self) -> str:
        return f"slides/{self.slide_id}{SUFFIXES[self.fmt]}"


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".tif", ".tiff", ".svs")):
        return "tiff"
    if name.endswith(".zarr"):
        return "zarr"
    raise ValueError(f"{path}: cannot tell the format from the name; pass fmt='tiff' or 'zarr'")


def make_slide(
    path: str | Path,
    size: int | tuple[int, int],
    *,
    positive: bool | None = None,
    kind: str | None = None,
    seed: int,
    fmt: str | None = None,
    n_blobs: int = 3,
    mpp: float = 0.25,
    zarr_version: str = "0.5",
    workers: int = 1,
    progress: bool = False,
) -> Scene:
    """Write one synthetic slide and return its scene (the ground truth: `scene.blobs`).

    Its blobs are `kind` (`wsi_ats.synth.scene.BLOB_KINDS`), or lesions / mimics by `positive`.
    `size` is the level-0 edge (or (height, width)), rounded up to whole 256-px tiles; `fmt` is
    taken from the suffix when omitted (`.tif`/`.tiff`/`.svs`: TIFF, `.zarr`: OME-Zarr).
    `workers` threads render (and, for TIFF, JPEG-encode) tiles; the output does not depend on it.
    """
    path = Path(path)
    fmt = fmt or _format_of(path)
    if fmt not in SUFFIXES:
        raise ValueError(f"{path}: format {fmt!r} is not one of {', '.join(SUFFIXES)}")
    scene = make_scene(slide_shape(size), positive=positive, kind=kind, seed=seed, n_blobs=n_blobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(total=scene.shape[0] // TILE, desc=path.name, unit="row", enabled=progress) as bar:
        if fmt == "tiff":
            write_tiff(path, scene, mpp=mpp, workers=workers, on_row=bar.update)
        else:
            write_ome_zarr(path, scene, mpp=mpp, version=zarr_version, workers=workers, on_row=bar.update)
    return scene


def _splits(count: int) -> list[str]:
    """Split names for `count` slides of one label, in order: train first, test last."""
    sizes = {name: round(count * frac) for name, frac in SPLIT_FRACTIONS}
    if count >= 2:
        sizes["test"] = max(sizes["test"], 1)
    if count >= 3:
        sizes["val"] = max(sizes["val"], 1)
    sizes["train"] = count - sizes["val"] - sizes["test"]
    return [name for name, _ in SPLIT_FRACTIONS for _ in range(sizes[name])]


def plan_cohort(n: int, formats: Sequence[str] = ("tiff", "zarr"), seed: int = 0, classes: int = 2) -> list[SlideSpec]:
    """The deterministic plan of an n-slide cohort of `classes` classes (see the module docstring)."""
    if classes not in COHORTS:
        raise ValueError(f"a synthetic cohort has {' or '.join(map(str, COHORTS))} classes, not {classes}")
    if n < classes:
        raise ValueError(f"a cohort needs at least {classes} slides (one per label), got n={n}")
    formats = tuple(formats)
    bad = [f for f in formats if f not in SUFFIXES]
    if bad or not formats:
        raise ValueError(f"unknown slide format(s) {bad or formats!r}; choose from {', '.join(SUFFIXES)}")
    split: dict[int, str] = {}
    for c in range(classes):
        members = range(c, n, classes)
        split.update(zip(members, _splits(len(members))))
    return [
        SlideSpec(
            f"slide_{i:03d}",
            *COHORTS[classes][i % classes],
            formats[(i // classes) % len(formats)],
            int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
            split[i],
        )
        for i in range(n)
    ]


def _make_one(out: Path, spec: SlideSpec, size: int | tuple[int, int], n_blobs: int, mpp: float, zarr_version: str) -> None:
    scene = make_slide(
        out / spec.relpath, size, kind=spec.kind, seed=spec.seed, fmt=spec.fmt, n_blobs=n_blobs, mpp=mpp, zarr_version=zarr_version
    )
    write_geojson(out / "annotations" / f"{spec.slide_id}.geojson", scene)


def make_cohort(
    out_dir: str | Path,
    n: int = 12,
    size: int | tuple[int, int] = 8192,
    formats: Sequence[str] = ("tiff", "zarr"),
    seed: int = 0,
    *,
    classes: int = 2,
    n_blobs: int = 3,
    mpp: float = 0.25,
    zarr_version: str = "0.5",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a balanced synthetic cohort into `out_dir`; returns the path of its `manifest.csv`.

    `classes` 2 (`positive`, `negative`) or 3 (`lesion_a`, `lesion_b`, `negative`; see `COHORTS`);
    `n_blobs` lesions or mimics per slide, `mpp` the level-0 micrometres
    per pixel the files state. Slides are made in `workers` processes (default: one per CPU);
    the files do not depend on it.
    """
    out = Path(out_dir)
    plan = plan_cohort(n, formats, seed, classes)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, n)
    jobs = [(out, spec, size, n_blobs, mpp, zarr_version) for spec in plan]
    with progress_bar(total=n, desc="synth", unit="slide", enabled=progress) as bar:
        if workers == 1:
            for job in jobs:
                _make_one(*job)
                bar.update()
        else:
            # spawn: zarr keeps an event-loop thread, which a forked child would inherit broken.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for fut in [pool.submit(_make_one, *job) for job in jobs]:
                    fut.result()
                    bar.update()
    manifest = out / "manifest.csv"
    write_manifest(manifest, [ManifestRow(s.slide_id, str((out / s.relpath).resolve()), s.label, s.split) for s in plan])
    return manifest
