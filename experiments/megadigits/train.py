"""The experiment's one training loop and its test, over in-memory canvas batches.

Canvases are tensors, not slides, so this is not the package's slide trainer; it follows it
where the ideas are the same: Adam on the recipe's ``[train]``, cross-entropy plus the
attention's regularizer, gradient-norm clipping as `wsi_ats.train` does, and every random
stream derived from one seed with the package's derivation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.megadigits.data import MegaDigits
from experiments.megadigits.nets import ATSClassifier, as_float
from wsi_ats.models.config import TrainConfig
from wsi_ats.train import _derive as derive_seed

__all__ = ["EVAL_STREAM", "batch", "derive_seed", "error_rate", "fit", "loss"]

_ORDER, _DRAWS, EVAL_STREAM = 0, 1, 2  # the random streams of one run (`derive_seed(seed, stream)`)


def fit(model: nn.Module, data: MegaDigits, cfg: TrainConfig, *, seed: int) -> list[float]:
    """Train in place (then recalibrate batch norm); returns the mean training loss of each epoch."""
    order_rng = np.random.default_rng(derive_seed(seed, _ORDER))
    generator = torch.Generator().manual_seed(derive_seed(seed, _DRAWS))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    history = []
    for _ in range(cfg.epochs):
        order = order_rng.permutation(len(data))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            step_loss = loss(model, *batch(data, order[start : start + cfg.batch_size]), generator)
            optimizer.zero_grad(set_to_none=True)
            step_loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            optimizer.step()
            losses.append(step_loss.item())
        history.append(float(np.mean(losses)))
    _recalibrate_batch_norm(model, data, cfg.batch_size, generator)
    return history


@torch.no_grad()
def error_rate(model: nn.Module, data: MegaDigits, *, batch_size: int, seed: int, draws: int = 1) -> float:
    """Fraction of wrong predictions; ATS draws its patches from ``seed``, ``draws`` samples per image averaged."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    wrong = 0
    for start in range(0, len(data), batch_size):
        low, high, labels = batch(data, np.arange(start, min(start + batch_size, len(data))))
        if isinstance(model, ATSClassifier):
            scores = model.probabilities(low, high, generator, draws)
        else:  # deterministic: one pass
            scores, _ = model(low, high, generator)
        wrong += int((scores.argmax(dim=1) != labels).sum())
    return wrong / len(data)


def loss(model: nn.Module, low: torch.Tensor, high: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy, plus the attention's regularizer for the models that have one."""
    logits, attention = model(low, high, generator)
    value = F.cross_entropy(logits, labels)
    return value if attention is None else value + model.regularizer(attention)


def batch(data: MegaDigits, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``data`` as ``[b, 1, h, w]`` tensors and their labels.

    The low view is float in [0, 1]; the canvas stays ``uint8`` (4x less to copy) and is
    converted only where a net reads it, which for ATS is just the sampled patches.
    """
    low = as_float(torch.from_numpy(data.low[rows]).unsqueeze(1))
    high = torch.from_numpy(data.high[rows]).unsqueeze(1)
    return low, high, torch.from_numpy(data.labels[rows])


@torch.no_grad()
def _recalibrate_batch_norm(model: nn.Module, data: MegaDigits, batch_size: int, generator: torch.Generator) -> None:
    """Set the batch-norm running statistics to those of the final weights: one pass, plain mean.

    The running averages kept during training lag behind weights that still move, and the
    pooled features vary little (variance near batch norm's epsilon), so eval mode with
    them was far off (a low-res CNN's test error near chance, about half once recalibrated).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the pass
    model.train()
    for start in range(0, len(data), batch_size):
        low, high, _ = batch(data, np.arange(start, min(start + batch_size, len(data))))
        model(low, high, generator)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
