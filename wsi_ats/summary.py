"""How a batch did against the labels its manifest gives: accuracy and a confusion table.

``wsi-ats predict --manifest`` prints it at the end and keeps it as ``OUT/summary.json``
when any row of the manifest has a label (the column is optional for prediction). Only
slides whose row is ``ok`` and carries no ``warning`` (a slide that cannot be judged)
count as predicted; every other labelled slide is counted, per label, as not predicted:
never as right, never as wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsi_ats.outputs import OK, atomic_write_json

SUMMARY_JSON = "summary.json"
#: The confusion table's column of labelled slides without a prediction.
NOT_PREDICTED = "(none)"


def label_summary(labels: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Accuracy and confusion counts of ``rows`` (``predictions.csv`` rows) against ``labels`` (slide id -> label).

    None when no row has a label. ``accuracy`` is over the predicted slides (None when
    none was); ``confusion[label][prediction]`` counts slides, ``not_predicted[label]``
    those whose row is not ok or has a warning.
    """
    labelled = [r for r in rows if labels.get(r["slide_id"])]
    if not labelled:
        return None
    predicted = [r for r in labelled if r["status"] == OK and r["prediction"] and not r.get("warning")]
    classes = sorted({labels[r["slide_id"]] for r in labelled} | {r["prediction"] for r in predicted})
    confusion = {true: dict.fromkeys(classes, 0) for true in classes}
    not_predicted = dict.fromkeys(classes, 0)
    for r in predicted:
        confusion[labels[r["slide_id"]]][r["prediction"]] += 1
    done = {r["slide_id"] for r in predicted}
    for r in labelled:
        if r["slide_id"] not in done:
            not_predicted[labels[r["slide_id"]]] += 1
    correct = sum(confusion[c][c] for c in classes)
    return {
        "labelled_slides": len(labelled),
        "predicted": len(predicted),
        "correct": correct,
        "accuracy": correct / len(predicted) if predicted else None,
        "classes": classes,
        "confusion": confusion,
        "not_predicted": not_predicted,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a few lines: accuracy, then the confusion table (rows: label, columns: prediction)."""
    n, ok, right = summary["labelled_slides"], summary["predicted"], summary["correct"]
    missed = f"; {n - ok} labelled slide(s) without a prediction" if ok < n else ""
    accuracy = f"{summary['accuracy']:.3f} ({right}/{ok})" if ok else "n/a (no labelled slide was predicted)"
    classes: Sequence[str] = summary["classes"]
    header = ["label \\ predicted", *classes, NOT_PREDICTED]
    table = [header] + [
        [true, *(str(summary["confusion"][true][c]) for c in classes), str(summary["not_predicted"][true])] for true in classes
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in table]
    return "\n".join([f"accuracy against the manifest's labels: {accuracy}{missed}", *lines])


def report_labels(
    labels: Mapping[str, str | None],
    rows: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    say: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Print the summary and write it to ``out_dir/summary.json`` (atomically); nothing when no slide has a label."""
    summary = label_summary({k: v for k, v in labels.items() if v}, rows)
    if summary is None:
        return None
    path = Path(out_dir) / SUMMARY_JSON
    say(format_summary(summary))
    try:
        atomic_write_json(path, summary)
    except OSError as err:
        say(f"cannot write {path}: {err}")
    else:
        say(f"-> {path}")
    return summary
