"""The experiment's recipe: the package's ``[model]`` and ``[train]`` plus ``[dataset]`` and ``[experiment]``.

``[model]`` and ``[train]`` are the package's own schema (`wsi_ats.models.config`), read by
its loader: the same keys mean the same settings as in ``pipelines/synthetic_wsi.toml``.
Canvases are in memory, so the slide-only settings are errors here rather than silently
unused: ``[model]`` ``tile``, ``tissue``, ``center_features``; ``[train]`` ``attention_lr``,
``weight_decay``, ``val_fraction``, ``test_fraction`` (the test canvases are their own
split), ``eval_topk``, ``amp``. The two levels, ``[model.low]`` and ``[model.high]``, are
not written: they follow from ``[dataset]`` (the canvas at 1 and at ``low_scale``).

``[dataset]`` is `MegaDigitsConfig`; ``[experiment]`` is `Experiment`; ``[quick]`` holds
tables of the same names whose values replace the others' for a smoke run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from experiments.megadigits.data import MegaDigitsConfig
from experiments.megadigits.nets import MIN_PATCH, MODELS, build_model
from wsi_ats.models.config import ConfigError, ModelConfig, PipelineConfig, TrainConfig, from_table, read_toml

__all__ = ["Experiment", "Recipe", "load_recipe", "recipe_from_dict"]

_TABLES = ("model", "train", "dataset", "experiment")
_SLIDE_ONLY = {"model": ("tile", "tissue", "center_features"),
               "train": ("attention_lr", "weight_decay", "val_fraction", "test_fraction", "eval_topk", "amp")}  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    """What is run: canvases, seed, extra test-time draw counts, cost canvases, processes and threads.

    ``epochs`` (the ``[experiment.epochs]`` table) gives a model its own epochs where they
    differ from ``[train] epochs``. Why: an ATS epoch costs a fraction of a full-resolution
    one, and ATS starts learning only once its draws find the digits, so it gets more epochs
    for less training time. ``report_draws``: ATS errors are also measured with these many
    test-time draws (``[train] eval_draws`` gives the headline figure).
    """

    seed: int = 0
    n_train: int = 1000
    n_test: int = 300
    report_draws: tuple[int, ...] = ()
    cost_canvases: tuple[int, ...] = ()  # canvas edges at which to measure cost per sample
    threads: int | None = None  # torch threads for the run; None = torch's default
    processes: int = 1  # models trained side by side (see `experiments.megadigits.run.run_experiment`)
    epochs: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "processes"):
            _positive(name, getattr(self, name))
        for name in ("report_draws", "cost_canvases"):
            for value in getattr(self, name):
                _positive(name, value)
        if self.threads is not None:
            _positive("threads", self.threads)
        for name, epochs in self.epochs:
            if name not in MODELS:
                raise ValueError(f"epochs: unknown model {name!r}; expected one of {MODELS}")
            _positive(f"epochs.{name}", epochs)


@dataclass(frozen=True)
class Recipe:
    """Everything one experiment needs, as read from ``pipelines/megadigits.toml``."""

    dataset: MegaDigitsConfig
    model: ModelConfig
    train: TrainConfig
    experiment: Experiment = field(default_factory=Experiment)

    def __post_init__(self) -> None:
        if self.model.patch_size < MIN_PATCH:
            raise ValueError(f"[model] patch_size must be >= {MIN_PATCH} (the feature net's input), got {self.model.patch_size}")

    def train_config(self, name: str) -> TrainConfig:
        """The training settings of model ``name``: ``train`` with its own epochs, if any."""
        return replace(self.train, epochs=dict(self.experiment.epochs).get(name, self.train.epochs))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the tables as a recipe file would hold them (with the levels filled in)."""
        return {"dataset": asdict(self.dataset), "model": self.model.to_dict(), "train": asdict(self.train),
                "experiment": {**asdict(self.experiment), "epochs": dict(self.experiment.epochs)}}  # fmt: skip


def load_recipe(path: str | Path, *, quick: bool = False) -> Recipe:
    """Read a recipe file; with ``quick`` the ``[quick]`` tables' values replace the others."""
    return recipe_from_dict(read_toml(path), source=str(Path(path)), quick=quick)


def recipe_from_dict(data: Mapping[str, Any], *, source: str, quick: bool = False) -> Recipe:
    """The recipe in ``data`` (a parsed TOML file); errors are `ConfigError` naming ``source``."""
    unknown = sorted(set(data) - {*_TABLES, "quick"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(unknown)}; known: {', '.join((*_TABLES, 'quick'))}")
    if quick:
        data = _merged(data, _table(data, "quick", source))
    tables = {name: _table(data, name, source) for name in _TABLES}
    for name, keys in _SLIDE_ONLY.items():
        used = sorted(set(tables[name]) & set(keys))
        if used:
            raise ConfigError(f"{source}: [{name}]: {', '.join(used)} apply to slides, not to in-memory canvases; remove them")
    written = sorted(set(tables["model"]) & {"low", "high"})
    if written:
        raise ConfigError(f"{source}: [model]: {', '.join(written)}: the levels follow from [dataset] (canvas, low_scale); remove them")
    dataset = from_table(MegaDigitsConfig, tables["dataset"], source=source, name="dataset")
    levels = {"low": {"downsample": 1 / dataset.low_scale}, "high": {"downsample": 1}}
    package = PipelineConfig.from_dict({"model": {**tables["model"], **levels}, "train": tables["train"]}, source=source)
    experiment = from_table(Experiment, _experiment_table(tables["experiment"], source), source=source, name="experiment")
    try:
        recipe = Recipe(dataset=dataset, model=package.model, train=package.train, experiment=experiment)
        with torch.random.fork_rng(devices=[]):  # the nets [model] names exist and take its parameters
            for name in MODELS:
                build_model(name, recipe.model, seed=experiment.seed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None
    return recipe


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {name} must be a table, got {type(value).__name__}")
    return value


def _experiment_table(table: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``[experiment]`` with its lists as tuples and its ``epochs`` table as sorted pairs (a frozen dataclass's fields)."""
    out = dict(table)
    for key in ("report_draws", "cost_canvases"):
        if not isinstance(out.get(key, []), list):
            raise ConfigError(f"{source}: [experiment]: {key} must be a list, got {out[key]!r}")
        out[key] = tuple(out.get(key, ()))
    out["epochs"] = tuple(sorted(_table(out, "epochs", f"{source}: [experiment]").items()))
    return out


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values, tables merged key by key; without ``[quick]``."""
    out = {k: v for k, v in base.items() if k != "quick"}
    for key, value in override.items():
        out[key] = _merged(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
