"""Ground truth of a synthetic slide as GeoJSON: one axis-aligned rectangle per lesion or mimic.

Coordinates are level-0 pixels in GeoJSON's (x, y) order, as QuPath reads them; the property
`kind` is the blob's kind: `lesion` or `mimic` (2-class cohorts), `lesion_a`, `lesion_b` or `mimic`
(3-class; `classification` repeats it for QuPath).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wsi_ats.outputs.atomic import atomic_write_text
from wsi_ats.synth.scene import Scene


def feature_collection(scene: Scene) -> dict[str, Any]:
    """The scene's blobs as a GeoJSON FeatureCollection of closed rectangles."""
    features = []
    for blob in scene.blobs:
        y0, x0, y1, x1 = blob.box
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"kind": blob.kind, "objectType": "annotation", "classification": {"name": blob.kind}},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, scene: Scene) -> None:
    """Write `feature_collection(scene)` atomically."""
    atomic_write_text(path, json.dumps(feature_collection(scene), indent=1) + "\n")
