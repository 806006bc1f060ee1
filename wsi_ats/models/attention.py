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

import torch
from torch import nn

from wsi_ats.models.registry import register

PADDINGS = ("valid", "same")


@register("attention", "small_cnn")
class SmallCNNAttention(nn.Module):
    """The original method's attention net: ``layers`` x (Conv ``channels`` + tanh), then Conv 1.

    With the defaults (2 x Conv8 3x3 tanh + Conv1 3x3) the radius is 3 pixels: the
    receptive field is 7 x 7 low-level pixels and valid padding loses 6 per dim.
    """

    def __init__(self, channels: int = 8, layers: int = 2, kernel: int = 3, padding: str = "valid") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (cells stay centred), got {kernel}")
        pad = kernel // 2 if padding == "same" else 0
        body: list[nn.Module] = []
        width = 3
        for _ in range(layers):
            body += [nn.Conv2d(width, channels, kernel, padding=pad), nn.Tanh()]
            width = channels
        body.append(nn.Conv2d(width, 1, kernel, padding=pad))
        self.body = nn.Sequential(*body)
        self.padding = padding
        self.radius = (layers + 1) * (kernel // 2)

    @property
    def receptive_field(self) -> int:
        return 2 * self.radius if self.padding == "valid" else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0]
