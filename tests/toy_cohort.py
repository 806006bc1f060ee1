"""Small labelled slides for the model, checkpoint and training tests (written with zarr, not wsi_ats).

A toy slide is a pink elliptical piece of tissue on grey glass with ``markers`` dark 16-px
squares inside it: blue on positive slides, red on negative ones. At downsample 4 both are
dark dots; only the colour at full resolution tells them apart. Plain zarr groups with
levels at downsamples 1, 4, 16 (`wsi_ats.testing.known_image.known_pyramid`), so everything is lossless.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from slide_factories import write_plain_zarr

from wsi_ats.testing.known_image import known_pyramid

GLASS = 245
TISSUE = (228, 150, 200)
MARKER = {True: (40, 40, 170), False: (170, 40, 60)}
MARKER_SIZE = 16


def toy_image(seed: int, positive: bool, size: int = 512, markers: int = 12) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The image and its marker boxes ``(y0, x0, y1, x1)`` in level-0 pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = size / 2 + rng.uniform(-size / 16, size / 16, 2)
    ry, rx = size * rng.uniform(0.25, 0.35, 2)
    tissue = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image = np.full((size, size, 3), GLASS, np.uint8)
    image[tissue] = np.clip(np.array(TISSUE) + rng.normal(0, 8, (int(tissue.sum()), 3)), 0, 255).astype(np.uint8)
    boxes = []
    while len(boxes) < markers:
        y, x = (int(v) for v in rng.integers(0, size - MARKER_SIZE, 2))
        if tissue[y : y + MARKER_SIZE, x : x + MARKER_SIZE].all():
            image[y : y + MARKER_SIZE, x : x + MARKER_SIZE] = MARKER[positive]
            boxes.append((y, x, y + MARKER_SIZE, x + MARKER_SIZE))
    return image, boxes


def write_toy_slide(path: Path, seed: int, positive: bool, **kwargs) -> Path:
    image, _ = toy_image(seed, positive, **kwargs)
    return write_plain_zarr(path, known_pyramid(image))


def write_toy_cohort(directory: Path, n: int = 4, *, splits: bool = False, truth: bool = False, **kwargs) -> Path:
    """``n`` slides alternating positive/negative, a manifest (with ``split`` when asked), GeoJSON truth when asked."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        image, boxes = toy_image(100 + i, positive, **kwargs)
        write_plain_zarr(directory / f"toy_{i}.zarr", known_pyramid(image))
        split = "train" if i < n - 2 else "test"
        rows.append([f"toy_{i}", f"toy_{i}.zarr", "positive" if positive else "negative"] + ([split] if splits else []))
        if truth:
            (directory / "annotations").mkdir(exist_ok=True)
            features = [
                {
                    "type": "Feature",
                    "properties": {},
                    "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                }
                for y0, x0, y1, x1 in boxes
            ]
            import json

            (directory / "annotations" / f"toy_{i}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    manifest = directory / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "path", "label"] + (["split"] if splits else []))
        w.writerows(rows)
    return manifest
