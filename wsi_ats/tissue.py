"""Where the tissue is: Otsu's threshold on saturation at a coarse level (as CLAM does).

Background (glass, white or black padding) has almost no colour saturation, stained
tissue has a lot, so one threshold on a small, coarse image separates them. The mask
keeps background away from every network; it is computed in numpy from a few hundred
thousand pixels whatever the slide's size, reading the chosen level in bounded chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from wsi_ats.readers.base import Slide

#: Level pixels per side read at once when the mask level must be reduced further.
CHUNK = 2048


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Boolean ``mask`` whose pixel ``(i, j)`` covers level-0 ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``, ``d = downsample``."""

    mask: np.ndarray
    downsample: float
    threshold: float

    @property
    def fraction(self) -> float:
        """Share of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Tissue at level-0 rows ``ys`` x columns ``xs`` (1-D float arrays): a ``(len(ys), len(xs))`` bool grid."""
        rows = np.clip((np.asarray(ys) / self.downsample).astype(np.int64), 0, self.mask.shape[0] - 1)
        cols = np.clip((np.asarray(xs) / self.downsample).astype(np.int64), 0, self.mask.shape[1] - 1)
        return self.mask[np.ix_(rows, cols)]


def tissue_mask(slide: Slide, *, downsample: float = 64.0, min_saturation: float = 0.05) -> TissueMask:
    """Tissue mask at about ``downsample`` (the coarsest level at least that fine, then block means).

    ``min_saturation`` (0-1) floors the Otsu threshold: on a blank slide Otsu would split
    the noise of the glass, and the floor makes that "no tissue".
    """
    level = slide.level_for(downsample=downsample)
    lv = slide.levels[level]
    factor = max(1, int(downsample / lv.downsample * (1 + 1e-6)))
    rgb = _read_reduced(slide, level, factor)
    saturation = _median3(_saturation(rgb))
    threshold = max(otsu_threshold(saturation), min_saturation)
    return TissueMask(mask=saturation > threshold, downsample=lv.downsample * factor, threshold=threshold)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the split that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    if hist.sum() == 0:
        return 0.0
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * w1)
    between = np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)
    return float(edges[int(np.argmax(between)) + 1])


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` in [0, 1]; 0 for black."""
    hi = rgb.max(axis=-1)
    lo = rgb.min(axis=-1)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def _median3(image: np.ndarray) -> np.ndarray:
    """3 x 3 median (edges replicated): removes isolated specks before thresholding."""
    if min(image.shape) < 3:
        return image
    windows = sliding_window_view(np.pad(image, 1, mode="edge"), (3, 3))
    return np.median(windows, axis=(-2, -1)).astype(image.dtype)


def _read_reduced(slide: Slide, level: int, factor: int) -> np.ndarray:
    """The whole ``level`` as float32 RGB, averaged over ``factor x factor`` blocks, read chunk by chunk."""
    H, W = slide.levels[level].shape
    out = np.empty((math.ceil(H / factor), math.ceil(W / factor), 3), np.float32)
    step = factor * max(1, CHUNK // factor)
    for y in range(0, H, step):
        for x in range(0, W, step):
            region = slide.read_region(level, (y, x), (min(step, H - y), min(step, W - x)))
            block = _block_mean(region, factor)
            out[y // factor : y // factor + block.shape[0], x // factor : x // factor + block.shape[1]] = block
    return out


def _block_mean(region: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return region.astype(np.float32)
    h, w = region.shape[:2]
    ph, pw = -h % factor, -w % factor
    padded = np.pad(region, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else region
    hb, wb = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(hb, factor, wb, factor, 3).mean(axis=(1, 3), dtype=np.float32)
