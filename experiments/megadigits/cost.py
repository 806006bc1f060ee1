"""Cost per sample of one training step (forward + backward): wall and CPU time, activation memory.

Activation memory = bytes of the distinct tensors autograd saves for the backward pass
(captured with ``torch.autograd.graph.saved_tensors_hooks``; parameters excluded). PyTorch's
CPU allocator keeps no peak statistic, and this count is exact and independent of the allocator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from experiments.megadigits.data import MegaDigits, make_megadigits
from experiments.megadigits.nets import build_model
from experiments.megadigits.recipe import Recipe
from experiments.megadigits.train import batch, loss

__all__ = ["Cost", "cost_at_canvas", "cost_per_sample", "pixels_read"]


@dataclass(frozen=True)
class Cost:
    """Per-sample cost of one training step (forward + backward)."""

    seconds: float  # wall time, fastest of the repeats (least disturbed by other processes)
    cpu_seconds: float  # CPU time of this process over all its threads, fastest repeat
    activation_bytes: int


def cost_per_sample(model: nn.Module, data: MegaDigits, *, batch_size: int, repeats: int = 5, seed: int = 0) -> Cost:
    """Time and activation memory of a training step on one batch, divided by its size."""
    generator = torch.Generator().manual_seed(seed)
    rows = np.arange(min(batch_size, len(data)))
    low, high, labels = batch(data, rows)
    model.train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss(model, low, high, labels, generator).backward()  # also the warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        loss(model, low, high, labels, generator).backward()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    model.zero_grad(set_to_none=True)
    return Cost(
        seconds=min(wall) / len(rows),
        cpu_seconds=min(cpu) / len(rows),
        activation_bytes=sum(saved.values()) // len(rows),
    )


def cost_at_canvas(name: str, canvas: int, recipe: Recipe) -> dict[str, float]:
    """Cost per sample of an untrained ``name`` model on canvases of edge ``canvas``.

    The scribble count grows with the area (the paper's density), everything else is kept.
    """
    base, seed, batch_size = recipe.dataset, recipe.experiment.seed, recipe.train.batch_size
    config = replace(base, canvas=canvas, n_noise=round(base.n_noise * (canvas / base.canvas) ** 2))
    data = make_megadigits(batch_size, split="train", seed=seed, config=config)
    cost = cost_per_sample(build_model(name, recipe.model, seed=seed), data, batch_size=batch_size, repeats=3)
    return {"seconds": cost.seconds, "cpu_seconds": cost.cpu_seconds, "activation_mib": cost.activation_bytes / 2**20}


def pixels_read(name: str, recipe: Recipe) -> int:
    """Input pixels one training sample makes the model look at."""
    low, canvas = recipe.dataset.low_size**2, recipe.dataset.canvas**2
    patches = recipe.model.n_patches * recipe.model.patch_size**2
    return {"ats": low + patches, "ats_plain": low + patches, "low": low, "full": canvas}[name]
