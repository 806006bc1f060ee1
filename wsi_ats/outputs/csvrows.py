"""``predictions.csv``: one row per slide, rewritten whole and atomically after every slide.

Rows are plain dicts (no pandas): string columns hold ``""`` when empty, numeric
columns a number or ``None``. Numbers are written so that they read back exactly
(``repr`` of the float), except ``seconds``, which is a timing and gets milliseconds.
The ``prob_<class>`` columns come from the rows themselves, so a file that mixes
models still has one column per class ever seen. The file is UTF-8; a path that is not
(a file name in another encoding) is written as its bytes and reads back as the same
path (``surrogateescape``), so such a slide resumes like any other.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from wsi_ats.outputs.atomic import atomic_write_bytes
from wsi_ats.result import SlideResult

PREDICTIONS_CSV = "predictions.csv"
HEAD_COLUMNS = ("slide_id", "path", "status", "error", "warning", "note", "prediction", "probability")
#: Head columns a file written before the ``warning`` column existed may lack (read as ``""``).
OPTIONAL_COLUMNS = ("warning", "note")
TAIL_COLUMNS = ("seconds", "patches_fetched")
#: How sure the prediction is (`wsi_ats.engine.confidence`): the standard error and interval of ``probability``
#: over the ``draws``, and whether the class is settled (``true``/``false``; never true unless ``ok``).
CONFIDENCE_COLUMNS = ("probability_se", "probability_low", "probability_high", "draws", "confident")
#: Columns that change between identical runs; compare runs without them. ``bytes_read`` is smaller
#: when the process already holds the slide's parsed header (a batch's worker, a second run in one process).
TIMING_COLUMNS = ("seconds", "bytes_read")
PROB_PREFIX = "prob_"
#: A row's status: predicted; predicted nothing because the slide cannot be judged (``warning`` says why); failed (``error``).
OK, UNJUDGED, ERROR = "ok", "unjudged", "error"
#: Joins a result's warnings (why it is not judged) in ``warning``, its notes (worth a look, still judged) in ``note``.
WARNING_SEPARATOR = "; "
#: Paths that are not UTF-8 round-trip as their bytes.
_ENCODING_ERRORS = "surrogateescape"

Row = dict[str, Any]


def result_row(result: SlideResult, path: str, seconds: float) -> Row:
    """The row of a slide whose outputs are all written: ``ok`` with its class, or ``unjudged`` with why and no class."""
    row: Row = {
        "slide_id": result.slide_id,
        "path": path,
        "status": OK if result.judged else UNJUDGED,
        "error": "",
        "warning": _joined(result.warnings),
        "note": _joined(result.notes),
        "prediction": result.prediction or "",
        "probability": result.probability,
    }
    if result.judged:
        row.update({f"{PROB_PREFIX}{c}": float(p) for c, p in zip(result.class_names, result.probabilities)})
    row.update(_confidence_cells(result))
    row.update(seconds=float(seconds), patches_fetched=int(result.patches_fetched))
    return row


def _joined(texts: tuple[str, ...]) -> str:
    """One CSV cell of ``texts``: on one line, whitespace collapsed."""
    return " ".join(WARNING_SEPARATOR.join(texts).split())


def _confidence_cells(result: SlideResult) -> Row:
    if not result.judged or result.probability_se is None or result.interval is None:
        return {**dict.fromkeys(CONFIDENCE_COLUMNS), "draws": result.draws or None, "confident": False}
    top = int(np.argmax(result.probabilities))
    low, high = (None if np.isnan(v) else float(v) for v in result.interval)
    se = float(result.probability_se[top])
    return {
        "probability_se": None if np.isnan(se) else se,
        "probability_low": low,
        "probability_high": high,
        "draws": int(result.draws),
        "confident": bool(result.confident),
    }


def error_row(slide_id: str, path: str, error: str, seconds: float) -> Row:
    """The row of a slide that failed; ``error`` says why (one line)."""
    return {
        "slide_id": slide_id,
        "path": path,
        "status": ERROR,
        "error": " ".join(error.split()),
        "warning": "",
        "note": "",
        "prediction": "",
        "probability": None,
        **dict.fromkeys(CONFIDENCE_COLUMNS),
        "confident": False,
        "seconds": float(seconds),
        "patches_fetched": None,
    }


#: Byte accounting of an ok row (`bytes_columns`): what the prediction read of the slide, and the slide's size.
BYTES_COLUMNS = ("bytes_read", "slide_bytes")


def bytes_columns(bytes_read: int | None, slide_bytes: int | None) -> Row:
    """The byte-accounting cells of an ok row (empty where unknown)."""
    return {"bytes_read": bytes_read, "slide_bytes": slide_bytes}


def columns(rows: list[Row]) -> list[str]:
    """Head columns, every ``prob_<class>`` in order of first appearance, tail, then any others."""
    extra: dict[str, None] = {}
    for row in rows:
        extra.update(dict.fromkeys(k for k in row if k not in (*HEAD_COLUMNS, *CONFIDENCE_COLUMNS, *TAIL_COLUMNS)))
    probs = [k for k in extra if k.startswith(PROB_PREFIX)]
    others = [k for k in extra if not k.startswith(PROB_PREFIX)]
    return [*HEAD_COLUMNS, *probs, *CONFIDENCE_COLUMNS, *TAIL_COLUMNS, *others]


def complete(rows: list[Row]) -> list[Row]:
    """Rows with every column of the set (``""`` or ``None`` where a row has no value), as a reread gives."""
    cols = columns(rows)
    return [{c: row.get(c, _parse(c, "")) for c in cols} for row in rows]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "seconds":
        return f"{value:.3f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse(column: str, text: str) -> Any:
    if column in ("patches_fetched", "draws") or column in BYTES_COLUMNS:
        return int(text) if text else None
    if column == "confident":
        return text == "true"
    if column in ("probability", "seconds", "probability_se", "probability_low", "probability_high") or column.startswith(PROB_PREFIX):
        return float(text) if text else None
    return text


def format_predictions(rows: list[Row]) -> str:
    """The CSV text of ``rows``, header first."""
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    writer.writerows([_cell(c, row.get(c)) for c in cols] for row in rows)
    return buf.getvalue()


def write_predictions(path: str | os.PathLike[str], rows: list[Row]) -> None:
    """Replace the CSV at ``path`` with ``rows`` in one atomic step."""
    atomic_write_bytes(path, format_predictions(rows).encode("utf-8", _ENCODING_ERRORS))


def merge_rows(ours: list[Row], on_disk: list[Row]) -> list[Row]:
    """``ours``, then every row of ``on_disk`` (the CSV as it is now) for a slide not among ours, in its order.

    A rewrite built this way never drops a row another writer added since the file was read.
    """
    mine = {r["slide_id"] for r in ours}
    return [*ours, *(r for r in on_disk if r["slide_id"] not in mine)]


def read_predictions(path: str | os.PathLike[str]) -> list[Row]:
    """Rows of an existing CSV, typed as `result_row` / `error_row` make them; ``[]`` if there is none.

    A file from before the ``warning`` column reads with that column empty.
    """
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8", errors=_ENCODING_ERRORS) as f:
        reader = csv.DictReader(f)
        missing = [c for c in HEAD_COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: not a predictions file (missing columns {', '.join(missing)})")
        rows = []
        for line, rec in enumerate(reader, start=2):
            if None in rec or None in rec.values():
                raise ValueError(f"{path}:{line}: expected {len(reader.fieldnames or [])} fields")
            rows.append({**dict.fromkeys(OPTIONAL_COLUMNS, ""), **{k: _parse(k, v) for k, v in rec.items()}})
    return rows
