"""Cohort manifests: ``slide_id,path,label[,split][,case_id][,mpp]`` CSV files.

Training and batch prediction read the same rows (prediction needs no ``label`` column);
a bad manifest is one error that lists every bad cell by line and column, raised before
any slide is touched. Relative paths
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
    """A manifest that cannot be used; the message names the file, and the line and column of each problem."""


@dataclass(frozen=True)
class ManifestRow:
    """One slide of a cohort; ``path`` is resolved, ``case_id`` groups a patient's slides.

    ``label`` is None only in manifests read for prediction (``require_labels=False``).

    ``mpp`` (micrometres per level-0 pixel) overrides the file's resolution, for files that
    state none or a wrong one.
    """

    slide_id: str
    path: str
    label: str | None = None
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


def read_manifest(path: str | Path, root: str | Path | None = None, *, require_labels: bool = True) -> list[ManifestRow]:
    """Parse and validate a manifest; every problem is listed at once, each with its line and column.

    Relative paths resolve against ``root`` when given (a folder or a URL), else against
    the manifest's own folder. ``require_labels=False`` (batch prediction) makes the
    ``label`` column optional, and an empty cell means "label unknown" (None).
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.parent if root is None else root
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        header = _header(path, reader, require_labels)
        rows, lines, errors, seen = [], [], [], {}
        for rec in reader:
            line = reader.line_num
            problems = _row_problems(rec, header, seen, require_labels)
            if rec.get("slide_id"):
                seen.setdefault(rec["slide_id"].strip(), line)
            if problems:
                errors.extend(f"{path}:{line}: {p}" for p in problems)
            else:
                rows.append(_row(rec, base))
                lines.append(line)
    except csv.Error as err:  # a NUL byte, an unterminated quote
        raise ManifestError(f"{path}:{reader.line_num}: not readable as CSV: {err}") from None
    if errors:
        more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        head = errors[0] if len(errors) == 1 else f"{path}: {len(errors)} problems:\n  " + "\n  ".join(errors[:MAX_LISTED])
        raise ManifestError(head + more)
    if not rows:
        raise ManifestError(f"{path}: manifest has no rows")
    _check_cases_in_one_split(path, rows, lines)
    return rows


#: Row problems listed in one error, at most.
MAX_LISTED = 20


def _read_text(path: Path) -> str:
    """The manifest's text: UTF-8, with or without a byte-order mark; anything else names the line of the first bad byte."""
    data = path.read_bytes()
    if data.startswith(b"PK\x03\x04"):
        raise ManifestError(f'{path}: a zip file (an Excel .xlsx?), not CSV; save it as "CSV UTF-8"')
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestError(f'{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the manifest as "CSV UTF-8"') from None


def _header(path: Path, reader: csv.DictReader, require_labels: bool) -> list[str]:
    """The column names (surrounding spaces dropped); the required ones must all be there."""
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    required = REQUIRED if require_labels else REQUIRED[:2]
    missing = [c for c in required if c not in header]
    if missing:
        found = ",".join(header) if header else "an empty file"
        hint = next(
            (f"; its columns are separated by {sep!r}, not commas" for sep in (";", "\t") if len(header) == 1 and sep in header[0]), ""
        )
        raise ManifestError(
            f"{path}:1: header must have {','.join(required)}[,{'' if require_labels else 'label,'}split][,case_id][,mpp]; "
            f"missing {','.join(missing)} (found {found}){hint}"
        )
    return header


def _row_problems(rec: dict, header: list[str], seen: dict[str, int], require_labels: bool) -> list[str]:
    """What is wrong with one record, each naming its column; empty when it is fine."""
    if None in rec:
        return [f"{len(header) + len(rec[None])} fields, the header has {len(header)} (a comma inside a value needs quotes)"]
    absent = [c for c in header if rec.get(c) is None]
    if absent:
        return [f"column {absent[0]}: missing ({len(header) - len(absent)} fields, the header has {len(header)})"]
    nul = [c for c in header if "\0" in rec[c]]
    if nul:
        return [f"column {nul[0]}: contains a NUL byte"]
    problems = []
    slide_id = rec["slide_id"].strip()
    if not slide_id:
        problems.append("column slide_id: empty")
    elif any(ch in slide_id for ch in "/\\") or slide_id in (".", ".."):
        problems.append(f"column slide_id: {slide_id!r} must be usable as a folder name (no / or \\, not . or ..)")
    elif slide_id in seen:
        problems.append(f"column slide_id: {slide_id!r} already used on line {seen[slide_id]}")
    if not rec["path"].strip():
        problems.append("column path: empty")
    if require_labels and not (rec.get("label") or "").strip():
        problems.append("column label: empty (training needs the label of every slide)")
    split = (rec.get("split") or "").strip()
    if split and split not in SPLITS:
        problems.append(f"column split: {split!r} is not one of {', '.join(SPLITS)} (or empty)")
    try:
        _mpp(rec.get("mpp"))
    except ValueError as err:
        problems.append(str(err))
    return problems


def _row(rec: dict, base: str | Path) -> ManifestRow:
    """A checked record as a row: cells stripped, empty optional cells None, the path resolved."""

    def cell(name: str) -> str | None:
        return (rec.get(name) or "").strip() or None

    slide_id, rel = rec["slide_id"].strip(), rec["path"].strip()
    return ManifestRow(slide_id, resolve_path(rel, base), cell("label"), cell("split"), cell("case_id"), _mpp(rec.get("mpp")))


def _mpp(text: str | None) -> float | None:
    """The optional ``mpp`` cell: empty, or a positive number of micrometres per pixel."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"column mpp: must be a positive number of micrometres per pixel, got {text!r}")
    return value


def _check_cases_in_one_split(path: Path, rows: list[ManifestRow], lines: list[int]) -> None:
    """A patient's slides in two splits leak the held-out set into training: refuse it."""
    first: dict[str, tuple[int, str | None]] = {}
    for line, r in zip(lines, rows):
        if r.case_id is None:
            continue
        line0, split0 = first.setdefault(r.case_id, (line, r.split))
        if r.split != split0:
            raise ManifestError(
                f"{path}:{line}: column case_id: {r.case_id!r} is in split {r.split or '(none)'} here and in "
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
        w.writerow([r.slide_id, rel or r.path, r.label or "", r.split or "", *extra])
    atomic_write_text(path, buf.getvalue())
