"""Sampled patches as GeoJSON that QuPath imports as annotations (File > Import objects).

Coordinates are level-0 pixels in GeoJSON's ``[x, y]`` order (QuPath's image space),
one closed, counter-clockwise rectangle per patch, clipped to the slide (a patch at the
border reaches past it). The attention of each patch is both
a plain property and a QuPath measurement so it shows in QuPath's tables.
"""

from __future__ import annotations

from typing import Any

from wsi_ats.outputs.patches import Patch, result_patches
from wsi_ats.result import SlideResult

#: QuPath colours classifications by packed RGB; a cyan that reads well on H&E.
PATCH_CLASS = {"name": "ATS patch", "color": [0, 200, 255]}


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
