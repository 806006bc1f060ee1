"""megadigits: canvases of real sklearn digits (the paper's megaNIST) and ATS training on them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from wsi_ats.megadigits import MegaDigitsConfig, digit_pool, make_megadigits
from wsi_ats.megadigits_train import (
    Recipe,
    TrainConfig,
    build_model,
    cost_per_sample,
    fit,
    load_recipe,
    run_experiment,
)

@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: a second thread only adds synchronisation (and on a busy
    machine spinning threads slow the training test several-fold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "megadigits.toml"
SMALL = MegaDigitsConfig(canvas=160, digit_size=16, n_noise=4, low_scale=0.25)


def test_same_seed_gives_identical_canvases_and_another_seed_does_not():
    first = make_megadigits(3, seed=7, config=SMALL)
    again = make_megadigits(3, seed=7, config=SMALL)
    other = make_megadigits(3, seed=8, config=SMALL)
    np.testing.assert_array_equal(first.high, again.high)
    np.testing.assert_array_equal(first.low, again.low)
    np.testing.assert_array_equal(first.digit_top_left, again.digit_top_left)
    assert not np.array_equal(first.high, other.high)


def test_label_is_the_class_drawn_three_times_and_the_two_others_differ_from_it():
    data = make_megadigits(40, seed=1, config=SMALL)
    assert data.digit_classes.shape == (40, 5)
    for label, classes in zip(data.labels, data.digit_classes):
        assert (classes == label).sum() == 3
        assert (classes[3:] != label).all()
    assert set(data.labels.tolist()) > {0, 9}  # all ten classes are in play


def test_each_digit_box_holds_its_sklearn_scan():
    scans = load_digits()
    data = make_megadigits(6, seed=2, config=SMALL)
    size = SMALL.digit_size
    for canvas, sources, corners, classes in zip(
        data.high, data.digit_sources, data.digit_top_left, data.digit_classes
    ):
        for source, (y, x), digit_class in zip(sources, corners, classes):
            crop = canvas[y : y + size, x : x + size]
            shrunk = np.asarray(Image.fromarray(crop).resize((8, 8), Image.Resampling.BOX), float)
            correlation = np.corrcoef(shrunk.ravel(), scans.images[source].ravel())[0, 1]
            assert correlation > 0.95
            assert scans.target[source] == digit_class


def test_ink_outside_the_digits_comes_only_from_the_scribbles():
    quiet = make_megadigits(4, seed=3, config=MegaDigitsConfig(**{**vars(SMALL), "n_noise": 0}))
    noisy = make_megadigits(4, seed=3, config=SMALL)

    def ink_outside_digits(data):
        outside = np.ones(data.high.shape, bool)
        for i, corners in enumerate(data.digit_top_left):
            for y, x in corners:
                outside[i, y : y + SMALL.digit_size, x : x + SMALL.digit_size] = False
        return data.high[outside].astype(int).sum()

    assert ink_outside_digits(quiet) == 0
    assert ink_outside_digits(noisy) > 0


def test_train_and_test_canvases_use_disjoint_scans():
    assert not set(digit_pool("train")) & set(digit_pool("test"))
    train = make_megadigits(30, split="train", seed=0, config=SMALL)
    test = make_megadigits(30, split="test", seed=0, config=SMALL)
    assert set(train.digit_sources.ravel()) <= set(digit_pool("train"))
    assert set(test.digit_sources.ravel()) <= set(digit_pool("test"))


def test_low_view_is_the_canvas_at_low_scale_and_shows_the_digits():
    data = make_megadigits(4, seed=4, config=SMALL)
    assert data.low.shape == (4, 40, 40)
    scale = SMALL.low_size / SMALL.canvas
    on_digits, everywhere = [], data.low.mean()
    for low, corners in zip(data.low, data.digit_top_left):
        for y, x in (corners * scale).astype(int):
            on_digits.append(low[y : y + 4, x : x + 4].mean())
    assert np.mean(on_digits) > 5 * everywhere


def test_a_canvas_too_small_for_its_digits_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        MegaDigitsConfig(canvas=40, digit_size=16)
    with pytest.raises(ValueError, match="split"):
        make_megadigits(1, split="validation", config=SMALL)


TINY = MegaDigitsConfig(canvas=96, digit_size=16, n_noise=2, low_scale=0.25)
TINY_TRAIN = TrainConfig(epochs=30, batch_size=8, lr=3e-3, n_patches=8, patch_size=32, width=16)


def test_one_ats_backward_pass_reaches_the_attention_net_and_the_feature_net():
    data = make_megadigits(8, seed=0, config=TINY)
    model = build_model("ats", TINY_TRAIN, seed=0)
    low = torch.from_numpy(data.low).unsqueeze(1).float() / 255
    high = torch.from_numpy(data.high).unsqueeze(1)
    logits, attention = model(low, high, torch.Generator().manual_seed(0))
    assert logits.shape == (8, 10) and attention.shape == (8, 24, 24)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.labels)).backward()
    for net in (model.attention.net, model.features):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_ats_probabilities_over_several_draws_are_the_mean_of_single_draws_from_the_same_stream():
    data = make_megadigits(4, seed=0, config=TINY)
    model = build_model("ats", TINY_TRAIN, seed=0).eval()
    low = torch.from_numpy(data.low).unsqueeze(1).float() / 255
    high = torch.from_numpy(data.high).unsqueeze(1)
    with torch.no_grad():
        averaged = model.probabilities(low, high, torch.Generator().manual_seed(3), draws=3)
        stream = torch.Generator().manual_seed(3)
        singles = [model.probabilities(low, high, stream, draws=1) for _ in range(3)]
    torch.testing.assert_close(averaged, torch.stack(singles).mean(dim=0))
    torch.testing.assert_close(averaged.sum(dim=1), torch.ones(4))
    assert not torch.equal(singles[0], singles[1])  # the draws differ: there is noise to average


def test_ink_prior_puts_the_untrained_attention_on_the_digits():
    data = make_megadigits(8, seed=1, config=SMALL)
    low = torch.from_numpy(data.low).unsqueeze(1).float() / 255
    cell = SMALL.canvas / SMALL.low_size  # canvas pixels per attention cell
    side = int(SMALL.digit_size / cell)
    on_digits = np.zeros(data.low.shape, bool)
    for i, corners in enumerate(data.digit_top_left):
        for y, x in (corners / cell).astype(int):
            on_digits[i, y : y + side, x : x + side] = True
    uniform = on_digits.mean()

    def mass(name):
        with torch.no_grad():
            attention = build_model(name, TINY_TRAIN, seed=0).attention(low).numpy()
        return attention[on_digits].sum() / len(data)

    assert mass("ats_plain") == pytest.approx(uniform, rel=0.2)
    assert mass("ats") > 3 * uniform


def test_a_few_ats_training_steps_lower_the_loss():
    data = make_megadigits(8, seed=0, config=TINY)
    history = fit(build_model("ats", TINY_TRAIN, seed=0), data, TINY_TRAIN, seed=0)
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.15


def test_ats_step_saves_less_activation_memory_than_the_full_resolution_cnn():
    data = make_megadigits(4, seed=6, config=MegaDigitsConfig(canvas=300, n_noise=2))
    cfg = TrainConfig(batch_size=4, n_patches=4, patch_size=50, width=16)
    ats = cost_per_sample(build_model("ats", cfg, seed=0), data, cfg, repeats=1)
    full = cost_per_sample(build_model("full", cfg, seed=0), data, cfg, repeats=1)
    assert 0 < ats.activation_bytes < full.activation_bytes / 3
    assert ats.seconds > 0 and full.seconds > 0


def test_recipe_quick_table_overrides_the_default_sizes():
    default = load_recipe(RECIPE)
    quick = load_recipe(RECIPE, quick=True)
    assert default.dataset.canvas > quick.dataset.canvas
    assert default.n_train > quick.n_train
    assert default.train.n_patches == 10 and default.train.patch_size == 50
    assert default.dataset.low_scale == 0.12 and default.train.entropy == 1e-4


def test_recipe_with_an_unknown_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ValueError, match="bad.toml.*epoch"):
        load_recipe(bad)


def test_recipe_epochs_table_gives_a_model_its_own_epochs_and_the_others_the_default(tmp_path):
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text("[train]\nepochs = 5\n\n[epochs]\nats = 20\n")
    recipe = load_recipe(recipe_file)
    assert recipe.train_config("ats").epochs == 20
    assert recipe.train_config("full").epochs == 5
    assert recipe.train_config("ats").lr == recipe.train.lr  # only the epochs differ


@pytest.mark.parametrize("table, message", [("atss = 3", "unknown model 'atss'"), ("ats = 0", "ats must be a positive integer")])
def test_recipe_epochs_table_with_a_bad_entry_names_the_file_and_the_entry(tmp_path, table, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[epochs]\n{table}\n")
    with pytest.raises(ValueError, match=f"bad.toml: \\[epochs\\]: {message}"):
        load_recipe(bad)


def test_models_trained_side_by_side_in_processes_match_models_trained_in_this_process():
    recipe = Recipe(dataset=TINY, train=replace(TINY_TRAIN, epochs=2, eval_draws=2), n_train=16, n_test=8, seed=0, threads=1,
                    epochs=(("ats", 3),))  # fmt: skip
    here = run_experiment(recipe, models=("ats", "low"))["models"]
    apart = run_experiment(recipe, models=("ats", "low"), processes=2)["models"]
    for name in ("ats", "low"):
        for key in ("test_error", "train_error", "loss_per_epoch", "epochs", "activation_mib_per_sample"):
            assert apart[name][key] == here[name][key], (name, key)
    assert here["ats"]["epochs"] == 3 and len(here["ats"]["loss_per_epoch"]) == 3
    assert "test_error_one_draw" in here["ats"] and "test_error_one_draw" not in here["low"]
