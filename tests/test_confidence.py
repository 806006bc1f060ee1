"""Confidence from the sampling: the spread of the draws, `--draws auto`, and the CSV columns that carry it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_data import cohort_slides, trained_model

from wsi_ats.cli import build_parser
from wsi_ats.engine.confidence import AUTO_BATCH, AUTO_CAP, AUTO_FIRST, confidence
from wsi_ats.engine.run import predict_slide
from wsi_ats.manifest import read_manifest
from wsi_ats.outputs.csvrows import error_row, read_predictions, result_row, write_predictions
from wsi_ats.pipeline import load_model
from wsi_ats.readers import open_slide

#: Intervals checked per slide for the coverage test, and draws each.
SEEDS, DRAWS, REFERENCE_DRAWS = 10, 8, 128


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    model, _ = trained_model(tmp_path_factory.getbasetemp())
    return load_model(str(model), "cpu")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    _, manifest = trained_model(tmp_path_factory.getbasetemp())
    return cohort_slides(manifest)


def predict(net, path, draws, seed=0):
    with open_slide(str(path)) as slide:
        return predict_slide(net, slide, slide_id=path.name, draws=draws, seed=seed)


def test_the_interval_covers_the_many_draw_probability_at_about_its_nominal_rate(net, slides):
    covered = []
    for path in slides:
        reference = predict(net, path, REFERENCE_DRAWS, seed=10_000).probabilities
        for seed in range(SEEDS):
            r = predict(net, path, DRAWS, seed=seed)
            low, high = r.interval
            covered.append(low <= reference[int(np.argmax(r.probabilities))] <= high)
    rate = float(np.mean(covered))
    print(f"coverage of the 95% interval ({DRAWS} draws) over {len(covered)} intervals: {rate:.3f}")
    assert 0.85 <= rate <= 1.0


def test_the_interval_of_independent_normal_draws_covers_their_mean_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    p = np.clip(rng.normal(0.7, 0.1, size=(4000, 5, 1)), 0, 1)
    hits = [(lambda c: c.interval[0] <= 0.7 <= c.interval[1])(confidence(np.concatenate([d, 1 - d], axis=1))) for d in p]
    assert np.mean(hits) == pytest.approx(0.95, abs=0.015)


def test_one_draw_has_no_spread_and_is_never_confident():
    c = confidence(np.array([[0.99, 0.01]]))
    assert c.draws == 1 and not c.confident and np.isnan(c.standard_error).all() and np.isnan(c.interval).all()


def test_the_interval_of_a_probability_stays_within_zero_and_one():
    low, high = confidence(np.array([[0.99, 0.01], [0.95, 0.05], [1.0, 0.0]])).interval
    assert 0.0 <= low < high == 1.0


def test_two_classes_are_confident_when_the_top_interval_lies_above_one_half():
    assert confidence(np.array([[0.8, 0.2], [0.7, 0.3], [0.75, 0.25]])).confident
    assert not confidence(np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])).confident


def test_the_same_seed_gives_the_same_draws_and_auto_draws_what_a_fixed_count_would(net, slides):
    a, b = predict(net, slides[0], 8, seed=3), predict(net, slides[0], 8, seed=3)
    assert np.array_equal(a.probabilities, b.probabilities) and np.array_equal(a.probability_se, b.probability_se)
    assert np.array_equal(a.patch_top_left, b.patch_top_left)
    auto = predict(net, slides[0], "auto", seed=3)
    fixed = predict(net, slides[0], auto.draws, seed=3)
    assert np.allclose(auto.probabilities, fixed.probabilities) and np.array_equal(auto.patch_top_left, fixed.patch_top_left)


def test_auto_spends_fewer_draws_in_total_than_a_fixed_count_for_the_same_answers(net, slides):
    labels = {r.slide_id: r.label for r in read_manifest(slides[0].parent.parent / "manifest.csv")}
    runs = [(predict(net, path, "auto", seed), predict(net, path, 4 * AUTO_BATCH, seed)) for path in slides for seed in (0, 1)]
    spent = [sum(r.draws for r in mode) for mode in zip(*runs)]
    right = [sum(r.prediction == labels[r.slide_id.split(".")[0]] for r in mode) for mode in zip(*runs)]
    print(f"draws spent by auto and by {4 * AUTO_BATCH} draws: {spent}; right answers: {right} of {len(runs)}")
    assert spent[0] < spent[1] and all(auto.prediction == fixed.prediction for auto, fixed in runs)  # so equal accuracy


class Sharper(torch.nn.Module):
    """The trained classifier with its logits centred on ``centre`` and scaled: a slide whose mean sits on the decision boundary."""

    def __init__(self, classifier, centre, scale):
        super().__init__()
        self.classifier, self.centre, self.scale = classifier, centre, scale

    def forward(self, pooled):
        return (self.classifier(pooled) - self.centre) * self.scale


def test_auto_stops_after_one_batch_on_an_easy_slide_and_spends_more_on_a_hard_one(net, slides):
    easy = predict(net, slides[0], "auto")
    assert easy.confident and easy.draws == AUTO_FIRST
    original = net.classifier
    with open_slide(str(slides[0])) as slide:
        from wsi_ats.engine.attention import tissue_logits
        from wsi_ats.engine.plan import plan_slide
        from wsi_ats.engine.run import SlidePatches
        from wsi_ats.engine.windows import read_windows

        plan = plan_slide(net, slide)
        with torch.no_grad():
            net.eval()
            out = net(
                tissue_logits(net, read_windows(plan), plan), SlidePatches(net, plan), draws=64, generator=torch.Generator().manual_seed(9)
            )
    try:
        net.classifier = Sharper(original, out.logits.mean(dim=0), 200.0)
        hard = predict(net, slides[0], "auto")
    finally:
        net.classifier = original
    assert AUTO_FIRST + AUTO_BATCH < hard.draws <= AUTO_CAP  # until settled or the cap: more than one or two batches


def test_the_csv_carries_the_confidence_and_error_rows_are_never_confident(net, slides, tmp_path):
    r = predict(net, slides[0], 8)
    rows = [result_row(r, str(slides[0]), 1.0), error_row("bad", "/x/bad.svs", "SlideError: bad", 0.1)]
    write_predictions(tmp_path / "p.csv", rows)
    ok, bad = read_predictions(tmp_path / "p.csv")
    assert ok["draws"] == 8 and ok["confident"] is r.confident is True
    assert ok["probability_low"] <= ok["probability"] <= ok["probability_high"] and ok["probability_se"] > 0
    assert bad["confident"] is False and bad["draws"] is None and bad["probability_se"] is None


def test_draws_auto_is_accepted_by_the_cli_and_nonsense_is_a_usage_error():
    parser = build_parser()
    args = parser.parse_args(["predict", "--model", "m.pt", "s.svs", "--out", "o", "--draws", "auto"])
    assert args.draws == "auto" and parser.parse_args(["predict", "--model", "m.pt", "s.svs", "--out", "o", "--draws", "3"]).draws == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--model", "m.pt", "s.svs", "--out", "o", "--draws", "many"])
