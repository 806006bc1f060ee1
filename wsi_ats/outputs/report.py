"""``OUT/report.html``: the batch on one self-contained page (no network, no server).

A summary (counts by class, confident / uncertain, failures with their errors, total time
and bytes read), a table sortable by clicking its headers, and per slide its attention
heatmap (linked from the slide's folder, so the page stays small) with links to its files.
Each class has a colour (`class_colours`: a fixed palette in the order of the classes'
``prob_<class>`` columns, which is the model's label order), shown in the summary's legend,
the prediction cells and each slide card's border, so a 3-class batch reads at a glance.
Rendered from the rows alone and rewritten atomically with ``predictions.csv``, so it can be
watched during a long batch.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from urllib.parse import quote

from wsi_ats.outputs.atomic import atomic_write_bytes
from wsi_ats.outputs.csvrows import ERROR, OK, PROB_PREFIX, UNJUDGED, Row, columns
from wsi_ats.outputs.folder import SLIDE_FILES
from wsi_ats.outputs.names import folder_name

REPORT_HTML = "report.html"
#: Class colours in label order: Okabe and Ito's colour-blind-safe set; past eight classes they repeat.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: The border of a card without a class (a slide that could not be judged).
NO_CLASS = "#cccccc"

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f3f3f3}.ok{color:#176}.unjudged{color:#a60}.error{color:#b00}
.uncertain{background:#fff3d6}.slide{display:inline-block;vertical-align:top;margin:8px;width:330px;border:3px solid;padding:4px}
.slide img{width:320px;border:1px solid #ccc}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:4px;vertical-align:-1px;border-radius:2px}
"""
#: Sorts the table by a clicked header: numbers as numbers, the rest as text; a second click reverses.
_SCRIPT = """
document.querySelectorAll('th').forEach((th, col) => th.onclick = () => {
  const body = th.closest('table').tBodies[0], rows = [...body.rows], dir = th.dataset.dir = -(th.dataset.dir || -1);
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
  rows.forEach(r => body.appendChild(r));
});
"""


def _url(text: str) -> str:
    """A link to a name that may hold a non-UTF-8 path's bytes (``surrogateescape``): those bytes, percent-encoded."""
    return quote(text, errors="surrogateescape")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _probability(row: Row) -> str:
    if row.get("probability") is None:
        return ""
    low, high = row.get("probability_low"), row.get("probability_high")
    text = f"{row['probability']:.3f}"
    return text + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def class_colours(rows: list[Row]) -> dict[str, str]:
    """Each class's colour: `PALETTE` in the order of the ``prob_<class>`` columns (the model's label order).

    A prediction without a column of its own (a hand-made row) gets the next colour.
    """
    classes = [c[len(PROB_PREFIX) :] for c in columns(rows) if c.startswith(PROB_PREFIX)]
    classes += [c for c in dict.fromkeys(r["prediction"] for r in rows if r["status"] == OK and r["prediction"]) if c not in classes]
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _legend(colours: dict[str, str], ok: list[Row]) -> str:
    """Every class with its colour, how many slides were predicted it, and how many of those confidently."""
    if not colours:
        return "none"
    count = Counter(r["prediction"] for r in ok)
    sure = Counter(r["prediction"] for r in ok if r.get("confident"))
    return ", ".join(f"{_swatch(colour)}{_e(c)} <b>{count[c]}</b> ({sure[c]} confident)" for c, colour in colours.items())


def render_report(rows: list[Row], title: str = "wsi-ats predictions") -> str:
    """The page of ``rows`` (as `predictions.csv` holds them); links are relative to ``OUT``."""
    ok = [r for r in rows if r["status"] == OK]
    colours = class_colours(rows)
    confident = sum(bool(r.get("confident")) for r in ok)
    failed = [r for r in rows if r["status"] != OK]
    seconds = sum(r.get("seconds") or 0.0 for r in rows)
    read = sum(r.get("bytes_read") or 0 for r in rows)
    summary = [
        f"<b>{len(rows)}</b> slides: {len(ok)} predicted, "
        f"{sum(r['status'] == UNJUDGED for r in rows)} not judged, {sum(r['status'] == ERROR for r in rows)} failed",
        "by class: " + _legend(colours, ok),
        f"confident {confident}, uncertain {len(ok) - confident} (look at these)",
        f"total {seconds:.1f} s, {_bytes(read)} read",
    ]
    failures = "".join(f"<li><b>{_e(r['slide_id'])}</b> ({_e(r['status'])}): {_e(r['error'] or r['warning'])}</li>" for r in failed)
    table = "".join(
        f'<tr class="{"" if r.get("confident") or r["status"] != OK else "uncertain"}">'
        f"<td>{_slide_cell(r)}</td><td>{_prediction(r, colours)}</td>"
        f'<td data-v="{_e(r.get("probability") if r.get("probability") is not None else -1)}">{_e(_probability(r))}</td>'
        f'<td>{_e("yes" if r.get("confident") else "no")}</td><td class="{_e(r["status"])}">{_e(r["status"])}</td>'
        f"<td>{_e(r.get('draws') if r.get('draws') is not None else '')}</td><td>{(r.get('seconds') or 0.0):.2f}</td></tr>"
        for r in rows
    )
    slides = "".join(_slide_card(r, colours) for r in rows if r["status"] != ERROR)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style></head><body>'
        f"<h1>{_e(title)}</h1><ul>{''.join(f'<li>{s}</li>' for s in summary)}</ul>"
        + (f"<h2>Not predicted</h2><ul>{failures}</ul>" if failures else "")
        + "<h2>Slides</h2><table><thead><tr><th>slide</th><th>prediction</th><th>probability [95% interval]</th>"
        "<th>confident</th><th>status</th><th>draws</th><th>seconds</th></tr></thead>"
        f"<tbody>{table}</tbody></table><h2>Attention</h2>{slides}<script>{_SCRIPT}</script></body></html>"
    )


def _slide_cell(row: Row) -> str:
    """The slide's id, linked to its card below when it has one (a failed slide has none)."""
    if row["status"] == ERROR:
        return _e(row["slide_id"])
    return f'<a href="#{_e(_url(row["slide_id"]))}">{_e(row["slide_id"])}</a>'


def _prediction(row: Row, colours: dict[str, str]) -> str:
    """The predicted class after its colour's swatch (nothing when there is no class)."""
    if not row["prediction"]:
        return ""
    return _swatch(colours.get(row["prediction"], NO_CLASS)) + _e(row["prediction"])


def _class_probabilities(row: Row, colours: dict[str, str]) -> str:
    """Every class's probability in the row, in label order (more than two classes are worth spelling out)."""
    cells = [(c, row.get(f"{PROB_PREFIX}{c}")) for c in colours]
    return " ".join(f"{_swatch(colours[c])}{_e(c)} {p:.3f}" for c, p in cells if p is not None)


def _slide_card(row: Row, colours: dict[str, str]) -> str:
    folder = _url(folder_name(row["slide_id"]))
    links = " ".join(f'<a href="{folder}/{_url(name)}">{_e(name)}</a>' for name in SLIDE_FILES)
    border = colours.get(row["prediction"], NO_CLASS) if row["status"] == OK else NO_CLASS
    return (
        f'<div class="slide" id="{_e(_url(row["slide_id"]))}" style="border-color:{border}"><b>{_e(row["slide_id"])}</b> '
        f"{_prediction(row, colours)} {_e(_probability(row))}<br><small>{_class_probabilities(row, colours)}</small><br>"
        f'<a href="{folder}/attention.png"><img src="{folder}/attention.png" alt="attention of {_e(row["slide_id"])}"></a><br>{links}</div>'
    )


def write_report(path: str | os.PathLike[str], rows: list[Row]) -> None:
    """Replace the report at ``path`` in one atomic step."""
    atomic_write_bytes(path, render_report(rows).encode("utf-8", "backslashreplace"))  # a non-UTF-8 id shows escaped
