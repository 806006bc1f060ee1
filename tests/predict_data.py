"""Inputs of the batch-prediction tests: a tiny trained model, its cohort, and folders of good and bad slides.

Built once per test session on disk under pytest's base temporary folder, so the
pipeline tests and the CLI tests (separate modules) share one training run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "pipelines" / "synthetic_wsi.toml"
#: Synthetic slides: 1024 px (levels 1, 4, 16); slides 0-1 are TIFF, 2-3 OME-Zarr.
COHORT = {"n": 4, "size": 1024, "formats": ("tiff", "zarr"), "seed": 0}
#: What the bad inputs of `mixed_folder` are called, and the good ones.
BAD_FILES = ("truncated", "text", "empty")
GOOD = ("good_tiff", "good_zarr")
#: Generous: a CLI run imports torch, loads the model and predicts a few tiny slides.
TIMEOUT = 180


def cli_env() -> dict[str, str]:
    """The environment of the CLI: this repository importable whether or not it is installed."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def trained_model(base: Path) -> tuple[Path, Path]:
    """``(model.pt, manifest.csv)``: one epoch of the synthetic recipe on a 4-slide cohort (made once)."""
    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    root = base / "predict-model"
    model, manifest = root / "run" / "model.pt", root / "cohort" / "manifest.csv"
    if not model.exists():
        make_cohort(root / "cohort", **COHORT, workers=1, progress=False)
        train(manifest, RECIPE, root / "run", seed=0, epochs=1, device="cpu", progress=False)
    return model, manifest


def cohort_slides(manifest: Path) -> list[Path]:
    """The cohort's slide paths: two TIFFs, then two OME-Zarr stores."""
    return sorted((manifest.parent / "slides").iterdir())


def copy_slide(src: Path, dst: Path) -> Path:
    """A slide copied under a new name (a zarr store is a folder)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def mixed_folder(dst: Path, manifest: Path) -> Path:
    """``dst`` with a good TIFF and a good OME-Zarr, a truncated TIFF, a text file named ``.svs``,
    an empty ``.tiff`` (each fails its own row) and a ``README.txt`` (skipped with a note)."""
    tiff, _, zarr, _ = cohort_slides(manifest)
    copy_slide(tiff, dst / "good_tiff.tiff")
    copy_slide(zarr, dst / "nested" / "good_zarr.ome.zarr")
    data = tiff.read_bytes()
    (dst / "truncated.tiff").write_bytes(data[: len(data) // 2])
    (dst / "text.svs").write_text("this is not a slide\n")
    (dst / "empty.tiff").write_bytes(b"")
    (dst / "README.txt").write_text("notes about the slides\n")
    return dst
