"""Model and training recipes: frozen dataclasses parsed from a TOML file in ``pipelines/``.

A recipe is the whole description of a model: a checkpoint stores `ModelConfig.to_dict`
and rebuilds the same model from it, so changing a size never needs a code edit.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the file (or source) and the key."""


@dataclass(frozen=True)
class LevelSpec:
    """Which pyramid level to read: by ``downsample`` (relative to level 0) or by ``mpp``."""

    downsample: float | None = None
    mpp: float | None = None

    def __post_init__(self) -> None:
        if (self.downsample is None) == (self.mpp is None):
            raise ValueError("a level is chosen by exactly one of downsample= or mpp=")
        value = self.downsample if self.downsample is not None else self.mpp
        if not value > 0:  # type: ignore[operator]
            raise ValueError(f"level downsample/mpp must be positive, got {value}")

    def resolve(self, slide: Any) -> int:
        """Index of the slide level to read (`Slide.level_for`'s rule)."""
        return slide.level_for(downsample=self.downsample, mpp=self.mpp)


@dataclass(frozen=True)
class NetSpec:
    """A registered network by ``name`` and its keyword parameters (kept hashable)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}


@dataclass(frozen=True)
class TissueSpec:
    """Tissue detection: read the mask at the coarsest level at least as fine as ``downsample``.

    ``enabled = false`` treats every cell as tissue (e.g. fluorescence, where saturation
    says nothing); ``min_saturation`` is the floor under the Otsu threshold, so a blank
    slide has no tissue instead of the Otsu split of its noise.
    """

    enabled: bool = True
    downsample: float = 64.0
    min_saturation: float = 0.05


@dataclass(frozen=True)
class ModelConfig:
    """The ATS model: nets, levels, patches and the attention distribution.

    ``patch_size`` is in pixels of the high level; ``smooth`` mixes the softmax with the
    uniform distribution over tissue cells (the original SampleSoftmax); ``tile`` is the
    edge, in attention cells, of one tile of the tissue-only attention pass (training and
    inference);
    ``center_features`` subtracts the running mean of the patch features (a baseline that
    lowers the variance of the attention's gradient).
    """

    attention: NetSpec
    features: NetSpec
    classifier: NetSpec
    low: LevelSpec
    high: LevelSpec
    patch_size: int
    n_patches: int
    replace: bool = False
    entropy_strength: float = 0.0
    smooth: float = 0.0
    tile: int = 256
    center_features: bool = False
    tissue: TissueSpec = field(default_factory=TissueSpec)

    def __post_init__(self) -> None:
        for name in ("patch_size", "n_patches", "tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {self.smooth}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars: what `from_dict` reads and a checkpoint stores."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> ModelConfig:
        return _parse_model(data, f"{source}: [model]")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam with gradient clipping, ``batch_size`` slides per step (accumulated).

    ``attention_lr`` (default: ``lr``) is the attention net's own learning rate, and
    ``weight_decay`` applies to the classifier only. The attention's gradient lives only while
    the loss is not zero, and the feature net and classifier can fit a small training set by
    themselves from diluted evidence (a few informative patches among many): a faster
    attention finds the informative cells sooner, and a bounded classifier margin keeps the
    loss, and so the attention's gradient, from vanishing.

    Without a ``split`` column in the manifest, ``val_fraction`` and ``test_fraction`` of each
    class are held out by a seeded split. Evaluation averages ``eval_draws`` Monte-Carlo draws,
    or takes the top-``n_patches`` cells when ``eval_topk``.
    """

    epochs: int = 10
    lr: float = 1e-3
    attention_lr: float | None = None
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0
    batch_size: int = 1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    eval_draws: int = 1
    eval_topk: bool = False
    amp: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum below 1")
        if not self.lr > 0 or (self.attention_lr is not None and not self.attention_lr > 0):
            raise ValueError(f"lr and attention_lr must be positive, got {self.lr} and {self.attention_lr}")


@dataclass(frozen=True)
class PipelineConfig:
    """A whole recipe: ``[model]`` and ``[train]``; ``source`` names the file it came from."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = "config"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": _to_plain(self.train)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> PipelineConfig:
        _reject_unknown(data, {"model", "train"}, source)
        if "model" not in data:
            raise ConfigError(f"{source}: missing the [model] table")
        model = _parse_model(_table(data, "model", source), f"{source}: [model]")
        train = from_table(TrainConfig, _table(data, "train", source, default={}), source=source, name="train")
        return cls(model=model, train=train, source=source)


def load_config(path: str | Path) -> PipelineConfig:
    """Read a TOML recipe; errors name the file and the offending key.

    A relative ``[model.features] weights`` path is relative to the recipe's own folder (links
    followed), so a recipe and its encoder weights move together and work from any folder.
    """
    data = read_toml(path)
    features = data.get("model", {}).get("features") if isinstance(data.get("model"), Mapping) else None
    if isinstance(features, Mapping) and isinstance(features.get("weights"), str):
        weights = features["weights"]
        if not weights.startswith("hf-hub:") and not Path(weights).is_absolute():
            weights = os.path.normpath(Path(path).resolve().parent / weights)
        data = {**data, "model": {**data["model"], "features": {**features, "weights": weights}}}
    return PipelineConfig.from_dict(data, source=str(Path(path)))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML recipe file, unchecked; a missing file or bad TOML is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: recipe not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


# -- parsing ---------------------------------------------------------------------------------

_NETS = ("attention", "features", "classifier")
_LEVELS = ("low", "high")


def _parse_model(data: Mapping[str, Any], where: str) -> ModelConfig:
    scalars = {f.name for f in fields(ModelConfig)} - {*_NETS, *_LEVELS, "tissue"}
    _reject_unknown(data, scalars | {*_NETS, *_LEVELS, "tissue"}, where)
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in scalars}
    for name in _NETS:
        kwargs[name] = _parse_net(_table(data, name, where), f"{where}.{name}")
    for name in _LEVELS:
        kwargs[name] = _build(LevelSpec, _table(data, name, where), f"{where}.{name}")
    kwargs["tissue"] = _build(TissueSpec, _table(data, "tissue", where, default={}), f"{where}.tissue")
    return _build(ModelConfig, kwargs, where)


def _parse_net(data: Mapping[str, Any], where: str) -> NetSpec:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{where}: needs name = "<registered net>"')
    params = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "name"))
    return NetSpec(name=name, params=params)


def _table(data: Mapping[str, Any], key: str, where: str, default: Any = None) -> Mapping[str, Any]:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: missing the [{key}] table")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a table, got {type(value).__name__}")
    return value


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def from_table(cls: type[T], table: Mapping[str, Any], *, source: str, name: str) -> T:
    """The frozen dataclass ``cls`` from one TOML table: every recipe's one builder.

    Unknown keys are errors, integers are accepted where a float is expected, and every
    error is a `ConfigError` that names ``source`` (the file) and the ``[name]`` table.
    Experiments outside the package read their own tables with it too.
    """
    return _build(cls, table, f"{source}: [{name}]")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    _reject_unknown(data, {f.name for f in fields(cls)}, where)
    for f in fields(cls):
        if f.name in data and f.type in ("float", "float | None") and isinstance(data[f.name], int) and not isinstance(data[f.name], bool):
            data = {**data, f.name: float(data[f.name])}
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, NetSpec):
        return {"name": obj.name, **obj.kwargs}
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj) if getattr(obj, f.name) is not None}
    return obj
