"""The attention heatmap PNG: where the model looked, over the slide, readable at a glance.

- The attention is coloured on a log scale over `DECADES` decades below its maximum: a
  softmax over a million cells puts most of them orders of magnitude below the hot spots,
  and a linear scale would show nothing but those. Cells on the tissue but below that range
  get the coolest colour, off-tissue cells none, so the tissue the model saw stays outlined
  and the thumbnail shows through everywhere (opacity grows with attention).
- Every sampled patch is a dot on its centre; the `RANKED` most attended are outlined in
  white with a dark edge (readable on tissue and on glass, never smaller than a few pixels)
  and numbered 1, 2, ... by rank; under the slide, the pixels of the top patches (the
  result's ``top_patches``, as the network saw them: black past the slide's edge) with the
  same numbers.
- A scale bar in micrometres (level-0 pixels when the resolution is unknown).
- A slide the model could not judge shows its thumbnail and why, and no attention.

Everything is drawn in level-0 pixel coordinates (the thumbnail, the attention grid via its
origin and downsample, the patch squares), so the layers line up whatever their
resolutions. Drawn with matplotlib's object API on an Agg canvas: no pyplot state, safe in
worker threads.
"""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np

from wsi_ats.outputs.names import printable
from wsi_ats.outputs.patches import Patch, result_patches
from wsi_ats.result import SlideResult, patch_ranking

COLORMAP = "turbo"
#: Decades of attention below the maximum that get colours; lower tissue cells get the coolest.
DECADES = 3
#: Opacity of the least and of the most attended tissue cell.
MIN_ALPHA, MAX_ALPHA = 0.25, 0.75
#: Patches numbered by rank on the slide.
RANKED = 8
#: Smallest drawn half-edge of a patch outline, in thumbnail pixels.
MIN_HALF_EDGE = 3
DPI = 100
#: Room for the title however narrow the slide; a small thumbnail is enlarged to at least this.
MIN_WIDTH, MIN_SLIDE = 560, 256
#: Edge of each top patch under the slide, in figure pixels.
GALLERY_EDGE = 96
#: Colour of the slide area when there is no thumbnail.
NO_THUMBNAIL = (217, 217, 217)


def render_heatmap_png(result: SlideResult, thumbnail: np.ndarray | None, level0_shape: tuple[int, int], draws: int = 1) -> bytes:
    """PNG bytes of the heatmap; ``thumbnail`` is the whole slide (None: too costly to read), ``level0_shape`` its ``(H, W)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    H0, W0 = (int(v) for v in level0_shape)
    attention = np.asarray(result.attention, dtype=np.float64)
    if attention.ndim != 2:
        raise ValueError(f"{result.slide_id}: attention map must be 2-D (y, x), got shape {attention.shape}")
    if thumbnail is None:
        scale = max(H0, W0) / 512
        thumbnail = np.empty((max(1, round(H0 / scale)), max(1, round(W0 / scale)), 3), np.uint8)
        thumbnail[:] = NO_THUMBNAIL
        missing = True
    else:
        missing = False
    th, tw = thumbnail.shape[:2]
    zoom = max(1.0, MIN_SLIDE / max(th, tw))  # figure pixels per thumbnail pixel
    sh, sw = math.ceil(th * zoom), math.ceil(tw * zoom)
    patches = result_patches(result, draws)
    gallery = [] if result.top_patches is None or not result.judged else list(result.top_patches)

    # Fixed geometry (no layout engine: one draw).
    left, gap, bar_w, right, bottom = 8, 14, 18, 110, 8
    gallery_h = GALLERY_EDGE + 22 if gallery else 0
    W = max(left + sw + gap + bar_w + right, MIN_WIDTH, left + len(gallery) * (GALLERY_EDGE + 6))
    head, lines = _titles(result, len(patches), draws, missing, W)
    top = 30 + 11 * len(lines)
    H = bottom + gallery_h + sh + top
    fig = Figure(figsize=(W / DPI, H / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    # The thumbnail as the figure's own pixels, the axes drawn over it: no resampling, and as opaque
    # RGBA bytes matplotlib converts nothing (about half of imshow's memory on a 1024^2 thumbnail).
    fig.figimage(_rgba(_enlarged(thumbnail, sh, sw)), xo=left, yo=bottom + gallery_h, origin="upper", zorder=-1)
    ax = fig.add_axes((left / W, (bottom + gallery_h) / H, sw / W, sh / H))
    if result.judged and attention.size and attention.max() > 0:
        cells_per_pixel = max(H0 / (result.attention_downsample * th), W0 / (result.attention_downsample * tw))
        overlay, norm, factor = _overlay(attention, cells_per_pixel)
        ds = result.attention_downsample * factor
        oy, ox = result.attention_origin
        ax.imshow(overlay, extent=(ox, ox + overlay.shape[1] * ds, oy + overlay.shape[0] * ds, oy), interpolation="nearest")
        cax = fig.add_axes(((left + sw + gap) / W, (bottom + gallery_h) / H, bar_w / W, sh / H))
        _colorbar(fig, cax, norm)
    ax.set_xlim(0, W0)
    ax.set_ylim(H0, 0)
    ax.set_axis_off()
    _draw_patches(ax, patches, max(H0 / th, W0 / tw))
    _scale_bar(ax, H0, W0, result.mpp)
    colour = "black" if result.judged else "darkred"
    # An id is text: "$x^$" in a file name must not be read as a formula.
    fig.text(8 / W, 1 - 6 / H, head, fontsize=10, fontweight="bold", ha="left", va="top", color=colour, parse_math=False)
    fig.text(8 / W, 1 - 24 / H, "\n".join(lines), fontsize=7.5, ha="left", va="top", linespacing=1.3, parse_math=False)
    for k, image in enumerate(gallery):
        gx = left + k * (GALLERY_EDGE + 6)
        gax = fig.add_axes((gx / W, (bottom + 14) / H, GALLERY_EDGE / W, GALLERY_EDGE / H))
        gax.imshow(image, interpolation="nearest")
        gax.set_axis_off()
        gax.set_title(f"{k + 1}", fontsize=8, pad=2)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def _enlarged(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``image`` as ``(h, w)`` pixels, each repeated (nearest neighbour); itself when it has that size."""
    if image.shape[:2] == (h, w):
        return image
    rows = np.minimum((np.arange(h) * image.shape[0] / h).astype(int), image.shape[0] - 1)
    cols = np.minimum((np.arange(w) * image.shape[1] / w).astype(int), image.shape[1] - 1)
    return image[rows[:, None], cols[None, :]]


def _rgba(image: np.ndarray) -> np.ndarray:
    """Opaque uint8 RGBA of an RGB image (uint8, or floats in [0, 1])."""
    rgb = image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.concatenate([rgb[..., :3], np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)


def _overlay(attention: np.ndarray, cells_per_pixel: float):
    """RGBA uint8 of the attention, the colour norm, and the block size of the maxima taken where the grid is finer than the thumbnail."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    attention, factor = _max_pool(attention, cells_per_pixel)
    vmax = float(attention.max())
    relative = attention / vmax
    lo = 10.0**-DECADES
    norm = LogNorm(lo, 1.0)
    overlay = colormaps[COLORMAP](norm(np.clip(relative, lo, 1.0)), bytes=True)  # uint8 RGBA: a 4-Mcell map stays 16 MiB
    level = (np.log10(np.clip(relative, lo, 1.0)) + DECADES) / DECADES  # 0 at the bottom of the range, 1 at the top
    alpha = np.where(relative > 0, MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * level, 0.0)
    overlay[..., 3] = np.round(255 * alpha)
    return overlay, norm, factor


def _colorbar(fig, cax, norm) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps[COLORMAP]), cax=cax)
    bar.set_ticks([10.0**-k for k in range(DECADES + 1)], labels=["max"] + [f"max/{10**k:g}" for k in range(1, DECADES + 1)])
    bar.ax.tick_params(labelsize=8)
    bar.set_label("attention (log)", fontsize=8)


def _draw_patches(ax, patches: list[Patch], px: float) -> None:
    """A dot on the centre of every patch; the `RANKED` most attended outlined and numbered by rank.

    Outlines are at least `MIN_HALF_EDGE` thumbnail pixels (of ``px`` level-0 pixels) from the centre.
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    if not patches:
        return
    edge = [patheffects.withStroke(linewidth=2.2, foreground="black")]
    centres = np.array([(p.y + p.size / 2, p.x + p.size / 2) for p in patches])
    ax.scatter(centres[:, 1], centres[:, 0], s=9, c="white", edgecolors="black", linewidths=0.8, zorder=3)
    order = patch_ranking(np.array([(p.y, p.x) for p in patches]), np.array([p.attention for p in patches]))
    for rank, i in enumerate(order[:RANKED], start=1):
        (cy, cx), half = centres[i], max(patches[i].size / 2, MIN_HALF_EDGE * px)
        rect = Rectangle((cx - half, cy - half), 2 * half, 2 * half, fill=False, edgecolor="white", linewidth=1.0, zorder=3)
        rect.set_path_effects(edge)
        ax.add_patch(rect)
        ax.annotate(str(rank), (cx - half, cy - half), xytext=(2, -2), textcoords="offset pixels", color="white", fontsize=8,
                    fontweight="bold", ha="left", va="top", annotation_clip=True, zorder=4,
                    path_effects=[patheffects.withStroke(linewidth=2.0, foreground="black")])  # fmt: skip


def _scale_bar(ax, H0: int, W0: int, mpp: float | None) -> None:
    """A bar of a round length, about a fifth of the slide's width, bottom left: micrometres, or pixels without a resolution."""
    from matplotlib import patheffects

    unit, per_px = ("um", mpp) if mpp else ("px", 1.0)
    length = _round_length(W0 * per_px / 5)
    bar_px = length / per_px
    x0, y = W0 * 0.03, H0 * 0.97
    stroke = [patheffects.withStroke(linewidth=4, foreground="white")]
    ax.plot([x0, x0 + bar_px], [y, y], color="black", linewidth=2, solid_capstyle="butt", path_effects=stroke)
    label = f"{length:g} µm" if unit == "um" else f"{length:g} px (resolution unknown)"
    ax.text(x0, y - H0 * 0.015, label, fontsize=8, color="black", ha="left", va="bottom",
            path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])  # fmt: skip


def _round_length(target: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above ``target`` (at least 1)."""
    if target < 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def _titles(result: SlideResult, n_patches: int, draws: int, missing: bool, W: int) -> tuple[str, list[str]]:
    """The verdict (or "not judged"), and the lines saying what the picture shows (or why there is no verdict)."""
    if result.judged:
        head = f"{printable(result.slide_id)}: {result.prediction} (p = {result.probability:.3f})"
        sub = f"dots: {n_patches} sampled patches" + (f" ({draws} draws)" if draws > 1 else "")
        if n_patches:
            sub += f"; outlined and numbered: the {RANKED} most attended (their pixels below); colour: attention"
    else:
        head = f"{printable(result.slide_id)}: not judged"
        sub = "; ".join(result.warnings)
    if missing:
        sub += " (no thumbnail: the slide has no level small enough to read whole)"
    return head, textwrap.wrap(sub, width=max(40, int((W - 16) / 4.6)))


def _max_pool(attention: np.ndarray, cells_per_pixel: float) -> tuple[np.ndarray, int]:
    """Reduce a grid finer than the thumbnail by ``f x f`` block maxima, so a lone hot cell still shows."""
    f = int(cells_per_pixel)
    if f < 2:
        return attention, 1
    h, w = -(-attention.shape[0] // f) * f, -(-attention.shape[1] // f) * f
    padded = np.zeros((h, w))
    padded[: attention.shape[0], : attention.shape[1]] = attention
    return padded.reshape(h // f, f, w // f, f).max(axis=(1, 3)), f
