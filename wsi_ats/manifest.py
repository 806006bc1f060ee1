"""Cohort manifests: ``slide_id,path,label[,split][,case_id][,mpp]`` CSV files.

Training and batch prediction read the same rows; a bad manifest is one error that
names the file and the line, raised before any slide is touched. Relative paths
resolve against the manifest's folder, or against a ``root`` given when the manifest
is read, so one manifest serves every machine that holds a copy of the slides.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("slide_id", "path", "label")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a cohort; ``path`` is resolved, ``case_id`` groups a patient's slides.

    ``mpp`` (micrometres per level-0 pixel) overrides the file's resolution, for files that
    state none or a wrong one.
    """

    slide_id: str
    path: str
    label: str
    split: str | None = None
    case_id: str | None = None
    mpp: float | None = None


def resolve_path(rel: str, base: str | Path) -> str:
    """``rel`` against ``base`` (a folder or a URL); URLs and absolute paths are kept as written."""
    if "://" in rel:
        return rel
    if "://" in str(base):
        return rel if rel.startswith("/") else f"{str(base).rstrip('/')}/{rel}"
    return str((Path(base) / rel).resolve())


def read_manifest(path: str | Path, root: str | Path | None = None) -> list[ManifestRow]:
    """Parse and validate a manifest; every problem is reported with its line number.

    Relative paths resolve against ``root`` when given (a folder or a URL), else against
    the manifest's own folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent if root is None else root
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}:1: header must have {','.join(REQUIRED)}[,split][,case_id][,mpp]; missing {','.join(missing)}")
        rows, seen = [], {}
        for line, rec in enumerate(reader, start=2):
            if None in rec or any(rec.get(c) is None for c in REQUIRED):
                raise ManifestError(f"{path}:{line}: expected {len(header)} fields")
            slide_id, rel, label = (rec[c].strip() for c in REQUIRED)
            split = (rec.get("split") or "").strip() or None
            case_id = (rec.get("case_id") or "").strip() or None
            if not slide_id or not rel:
                raise ManifestError(f"{path}:{line}: empty slide_id or path")
            if any(ch in slide_id for ch in "/\\") or slide_id in (".", ".."):
                raise ManifestError(f"{path}:{line}: slide_id {slide_id!r} must be usable as a folder name")
            if slide_id in seen:
                raise ManifestError(f"{path}:{line}: slide_id {slide_id!r} already used on line {seen[slide_id]}")
            if split is not None and split not in SPLITS:
                raise ManifestError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            seen[slide_id] = line
            mpp = _mpp(path, line, rec.get("mpp"))
            rows.append(ManifestRow(slide_id, resolve_path(rel, base), label, split, case_id, mpp))
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    _check_cases_in_one_split(path, rows)
    return rows


def _mpp(path: Path, line: int, text: str | None) -> float | None:
    """The optional ``mpp`` cell: empty, or a positive number of micrometres per pixel."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ManifestError(f"{path}:{line}: column mpp must be a positive number of micrometres per pixel, got {text!r}")
    return value


def _check_cases_in_one_split(path: Path, rows: list[ManifestRow]) -> None:
    """A patient's slides in two splits leak the held-out set into training: refuse it."""
    first: dict[str, tuple[int, str | None]] = {}
    for line, r in enumerate(rows, start=2):
        if r.case_id is None:
            continue
        line0, split0 = first.setdefault(r.case_id, (line, r.split))
        if r.split != split0:
            raise ManifestError(
                f"{path}:{line}: case_id {r.case_id!r} is in split {r.split or '(none)'} here and in "
                f"{split0 or '(none)'} on line {line0}; all slides of a case belong in one split"
            )


def relative_path(path: str, base: Path) -> str | None:
    """``path`` relative to ``base`` (posix), or None when it lies outside (or is a URL)."""
    if "://" in path:
        return None
    p = Path(path).resolve()
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else None


def write_manifest(path: str | Path, rows: list[ManifestRow], root: str | Path | None = None) -> None:
    """Write rows atomically, paths relative to ``root`` (else to the manifest's folder) where possible.

    With ``root`` every local path must lie under it (the manifest is then read with
    ``read_manifest(path, root=...)`` on any machine); ``case_id`` is written when a row has one.
    """
    from wsi_ats.outputs.atomic import atomic_write_text

    path = Path(path)
    base = Path(root if root is not None else path.parent).resolve()
    with_case, with_mpp = any(r.case_id for r in rows), any(r.mpp for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*REQUIRED, "split", *(["case_id"] if with_case else []), *(["mpp"] if with_mpp else [])])
    for r in rows:
        rel = relative_path(r.path, base)
        if rel is None and root is not None and "://" not in r.path:
            raise ManifestError(f"{path}: slide {r.slide_id!r} at {r.path} is not under --root {root}; choose a root above every slide")
        extra = [*([r.case_id or ""] if with_case else []), *([repr(r.mpp) if r.mpp else ""] if with_mpp else [])]
        w.writerow([r.slide_id, rel or r.path, r.label, r.split or "", *extra])
    atomic_write_text(path, buf.getvalue())
