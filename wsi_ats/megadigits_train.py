"""Train and measure ATS against two dense CNNs on megadigits (the paper's megaNIST, sec. 4.2).

Four models, one training loop (Adam, cross-entropy, gradient-norm clipping, same batches):

* ``ats``: attention net on the low-resolution view (with an ink prior, see
  :class:`AttentionNet`), ``n`` patches drawn without replacement from the full-resolution
  canvas, feature net on the patches, the expectation, a classifier head; the loss adds the
  entropy regularizer on the attention (the paper's recipe).
* ``ats_plain``: the same with the paper's plain attention net (no prior).
* ``low``: a CNN on the low-resolution view only.
* ``full``: a CNN on the whole full-resolution canvas: the ATS feature net's conv stack run
  over every position, pooled by a learnt softmax attention (so it can count the digits of
  each class, as the ATS expectation does), the same head.

Cost per sample is one forward + backward on a training batch: wall time, and activation
memory = bytes of the distinct tensors autograd saves for the backward pass (captured with
``torch.autograd.graph.saved_tensors_hooks``; parameters excluded). PyTorch's CPU allocator
keeps no peak statistic, and this count is exact and independent of the allocator.
"""

from __future__ import annotations

import multiprocessing
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsi_ats.ats import attention_sampling, entropy_regularizer
from wsi_ats.megadigits import N_CLASSES, MegaDigits, MegaDigitsConfig, make_megadigits

__all__ = [
    "TrainConfig",
    "Recipe",
    "load_recipe",
    "build_model",
    "fit",
    "error_rate",
    "cost_per_sample",
    "cost_at_canvas",
    "run_experiment",
    "MODELS",
]

MODELS = ("ats", "ats_plain", "low", "full")
MIN_PATCH = 32  # smallest input the strided conv stack maps to a non-empty output


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and attention-sampling settings (paper: n 10, patch 50, no replacement, 1e-4)."""

    epochs: int = 12
    batch_size: int = 16
    lr: float = 3e-3
    clip_norm: float = 1.0
    n_patches: int = 10
    patch_size: int = 50
    replace: bool = False
    entropy: float = 1e-4
    ink_prior: float = 8.0  # initial gain of the attention's ink prior ("ats" only; see AttentionNet)
    width: int = 32  # channels of the conv stacks = feature dimension
    eval_draws: int = 1  # ATS at test time: class probabilities averaged over this many samples of n patches

    def __post_init__(self) -> None:
        if isinstance(self.eval_draws, bool) or not isinstance(self.eval_draws, int) or self.eval_draws < 1:
            raise ValueError(f"eval_draws must be a positive integer, got {self.eval_draws!r}")
        if self.patch_size < MIN_PATCH:
            raise ValueError(f"patch_size must be >= {MIN_PATCH} (the feature net's input), got {self.patch_size}")
        if self.width < 2 or self.width % 2:
            raise ValueError(f"width must be an even number >= 2, got {self.width}")


@dataclass(frozen=True)
class Recipe:
    """Everything one experiment needs, as read from ``pipelines/megadigits.toml``."""

    dataset: MegaDigitsConfig
    train: TrainConfig
    n_train: int
    n_test: int
    seed: int
    cost_canvases: tuple[int, ...] = ()  # canvas edges at which to measure cost per sample
    threads: int | None = None  # torch threads for the run; None = torch's default
    processes: int = 1  # models trained side by side (see run_experiment)
    #: Epochs of each model where it differs from ``train.epochs`` (the ``[epochs]`` table).
    #: Why: an ATS epoch costs a fraction of a full-resolution one, and ATS starts learning
    #: only once its draws find the digits, so it gets more epochs for less training time.
    epochs: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for name, epochs in self.epochs:
            if name not in MODELS:
                raise ValueError(f"[epochs]: unknown model {name!r}; expected one of {MODELS}")
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ValueError(f"[epochs]: {name} must be a positive integer, got {epochs!r}")

    def train_config(self, name: str) -> TrainConfig:
        """The training settings of model ``name``: ``train`` with its own epochs, if any."""
        return replace(self.train, epochs=dict(self.epochs).get(name, self.train.epochs))


def load_recipe(path: str | Path, *, quick: bool = False) -> Recipe:
    """Read a recipe; with ``quick`` the ``[quick]`` table's values replace the others."""
    path = Path(path)
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    if quick:
        overrides = raw.get("quick", {})
        for table in ("dataset", "train", "epochs"):
            raw[table] = {**raw.get(table, {}), **overrides.pop(table, {})}
        raw.update(overrides)
    raw.pop("quick", None)
    unknown = set(raw) - {"dataset", "train", "epochs", "n_train", "n_test", "seed", "cost_canvases", "threads", "processes"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    dataset = _dataclass_from(MegaDigitsConfig, raw.get("dataset", {}), path, "dataset")
    train = _dataclass_from(TrainConfig, raw.get("train", {}), path, "train")
    try:
        return Recipe(
            dataset=dataset,
            train=train,
            n_train=int(raw.get("n_train", 1000)),
            n_test=int(raw.get("n_test", 300)),
            seed=int(raw.get("seed", 0)),
            cost_canvases=tuple(int(c) for c in raw.get("cost_canvases", ())),
            threads=int(raw["threads"]) if "threads" in raw else None,
            processes=int(raw.get("processes", 1)),
            epochs=tuple(sorted(raw.get("epochs", {}).items())),
        )
    except ValueError as err:  # the recipe's own checks do not know the file
        raise ValueError(f"{path}: {err}") from None


# --- networks ---------------------------------------------------------------------------------


class AttentionNet(nn.Module):
    """The paper's megaNIST attention net: three 3x3 'same' convs (tanh) -> softmax over cells,
    plus an optional *ink prior*: ``gain * (3x3 mean of the low view)`` added to the logits.

    From a random start the attention has no reason to prefer digits: their features are not
    informative yet, and the sampled loss penalises the variance their patches add, so the
    attention wanders off the ink (measured here: after 17 epochs of 1000 canvases ~1.5% of
    the attention on digit boxes, no more than uniform, and error at chance; 0.3% with an
    earlier feature net). The paper trains 500 epochs on 5000 canvases; on 2 CPU cores the
    prior (a learnt ``gain``, started at ``ink_prior``; 0 = the paper's plain net) makes the
    first draws land on ink, digits and scribbles alike, and ATS learns in a few epochs.
    The softmax is mixed with a uniform ``smooth`` so that no cell gets zero attention.
    """

    def __init__(self, channels: int = 8, smooth: float = 1e-5, ink_prior: float = 0.0) -> None:
        super().__init__()
        self.smooth = smooth
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        self.gain = nn.Parameter(torch.tensor(float(ink_prior))) if ink_prior else None

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        logits = self.net(low)
        if self.gain is not None:
            logits = logits + self.gain * F.avg_pool2d(low, 3, stride=1, padding=1, count_include_pad=False)
        flat = logits.flatten(1)
        attention = (1 - self.smooth) * flat.softmax(dim=1) + self.smooth / flat.shape[1]
        return attention.view(low.shape[0], *low.shape[2:])


def conv_stack(width: int, *, downsample: bool) -> nn.Sequential:
    """Four valid convs + ReLU, ``width`` channels out.

    ``downsample`` (for full-resolution pixels) strides the first three by 2: a 50 px patch
    becomes a 3 x 3 map whose global max is a translation-invariant feature, at ~1/30 of
    the paper's unstrided 7x7 + three 3x3 net (the digits are upscaled 8 x 8 scans, so the
    striding loses nothing). Without it (the low-resolution view) nothing is strided.
    """
    stride = 2 if downsample else 1
    return nn.Sequential(
        nn.Conv2d(1, width // 2, 4, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width // 2, width, 3, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=stride),
        nn.ReLU(),
        nn.Conv2d(width, width, 3),
        nn.ReLU(),
    )


def classifier_head(width: int) -> nn.Sequential:
    """Batch norm + linear, the same for every model.

    Early in training the pooled feature is mostly that of empty background, the same in
    every image; batch norm removes it and scales up what differs (the digits), which cuts
    the epochs needed from tens to a few on every model alike.
    """
    return nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, N_CLASSES))


class PatchFeatures(nn.Module):
    """Patch -> conv stack -> global max -> L2-normalised feature (as the paper's feature net)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.convs = conv_stack(width, downsample=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.convs(patches).amax(dim=(2, 3)), dim=1)


class ATSClassifier(nn.Module):
    """Attention sampling on in-memory canvases: ``(low, high) -> (logits, attention)``."""

    def __init__(self, cfg: TrainConfig, *, ink_prior: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.attention = AttentionNet(ink_prior=ink_prior)
        self.features = PatchFeatures(cfg.width)
        self.head = classifier_head(cfg.width)

    def forward(
        self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self.attention(low)
        return self.head(self._expectation(attention, low, high, generator)), attention

    def probabilities(
        self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None, draws: int
    ) -> torch.Tensor:
        """Class probabilities ``[B, classes]`` averaged over ``draws`` samples from one attention map.

        One draw of ``n`` patches is a noisy estimate (the expectation is unbiased, not
        exact); averaging draws lowers that noise at ``draws`` times the patches read.
        """
        attention = self.attention(low)
        per_draw = [self.head(self._expectation(attention, low, high, generator)).softmax(dim=1) for _ in range(draws)]
        return torch.stack(per_draw).mean(dim=0)

    def _expectation(
        self, attention: torch.Tensor, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The attention-weighted mean of the features of ``n`` patches drawn from ``attention``."""
        result = attention_sampling(
            attention, low, high, self._patch_features, self.cfg.n_patches,
            patch_size=self.cfg.patch_size, replace=self.cfg.replace, generator=generator,
        )  # fmt: skip
        return result.features

    def _patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        return self.features(_as_float(patches))


class DenseClassifier(nn.Module):
    """A CNN on one whole view: conv stack -> L2-normalised features at every position ->
    softmax-attention pooling over positions (counts like the ATS expectation) -> the head."""

    def __init__(self, cfg: TrainConfig, *, view: str) -> None:
        super().__init__()
        self.view = view
        self.convs = conv_stack(cfg.width, downsample=view == "high")
        self.score = nn.Conv2d(cfg.width, 1, 1)
        self.head = classifier_head(cfg.width)

    def forward(
        self, low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = F.normalize(self.convs(_as_float(high) if self.view == "high" else low), dim=1)
        weights = self.score(features).flatten(1).softmax(dim=1)  # [B, positions]
        pooled = torch.einsum("bcp,bp->bc", features.flatten(2), weights)
        return self.head(pooled), None


def build_model(name: str, cfg: TrainConfig, *, seed: int) -> nn.Module:
    """One of :data:`MODELS`, with weights drawn from ``seed``, channels-last like its inputs (`_as_float`)."""
    torch.manual_seed(seed)
    if name in ("ats", "ats_plain"):
        model: nn.Module = ATSClassifier(cfg, ink_prior=cfg.ink_prior if name == "ats" else 0.0)
    elif name in ("low", "full"):
        model = DenseClassifier(cfg, view="low" if name == "low" else "high")
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    return model.to(memory_format=torch.channels_last)


# --- training and measurement -----------------------------------------------------------------


def fit(model: nn.Module, data: MegaDigits, cfg: TrainConfig, *, seed: int) -> list[float]:
    """Train in place (then recalibrate batch norm); returns the mean training loss of each epoch."""
    order_rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    history = []
    for _ in range(cfg.epochs):
        order = order_rng.permutation(len(data))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            low, high, labels = _batch(data, order[start : start + cfg.batch_size])
            loss = _loss(model, low, high, labels, cfg, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    _recalibrate_batch_norm(model, data, cfg.batch_size, generator)
    return history


@torch.no_grad()
def _recalibrate_batch_norm(
    model: nn.Module, data: MegaDigits, batch_size: int, generator: torch.Generator
) -> None:
    """Set the batch-norm running statistics to those of the final weights: one pass, plain mean.

    The running averages kept during training lag behind weights that still move, and the
    pooled features vary little (variance near batch norm's epsilon), so eval mode with
    them was far off: 0.89 test error for a low-res CNN that scores 0.43 once recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
    model.train()
    for start in range(0, len(data), batch_size):
        low, high, _ = _batch(data, np.arange(start, min(start + batch_size, len(data))))
        model(low, high, generator)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def error_rate(model: nn.Module, data: MegaDigits, *, batch_size: int, seed: int, draws: int = 1) -> float:
    """Fraction of wrong predictions; ATS draws its patches from ``seed``, ``draws`` samples per image averaged."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    wrong = 0
    for start in range(0, len(data), batch_size):
        low, high, labels = _batch(data, np.arange(start, min(start + batch_size, len(data))))
        if isinstance(model, ATSClassifier):
            scores = model.probabilities(low, high, generator, draws)
        else:  # deterministic: one pass
            scores, _ = model(low, high, generator)
        wrong += int((scores.argmax(dim=1) != labels).sum())
    return wrong / len(data)


@dataclass(frozen=True)
class Cost:
    """Per-sample cost of one training step (forward + backward)."""

    seconds: float  # wall time, fastest of the repeats (least disturbed by other processes)
    cpu_seconds: float  # CPU time of this process over all its threads, fastest repeat
    activation_bytes: int


def cost_per_sample(
    model: nn.Module, data: MegaDigits, cfg: TrainConfig, *, repeats: int = 5, seed: int = 0
) -> Cost:
    """Time and activation memory of a training step on one batch, divided by its size."""
    generator = torch.Generator().manual_seed(seed)
    batch = np.arange(min(cfg.batch_size, len(data)))
    low, high, labels = _batch(data, batch)
    model.train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _loss(model, low, high, labels, cfg, generator).backward()  # also the warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        _loss(model, low, high, labels, cfg, generator).backward()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    model.zero_grad(set_to_none=True)
    return Cost(
        seconds=min(wall) / len(batch),
        cpu_seconds=min(cpu) / len(batch),
        activation_bytes=sum(saved.values()) // len(batch),
    )


def cost_at_canvas(name: str, canvas: int, recipe: Recipe) -> dict[str, float]:
    """Cost per sample of an untrained ``name`` model on canvases of edge ``canvas``.

    The scribble count grows with the area (the paper's density), everything else is kept.
    """
    base = recipe.dataset
    config = replace(base, canvas=canvas, n_noise=round(base.n_noise * (canvas / base.canvas) ** 2))
    data = make_megadigits(recipe.train.batch_size, split="train", seed=recipe.seed, config=config)
    cost = cost_per_sample(build_model(name, recipe.train, seed=recipe.seed), data, recipe.train, repeats=3)
    return {
        "seconds": cost.seconds,
        "cpu_seconds": cost.cpu_seconds,
        "activation_mib": cost.activation_bytes / 2**20,
    }


def pixels_read(name: str, recipe: Recipe) -> int:
    """Input pixels one sample makes the model look at."""
    low, canvas = recipe.dataset.low_size ** 2, recipe.dataset.canvas ** 2
    patches = recipe.train.n_patches * recipe.train.patch_size ** 2
    return {"ats": low + patches, "ats_plain": low + patches, "low": low, "full": canvas}[name]


def run_experiment(
    recipe: Recipe, models: tuple[str, ...] = MODELS, log: Any = None, processes: int = 1
) -> dict[str, Any]:
    """Train and test each model, then measure its cost per sample; plain-JSON results.

    With ``processes`` > 1 the models train side by side in that many fresh processes (the
    longest first; each remakes the seeded data and uses ``recipe.threads``): on 2 cores
    the full-resolution CNN trains on one while the others train on the other. Costs are
    measured afterwards in this process, one model at a time, so no timing is shared.
    """
    start = time.perf_counter()
    train = make_megadigits(recipe.n_train, split="train", seed=recipe.seed, config=recipe.dataset)
    results: dict[str, Any] = {"data_seconds": time.perf_counter() - start, "models": {}}
    trained: dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]]] = {}
    if processes > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
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
        model = build_model(name, recipe.train_config(name), seed=recipe.seed)
        model.load_state_dict(state)
        cost = cost_per_sample(model, train, recipe.train, seed=recipe.seed)
        results["models"][name] = {
            **row,
            "seconds_per_sample": cost.seconds,
            "cpu_seconds_per_sample": cost.cpu_seconds,
            "activation_mib_per_sample": cost.activation_bytes / 2**20,
            "pixels_per_sample": pixels_read(name, recipe),
        }
    return results


def train_and_test(
    recipe: Recipe, name: str, train: MegaDigits | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train model ``name`` on the recipe's training canvases (made here unless given) and test it.

    Returns the plain-JSON row (errors, epochs, seconds, losses) and the trained weights.
    """
    if train is None:
        train = make_megadigits(recipe.n_train, split="train", seed=recipe.seed, config=recipe.dataset)
    test = make_megadigits(recipe.n_test, split="test", seed=recipe.seed, config=recipe.dataset)
    cfg = recipe.train_config(name)
    model = build_model(name, cfg, seed=recipe.seed)
    start = time.perf_counter()
    history = fit(model, train, cfg, seed=recipe.seed)
    row: dict[str, Any] = {"epochs": cfg.epochs, "train_seconds": time.perf_counter() - start}
    for split, data in (("test", test), ("train", train)):
        row[f"{split}_error"] = error_rate(model, data, batch_size=cfg.batch_size, seed=recipe.seed + 1, draws=cfg.eval_draws)
        if isinstance(model, ATSClassifier) and cfg.eval_draws > 1:  # what a single draw gives
            row[f"{split}_error_one_draw"] = error_rate(model, data, batch_size=cfg.batch_size, seed=recipe.seed + 1)
    row.update({"parameters": sum(p.numel() for p in model.parameters()), "loss_per_epoch": history})
    return row, model.state_dict()


def _train_in_worker(recipe: Recipe, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    return train_and_test(recipe, name)


def _log_trained(log: Any, name: str, row: dict[str, Any]) -> None:
    if log is not None:
        log(f"{name}: {row['test_error']:.3f} test error, {row['train_seconds']:.0f} s training ({row['epochs']} epochs)")


def _batch(data: MegaDigits, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``data`` as ``[b, 1, h, w]`` tensors and their labels.

    The low view is float in [0, 1]; the canvas stays ``uint8`` (4x less to copy) and is
    converted only where a net reads it, which for ATS is just the sampled patches.
    """
    low = _as_float(torch.from_numpy(data.low[rows]).unsqueeze(1))
    high = torch.from_numpy(data.high[rows]).unsqueeze(1)
    return low, high, torch.from_numpy(data.labels[rows])


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32 in [0, 1], channels-last: every model's convolutions ran
    1.3-1.8x faster on CPU that way (forward + backward; full-resolution CNN 90 -> 51 ms per sample)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {images.dtype}")
    return (images.to(torch.float32) / 255).contiguous(memory_format=torch.channels_last)


def _loss(
    model: nn.Module,
    low: torch.Tensor,
    high: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    logits, attention = model(low, high, generator)
    loss = F.cross_entropy(logits, labels)
    if attention is not None:
        loss = loss + entropy_regularizer(attention, cfg.entropy)
    return loss


def _dataclass_from(cls: type, values: dict[str, Any], path: Path, table: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys in [{table}]: {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad [{table}]: {err}") from err
