"""Turning a format's decoded samples into the package's ``(h, w, 3) uint8`` RGB."""

from __future__ import annotations

import numpy as np

WHITE = (255, 255, 255)


def to_rgb(pixels: np.ndarray, background: tuple[int, int, int] | None = WHITE) -> np.ndarray:
    """``(h, w, c)`` uint8 with c = 1 (grey), 3 (RGB) or 4 (RGBA) -> ``(h, w, 3)`` uint8.

    A fourth channel is straight (un-premultiplied) alpha: composited onto
    ``background`` as OpenSlide's viewers do (transparent inside a slide means
    "not scanned"), or simply dropped when ``background`` is None.
    """
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 3:
        return pixels
    if channels != 4:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    rgb, alpha = pixels[..., :3], pixels[..., 3:]
    if background is None or alpha.min() == 255:
        return rgb
    a = alpha.astype(np.uint32)
    bg = np.asarray(background, np.uint32)
    return ((rgb * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
