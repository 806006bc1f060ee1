"""Counter-based noise keyed on level-0 coordinates.

Every random value the renderer uses is a hash of (seed, stream, integer keys), so a pixel,
a nucleus or a lattice node has the same value whichever tile asks for it, in whatever order:
tiles render independently and seamlessly, and the output never depends on thread timing.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)
_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_KEY = np.uint32(0x27D4EB2F)


def _mix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (avalanches every input bit)."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def hash32(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """uint32 hash of (seed, stream, keys...), broadcast over the key arrays."""
    h = _mix(np.asarray([(seed * 0x9E3779B1 + stream * 0x632BE5AB) & 0xFFFFFFFF], dtype=np.uint32))
    for key in keys:
        k = np.asarray(key).astype(np.uint32)
        h = _mix((h + _GOLDEN) ^ (k * _KEY))
    return h


def uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """float32 in [0, 1) from `hash32`, 24 bits of resolution."""
    return (hash32(seed, stream, *keys) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def lattice_coords(pos: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice node below each pixel position and the smoothstep weight of the node above."""
    u = (np.asarray(pos, dtype=np.float64) + 0.5) / spacing
    k = np.floor(u)
    t = u - k
    return k.astype(np.int64), (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def resample(
    nodes: np.ndarray | None,
    origin: tuple[int, int],
    shape: tuple[int, int],
    spacing: tuple[float, float],
    *,
    seed: int = 0,
    stream: int = 0,
) -> np.ndarray:
    """Smooth (h, w) float32 field over pixels [y0, y0+h) x [x0, x0+w).

    Node values come from `nodes` (a 2-D grid indexed by lattice coordinates) or, when it is
    None, from `uniform(seed, stream, ky, kx)`: value noise. Interpolation is separable (rows
    of nodes first, then pixels), which is what makes texture cheap enough to render on the fly.
    """
    (y0, x0), (h, w), (sy, sx) = origin, shape, spacing
    ky, ty = lattice_coords(np.arange(y0, y0 + h), sy)
    kx, tx = lattice_coords(np.arange(x0, x0 + w), sx)
    iy, ix = ky - ky[0], kx - kx[0]
    ny, nx = int(iy[-1]) + 2, int(ix[-1]) + 2
    if nodes is None:
        grid = uniform(seed, stream, np.arange(ky[0], ky[0] + ny)[:, None], np.arange(kx[0], kx[0] + nx)[None, :])
    else:
        grid = nodes[ky[0] : ky[0] + ny, kx[0] : kx[0] + nx].astype(np.float32, copy=False)
    rows = _lerp(grid[:, ix], grid[:, ix + 1], tx)
    out = rows[iy]
    step = rows[iy + 1]
    step -= out
    step *= ty[:, None]
    out += step
    return out


def sample_grid(nodes: np.ndarray, ys: np.ndarray, xs: np.ndarray, spacing: float) -> np.ndarray:
    """The field `resample` would give at pixel positions (ys, xs), for scattered points."""
    ky, ty = lattice_coords(ys, spacing)
    kx, tx = lattice_coords(xs, spacing)
    top = _lerp(nodes[ky, kx], nodes[ky, kx + 1], tx)
    return _lerp(top, _lerp(nodes[ky + 1, kx], nodes[ky + 1, kx + 1], tx), ty).astype(np.float32)
