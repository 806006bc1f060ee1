"""Where the tissue is: Otsu's threshold on saturation at a coarse level (as CLAM does).

Background (glass, white or black padding) has almost no colour saturation, stained
tissue has a lot, so one threshold on a small, coarse image separates them. The mask
keeps background away from every network. It is computed in numpy, chunk by chunk, with
8-bit saturation (a byte per mask pixel), and chunks that are one flat colour (empty
glass, a scanner's blank tiles) are skipped; so a mostly blank slide costs little more
than its tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_ats.readers.base import Slide

#: Mask pixels per side processed at once.
CHUNK = 512


Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Boolean ``mask`` whose pixel ``(i, j)`` covers level-0 ``[i*d, (i+1)*d) x [j*d, (j+1)*d)``, ``d = downsample``.

    ``regions`` are mask-pixel boxes ``(y0, x0, y1, x1)`` outside which the mask is all
    False (None: anywhere); they let callers skip blank parts without scanning them.
    ``uniform_colour`` is the RGB of every pixel of the level read when it holds no other
    (a blank scan, a store whose chunks are all missing), else None.
    """

    mask: np.ndarray
    downsample: float
    threshold: float
    regions: tuple[Box, ...] | None = None
    uniform_colour: tuple[int, int, int] | None = None

    @property
    def fraction(self) -> float:
        """Share of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def rows(self, ys: np.ndarray) -> np.ndarray:
        """Mask rows of level-0 row positions ``ys`` (clipped to the mask)."""
        return np.clip((np.asarray(ys) / self.downsample).astype(np.int64), 0, self.mask.shape[0] - 1)

    def cols(self, xs: np.ndarray) -> np.ndarray:
        """Mask columns of level-0 column positions ``xs`` (clipped to the mask)."""
        return np.clip((np.asarray(xs) / self.downsample).astype(np.int64), 0, self.mask.shape[1] - 1)

    def at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Tissue at level-0 rows ``ys`` x columns ``xs`` (1-D float arrays): a ``(len(ys), len(xs))`` bool grid."""
        return self.mask[np.ix_(self.rows(ys), self.cols(xs))]


def tissue_mask(slide: Slide, *, downsample: float = 64.0, level: int | None = None, min_saturation: float = 0.05) -> TissueMask:
    """Tissue mask of ``level``, or at about ``downsample`` (the coarsest level at least that fine, then block means).

    ``min_saturation`` (0-1) floors the Otsu threshold: on a blank slide Otsu would split
    the noise of the glass, and the floor makes that "no tissue". A 3 x 3 majority vote
    (the median of a binary image) then removes isolated specks.
    """
    if level is None:
        level = slide.level_for(downsample=downsample)
        factor = max(1, int(downsample / slide.levels[level].downsample * (1 + 1e-6)))
    else:
        factor = 1
    lv = slide.levels[level]
    saturation, hist, busy, colour = _saturation(slide, level, factor)
    cut = max(_otsu_level(hist), math.ceil(min_saturation * 255))
    mask = np.zeros(saturation.shape, bool)  # flat grey chunks have saturation 0: never tissue
    for y0, x0, y1, x1 in busy:
        mask[y0:y1, x0:x1] = saturation[y0:y1, x0:x1] > cut
    for box in busy:
        _majority3(mask, *box)
    return TissueMask(mask=mask, downsample=lv.downsample * factor, threshold=cut / 255, regions=tuple(busy), uniform_colour=colour)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins): the split that maximises the between-class variance."""
    levels = np.clip(np.round(np.asarray(values, dtype=np.float64) * 255), 0, 255).astype(np.int64)
    return _otsu_level(np.bincount(levels.ravel(), minlength=256)) / 255


def _otsu_level(hist: np.ndarray) -> int:
    """Level ``k`` (0-255) such that ``<= k`` is one class and ``> k`` the other."""
    total = hist.sum()
    if total == 0:
        return 0
    p = hist / total
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    return int(np.argmax(np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)))


def _saturation(slide: Slide, level: int, factor: int) -> tuple[np.ndarray, np.ndarray, list[Box], tuple[int, int, int] | None]:
    """8-bit HSV saturation of ``level`` reduced by ``factor``, its 256-bin histogram, the mask-pixel boxes of the chunks with content,
    and the level's one colour if it has only one.

    Chunks of one grey (empty glass, blank tiles) have saturation 0: they are counted in the
    histogram but never written, so a blank slide's saturation stays untouched zero pages.
    """
    H, W = slide.levels[level].shape
    out = np.zeros((math.ceil(H / factor), math.ceil(W / factor)), np.uint8)
    hist = np.zeros(256, np.int64)
    step = factor * CHUNK
    busy = []
    colour, uniform = None, True  # every chunk so far is this one colour
    for y in range(0, H, step):
        for x in range(0, W, step):
            region = slide.read_region(level, (y, x), (min(step, H - y), min(step, W - x)))
            y0, x0 = y // factor, x // factor
            box = (y0, x0, y0 + math.ceil(region.shape[0] / factor), x0 + math.ceil(region.shape[1] / factor))
            if uniform:
                first = (int(region[0, 0, 0]), int(region[0, 0, 1]), int(region[0, 0, 2]))
                uniform = colour in (None, first) and bool((region == region[:1, :1]).all())
                colour = first
            if region.min() == region.max():
                hist[0] += (box[2] - box[0]) * (box[3] - box[1])
                continue
            chunk = _hsv_saturation(_block_mean(region, factor))
            out[box[0] : box[2], box[1] : box[3]] = chunk
            hist += np.bincount(chunk.ravel(), minlength=256)
            busy.append(box)
    return out, hist, busy, colour if uniform else None


def _hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of uint8 RGB, as 0-255 uint8 (integer arithmetic); 0 for black."""
    hi = rgb.max(axis=-1).astype(np.uint16)
    lo = rgb.min(axis=-1).astype(np.uint16)
    return ((hi - lo) * 255 // np.maximum(hi, 1)).astype(np.uint8)


def _majority3(mask: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> None:
    """In place on ``mask[y0:y1, x0:x1]``: a pixel is set when at least 5 of its 3 x 3 neighbours are (edges replicated)."""
    H, W = mask.shape
    ya, xa, yb, xb = max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, H), min(x1 + 1, W)
    pads = ((int(ya == y0), int(yb == y1)), (int(xa == x0), int(xb == x1)))  # replicate where there is no neighbour
    window = np.pad(mask[ya:yb, xa:xb], pads, mode="edge")
    votes = sum(window[dy : dy + y1 - y0, dx : dx + x1 - x0].astype(np.uint8) for dy in range(3) for dx in range(3))
    mask[y0:y1, x0:x1] = votes >= 5


def _block_mean(region: np.ndarray, factor: int) -> np.ndarray:
    """Mean colour of each ``factor x factor`` block (edges replicated), rounded to uint8."""
    if factor == 1:
        return region
    h, w = region.shape[:2]
    ph, pw = -h % factor, -w % factor
    padded = np.pad(region, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else region
    hb, wb = padded.shape[0] // factor, padded.shape[1] // factor
    return np.round(padded.reshape(hb, factor, wb, factor, 3).mean(axis=(1, 3), dtype=np.float32)).astype(np.uint8)
