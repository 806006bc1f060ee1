"""Cohort manifests: ``slide_id,path,label[,split]`` CSV files, paths relative to the manifest.

Training and batch prediction read the same rows; a bad manifest is one error that
names the file and the line, raised before any slide is touched.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("slide_id", "path", "label")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a cohort; ``path`` is resolved against the manifest's folder."""

    slide_id: str
    path: str
    label: str
    split: str | None = None


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Parse and validate a manifest; every problem is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}:1: header must have {','.join(REQUIRED)}[,split]; missing {','.join(missing)}")
        rows, seen = [], {}
        for line, rec in enumerate(reader, start=2):
            if None in rec or any(rec.get(c) is None for c in REQUIRED):
                raise ManifestError(f"{path}:{line}: expected {len(header)} fields")
            slide_id, rel, label = (rec[c].strip() for c in REQUIRED)
            split = (rec.get("split") or "").strip() or None
            if not slide_id or not rel:
                raise ManifestError(f"{path}:{line}: empty slide_id or path")
            if any(ch in slide_id for ch in "/\\") or slide_id in (".", ".."):
                raise ManifestError(f"{path}:{line}: slide_id {slide_id!r} must be usable as a folder name")
            if slide_id in seen:
                raise ManifestError(f"{path}:{line}: slide_id {slide_id!r} already used on line {seen[slide_id]}")
            if split is not None and split not in SPLITS:
                raise ManifestError(f"{path}:{line}: split {split!r} is not one of {', '.join(SPLITS)}")
            seen[slide_id] = line
            resolved = rel if "://" in rel else str((path.parent / rel).resolve())
            rows.append(ManifestRow(slide_id, resolved, label, split))
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    return rows


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    """Write rows with paths relative to the manifest's folder where possible."""
    path = Path(path)
    base = path.parent.resolve()
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*REQUIRED, "split"])
        for r in rows:
            p = Path(r.path)
            rel = p.resolve().relative_to(base).as_posix() if p.is_absolute() and p.resolve().is_relative_to(base) else r.path
            w.writerow([r.slide_id, rel, r.label, r.split or ""])
