"""Build a manifest from a folder of slides: ``wsi-ats manifest DIR --out M.csv``.

Slides are found by `wsi_ats.discover` (the same walk `predict` does) and labelled
either by ordered ``PATTERN=LABEL`` glob rules on the file name (first match wins) or
by joining a labels CSV. Splits are assigned per *case* (patient): every slide of a case
lands in one split, so no patient is seen in training and testing both. Cases are
stratified by label and shuffled with a seed, so the same folder and seed always give
the same manifest.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from wsi_ats.discover import discover
from wsi_ats.exit_codes import EXIT_OK, EXIT_USAGE
from wsi_ats.manifest import REQUIRED, SPLITS, ManifestError, ManifestRow, write_manifest


@dataclass(frozen=True)
class LabelRule:
    """``PATTERN=LABEL``: a glob on the file name, or on the path under DIR when it holds a ``/``."""

    pattern: str
    label: str

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        pattern, sep, label = text.rpartition("=")
        if not sep or not pattern.strip() or not label.strip():
            raise ManifestError(f"--label {text!r}: expected PATTERN=LABEL, e.g. 'tumor_*=positive'")
        return cls(pattern.strip(), label.strip())

    def matches(self, relpath: str) -> bool:
        """Case-sensitive on every OS, so a rule means the same thing on every machine."""
        return fnmatchcase(relpath if "/" in self.pattern else relpath.rsplit("/", 1)[-1], self.pattern)


@dataclass(frozen=True)
class LabelEntry:
    """One row of a labels CSV: its line (for messages), label and optional case."""

    line: int
    label: str
    case_id: str | None


@dataclass(frozen=True)
class LabelTable:
    """A labels CSV keyed by ``slide_id`` (the discovered id) or, without that column, by ``case_id``."""

    source: Path
    key: str
    entries: Mapping[str, LabelEntry]


@dataclass(frozen=True)
class BuiltManifest:
    """The rows to write, in discovery order, and notes on what was skipped."""

    rows: tuple[ManifestRow, ...]
    notes: tuple[str, ...]


def read_labels(path: str | Path) -> LabelTable:
    """Read ``slide_id,label[,case_id]`` or ``case_id,label``; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: labels CSV not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        key = "slide_id" if "slide_id" in header else "case_id" if "case_id" in header else None
        if key is None or "label" not in header:
            raise ManifestError(f"{path}:1: header must have slide_id,label[,case_id] or case_id,label; got {','.join(header)}")
        entries: dict[str, LabelEntry] = {}
        for line, rec in enumerate(reader, start=2):
            name, label = (rec.get(key) or "").strip(), (rec.get("label") or "").strip()
            if not name or not label:
                raise ManifestError(f"{path}:{line}: empty {key} or label")
            if name in entries:
                raise ManifestError(f"{path}:{line}: {key} {name!r} already labelled on line {entries[name].line}")
            entries[name] = LabelEntry(line, label, (rec.get("case_id") or "").strip() or None)
    if not entries:
        raise ManifestError(f"{path}: labels CSV has no rows")
    return LabelTable(path, key, entries)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``'0.7,0.15,0.15'`` -> train, val, test fractions; they must be >= 0 and sum to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != len(SPLITS) or min(values) < 0 or values[0] == 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ManifestError(f"--split {text!r}: expected train,val,test fractions summing to 1 with train > 0, e.g. 0.7,0.15,0.15")
    return values  # type: ignore[return-value]


def compile_case_pattern(text: str) -> re.Pattern[str]:
    """A regular expression with exactly one group: the case id, searched in the file name."""
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise ManifestError(f"--case {text!r}: not a regular expression ({err})") from None
    if pattern.groups != 1:
        raise ManifestError(f"--case {text!r}: needs exactly one group, the case id, e.g. '^(TCGA-\\w\\w-\\w{{4}})'")
    return pattern


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """``n`` cases shared by ``fractions`` with the largest-remainder rule (ties go to the earlier split)."""
    raw = [round(f * n, 9) for f in fractions]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_by_case(rows: Sequence[ManifestRow], fractions: Sequence[float], seed: int) -> list[ManifestRow]:
    """``rows`` with ``split`` set: whole cases per split, stratified by label, seeded; order kept.

    A row without ``case_id`` is a case of its own. A case's stratum is the set of its
    slides' labels, so a patient with a normal and a tumour slide is stratified as such.
    """
    case_of = [("case", r.case_id) if r.case_id else ("slide", r.slide_id) for r in rows]
    labels: dict[tuple[str, str], set[str]] = {}
    for case, r in zip(case_of, rows):
        labels.setdefault(case, set()).add(r.label)
    strata: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for case in sorted(labels):
        strata.setdefault(tuple(sorted(labels[case])), []).append(case)
    rng = np.random.default_rng(seed)
    split_of: dict[tuple[str, str], str] = {}
    for stratum in sorted(strata):
        members = strata[stratum]
        names = [name for name, count in zip(SPLITS, split_counts(len(members), fractions)) for _ in range(count)]
        split_of.update({members[i]: name for i, name in zip(rng.permutation(len(members)), names)})
    return [replace(r, split=split_of[case]) for case, r in zip(case_of, rows)]


def build_manifest(
    folder: str | Path,
    *,
    rules: Sequence[LabelRule] = (),
    labels: LabelTable | None = None,
    case_pattern: re.Pattern[str] | None = None,
    fractions: Sequence[float] | None = None,
    seed: int = 0,
    strict: bool = False,
) -> BuiltManifest:
    """Rows for the slides under ``folder``, labelled by ``rules`` or ``labels`` (exactly one of them).

    Slides that get no label or no case (``case_pattern`` does not match) are skipped with
    a note, or with ``strict`` make this fail. Cases come from ``case_pattern`` on the file
    name, else from a ``case_id`` column of ``labels``; ``fractions`` (train, val, test)
    adds a per-case split.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder of slides")
    if bool(rules) == (labels is not None):
        raise ManifestError("label the slides with --label PATTERN=LABEL rules or a --labels CSV (one of the two)")
    if labels is not None and labels.key == "case_id" and case_pattern is None:
        raise ManifestError(f"{labels.source}: labels keyed by case_id need --case REGEX to find each slide's case")
    if labels is not None and labels.key == "slide_id" and case_pattern is not None and any(e.case_id for e in labels.entries.values()):
        raise ManifestError(f"{labels.source}: has a case_id column and --case was given too; keep one source of cases")
    found = discover([folder])
    if not found.slides:
        raise ManifestError(f"{folder}: no slides found")
    notes, unlabelled, used = list(found.notes), [], set()
    top = os.path.abspath(folder)
    rows: list[ManifestRow] = []
    for slide in found.slides:
        rel = Path(os.path.relpath(slide.path, top)).as_posix()
        case_id = None
        if case_pattern is not None:
            match = case_pattern.search(rel.rsplit("/", 1)[-1])
            if match is None:
                unlabelled.append(f"{slide.path}: skipped, file name does not match --case {case_pattern.pattern!r}")
                continue
            case_id = match.group(1)
        if labels is None:
            label = next((rule.label for rule in rules if rule.matches(rel)), None)
            why = "matches no --label rule"
        else:
            key = slide.slide_id if labels.key == "slide_id" else str(case_id)
            entry = labels.entries.get(key)
            label, case_id = (entry.label, case_id or entry.case_id) if entry else (None, case_id)
            why = f"{labels.key} {key!r} has no row in {labels.source}"
            if entry:
                used.add(entry.line)
        if label is None:
            unlabelled.append(f"{slide.path}: skipped, {why}")
            continue
        rows.append(ManifestRow(slide.slide_id, slide.path, label, None, case_id))
    if unlabelled and strict:
        raise ManifestError(f"{len(unlabelled)} of {len(found.slides)} slides unlabelled (--strict): " + "; ".join(unlabelled))
    notes += unlabelled
    if labels is not None:
        notes += [
            f"{labels.source}:{e.line}: {labels.key} {k!r} matches no slide under {folder}"
            for k, e in labels.entries.items()
            if e.line not in used
        ]
    if not rows:
        raise ManifestError(f"{folder}: none of its {len(found.slides)} slides got a label")
    if fractions is not None:
        rows = split_by_case(rows, fractions, seed)
    return BuiltManifest(tuple(rows), tuple(notes))


def manifest_command(
    folder: str | Path,
    out: str | Path,
    *,
    rules: Sequence[str] = (),
    labels: str | Path | None = None,
    case: str | None = None,
    split: str | None = None,
    seed: int = 0,
    root: str | Path | None = None,
    strict: bool = False,
) -> int:
    """``wsi-ats manifest``: build and write the manifest; 0 on success, 2 on bad usage or input."""
    try:
        out = Path(out)
        _check_out(out)
        if root is not None and ("://" in str(root) or not Path(root).is_dir()):
            raise ManifestError(f"--root {root}: must be a local folder above the slides (URLs are for reading: read_manifest(root=...))")
        built = build_manifest(
            folder,
            rules=[LabelRule.parse(r) for r in rules],
            labels=read_labels(labels) if labels is not None else None,
            case_pattern=compile_case_pattern(case) if case is not None else None,
            fractions=parse_fractions(split) if split is not None else None,
            seed=seed,
            strict=strict,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(out, list(built.rows), root=root)
    except ManifestError as err:
        print(f"wsi-ats manifest: {err}", file=sys.stderr)
        return EXIT_USAGE
    for note in built.notes:
        print(f"wsi-ats manifest: {note}", file=sys.stderr)
    print(f"manifest written: {out} ({summary(built.rows)})")
    return EXIT_OK


def summary(rows: Sequence[ManifestRow]) -> str:
    """``'5 slides; labels negative=3, positive=2; splits train=3, val=1, test=1'``."""
    labels = Counter(r.label for r in rows)
    text = f"{len(rows)} slides; labels " + ", ".join(f"{k}={labels[k]}" for k in sorted(labels))
    if any(r.split for r in rows):
        splits = Counter(r.split for r in rows)
        text += "; splits " + ", ".join(f"{k}={splits[k]}" for k in SPLITS)
    if any(r.case_id for r in rows):
        text += f"; {len({r.case_id or r.slide_id for r in rows})} cases"
    return text


def _check_out(out: Path) -> None:
    """Refuse to overwrite anything but a manifest: a typo in --out must not eat a file."""
    if out.is_dir():
        raise ManifestError(f"--out {out}: is a folder; give a .csv file")
    if not out.exists():
        return
    with out.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    if any(c not in header for c in REQUIRED):
        raise ManifestError(f"--out {out}: exists and is not a manifest (no {','.join(REQUIRED)} header); remove it or choose another name")
