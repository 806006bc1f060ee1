"""Sampled patches and attention cells as GeoJSON that QuPath imports (File > Import objects).

Coordinates are level-0 pixels in GeoJSON's ``[x, y]`` order (QuPath's image space),
one closed, counter-clockwise rectangle per patch, clipped to the slide (a patch at the
border reaches past it). The attention of each patch is both
a plain property and a QuPath measurement so it shows in QuPath's tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsi_ats.outputs.patches import Patch, result_patches
from wsi_ats.result import SlideResult

#: QuPath colours classifications by packed RGB; a cyan that reads well on H&E.
PATCH_CLASS = {"name": "ATS patch", "color": [0, 200, 255]}
#: The most attention cells `attention_geojson` lists: QuPath draws tens of thousands of detections, but
#: beyond the top few thousand the attention is flat and the file only grows.
MAX_ATTENTION_CELLS = 2000
ATTENTION_CLASS = {"name": "ATS attention", "color": [255, 120, 0]}


def patch_polygon(patch: Patch, slide_shape: tuple[int, int] | None = None) -> list[list[list[int]]]:
    """The patch's square, clipped to the slide when its ``(H, W)`` is given, as a GeoJSON Polygon ring: ``[x, y]``, closed."""
    y0, x0, y1, x1 = patch.box(slide_shape)
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def patches_geojson(result: SlideResult, draws: int = 1) -> dict[str, Any]:
    """A FeatureCollection with one Polygon feature per sampled patch of each of the ``draws``, clipped to the slide."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": patch_polygon(p, result.slide_shape)},
            "properties": {
                "objectType": "annotation",
                "name": f"draw {p.draw} patch {p.rank}",
                "classification": PATCH_CLASS,
                "attention": p.attention,
                "draw": p.draw,
                "rank": p.rank,
                "level": int(result.patch_level),
                "measurements": {"attention": p.attention},
            },
        }
        for p in result_patches(result, draws)
    ]
    return {"type": "FeatureCollection", "features": features}


def attention_geojson(result: SlideResult, limit: int = MAX_ATTENTION_CELLS) -> dict[str, Any]:
    """The ``limit`` highest-attention tissue cells as QuPath detection tiles, most attended first.

    Each is the cell's level-0 square (``attention_origin + (i, j) * attention_downsample``, clipped to
    the slide) with its attention as ``properties.measurements.attention``, so QuPath's measurement maps
    colour them. Cells off tissue (attention 0) are not listed; an unjudged slide has none.
    """
    attention = np.asarray(result.attention, dtype=np.float64)
    flat = attention.reshape(-1)
    order = np.argsort(-flat, kind="stable")[: int(limit)]
    order = order[flat[order] > 0]
    ds, (oy, ox) = float(result.attention_downsample), result.attention_origin
    height, width = result.slide_shape if result.slide_shape is not None else (np.inf, np.inf)
    features = []
    for rank, index in enumerate(order, start=1):
        i, j = divmod(int(index), attention.shape[1])
        y0, x0 = oy + i * ds, ox + j * ds
        y1, x1 = min(y0 + ds, height), min(x0 + ds, width)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[round(x, 2), round(y, 2)] for x, y in ring]]},
                "properties": {
                    "objectType": "detection",
                    "name": f"attention cell {rank}",
                    "classification": ATTENTION_CLASS,
                    "cell": [i, j],
                    "measurements": {"attention": float(flat[index])},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
