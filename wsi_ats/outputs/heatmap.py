"""The attention heatmap PNG: attention blended over the slide thumbnail, sampled patches outlined.

Everything is drawn in level-0 pixel coordinates (the thumbnail, the attention grid via
its origin and downsample, the patch squares), so the three layers line up whatever
their resolutions. The overlay's opacity grows with attention, so tissue the model
ignored stays visible underneath. Drawn with matplotlib's object API on an Agg canvas:
no pyplot state, safe in worker threads.
"""

from __future__ import annotations

import io

import numpy as np

from wsi_ats.outputs.names import printable
from wsi_ats.outputs.patches import result_patches
from wsi_ats.result import SlideResult

COLORMAP = "turbo"
#: Opacity of the most attended cell; lower cells fade out with sqrt(attention / max).
MAX_ALPHA = 0.7
PATCH_COLOR = "black"
DPI = 100
#: Room for the title however narrow the slide.
MIN_WIDTH = 480


def render_heatmap_png(
    result: SlideResult, thumbnail: np.ndarray, level0_shape: tuple[int, int], draws: int = 1
) -> bytes:
    """PNG bytes of the heatmap; ``thumbnail`` is the whole slide, ``level0_shape`` its ``(H, W)`` at level 0."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    H0, W0 = (int(v) for v in level0_shape)
    th, tw = thumbnail.shape[:2]
    attention = np.asarray(result.attention, dtype=np.float64)
    if attention.ndim != 2:
        raise ValueError(f"{result.slide_id}: attention map must be 2-D (y, x), got shape {attention.shape}")
    ds = float(result.attention_downsample)
    attention, factor = _max_pool(attention, max(H0 / (ds * th), W0 / (ds * tw)))  # grid cells per thumbnail pixel
    ds *= factor
    vmax = float(attention.max()) if attention.size and attention.max() > 0 else 1.0
    norm, cmap = Normalize(0.0, vmax), colormaps[COLORMAP]
    overlay = cmap(norm(attention), bytes=True)  # uint8 RGBA: a 4-Mcell map stays 16 MiB
    overlay[..., 3] = np.round(255 * MAX_ALPHA * np.sqrt(np.clip(attention / vmax, 0.0, 1.0)))

    oy, ox = result.attention_origin
    att_extent = (ox, ox + attention.shape[1] * ds, oy + attention.shape[0] * ds, oy)

    # Fixed geometry (no layout engine: one draw): the slide at one figure pixel per thumbnail pixel.
    left, gap, bar_w, right, top, bottom = 8, 14, 18, 96, 28, 8
    W, H = max(left + tw + gap + bar_w + right, MIN_WIDTH), bottom + th + top
    fig = Figure(figsize=(W / DPI, H / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / W, bottom / H, tw / W, th / H))
    ax.imshow(thumbnail, extent=(0, W0, H0, 0), interpolation="nearest")
    ax.imshow(overlay, extent=att_extent, interpolation="bilinear")
    patches = result_patches(result, draws)
    for p in patches:
        ax.add_patch(Rectangle((p.x, p.y), p.size, p.size, fill=False, edgecolor=PATCH_COLOR, linewidth=1.0))
    ax.set_xlim(0, W0)
    ax.set_ylim(H0, 0)
    ax.set_axis_off()
    ax.set_title(
        f"{printable(result.slide_id)}: {result.prediction} (p = {result.probability:.3f}), "
        f"{len(patches)} sampled patches outlined" + (f" ({draws} draws)" if draws > 1 else ""),
        fontsize=10,
        parse_math=False,  # an id is text: "$x^$" in a file name must not be read as a formula
    )
    cax = fig.add_axes(((left + tw + gap) / W, bottom / H, bar_w / W, th / H))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax).set_label("attention")

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def _max_pool(attention: np.ndarray, cells_per_pixel: float) -> tuple[np.ndarray, int]:
    """Reduce a grid finer than the thumbnail by ``f x f`` block maxima, so a lone hot cell still shows."""
    f = int(cells_per_pixel)
    if f < 2:
        return attention, 1
    h, w = -(-attention.shape[0] // f) * f, -(-attention.shape[1] // f) * f
    padded = np.zeros((h, w))
    padded[: attention.shape[0], : attention.shape[1]] = attention
    return padded.reshape(h // f, f, w // f, f).max(axis=(1, 3)), f
