"""Attention networks: a low-level image ``[B, 3, H, W]`` -> one logit per grid cell ``[B, A_y, A_x]``.

Every attention net exposes its geometry so that the slide can be processed tile by tile
with exactly the result of one whole pass (stride 1, odd kernels):

* ``radius``: how many input pixels on each side one output cell sees;
* ``padding``: ``"valid"`` (the grid is the input minus ``2 * radius`` per dim; cell ``i``
  is centred on input pixel ``i + radius``) or ``"same"`` (grid = input, zero padding
  at the slide border);
* ``receptive_field``: what the grid loses per dim, ``2 * radius`` for valid and 0 for
  same padding; it is the ``receptive_field`` of `wsi_ats.ats.patch_top_left`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsi_ats.models.registry import register

PADDINGS = ("valid", "same")


class Tanh(nn.Module):
    """``tanh``; without autograd computed as ``2 * sigmoid(2x) - 1`` in place: the same values within 2e-7, a third of the CPU time.

    Why: torch's CPU ``tanh`` costs about 10x its ``sigmoid`` (measured, torch 2.13 on AVX-512),
    and the attention net's activations over every low-level tissue cell are a large share of
    a prediction's non-encoder time (``benchmarks/results/NOTES.md``). With autograd (training)
    it is ``torch.tanh``, which keeps one tensor for the backward pass where the identity would
    keep two. No parameters: a state dict is the same as with `torch.nn.Tanh`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return torch.tanh(x)
        return torch.sigmoid_(x * 2).mul_(2).sub_(1)


@register("attention", "small_cnn")
class SmallCNNAttention(nn.Module):
    """The original method's attention net: ``layers`` x (Conv ``channels`` + tanh), then Conv 1.

    With the defaults (2 x Conv8 3x3 tanh + Conv1 3x3) the radius is 3 pixels: the
    receptive field is 7 x 7 low-level pixels and valid padding loses 6 per dim.

    ``stain_prior`` (0 = off, the original net) adds ``gain * darkness`` to the logits, with
    ``gain`` a learnt scalar started at ``stain_prior`` and ``darkness`` the negated channel
    mean of the (normalised) input, averaged over ``prior_kernel`` x ``prior_kernel`` pixels
    around each cell's centre: darkness up to an affine map, whose constant cancels in the
    softmax. Why: when lesions are a tiny share of the tissue (3 dots among ~100k cells),
    uniform first draws almost never land on one, so neither the features nor the attention
    ever get a signal. Lesions and their mimics are dense, dark, nucleus-rich spots at the low
    level; the prior sends the first draws there, and the feature net learns to tell them
    apart (the same idea as the ink prior of `experiments.megadigits.nets.InkAttention`). The
    window lies inside the receptive field and follows the net's padding, so ``radius``,
    ``padding`` and tile-by-tile == whole-level hold unchanged.
    """

    def __init__(
        self,
        channels: int = 8,
        layers: int = 2,
        kernel: int = 3,
        padding: str = "valid",
        stain_prior: float = 0.0,
        prior_kernel: int = 3,
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (cells stay centred), got {kernel}")
        radius = (layers + 1) * (kernel // 2)
        if isinstance(stain_prior, bool) or not isinstance(stain_prior, (int, float)) or not math.isfinite(stain_prior):
            raise ValueError(f"stain_prior must be a finite number (0 = no prior), got {stain_prior!r}")
        if isinstance(prior_kernel, bool) or not isinstance(prior_kernel, int) or prior_kernel < 1 or prior_kernel % 2 == 0:
            raise ValueError(f"prior_kernel must be a positive odd integer (cells stay centred), got {prior_kernel!r}")
        if prior_kernel // 2 > radius:
            raise ValueError(f"prior_kernel {prior_kernel} reaches beyond the receptive field ({2 * radius + 1} px)")
        pad = kernel // 2 if padding == "same" else 0
        body: list[nn.Module] = []
        width = 3
        for _ in range(layers):
            body += [nn.Conv2d(width, channels, kernel, padding=pad), Tanh()]
            width = channels
        body.append(nn.Conv2d(width, 1, kernel, padding=pad))
        self.body = nn.Sequential(*body)
        self.padding = padding
        self.radius = radius
        self.prior_kernel = prior_kernel
        self.gain = nn.Parameter(torch.tensor(float(stain_prior))) if stain_prior else None

    @property
    def receptive_field(self) -> int:
        return 2 * self.radius if self.padding == "valid" else 0

    def darkness(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, A_y, A_x]``: the negated channel mean of ``x`` over ``prior_kernel`` pixels around each cell's centre."""
        k = self.prior_kernel
        if self.padding == "same":  # the mean of what exists, as at the slide border of a tile
            return -F.avg_pool2d(x.mean(dim=1, keepdim=True), k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
        c = self.radius - k // 2  # valid: cell i is centred on pixel i + radius
        # one k x k convolution averaging all channels: the channel mean then avg_pool2d, cheaper on channels-last
        # input, where a mean over the innermost, strided channel dim is slow on CPU (benchmarks/results/NOTES.md)
        inner = x[:, :, c : x.shape[2] - c, c : x.shape[3] - c]
        return -F.conv2d(inner, x.new_full((1, x.shape[1], k, k), 1.0 / (x.shape[1] * k * k)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)[:, 0]
        if self.gain is not None:
            logits = logits + self.gain * self.darkness(x)
        return logits
