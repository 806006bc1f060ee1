"""megadigits (experiments/megadigits): canvases of real sklearn digits (the paper's megaNIST) and ATS training on them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from experiments.megadigits.cost import cost_per_sample
from experiments.megadigits.data import MegaDigitsConfig, digit_pool, make_megadigits
from experiments.megadigits.nets import build_model
from experiments.megadigits.recipe import Experiment, Recipe, load_recipe
from experiments.megadigits.run import run_experiment
from experiments.megadigits.train import fit
from wsi_ats.models.config import ConfigError, LevelSpec, ModelConfig, NetSpec, TrainConfig
from wsi_ats.models.registry import available


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
    for canvas, sources, corners, classes in zip(data.high, data.digit_sources, data.digit_top_left, data.digit_classes):
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
TINY_MODEL = ModelConfig(
    attention=NetSpec("megadigits_ink", (("ink_prior", 8.0),)),
    features=NetSpec("megadigits_convs", (("width", 16),)),
    classifier=NetSpec("megadigits_bn_linear"),
    low=LevelSpec(downsample=4.0),
    high=LevelSpec(downsample=1.0),
    patch_size=32,
    n_patches=8,
    entropy_strength=1e-4,
    smooth=1e-5,
)
TINY_TRAIN = TrainConfig(epochs=30, batch_size=8, lr=3e-3)


def test_one_ats_backward_pass_reaches_the_attention_net_and_the_feature_net():
    data = make_megadigits(8, seed=0, config=TINY)
    model = build_model("ats", TINY_MODEL, seed=0)
    low = torch.from_numpy(data.low).unsqueeze(1).float() / 255
    high = torch.from_numpy(data.high).unsqueeze(1)
    logits, attention = model(low, high, torch.Generator().manual_seed(0))
    assert logits.shape == (8, 10) and attention.shape == (8, 24, 24)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.labels)).backward()
    for net in (model.attention, model.features):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_ats_probabilities_over_several_draws_are_the_mean_of_single_draws_from_the_same_stream():
    data = make_megadigits(4, seed=0, config=TINY)
    model = build_model("ats", TINY_MODEL, seed=0).eval()
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
            attention = build_model(name, TINY_MODEL, seed=0).attention_map(low).numpy()
        return attention[on_digits].sum() / len(data)

    assert mass("ats_plain") == pytest.approx(uniform, rel=0.2)
    assert mass("ats") > 3 * uniform


def test_a_few_ats_training_steps_lower_the_loss():
    data = make_megadigits(8, seed=0, config=TINY)
    history = fit(build_model("ats", TINY_MODEL, seed=0), data, TINY_TRAIN, seed=0)
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.15


def test_ats_step_saves_less_activation_memory_than_the_full_resolution_cnn():
    data = make_megadigits(4, seed=6, config=MegaDigitsConfig(canvas=300, n_noise=2))
    model = replace(TINY_MODEL, n_patches=4, patch_size=50)
    ats = cost_per_sample(build_model("ats", model, seed=0), data, batch_size=4, repeats=1)
    full = cost_per_sample(build_model("full", model, seed=0), data, batch_size=4, repeats=1)
    assert 0 < ats.activation_bytes < full.activation_bytes / 3
    assert ats.seconds > 0 and full.seconds > 0


def test_the_experiment_registers_its_nets_in_the_package_registry():
    assert "megadigits_ink" in available("attention")
    assert "megadigits_convs" in available("features")
    assert "megadigits_bn_linear" in available("classifier")


def test_recipe_reads_the_package_model_and_train_tables_and_derives_the_levels_from_the_dataset():
    recipe = load_recipe(RECIPE)
    assert recipe.model.n_patches == 10 and recipe.model.patch_size == 50 and recipe.model.entropy_strength == 1e-4
    assert recipe.model.attention.name == "megadigits_ink"
    assert recipe.train.clip_grad_norm == 1.0 and recipe.train.batch_size == 16
    assert recipe.dataset.low_scale == 0.12
    assert recipe.model.high.downsample == 1 and recipe.model.low.downsample == pytest.approx(1 / 0.12)


def test_recipe_quick_tables_override_the_default_sizes():
    default = load_recipe(RECIPE)
    quick = load_recipe(RECIPE, quick=True)
    assert default.dataset.canvas > quick.dataset.canvas
    assert default.experiment.n_train > quick.experiment.n_train
    assert quick.model == replace(default.model, low=quick.model.low)  # the model is the same; only its level differs
    assert quick.experiment.seed == default.experiment.seed


def _edited_recipe(tmp_path: Path, old: str, new: str) -> Path:
    """``bad.toml``: the shipped recipe with its first ``old`` replaced by ``new``."""
    text = RECIPE.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_recipe_with_an_unknown_key_names_the_file_and_the_table(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: \[train\]: unknown key\(s\) epoch"):
        load_recipe(_edited_recipe(tmp_path, "[train]\n", "[train]\nepoch = 3\n"))


@pytest.mark.parametrize("table, line", [("model", "tile = 64"), ("train", "weight_decay = 0.1"), ("model", "center_features = true")])
def test_recipe_with_a_slide_only_setting_is_rejected_naming_the_file(tmp_path, table, line):
    with pytest.raises(ConfigError, match=rf"bad\.toml: \[{table}\]: {line.split()[0]} apply to slides"):
        load_recipe(_edited_recipe(tmp_path, f"[{table}]\n", f"[{table}]\n{line}\n"))


def test_recipe_that_writes_a_level_is_rejected_because_the_levels_follow_from_the_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: \[model\]: low: the levels follow from \[dataset\]"):
        load_recipe(_edited_recipe(tmp_path, "[model.attention]", "[model.low]\ndownsample = 8\n\n[model.attention]"))


def test_recipe_naming_an_unregistered_net_names_the_file_and_what_is_available(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: no features network named 'megadigits_conv'; available: .*megadigits_convs"):
        load_recipe(_edited_recipe(tmp_path, '"megadigits_convs"', '"megadigits_conv"'))


def test_recipe_epochs_table_gives_a_model_its_own_epochs_and_the_others_the_default():
    recipe = load_recipe(RECIPE)
    assert recipe.train_config("ats").epochs == dict(recipe.experiment.epochs)["ats"] != recipe.train.epochs
    assert recipe.train_config("full").epochs == recipe.train.epochs
    assert recipe.train_config("ats").lr == recipe.train.lr  # only the epochs differ


@pytest.mark.parametrize(
    "entry, message", [("atss = 60", "epochs: unknown model 'atss'"), ("ats = 0", "epochs.ats must be a positive integer")]
)
def test_recipe_epochs_table_with_a_bad_entry_names_the_file_and_the_entry(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=rf"bad\.toml: \[experiment\]: {message}"):
        load_recipe(_edited_recipe(tmp_path, "[experiment.epochs]\nats = 60", f"[experiment.epochs]\n{entry}"))


def test_models_trained_side_by_side_in_processes_match_models_trained_in_this_process():
    experiment = Experiment(n_train=16, n_test=8, seed=0, threads=1, report_draws=(1,), epochs=(("ats", 3),))
    recipe = Recipe(dataset=TINY, model=TINY_MODEL, train=replace(TINY_TRAIN, epochs=2, eval_draws=2), experiment=experiment)
    here = run_experiment(recipe, models=("ats", "low"))["models"]
    apart = run_experiment(replace(recipe, experiment=replace(experiment, processes=2)), models=("ats", "low"))["models"]
    for name in ("ats", "low"):
        for key in ("test_error", "train_error", "loss_per_epoch", "epochs", "activation_mib_per_sample"):
            assert apart[name][key] == here[name][key], (name, key)
    assert here["ats"]["epochs"] == 3 and len(here["ats"]["loss_per_epoch"]) == 3
    assert set(here["ats"]["test_error_by_draws"]) == {"1", "2"} and "test_error_by_draws" not in here["low"]
