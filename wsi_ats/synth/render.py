"""Procedural rendering of one level-0 tile from a `Scene`.

Each tile is computed from global coordinates only (counter-based noise, per-cell nuclei),
so tiles render in any order, on any thread, and join without seams. Tiles without tissue
are the shared constant background: no rendering cost.
"""

from __future__ import annotations

import numpy as np

from wsi_ats.synth import palette
from wsi_ats.synth.noise import resample, sample_grid, uniform
from wsi_ats.synth.nuclei import CELL, NORMAL_SIZE, Nuclei, scatter, stamp
from wsi_ats.synth.scene import GRID, TILE, Scene, mottle_field

_JITTER, _TONE, _FIBRE_H, _FIBRE_V, _ORIENT, _GRAIN = 20, 21, 22, 23, 24, 25
#: Chromatin: nuclear colour varies by +/- this fraction with the grain.
_CHROMATIN = 0.3

BLANK = np.full((TILE, TILE, 3), palette.BACKGROUND, dtype=np.uint8)
BLANK.flags.writeable = False


def _normal_nuclei(scene: Scene, y0: int, x0: int, reach: float) -> Nuclei:
    """Normal nuclei of the 3 x 3 cells around the tile that reach into it, lie in tissue, avoid blobs."""
    cy, cx = np.meshgrid(np.arange(y0 // CELL - 1, y0 // CELL + 2), np.arange(x0 // CELL - 1, x0 // CELL + 2), indexing="ij")
    nuc = scatter(scene.seed, cy.ravel(), cx.ravel())
    keep = (nuc.y > y0 - reach) & (nuc.y < y0 + TILE + reach) & (nuc.x > x0 - reach) & (nuc.x < x0 + TILE + reach)
    keep &= (nuc.y >= 0) & (nuc.x >= 0) & (nuc.y < scene.shape[0]) & (nuc.x < scene.shape[1])
    nuc = nuc.select(keep)
    keep = sample_grid(scene.field, nuc.y, nuc.x, GRID) > scene.threshold
    for blob in scene.blobs_in((y0 - CELL, x0 - CELL), (TILE + 2 * CELL, TILE + 2 * CELL)):
        keep &= np.hypot(nuc.y - blob.center[0], nuc.x - blob.center[1]) > blob.radius + nuc.ry + 1.0
    return nuc.select(keep)


def _paint_nuclei(
    img: np.ndarray, origin: tuple[int, int], nuclei: Nuclei, colour: np.ndarray, grain: np.ndarray, clip: np.ndarray | None = None
) -> None:
    """Blend nuclei of `colour` (with chromatin grain) over the planar (3, h, w) `img`, inside `clip`."""
    alpha = np.zeros(img.shape[1:], dtype=np.float32)
    stamp(alpha, origin, nuclei)
    if clip is not None:
        alpha *= clip
    ink = colour[:, None, None] * (1.0 + 2.0 * _CHROMATIN * grain)
    ink -= img
    ink *= alpha
    img += ink


def render_tile(scene: Scene, y0: int, x0: int) -> np.ndarray:
    """The (256, 256, 3) uint8 level-0 tile whose top-left pixel is (y0, x0)."""
    origin, shape = (y0, x0), (TILE, TILE)
    blobs = scene.blobs_in(origin, shape)
    if not blobs and not scene.tissue_tiles[y0 // TILE, x0 // TILE]:
        return BLANK
    seed = scene.seed
    masks = [b.mask(origin, shape) for b in blobs]
    tissue = None  # None: tissue everywhere
    if not scene.interior_tiles[y0 // TILE, x0 // TILE]:
        field = resample(scene.field, origin, shape, (GRID, GRID))
        jitter = resample(None, origin, shape, (24, 24), seed=seed, stream=_JITTER)
        tissue = np.clip((field + scene.jitter * (2 * jitter - 1) - scene.threshold) / scene.soft + 0.5, 0, 1)
        for m in masks:
            tissue[m] = 1.0
        if not tissue.any():
            return BLANK

    # Planar (3, h, w) while compositing: numpy broadcasts a length-3 innermost axis slowly.
    tone = resample(None, origin, shape, (192, 192), seed=seed, stream=_TONE)
    orient = resample(None, origin, shape, (512, 512), seed=seed, stream=_ORIENT)
    fibre = orient * resample(None, origin, shape, (6, 48), seed=seed, stream=_FIBRE_H)
    fibre += (1 - orient) * resample(None, origin, shape, (48, 6), seed=seed, stream=_FIBRE_V)
    fibre -= 0.5
    mix = np.clip(0.1 + 0.5 * tone + 1.2 * fibre, 0, 1)
    light = palette.STROMA_LIGHT[:, None, None]
    img = light + mix * (palette.STROMA_DARK[:, None, None] - light)
    grain = uniform(seed, _GRAIN, np.arange(y0, y0 + TILE)[:, None], np.arange(x0, x0 + TILE)[None, :]) - 0.5

    _paint_nuclei(img, origin, _normal_nuclei(scene, y0, x0, NORMAL_SIZE[1] + 1.0), palette.NUCLEUS, grain)
    mottle = mottle_field(seed, origin, shape) if blobs else None
    for blob, m in zip(blobs, masks):
        img[:, m] = blob.background[:, None] + blob.mottle[:, None] * (mottle[m] - blob.mottle_mean)
        _paint_nuclei(img, origin, blob.nuclei, blob.nucleus, grain, m)
    img += palette.GRAIN * grain + 0.5  # + 0.5: the cast below truncates, so this rounds
    if tissue is not None:
        img -= palette.BACKGROUND + 0.5
        img *= tissue
        img += palette.BACKGROUND + 0.5
    np.clip(img, 0, 255.5, out=img)
    out = np.empty((TILE, TILE, 3), dtype=np.uint8)
    np.copyto(out, img.transpose(1, 2, 0), casting="unsafe")
    return out
