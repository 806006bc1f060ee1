"""The deterministic plan of one synthetic slide, drawn from its seed before any pixel exists.

A scene is small (a tissue field on a 64-px lattice and a few blobs) whatever the slide size,
so a 100k-px slide is planned in milliseconds and every tile can be rendered from it alone.

Tissue: low-frequency value noise, faded towards the slide border, thresholded at the
quantile that leaves `TISSUE_FRACTION` of the slide covered: irregular pieces at any size.

Blobs: discs 48-96 px across, deep inside tissue, all of one `kind` per slide (`BLOB_KINDS`).
A *lesion* (positive slides; `lesion_a` is the same under its 3-class name) is a solid crowd
of large dark nuclei; a *lesion_b* has the same nuclei arranged in small rings around pale
lumens (acini); a *mimic* (negative slides) has nuclei of normal size and spacing on a dense,
mottled purple stroma. Each blob's background colour is solved from its own nuclear coverage
so that its mean colour is `palette.BLOB_MEAN`, and the mimic's mottling matches the lesions'
blotchiness: at downsample 16 every kind is the same dark dot, and only the nuclei at the high
level tell them apart (lesion_b from lesion_a by their arrangement: same nuclei and colour,
about the same cover).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_ats.synth import palette
from wsi_ats.synth.noise import resample, sample_grid
from wsi_ats.synth.nuclei import CELL, NORMAL_ASPECT, NORMAL_PER_CELL, NORMAL_SIZE, Nuclei, morphology, stamp

TILE = 256
#: Spacing of the tissue-field lattice in level-0 pixels.
GRID = 64
TISSUE_FRACTION = 0.4
BLOB_DIAMETER = (48.0, 96.0)
LESION_SPACING = 14.0
LESION_SIZE, LESION_ASPECT = (4.5, 7.0), (0.65, 1.0)
#: Blob stroma mottling, value noise at this spacing (px). Large nuclei make a lesion blotchy at
#: downsample 16; a mimic gets the same blotchiness (+/- `MIMIC_MOTTLE` of the lesion's
#: nucleus-to-mean contrast, in that colour direction), a lesion only a faint `LESION_MOTTLE`.
MOTTLE_SPACING, MIMIC_MOTTLE, LESION_MOTTLE = 20.0, 0.65, 0.12
#: Lesion type B: acini, rings of `ACINUS_NUCLEI` lesion nuclei laid tangentially at `ACINUS_RADIUS`
#: around a lumen, on a jittered hexagonal grid of `ACINUS_SPACING`: as much nuclear cover as the solid
#: crowd (about half the disc), with the same faint `LESION_MOTTLE`.
ACINUS_SPACING, ACINUS_RADIUS, ACINUS_NUCLEI = 34.0, 13.0, 7
#: The kinds of blob a slide holds: `lesion` and `lesion_a` are the same solid crowd (two names: the
#: 2-class and 3-class cohorts' annotations), `lesion_b` acini, `mimic` normal nuclei.
BLOB_KINDS = ("lesion", "lesion_a", "lesion_b", "mimic")
_MOTTLE_STREAM = 26
#: Tissue edges: raggedness and anti-aliasing, in pixels (scaled to field units per slide).
EDGE_JITTER_PX, EDGE_SOFT_PX = 12.0, 1.5
_FIELD_STREAMS = (10, 11, 12)


def disc_box(center: tuple[float, float], radius: float) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), level-0, half-open: the pixels whose centres can fall in the disc."""
    (cy, cx), r = center, radius
    return (int(np.floor(cy - r)), int(np.floor(cx - r)), int(np.ceil(cy + r)), int(np.ceil(cx + r)))


def disc_mask(center: tuple[float, float], radius: float, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (h, w): pixels of the canvas at `origin` whose centres lie in the disc."""
    ys = np.arange(origin[0], origin[0] + shape[0]) + 0.5 - center[0]
    xs = np.arange(origin[1], origin[1] + shape[1]) + 0.5 - center[1]
    return ys[:, None] ** 2 + xs[None, :] ** 2 <= radius**2


@dataclass(frozen=True, eq=False)
class Blob:
    """A lesion or mimic: a disc of level-0 pixels, its nuclei and its solved colours.

    Blob stroma is `background + mottle * (mottle_field - mottle_mean)`, nuclei of colour
    `nucleus` on top; `mottle_mean` (the field's mean over this disc) keeps the disc's mean exact.
    """

    kind: str
    center: tuple[float, float]
    radius: float
    nuclei: Nuclei
    background: np.ndarray
    nucleus: np.ndarray
    mottle: np.ndarray
    mottle_mean: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return disc_box(self.center, self.radius)

    def mask(self, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        return disc_mask(self.center, self.radius, origin, shape)


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything a tile needs: the tissue field, its threshold and edge scale, the blobs.

    `tissue_tiles` marks tiles that may hold tissue (the others are background), and
    `interior_tiles` those that are tissue all over (no edge to draw): both conservative.
    """

    shape: tuple[int, int]
    seed: int
    kind: str
    field: np.ndarray
    threshold: float
    jitter: float
    soft: float
    tissue_tiles: np.ndarray
    interior_tiles: np.ndarray
    blobs: tuple[Blob, ...]

    @property
    def positive(self) -> bool:
        """Whether the slide holds lesions (of any type) rather than mimics."""
        return self.kind != "mimic"

    def blobs_in(self, origin: tuple[int, int], shape: tuple[int, int]) -> list[Blob]:
        """Blobs whose box meets the canvas at `origin` of `shape`."""
        y0, x0 = origin
        y1, x1 = y0 + shape[0], x0 + shape[1]
        return [b for b in self.blobs if b.box[0] < y1 and b.box[2] > y0 and b.box[1] < x1 and b.box[3] > x0]


def _tissue_field(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth noise on the GRID lattice, three octaves, faded to zero near the slide border."""
    ny, nx = shape[0] // GRID + 2, shape[1] // GRID + 2
    base = max(ny, nx) / 3.0
    field = (
        sum(resample(None, (0, 0), (ny, nx), (base / 2**i, base / 2**i), seed=seed, stream=s) / 2**i for i, s in enumerate(_FIELD_STREAMS))
        / 1.75
    )

    def fade(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), n - 1 - np.arange(n)) / (0.12 * n)
        t = np.clip(d, 0, 1)
        return t * t * (3 - 2 * t)

    return (field * fade(ny)[:, None] * fade(nx)[None, :]).astype(np.float32)


def _edge_scale(field: np.ndarray, threshold: float) -> float:
    """Typical change of the field per pixel where it crosses the threshold."""
    gy, gx = np.gradient(field)
    grad = np.hypot(gy, gx) / GRID
    near = np.abs(field - threshold) < 0.05
    return float(np.median(grad[near] if near.any() else grad))


def _tile_windows(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(tiles_y, tiles_x, k+1, k+1) view: the lattice nodes each tile interpolates from.

    Interpolated values are convex combinations of these nodes, so their min and max bound
    the field anywhere in the tile.
    """
    k = TILE // GRID
    windows = np.lib.stride_tricks.sliding_window_view(field, (k + 1, k + 1))[::k, ::k]
    return windows[: shape[0] // TILE, : shape[1] // TILE]


def _lesion_nuclei(rng: np.random.Generator, center: tuple[float, float], radius: float) -> Nuclei:
    """Large nuclei on a jittered hexagonal grid: crowded, nearly touching."""
    s, reach = LESION_SPACING, radius + LESION_SPACING
    step = s * np.sqrt(3) / 2
    rows = np.arange(-np.ceil(reach / step), np.ceil(reach / step) + 1) * step
    cols = np.arange(-np.ceil(reach / s), np.ceil(reach / s) + 1) * s
    dy = np.repeat(rows, len(cols))
    dx = np.tile(cols, len(rows)) + (np.arange(len(rows)).repeat(len(cols)) % 2) * s / 2
    n = len(dy)
    major, minor, angle = morphology(rng.random(n), rng.random(n), rng.random(n), LESION_SIZE, LESION_ASPECT)
    dy, dx = dy + rng.uniform(-2, 2, n), dx + rng.uniform(-2, 2, n)
    return Nuclei(center[0] + dy, center[1] + dx, major, minor, angle)


def _acinar_nuclei(rng: np.random.Generator, center: tuple[float, float], radius: float) -> Nuclei:
    """Lesion nuclei in rings around lumens: each acinus a jittered ring, the acini on a jittered hexagonal grid."""
    s, reach = ACINUS_SPACING, radius + ACINUS_SPACING
    step = s * np.sqrt(3) / 2
    rows = np.arange(-np.ceil(reach / step), np.ceil(reach / step) + 1) * step
    cols = np.arange(-np.ceil(reach / s), np.ceil(reach / s) + 1) * s
    ay = np.repeat(rows, len(cols))
    ax = np.tile(cols, len(rows)) + (np.arange(len(rows)).repeat(len(cols)) % 2) * s / 2
    ay, ax = ay + rng.uniform(-3, 3, len(ay)), ax + rng.uniform(-3, 3, len(ax))
    k = ACINUS_NUCLEI
    phase = rng.uniform(0, 2 * np.pi, len(ay))[:, None] + 2 * np.pi * np.arange(k)[None, :] / k
    phase = (phase + rng.uniform(-0.15, 0.15, phase.shape)).ravel()
    ring = ACINUS_RADIUS + rng.uniform(-1.5, 1.5, phase.shape)
    n = len(phase)
    major, minor, _ = morphology(rng.random(n), rng.random(n), rng.random(n), LESION_SIZE, LESION_ASPECT)
    dy = np.repeat(ay, k) + ring * np.sin(phase)
    dx = np.repeat(ax, k) + ring * np.cos(phase)
    # The major axis along the ring (tangential): `stamp`'s angle 0 lays it along y, the tangent at `phase` is (cos, -sin).
    angle = np.mod(-phase, np.pi)
    return Nuclei(center[0] + dy, center[1] + dx, major, minor, angle)


def _mimic_nuclei(rng: np.random.Generator, center: tuple[float, float], radius: float) -> Nuclei:
    """Normal nuclei at the normal density, uniformly placed."""
    n = rng.poisson(NORMAL_PER_CELL / CELL**2 * 4 * radius**2)
    major, minor, angle = morphology(rng.random(n), rng.random(n), rng.random(n), NORMAL_SIZE, NORMAL_ASPECT)
    return Nuclei(center[0] + rng.uniform(-radius, radius, n), center[1] + rng.uniform(-radius, radius, n), major, minor, angle)


def mottle_field(seed: int, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The (h, w) noise in [0, 1] that mottles blob stroma; a blob subtracts its mean over the disc."""
    return resample(None, origin, shape, (MOTTLE_SPACING, MOTTLE_SPACING), seed=seed, stream=_MOTTLE_STREAM)


def _make_blob(rng: np.random.Generator, seed: int, kind: str, center: tuple[float, float], radius: float) -> Blob:
    """Nuclei that reach into the disc (drawn clipped to it, so density is even up to the rim);
    background solved so the disc's mean colour is BLOB_MEAN."""
    nuclei = _NUCLEI[kind](rng, center, radius)
    inside = np.hypot(nuclei.y - center[0], nuclei.x - center[1]) <= radius + nuclei.ry + 1.0
    nuclei = nuclei.select(inside)
    colour = palette.NUCLEUS if kind == "mimic" else palette.LESION_NUCLEUS
    y0, x0, y1, x1 = disc_box(center, radius)
    disc = disc_mask(center, radius, (y0, x0), (y1 - y0, x1 - x0))
    alpha = np.zeros(disc.shape, dtype=np.float32)
    stamp(alpha, (y0, x0), nuclei)
    cover = float(alpha[disc].mean())
    background = np.clip((palette.BLOB_MEAN - cover * colour) / (1.0 - cover), 0, 255).astype(np.float32)
    if kind == "mimic":
        mottle = 2 * MIMIC_MOTTLE * (palette.BLOB_MEAN - palette.LESION_NUCLEUS)
    else:
        mottle = 2 * LESION_MOTTLE * background
    mottle_mean = float(mottle_field(seed, (y0, x0), disc.shape)[disc].mean())
    return Blob(kind, center, radius, nuclei, background, colour, mottle.astype(np.float32), mottle_mean)


def _place_blobs(
    rng: np.random.Generator, seed: int, field: np.ndarray, shape: tuple[int, int], floor: float, n: int, kind: str
) -> tuple[Blob, ...]:
    """Blobs at random points whose whole disc (plus a margin) lies in tissue, well apart."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    separation = min(4 * BLOB_DIAMETER[1], min(shape) / 4)  # apart, yet room for 3 on a 1024-px slide
    blobs: list[Blob] = []
    for _ in range(20000):
        if len(blobs) == n:
            return tuple(blobs)
        radius = rng.uniform(*BLOB_DIAMETER) / 2
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ring = radius + 24.0
        ys = np.concatenate([[cy], cy + ring * np.sin(angles)])
        xs = np.concatenate([[cx], cx + ring * np.cos(angles)])
        if ys.min() < 0 or xs.min() < 0 or ys.max() >= shape[0] or xs.max() >= shape[1]:
            continue
        if sample_grid(field, ys, xs, GRID).min() <= floor:
            continue
        if any(np.hypot(cy - b.center[0], cx - b.center[1]) < separation for b in blobs):
            continue
        blobs.append(_make_blob(rng, seed, kind, (cy, cx), radius))
    raise ValueError(f"a {shape[0]}x{shape[1]} slide has no room for {n} blobs in its tissue; use a larger size")


def make_scene(shape: tuple[int, int], *, positive: bool | None = None, kind: str | None = None, seed: int, n_blobs: int = 3) -> Scene:
    """Plan a slide of `shape` (multiples of 256) with `n_blobs` blobs of `kind` (one of `BLOB_KINDS`).

    `positive` is the 2-class shorthand: lesions if true, else mimics.
    """
    kind = blob_kind(positive, kind)
    if shape[0] % TILE or shape[1] % TILE or min(shape) < TILE:
        raise ValueError(f"slide shape {shape} must be positive multiples of {TILE}")
    field = _tissue_field(shape, seed)
    threshold = float(np.quantile(field, 1.0 - TISSUE_FRACTION))
    edge = _edge_scale(field, threshold)
    jitter, soft = EDGE_JITTER_PX * edge, EDGE_SOFT_PX * edge
    rng = np.random.default_rng([seed, 1])
    blobs = _place_blobs(rng, seed, field, shape, threshold + jitter, n_blobs, kind)
    windows = _tile_windows(field, shape)
    reach = jitter + soft / 2  # how far the jittered, anti-aliased edge strays from the threshold
    return Scene(
        shape,
        seed,
        kind,
        field,
        threshold,
        jitter,
        soft,
        windows.max(axis=(2, 3)) > threshold - reach,
        windows.min(axis=(2, 3)) > threshold + reach,
        blobs,
    )


_NUCLEI = {"lesion": _lesion_nuclei, "lesion_a": _lesion_nuclei, "lesion_b": _acinar_nuclei, "mimic": _mimic_nuclei}


def blob_kind(positive: bool | None, kind: str | None) -> str:
    """The blob kind a caller asks for, by `kind` or by the 2-class `positive`; exactly one of them."""
    if (positive is None) == (kind is None):
        raise ValueError("give either positive= (lesions or mimics) or kind= (one of " + ", ".join(BLOB_KINDS) + ")")
    if kind is None:
        return "lesion" if positive else "mimic"
    if kind not in BLOB_KINDS:
        raise ValueError(f"blob kind {kind!r} is not one of {', '.join(BLOB_KINDS)}")
    return kind
