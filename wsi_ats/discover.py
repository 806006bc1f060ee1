"""Turn what a user points `predict` at (files, folders, manifest rows) into a list of slides.

Folders are searched recursively by the names slides have: the extensions OpenSlide
reads and zarr stores (``*.zarr`` folders, or folders holding ``zarr.json`` /
``.zattrs`` / ``.zgroup``). Everything else in a folder is skipped with a note, so a
stray README never becomes an error row. A path named explicitly is always kept: if it
is not a slide, its own row says so. Folders are walked by their real location, each
once, so links to a parent (``self -> .``) or to each other neither repeat nor hang, and a
file reached by two names is predicted once.

Each slide gets a unique id (file stem or manifest id), unique also against the slides
an earlier run already put in the same ``OUT`` (`Taken`): a path-derived id that another
file holds there gets a new number, one that the same file holds is reused, so reruns
resume. A manifest id that another file holds there with a result is refused
(`SlideIdConflict`): it was the user's name, and taking it would overwrite that result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
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
class Taken:
    """A slide id an earlier run used in ``OUT``: for which path, and whether it holds a result (an ok row)."""

    path: str
    has_result: bool


class SlideIdConflict(ValueError):
    """Manifest ids that an earlier run gave, in the same ``OUT``, to other files that have results."""


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


def _walk(folder: Path, notes: list[str], visited: set[tuple[int, int]]) -> list[tuple[str, Path]]:
    """``(id, path)`` of the slides under ``folder``, sorted by name at every depth; each real folder once."""
    try:
        info = folder.stat()
        entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as err:
        notes.append(f"{folder}: skipped, cannot be read ({err.strerror or err})")
        return []
    if (info.st_dev, info.st_ino) in visited:
        notes.append(f"{folder}: skipped, already searched")  # a link back to it, or listed twice
        return []
    visited.add((info.st_dev, info.st_ino))
    found: list[tuple[str, Path]] = []
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
                found.extend(_walk(entry, notes, visited))
        elif entry.suffix.lower() == ".dcm":
            continue
        elif is_slide_file(entry):
            found.append((slide_stem(entry), entry))
        else:
            notes.append(f"{entry}: skipped, not a slide (extension {entry.suffix or 'none'})")
    return found


def discover(sources: Iterable[str | os.PathLike[str] | ManifestRow], taken: Mapping[str, Taken] | None = None) -> Discovery:
    """Expand folders, keep files and manifest rows, and give every slide a unique id.

    Manifest ids are kept as written (the manifest already checked they are unique);
    a path-derived id that is already taken -- in this run, or in ``taken`` for another
    path -- becomes ``<id>-2``, ``<id>-3``, ... in the order the slides were found, and a
    path ``taken`` already names keeps that id, so the same inputs into the same ``OUT``
    always give the same ids. Raises `SlideIdConflict` when a manifest id is ``taken``
    by another path with a result.
    """
    taken = taken or {}
    notes: list[str] = []
    visited: set[tuple[int, int]] = set()
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
            found = _walk(path, notes, visited)
            if not found and len(notes) == before:
                notes.append(f"{path}: no slides found")
            candidates.extend((sid, p, False) for sid, p in found)
        else:
            candidates.append((slide_stem(path), path, False))

    fixed_ids = {sid for sid, _, fixed in candidates if fixed}
    _refuse_conflicts([(sid, _absolute(path)) for sid, path, fixed in candidates if fixed], taken)
    by_path = {t.path: sid for sid, t in taken.items() if sid not in fixed_ids}  # earlier runs' path-derived names
    used = fixed_ids | set(taken)
    seen: dict[str, str] = {}  # real path -> the path it was first found as
    slides: list[SlideSource] = []
    for sid, path, fixed in candidates:
        abspath = _absolute(path)
        real = _real_path(abspath) if "://" not in abspath else abspath
        if not fixed:
            if real in seen:
                same = "listed more than once" if seen[real] == abspath else f"the same file as {seen[real]}"
                notes.append(f"{path}: {same}, predicted once")
                continue
            if by_path.get(abspath) is not None:
                sid = by_path.pop(abspath)  # the name an earlier run gave this file
            else:
                sid = _unique(sid, used, str(path), taken, notes)
            used.add(sid)
        seen.setdefault(real, abspath)
        slides.append(SlideSource(sid, abspath, resolution.get(sid) if fixed else None))
    return Discovery(tuple(slides), tuple(notes))


def _absolute(path: str | Path) -> str:
    """The path as a row records it: absolute, links kept; a URL as written."""
    return str(path) if "://" in str(path) else os.path.abspath(path)


def _real_path(path: str) -> str:
    """Where ``path`` really is, links resolved; a path no system call accepts (a NUL in it) stays itself."""
    try:
        return os.path.realpath(path)
    except ValueError:
        return path


def _unique(sid: str, used: set[str], path: str, taken: Mapping[str, Taken], notes: list[str]) -> str:
    """``sid``, or the first free ``<sid>-<k>`` (k = 2, 3, ...), noting why it was renamed."""
    unique, k = sid, 1
    while unique in used:
        k += 1
        unique = f"{sid}-{k}"
    if unique != sid:
        by = " in this OUT by an earlier run, for another file" if sid in taken else ""
        notes.append(f"{path}: slide id {sid!r} already used{by}, named {unique!r}")
    return unique


def _refuse_conflicts(manifest: list[tuple[str, str]], taken: Mapping[str, Taken]) -> None:
    """Every manifest id whose name an earlier run's result holds for another path: one error listing them."""
    clashes = [
        f"slide_id {sid!r} ({path}) already names {taken[sid].path}"
        for sid, path in manifest
        if sid in taken and taken[sid].has_result and taken[sid].path != path
    ]
    if clashes:
        raise SlideIdConflict(
            f"{'; '.join(clashes)}: predicting it here would overwrite that result; "
            "give the slide another slide_id in the manifest or give another --out"
        )
