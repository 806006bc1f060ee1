"""Nuclei as soft ellipses: a struct of arrays, and one vectorised rasteriser.

The same `stamp` draws nuclei into tiles and measures a blob's nuclear coverage when the
scene is built, so the colour balance computed for a blob is the one that gets rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_ats.synth.noise import uniform


@dataclass(frozen=True, eq=False)
class Nuclei:
    """Centres (y, x) in level-0 pixels, semi-axes (ry, rx) before rotation, angle in radians."""

    y: np.ndarray
    x: np.ndarray
    ry: np.ndarray
    rx: np.ndarray
    angle: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def select(self, keep: np.ndarray) -> Nuclei:
        return Nuclei(self.y[keep], self.x[keep], self.ry[keep], self.rx[keep], self.angle[keep])


def morphology(
    u_size: np.ndarray, u_aspect: np.ndarray, u_angle: np.ndarray, size: tuple[float, float], aspect: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """Semi-axes and angle from three uniforms: major in `size`, minor = major * `aspect`."""
    major = size[0] + (size[1] - size[0]) * u_size
    minor = major * (aspect[0] + (aspect[1] - aspect[0]) * u_aspect)
    return major, minor, np.pi * u_angle


#: Normal nuclei: semi-axes 3-4 px (0.75-1 um at 0.25 um/px), ~270 per 256 x 256 cell.
NORMAL_SIZE, NORMAL_ASPECT, NORMAL_PER_CELL, CELL = (3.0, 4.0), (0.55, 0.85), 270, 256


def scatter(seed: int, cells_y: np.ndarray, cells_x: np.ndarray) -> Nuclei:
    """Normal nuclei of the given 256-px cells, from a hash of (seed, cell, index).

    Uniform positions per cell; the caller keeps those that fall in tissue.
    """
    k = np.arange(NORMAL_PER_CELL)[None, :]
    cy, cx = np.asarray(cells_y)[:, None], np.asarray(cells_x)[:, None]

    def u(stream: int) -> np.ndarray:
        return uniform(seed, stream, cy, cx, k).ravel()

    major, minor, angle = morphology(u(3), u(4), u(5), NORMAL_SIZE, NORMAL_ASPECT)
    ys = (cy * CELL).astype(np.float32) + CELL * uniform(seed, 1, cy, cx, k)
    xs = (cx * CELL).astype(np.float32) + CELL * uniform(seed, 2, cy, cx, k)
    return Nuclei(ys.ravel(), xs.ravel(), major, minor, angle)


def stamp(alpha: np.ndarray, origin: tuple[int, int], nuclei: Nuclei) -> None:
    """Add the nuclei's coverage (1-px anti-aliased edges) to `alpha` in place, clipped at 1.

    `alpha` is an (h, w) float32 canvas whose pixel (0, 0) is level-0 pixel `origin`. Coverage
    adds where nuclei overlap (overlapping stained nuclei look darker), which lets one
    `bincount` do the drawing: no per-nucleus loop, no masking.
    """
    if len(nuclei) == 0:
        return
    h, w = alpha.shape
    r = int(np.ceil(max(nuclei.ry.max(), nuclei.rx.max()))) + 1
    off = np.arange(-r, r + 1)
    fy, fx = np.floor(nuclei.y), np.floor(nuclei.x)
    # Offsets of pixel centres from each nucleus centre, per axis: (N, S).
    dy = ((off + 0.5)[None, :] - (nuclei.y - fy)[:, None]).astype(np.float32)
    dx = ((off + 0.5)[None, :] - (nuclei.x - fx)[:, None]).astype(np.float32)
    cos, sin = np.cos(nuclei.angle)[:, None], np.sin(nuclei.angle)[:, None]
    ry, rx = nuclei.ry[:, None], nuclei.rx[:, None]
    # Elliptical radius of every window pixel: (N, S, S), from separable parts.
    u = (dy * (cos / ry))[:, :, None] + (dx * (sin / ry))[:, None, :]
    v = (dx * (cos / rx))[:, None, :] - (dy * (sin / rx))[:, :, None]
    cover = np.clip((1.0 - np.sqrt(u * u + v * v)) * rx[:, :, None] + 0.5, 0.0, 1.0)
    py = fy.astype(np.int64)[:, None] + off - origin[0]
    px = fx.astype(np.int64)[:, None] + off - origin[1]
    # Pixels off the canvas go to one spare bin past the end.
    index = np.where(((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :], (py * w)[:, :, None] + px[:, None, :], h * w)
    alpha += np.bincount(index.ravel(), weights=cover.ravel(), minlength=h * w + 1)[: h * w].reshape(h, w)
    np.minimum(alpha, 1.0, out=alpha)
