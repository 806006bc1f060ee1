"""The known image every slide backend is checked against, and its pyramid.

Written with numpy alone (never through `wsi_ats`), so that what a reader
returns is compared with an independent truth.
"""

from __future__ import annotations

import functools

import numpy as np

#: Level-0 size of the known image ``(H, W)``, its pyramid's downsamples and the resolution writers record.
SHAPE = (1024, 1536)
DOWNSAMPLES = (1, 4, 16)
MPP = 0.25


def known_image(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Smooth, asymmetric RGB content: red waves, green grows with x, blue with y, one magenta block.

    Smooth so that JPEG stays close to it; asymmetric so that swapped axes or a
    wrong tile show up.
    """
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    image = np.stack([128 + 90 * np.sin(xx / 37) * np.cos(yy / 53), 30 + 200 * xx / shape[1], 30 + 200 * yy / shape[0]], axis=-1)
    image[300:420, 500:700] = (200, 40, 90)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor x factor`` block, rounded half up (the documented array-slide rule)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).astype(np.float64)
    return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def known_pyramid(image: np.ndarray | None = None) -> list[np.ndarray]:
    """``image`` (the known image by default) at each of `DOWNSAMPLES`, finest first."""
    image = known_image() if image is None else image
    return [image if d == 1 else downscale(image, d) for d in DOWNSAMPLES]


@functools.cache
def known_levels() -> tuple[np.ndarray, ...]:
    """`known_pyramid()` computed once per process and read-only, since every test that compares with it shares it."""
    levels = tuple(known_pyramid())
    for level in levels:
        level.flags.writeable = False
    return levels
