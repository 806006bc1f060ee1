"""``attention.geojson``: the highest-attention tissue cells as QuPath detections, on the slide's own coordinates."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from predict_data import cohort_slides, trained_model

from wsi_ats.engine.run import predict_slide
from wsi_ats.outputs import slide_files
from wsi_ats.outputs.geojson import attention_geojson
from wsi_ats.pipeline import load_model
from wsi_ats.readers import open_slide


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    model, manifest = trained_model(tmp_path_factory.getbasetemp())
    net = load_model(str(model), "cpu")
    path = cohort_slides(manifest)[0]
    with open_slide(str(path)) as slide:
        result = predict_slide(net, slide, slide_id="s", draws=4, seed=0)
        files = slide_files(result, None, slide.levels[0].shape, result.draws)
    return result, {k: json.loads(v) for k, v in files.items() if k.endswith(".json") or k.endswith(".geojson")}


def boxes(collection):
    """``(x0, y0, x1, y1)`` of each feature's ring."""
    rings = np.array([f["geometry"]["coordinates"][0] for f in collection["features"]], dtype=np.float64)
    return np.stack([rings[:, :, 0].min(1), rings[:, :, 1].min(1), rings[:, :, 0].max(1), rings[:, :, 1].max(1)], axis=1)


def test_cells_are_qupath_detections_with_their_attention_most_attended_first(predicted):
    result, files = predicted
    features = files["attention.geojson"]["features"]
    values = [f["properties"]["measurements"]["attention"] for f in features]
    assert features and all(f["properties"]["objectType"] == "detection" for f in features)
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(float(result.attention.max()))
    assert len(features) == int((result.attention > 0).sum())  # every tissue cell of a small slide, none off tissue


def test_each_cell_is_its_attention_grid_square_in_level0_pixels_inside_the_slide(predicted):
    result, files = predicted
    meta = files["attention.json"]
    ds, (oy, ox) = meta["downsample"], meta["origin"]
    height, width = result.slide_shape
    for feature, (x0, y0, x1, y1) in zip(files["attention.geojson"]["features"], boxes(files["attention.geojson"])):
        i, j = feature["properties"]["cell"]
        assert (x0, y0) == pytest.approx((ox + j * ds, oy + i * ds), abs=0.01)
        assert (x1, y1) == pytest.approx((min(ox + (j + 1) * ds, width), min(oy + (i + 1) * ds, height)), abs=0.01)
        assert result.attention[i, j] == pytest.approx(feature["properties"]["measurements"]["attention"])


def test_every_sampled_patch_centre_lies_in_a_listed_attention_cell(predicted):
    _, files = predicted
    cells, patches = boxes(files["attention.geojson"]), boxes(files["patches.geojson"])
    cx, cy = (patches[:, 0] + patches[:, 2]) / 2, (patches[:, 1] + patches[:, 3]) / 2
    inside = (cells[None, :, 0] <= cx[:, None]) & (cx[:, None] <= cells[None, :, 2])
    inside &= (cells[None, :, 1] <= cy[:, None]) & (cy[:, None] <= cells[None, :, 3])
    assert len(patches) and inside.any(axis=1).all()


def test_an_unjudged_slide_lists_no_cells(predicted):
    result, _ = predicted
    assert attention_geojson(replace(result, attention=np.zeros((0, 0), np.float32), warnings=("blank",)))["features"] == []


def test_the_limit_keeps_the_most_attended_cells(predicted):
    result, _ = predicted
    top = attention_geojson(result, limit=3)["features"]
    assert [f["properties"]["measurements"]["attention"] for f in top] == sorted(result.attention.reshape(-1))[::-1][:3]
