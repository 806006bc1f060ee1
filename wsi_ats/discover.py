"""Turn what a user points `predict` at (files, folders, manifest rows) into a list of slides.

Folders are searched recursively by the names slides have: the extensions OpenSlide
reads and zarr stores (``*.zarr`` folders, or folders holding ``zarr.json`` /
``.zattrs`` / ``.zgroup``). Everything else in a folder is skipped with a note, so a
stray README never becomes an error row. A path named explicitly is always kept: if it
is not a slide, its own row says so. Each slide gets a unique id (file stem or manifest
id) because the id names its output folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from wsi_ats.manifest import ManifestRow

#: Single-file formats OpenSlide (or tifffile) reads; DICOM is a folder of ``.dcm`` files.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
#: A folder holding one of these is a zarr store (v3 / v2 group / v2 attributes).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")
#: Stripped from names to make ids: ``a.ome.tiff`` -> ``a``.
_ID_SUFFIXES = (*SLIDE_EXTENSIONS, ".zarr", ".ome")


@dataclass(frozen=True)
class SlideSource:
    """One slide to predict: its unique id (names ``OUT/<slide_id>/``), its absolute path, a resolution its manifest gives."""

    slide_id: str
    path: str
    mpp: float | None = None


@dataclass(frozen=True)
class Discovery:
    """The slides found, in a deterministic order, and notes on what was skipped or renamed."""

    slides: tuple[SlideSource, ...]
    notes: tuple[str, ...] = field(default=())


def is_zarr_store(path: Path) -> bool:
    """A ``*.zarr`` folder or any folder with zarr metadata at its top."""
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any((path / m).exists() for m in ZARR_MARKERS))


def is_slide_file(path: Path) -> bool:
    """By name only: reading the file is the reader's job and its failure the slide's row."""
    return path.suffix.lower() in SLIDE_EXTENSIONS


def slide_stem(path: str | Path) -> str:
    """The id a path gives: its name without slide suffixes (``x.ome.zarr`` -> ``x``), else its stem."""
    name = Path(path).name
    if Path(name).suffix.lower() not in _ID_SUFFIXES:
        return Path(name).stem or name
    while (suffix := Path(name).suffix.lower()) in _ID_SUFFIXES and Path(name).stem:
        name = name[: -len(suffix)]
    return name


def default_slide_id(source: object) -> str:
    """The id of a slide given without one: `slide_stem` of a path or URL, ``"array"`` for an in-memory image."""
    return slide_stem(str(source)) if isinstance(source, (str, os.PathLike)) else "array"


def _walk(folder: Path, notes: list[str]) -> list[tuple[str, Path]]:
    """``(id, path)`` of the slides under ``folder``, sorted by name at every depth."""
    found: list[tuple[str, Path]] = []
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    mrxs_data = {e.with_suffix("") for e in entries if e.suffix.lower() == ".mrxs"}
    dicom = [e for e in entries if e.is_file() and e.suffix.lower() == ".dcm"]
    if dicom:
        # OpenSlide opens a DICOM series from any one of its files: one slide per folder.
        found.append((folder.name, dicom[0]))
        if len(dicom) > 1:
            notes.append(f"{folder}: {len(dicom)} .dcm files read as one DICOM slide")
    for entry in entries:
        if is_zarr_store(entry):
            found.append((slide_stem(entry), entry))
        elif entry.is_dir():
            if entry not in mrxs_data:  # an .mrxs file's data folder is part of that slide
                found.extend(_walk(entry, notes))
        elif entry.suffix.lower() == ".dcm":
            continue
        elif is_slide_file(entry):
            found.append((slide_stem(entry), entry))
        else:
            notes.append(f"{entry}: skipped, not a slide (extension {entry.suffix or 'none'})")
    return found


def discover(sources: Iterable[str | os.PathLike[str] | ManifestRow]) -> Discovery:
    """Expand folders, keep files and manifest rows, and give every slide a unique id.

    Manifest ids are kept as written (the manifest already checked they are unique);
    a path-derived id that is already taken becomes ``<id>-2``, ``<id>-3``, ... in the
    order the slides were found, so the same inputs always give the same ids.
    """
    notes: list[str] = []
    candidates: list[tuple[str, str | Path, bool]] = []  # (id, path, id fixed by a manifest)
    resolution = {}  # manifest ids -> the mpp their row gives
    for src in sources:
        if isinstance(src, ManifestRow):
            candidates.append((src.slide_id, src.path, True))
            resolution[src.slide_id] = src.mpp
            continue
        if "://" in str(src):  # a URL: nothing to walk or resolve
            candidates.append((slide_stem(str(src)), str(src), False))
            continue
        path = Path(src)
        if path.is_dir() and not is_zarr_store(path):
            before = len(notes)
            found = _walk(path, notes)
            if not found and len(notes) == before:
                notes.append(f"{path}: no slides found")
            candidates.extend((sid, p, False) for sid, p in found)
        else:
            candidates.append((slide_stem(path), path, False))

    taken = {sid for sid, _, fixed in candidates if fixed}
    seen_paths: set[str] = set()
    slides: list[SlideSource] = []
    for sid, path, fixed in candidates:
        abspath = str(path) if "://" in str(path) else os.path.abspath(path)
        if not fixed:
            if abspath in seen_paths:
                notes.append(f"{path}: listed more than once, predicted once")
                continue
            unique, k = sid, 1
            while unique in taken:
                k += 1
                unique = f"{sid}-{k}"
            if unique != sid:
                notes.append(f"{path}: slide id {sid!r} already used, named {unique!r}")
            sid = unique
            taken.add(sid)
        seen_paths.add(abspath)
        slides.append(SlideSource(sid, abspath, resolution.get(sid) if fixed else None))
    return Discovery(tuple(slides), tuple(notes))
