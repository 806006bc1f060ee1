"""Train and measure ATS against two dense CNNs on megadigits (the paper's megaNIST, sec. 4.2).

Every model (:data:`~experiments.megadigits.nets.MODELS`) trains the same way on the same
canvases (`experiments.megadigits.train.fit`), is tested on canvases of digits it never saw,
and then has the cost of one training step measured (`experiments.megadigits.cost`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from experiments.megadigits.cost import cost_per_sample, pixels_read
from experiments.megadigits.data import MegaDigits, make_megadigits
from experiments.megadigits.nets import MODELS, ATSClassifier, build_model
from experiments.megadigits.recipe import Recipe
from experiments.megadigits.train import EVAL_STREAM, derive_seed, error_rate, fit

__all__ = ["run_experiment", "train_and_test"]

Row = dict[str, Any]


def run_experiment(recipe: Recipe, models: tuple[str, ...] = MODELS, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train and test each model, then measure its cost per sample; plain-JSON results.

    With ``[experiment] processes`` > 1 the models train side by side in that many fresh
    processes (the longest first; each remakes the seeded data and uses ``threads``): on 2
    cores the full-resolution CNN trains on one while the others train on the other. Costs
    are measured afterwards in this process, one model at a time, so no timing is shared.
    """
    start = time.perf_counter()
    train = _canvases(recipe, "train")
    results: dict[str, Any] = {"data_seconds": time.perf_counter() - start, "models": {}}
    trained: dict[str, tuple[Row, dict[str, torch.Tensor]]] = {}
    if recipe.experiment.processes > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(recipe.experiment.processes, mp_context=context) as pool:
            order = sorted(models, key=lambda name: name != "full")  # the longest first
            futures = {name: pool.submit(_train_in_worker, recipe, name) for name in order}
            for name, future in futures.items():
                trained[name] = future.result()
                _log_trained(log, name, trained[name][0])
    for name in models:
        if name not in trained:
            trained[name] = train_and_test(recipe, name, train)
            _log_trained(log, name, trained[name][0])
        row, state = trained[name]
        model = build_model(name, recipe.model, seed=recipe.experiment.seed)
        model.load_state_dict(state)
        cost = cost_per_sample(model, train, batch_size=recipe.train.batch_size, seed=recipe.experiment.seed)
        results["models"][name] = {
            **row,
            "seconds_per_sample": cost.seconds,
            "cpu_seconds_per_sample": cost.cpu_seconds,
            "activation_mib_per_sample": cost.activation_bytes / 2**20,
            "pixels_per_sample": pixels_read(name, recipe),
        }
    return results


def train_and_test(recipe: Recipe, name: str, train: MegaDigits | None = None) -> tuple[Row, dict[str, torch.Tensor]]:
    """Train model ``name`` on the recipe's training canvases (made here unless given) and test it.

    Returns the plain-JSON row and the trained weights. The row's ``test_error`` and
    ``train_error`` average ``[train] eval_draws`` draws for ATS; ``*_error_by_draws`` gives
    ATS's errors for each of ``[experiment] report_draws`` too.
    """
    train = train if train is not None else _canvases(recipe, "train")
    test = _canvases(recipe, "test")
    cfg = recipe.train_config(name)
    model = build_model(name, recipe.model, seed=recipe.experiment.seed)
    start = time.perf_counter()
    history = fit(model, train, cfg, seed=recipe.experiment.seed)
    row: Row = {"epochs": cfg.epochs, "train_seconds": time.perf_counter() - start}
    eval_seed = derive_seed(recipe.experiment.seed, EVAL_STREAM)
    for split, data in (("test", test), ("train", train)):
        if isinstance(model, ATSClassifier):
            by_draws = {
                draws: error_rate(model, data, batch_size=cfg.batch_size, seed=eval_seed, draws=draws)
                for draws in sorted({*recipe.experiment.report_draws, cfg.eval_draws})
            }
            row[f"{split}_error"] = by_draws[cfg.eval_draws]
            row[f"{split}_error_by_draws"] = {str(draws): error for draws, error in by_draws.items()}
        else:  # deterministic: the draws do not apply
            row[f"{split}_error"] = error_rate(model, data, batch_size=cfg.batch_size, seed=eval_seed)
    row.update({"parameters": sum(p.numel() for p in model.parameters()), "loss_per_epoch": history})
    return row, model.state_dict()


def _canvases(recipe: Recipe, split: str) -> MegaDigits:
    count = recipe.experiment.n_train if split == "train" else recipe.experiment.n_test
    return make_megadigits(count, split=split, seed=recipe.experiment.seed, config=recipe.dataset)


def _train_in_worker(recipe: Recipe, name: str) -> tuple[Row, dict[str, torch.Tensor]]:
    if recipe.experiment.threads:
        torch.set_num_threads(recipe.experiment.threads)
    return train_and_test(recipe, name)


def _log_trained(log: Callable[[str], Any] | None, name: str, row: Row) -> None:
    if log is not None:
        log(f"{name}: {row['test_error']:.3f} test error, {row['train_seconds']:.0f} s training ({row['epochs']} epochs)")
