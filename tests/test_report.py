"""``OUT/report.html``: every slide of a mixed batch, its confidence, failures with their errors, links that resolve."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from predict_data import BAD_FILES, GOOD, mixed_folder, trained_model

from wsi_ats.outputs.report import REPORT_HTML, render_report
from wsi_ats.pipeline import Pipeline


class Links(HTMLParser):
    """Every ``href`` and ``src`` of a page."""

    def __init__(self):
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.targets += [v for k, v in attrs if k in ("href", "src") and v]
        self.ids.update(v for k, v in attrs if k == "id" and v)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    model, manifest = trained_model(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("report")
    rows = Pipeline(model, device="cpu", seed=0, draws="auto").run_many(mixed_folder(root / "in", manifest), root / "out", verbose=False)
    return root / "out", rows


def test_the_report_lists_every_slide_of_a_mixed_batch_and_each_failure_with_its_error(batch):
    out, rows = batch
    page = (out / REPORT_HTML).read_text()
    assert {r["slide_id"] for r in rows} == {*GOOD, *BAD_FILES}
    for r in rows:
        assert f">{r['slide_id']}</a>" in page if r["status"] == "ok" else f"<td>{r['slide_id']}</td>" in page
        if r["error"]:
            assert r["error"].split(":")[0] in page
    assert f"<b>{len(rows)}</b> slides: {len(GOOD)} predicted, 0 not judged, {len(BAD_FILES)} failed" in page


def test_the_report_shows_the_interval_and_confidence_of_each_prediction(batch):
    out, rows = batch
    page = (out / REPORT_HTML).read_text()
    for r in rows:
        if r["status"] == "ok":
            assert f"{r['probability']:.3f} [{r['probability_low']:.3f}, {r['probability_high']:.3f}]" in page
    confident = sum(bool(r["confident"]) for r in rows)
    assert f"confident {confident}, uncertain {len(GOOD) - confident}" in page


def test_the_report_needs_no_network_and_its_links_are_the_slides_files(batch):
    out, _ = batch
    parser = Links()
    parser.feed((out / REPORT_HTML).read_text())
    files = [t for t in parser.targets if not t.startswith("#")]
    assert files and not any(re.match(r"^[a-z]+:", t) for t in files)
    assert all((out / unquote(t)).exists() for t in files)  # files, and the OME-Zarr folder
    assert {t[1:] for t in parser.targets if t.startswith("#")} == parser.ids  # every slide card, and nothing else


def test_a_slide_id_with_markup_is_escaped():
    page = render_report(
        [{"slide_id": "<b>x", "path": "p", "status": "error", "error": "SlideError: <script>", "warning": "", "prediction": ""}]
    )
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless chromium here")
def test_chromium_renders_the_report(batch, tmp_path):
    out, _ = batch
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (out / REPORT_HTML).as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000
