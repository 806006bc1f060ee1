"""megadigits: the ATS paper's Megapixel-MNIST task, rebuilt from real handwritten digits.

Katharopoulos & Fleuret (ICML 2019, sec. 4.2) place 5 MNIST digits on an empty 1500 x 1500
canvas: 3 of the target class and 2 drawn from the other classes, plus 50 scribbles of straight
lines as distractors; the label (10 classes) is the class that appears three times. Only a few
percent of the pixels matter and the low-resolution view (scale 0.12) is too coarse to read a
digit, which is exactly where attention sampling should pay off.

Here the digits are scikit-learn's ``load_digits`` (1797 real 8 x 8 scans, shipped with
scikit-learn: no download), upscaled with PIL. Canvases of the ``train`` split use the first two
thirds of those scans, ``test`` canvases the rest, so a test digit was never seen in training.
Digits never overlap each other and scribbles never touch a digit, so every label is readable.
Everything is drawn from one seeded generator per (seed, split): the same call gives the same
canvases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["MegaDigits", "MegaDigitsConfig", "digit_pool", "make_megadigits", "upscaled_digits"]

N_CLASSES = 10
_SPLITS = {"train": 0, "test": 1}
_TRAIN_FRACTION = 2 / 3  # of the 1797 scans, in their stored order
_MAX_TRIES = 10_000  # rejection-sampling attempts per placed item before giving up


@dataclass(frozen=True)
class MegaDigitsConfig:
    """Geometry of one canvas. Defaults: the paper's 1500 px canvas scaled by 1/3, the rest kept.

    ``n_noise`` keeps the paper's scribble density per area (50 per 1500^2 -> 6 per 500^2).
    """

    canvas: int = 500
    digit_size: int = 28
    n_target: int = 3
    n_other: int = 2
    n_noise: int = 6
    low_scale: float = 0.12

    def __post_init__(self) -> None:
        if self.digit_size < 8:
            raise ValueError(f"digit_size must be >= 8 (the scans are 8 x 8), got {self.digit_size}")
        if self.n_target < 1 or self.n_other < 0 or self.n_noise < 0:
            raise ValueError(f"need n_target >= 1, n_other >= 0, n_noise >= 0, got {self.n_target}, {self.n_other}, {self.n_noise}")
        if self.n_other >= self.n_target:
            raise ValueError(
                f"n_other ({self.n_other}) must be below n_target ({self.n_target}), "
                "otherwise an other class could appear as often as the target"
            )
        free_cells = (self.canvas // self.digit_size) ** 2
        if self.n_digits > free_cells // 4:
            raise ValueError(
                f"a {self.canvas} px canvas is too small for {self.n_digits} digits of {self.digit_size} px (at most {free_cells // 4})"
            )
        if not 0 < self.low_scale <= 1 or self.low_size < 1:
            raise ValueError(f"low_scale must be in (0, 1] and give >= 1 px, got {self.low_scale}")

    @property
    def n_digits(self) -> int:
        return self.n_target + self.n_other

    @property
    def low_size(self) -> int:
        """Edge of the low-resolution view, ``round(canvas * low_scale)``."""
        return round(self.canvas * self.low_scale)


@dataclass(frozen=True)
class MegaDigits:
    """``N`` canvases with their full-resolution and low-resolution views and ground truth.

    Images are ``uint8`` grey (0 background, 255 ink); ``digit_top_left`` are ``(y, x)`` corners
    of the ``digit_size`` boxes in full-resolution pixels, target digits first.
    """

    config: MegaDigitsConfig
    high: np.ndarray  # [N, canvas, canvas] uint8
    low: np.ndarray  # [N, low_size, low_size] uint8
    labels: np.ndarray  # [N] int64, the class that appears n_target times
    digit_classes: np.ndarray  # [N, n_digits] int64
    digit_sources: np.ndarray  # [N, n_digits] int64, row in sklearn's load_digits()
    digit_top_left: np.ndarray  # [N, n_digits, 2] int64
    seed: int = 0
    split: str = "train"

    def __len__(self) -> int:
        return len(self.labels)


def digit_pool(split: str) -> np.ndarray:
    """Rows of ``load_digits()`` that canvases of ``split`` may use (disjoint across splits)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    total = len(_digits()[1])
    cut = round(total * _TRAIN_FRACTION)
    return np.arange(cut) if split == "train" else np.arange(cut, total)


@lru_cache(maxsize=4)
def upscaled_digits(size: int) -> np.ndarray:
    """All 1797 scans as ``uint8`` ``[1797, size, size]``, bilinearly upscaled from 8 x 8."""
    images, _ = _digits()
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        scan = Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8))
        out[i] = np.asarray(scan.resize((size, size), Image.Resampling.BILINEAR))
    out.setflags(write=False)
    return out


def make_megadigits(n: int, *, split: str = "train", seed: int = 0, config: MegaDigitsConfig = MegaDigitsConfig()) -> MegaDigits:
    """Draw ``n`` canvases of ``split`` from the generator seeded with ``(seed, split)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pool = digit_pool(split)
    pool_classes = _digits()[1][pool]
    glyphs = upscaled_digits(config.digit_size)
    rng = np.random.default_rng([seed, _SPLITS[split]])

    size, low = config.canvas, config.low_size
    high = np.zeros((n, size, size), dtype=np.uint8)
    low_views = np.zeros((n, low, low), dtype=np.uint8)
    labels = rng.integers(N_CLASSES, size=n)
    classes = np.zeros((n, config.n_digits), dtype=np.int64)
    sources = np.zeros((n, config.n_digits), dtype=np.int64)
    corners = np.zeros((n, config.n_digits, 2), dtype=np.int64)
    for i, target in enumerate(labels):
        sources[i] = np.concatenate(
            [
                rng.choice(pool[pool_classes == target], config.n_target),
                rng.choice(pool[pool_classes != target], config.n_other),
            ]
        )
        classes[i] = _digits()[1][sources[i]]
        corners[i] = _place(rng, config, len(sources[i]))
        for (y, x), source in zip(corners[i], sources[i]):
            high[i, y : y + config.digit_size, x : x + config.digit_size] = glyphs[source]
        _scribble(rng, config, high[i], corners[i])
        low_views[i] = np.asarray(Image.fromarray(high[i]).resize((low, low), Image.Resampling.BILINEAR))
    return MegaDigits(
        config=config,
        high=high,
        low=low_views,
        labels=labels.astype(np.int64),
        digit_classes=classes,
        digit_sources=sources,
        digit_top_left=corners,
        seed=seed,
        split=split,
    )


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def _place(rng: np.random.Generator, config: MegaDigitsConfig, count: int) -> np.ndarray:
    """``count`` top-left corners of digit boxes, uniform on the canvas, boxes not overlapping."""
    corners: list[np.ndarray] = []
    while len(corners) < count:
        corner = _free_corner(rng, config, corners)
        corners.append(corner)
    return np.array(corners, dtype=np.int64)


def _free_corner(rng: np.random.Generator, config: MegaDigitsConfig, taken: list[np.ndarray]) -> np.ndarray:
    """A uniform top-left corner whose box overlaps none of the ``taken`` boxes."""
    span = config.canvas - config.digit_size + 1
    for _ in range(_MAX_TRIES):
        corner = rng.integers(span, size=2)
        if all(np.abs(corner - other).max() >= config.digit_size for other in taken):
            return corner
    raise ValueError(
        f"could not place a {config.digit_size} px box on a {config.canvas} px canvas next to {len(taken)} others in {_MAX_TRIES} tries"
    )


def _scribble(rng: np.random.Generator, config: MegaDigitsConfig, canvas: np.ndarray, digits: np.ndarray) -> None:
    """Draw ``n_noise`` distractors in place: two ink strokes in a digit-sized box each.

    Strokes are as wide as the digits' and as bright, so the low-resolution view shows blobs
    much like a digit's; boxes avoid the digits so that no digit is ever damaged.
    """
    size = config.digit_size
    taken = list(digits)
    for _ in range(config.n_noise):
        y, x = _free_corner(rng, config, taken)
        box = Image.new("L", (size, size))
        pen = ImageDraw.Draw(box)
        for _ in range(2):
            ends = rng.uniform(0.1 * size, 0.9 * size, size=4)
            width = max(1, round(rng.uniform(0.1, 0.16) * size))
            pen.line(tuple(ends), fill=int(rng.integers(200, 256)), width=width)
        region = canvas[y : y + size, x : x + size]
        np.maximum(region, np.asarray(box), out=region)
