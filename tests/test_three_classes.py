"""A 3-class synthetic cohort (`wsi-ats synth --classes 3`): learnt to >= 95% held out; its classes in CSV, summary, report."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import zarr
from scipy import ndimage

from wsi_ats.checkpoint import read_checkpoint
from wsi_ats.cli import main
from wsi_ats.engine.confidence import confidence
from wsi_ats.manifest import read_manifest
from wsi_ats.outputs import read_predictions
from wsi_ats.outputs.report import NO_CLASS, PALETTE, REPORT_HTML, class_colours, render_report
from wsi_ats.synth import make_cohort, make_scene, plan_cohort
from wsi_ats.synth.render import render_tile
from wsi_ats.synth.scene import TILE

CLASSES = ["lesion_a", "lesion_b", "negative"]  # the manifest's labels; sorted, they are the model's order
KINDS = {"lesion_a": "lesion_a", "lesion_b": "lesion_b", "negative": "mimic"}
#: `make_cohort(n=2, size=1024, formats=("zarr",), seed=0)`: every level of both slides, their annotations and the
#: manifest, as the 2-class synthesiser wrote them before 3-class cohorts existed.
TWO_CLASS_DIGEST = "521dbce92cf2d3de13ba6a0661123dc81c49da257c63312c7be9c72c440d3b87"


def run(argv: list[str]) -> tuple[int, str]:
    """``wsi-ats ARGV`` in this process; the exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


#: Tiny slides: the training cohort (5 per class: 3 train, 1 val, 1 test), a fresh one (another seed, all held out).
N_TRAIN, N_FRESH, SIZE, EPOCHS = 15, 6, 1024, 15


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A 3-class cohort from the CLI, the synthetic recipe trained on it (``EPOCHS``), and predictions over a fresh cohort."""
    root = tmp_path_factory.mktemp("three")
    cohort, run_dir, out = root / "cohort", root / "run", root / "out"
    code, log = run(["synth", str(cohort), "--classes", "3", "--n", str(N_TRAIN), "--size", str(SIZE), "--format", "tiff,zarr",
                     "--workers", "1"])  # fmt: skip
    assert code == 0, log
    fresh = make_cohort(root / "fresh", n=N_FRESH, size=SIZE, formats=("zarr",), seed=1, classes=3, workers=1, progress=False)
    code, log = run(["train", "--manifest", str(cohort / "manifest.csv"), "--config", "synthetic_wsi", "--out", str(run_dir),
                     "--epochs", str(EPOCHS), "--device", "cpu"])  # fmt: skip
    assert code == 0, log
    code, log = run(["predict", "--model", str(run_dir / "model.pt"), "--manifest", str(fresh), "--out", str(out),
                     "--scheduler", "threads", "--draws", "4", "--device", "cpu"])  # fmt: skip
    assert code == 0, log
    return cohort, run_dir, out


# -- the cohort ---------------------------------------------------------------------------------------


def test_synth_classes_3_writes_three_named_classes_with_typed_annotations(batch):
    cohort, _, _ = batch
    rows = read_manifest(cohort / "manifest.csv")
    assert [r.label for r in rows] == CLASSES * (N_TRAIN // 3)
    for r in rows:
        fc = json.loads((cohort / "annotations" / f"{r.slide_id}.geojson").read_text())
        assert [f["properties"]["kind"] for f in fc["features"]] == [KINDS[r.label]] * 3
        assert {f["properties"]["classification"]["name"] for f in fc["features"]} == {KINDS[r.label]}


def test_three_class_splits_and_formats_are_balanced_per_class():
    plan = plan_cohort(15, ("tiff", "zarr"), seed=0, classes=3)
    for label in CLASSES:
        mine = [s for s in plan if s.label == label]
        assert [s.split for s in mine] == ["train"] * 3 + ["val", "test"]
        assert [s.fmt for s in mine] == ["tiff", "zarr", "tiff", "zarr", "tiff"]
    with pytest.raises(ValueError, match="at least 3 slides"):
        plan_cohort(2, classes=3)
    with pytest.raises(ValueError, match="2 or 3 classes"):
        plan_cohort(8, classes=4)


def test_the_two_class_default_cohort_is_unchanged(tmp_path):
    manifest = make_cohort(tmp_path, n=2, size=1024, formats=("zarr",), seed=0, workers=1, progress=False)
    digest = hashlib.sha256()
    for sid in ("slide_000", "slide_001"):
        group = zarr.open_group(tmp_path / "slides" / f"{sid}.ome.zarr", mode="r")
        for level in ("0", "1", "2"):
            digest.update(group[level][:].tobytes())
        digest.update((tmp_path / "annotations" / f"{sid}.geojson").read_bytes())
    digest.update(manifest.read_bytes())
    assert digest.hexdigest() == TWO_CLASS_DIGEST


def _blob_pixels(scene, blob) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 luminance of the tiles under ``blob``, and the blob's disc on them."""
    y0, x0, y1, x1 = blob.box
    ty, tx = y0 // TILE * TILE, x0 // TILE * TILE
    rgb = np.concatenate([np.concatenate([render_tile(scene, y, x) for x in range(tx, x1, TILE)], 1) for y in range(ty, y1, TILE)], 0)
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114]), blob.mask((ty, tx), rgb.shape[:2])


def test_the_lesion_types_differ_in_arrangement_at_full_resolution_but_not_in_mean_colour():
    """lesion_b rings its nuclei around lumens: pale spaces wider than any gap in lesion_a's crowd (inside a 10-px rim);
    each disc's mean colour, the dot a 16-px view shows, is the same."""
    widest, means = {}, {}
    for kind in ("lesion_a", "lesion_b"):
        scene = make_scene((2048, 2048), kind=kind, seed=5, n_blobs=4)
        widest[kind], means[kind] = [], []
        for blob in scene.blobs:
            lum, disc = _blob_pixels(scene, blob)
            pale_radius = ndimage.distance_transform_edt(lum >= 90)
            widest[kind].append(pale_radius[ndimage.binary_erosion(disc, iterations=10)].max())
            means[kind].append(lum[disc].mean())
    assert max(widest["lesion_a"]) < 6.5 < min(widest["lesion_b"])
    assert np.ptp(means["lesion_a"] + means["lesion_b"]) < 6


# -- the classes through training and prediction ------------------------------------------------------


def test_a_three_label_manifest_trains_a_three_class_model_with_its_label_order(batch):
    _, run_dir, _ = batch
    payload = read_checkpoint(run_dir / "model.pt")
    assert payload["class_names"] == CLASSES
    assert json.loads((run_dir / "metrics.json").read_text())["class_names"] == CLASSES
    weights = [v for k, v in payload["state_dict"].items() if k.startswith("classifier") and v.ndim == 2]
    assert [w.shape[0] for w in weights] == [3]


def test_predictions_carry_a_probability_column_per_class_summing_to_one(batch):
    _, _, out = batch
    rows = read_predictions(out / "predictions.csv")
    assert len(rows) == N_FRESH and all(r["status"] == "ok" for r in rows)
    for r in rows:
        probs = [r[f"prob_{c}"] for c in CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert r["prediction"] == CLASSES[int(np.argmax(probs))] and r["probability"] == pytest.approx(max(probs))
        assert r["draws"] == 4 and r["probability_low"] <= r["probability"] <= r["probability_high"]


def test_the_summary_is_a_three_by_three_confusion_table(batch):
    _, _, out = batch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == CLASSES and summary["labelled_slides"] == N_FRESH
    assert list(summary["confusion"]) == CLASSES and all(list(row) == CLASSES for row in summary["confusion"].values())
    assert sum(sum(row.values()) for row in summary["confusion"].values()) == N_FRESH


def test_the_synthetic_recipe_learns_three_classes_to_95_percent_on_held_out_slides(batch):
    """Every held-out slide right: the test split of the training cohort and a whole fresh cohort (another seed)."""
    _, run_dir, out = batch
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    fresh = json.loads((out / "summary.json").read_text())
    right = test["accuracy"] * test["slides"] + fresh["correct"]
    assert right / (test["slides"] + fresh["predicted"]) >= 0.95
    assert test["patches_on_truth"] > test["patches_on_truth_uniform"]  # drawn towards the blobs (big on tiny slides)


def test_confidence_with_three_classes_is_the_margin_over_the_runner_up():
    """The top class below 0.5 can still be settled: what matters is its lead over the second, not over a half."""
    rng = np.random.default_rng(0)
    top = 0.45 + rng.normal(0, 0.01, 16)
    second = 0.30 + rng.normal(0, 0.01, 16)
    conf = confidence(np.stack([top, second, 1 - top - second], axis=1))
    assert conf.confident and conf.interval[1] < 0.5
    swing = np.resize([0.05, -0.05], 16)  # the first two classes take turns at leading: no settled winner
    tied = confidence(np.stack([0.45 + swing, 0.45 - swing, np.full(16, 0.1)], axis=1))
    assert not tied.confident


# -- the report ---------------------------------------------------------------------------------------


class Styled(HTMLParser):
    """The page's legend entries (swatch colour, class) and each slide card's border colour."""

    def __init__(self):
        super().__init__()
        self.swatches: list[str] = []
        self.borders: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        style = a.get("style") or ""
        if a.get("class") == "swatch":
            self.swatches.append(style.removeprefix("background:"))
        if a.get("class") == "slide":
            self.borders[a["id"]] = style.removeprefix("border-color:")


def test_the_report_gives_each_class_its_colour_in_label_order_with_a_legend(batch):
    _, _, out = batch
    rows = read_predictions(out / "predictions.csv")
    colours = class_colours(rows)
    assert list(colours) == CLASSES and list(colours.values()) == list(PALETTE[:3])
    page = (out / REPORT_HTML).read_text()
    legend = page.split("by class: ", 1)[1].split("</li>", 1)[0]
    for c in CLASSES:
        n = sum(r["prediction"] == c for r in rows)
        assert f'background:{colours[c]}"></span>{c} <b>{n}</b>' in legend
    parsed = Styled()
    parsed.feed(page)
    assert parsed.borders == {r["slide_id"]: colours[r["prediction"]] for r in rows}
    assert set(parsed.swatches) == set(colours.values())


def test_a_class_nobody_was_predicted_keeps_its_colour_and_a_slide_without_a_class_gets_none():
    probs = {"prob_lesion_a": 0.1, "prob_lesion_b": 0.8, "prob_negative": 0.1}
    ok = {"slide_id": "s1", "path": "p", "status": "ok", "error": "", "warning": "", "prediction": "lesion_b", "probability": 0.8, **probs}
    blank = {
        "slide_id": "s2",
        "path": "p",
        "status": "unjudged",
        "error": "",
        "warning": "blank slide",
        "prediction": "",
        "probability": None,
    }
    parsed = Styled()
    parsed.feed(render_report([ok, blank]))
    assert parsed.borders == {"s1": PALETTE[1], "s2": NO_CLASS}
    assert parsed.swatches[:3] == list(PALETTE[:3])  # the legend: every class in label order, lesion_a and negative with 0 slides
