"""``attention.geojson`` (the highest-attention tissue cells as QuPath detections) and ``attention.ome.zarr``
(the map as OME-Zarr 0.5), both checked against the slide's own coordinates."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
from predict_data import cohort_slides, trained_model

from wsi_ats.engine.run import predict_slide
from wsi_ats.outputs import SLIDE_FILES, slide_files, slide_folder_complete, write_slide_folder
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
    return result, {k: json.loads(v) for k, v in files.items() if k.endswith(".json") or k.endswith(".geojson")}, files


def boxes(collection):
    """``(x0, y0, x1, y1)`` of each feature's ring."""
    rings = np.array([f["geometry"]["coordinates"][0] for f in collection["features"]], dtype=np.float64)
    return np.stack([rings[:, :, 0].min(1), rings[:, :, 1].min(1), rings[:, :, 0].max(1), rings[:, :, 1].max(1)], axis=1)


def test_cells_are_qupath_detections_with_their_attention_most_attended_first(predicted):
    result, files, _ = predicted
    features = files["attention.geojson"]["features"]
    values = [f["properties"]["measurements"]["attention"] for f in features]
    assert features and all(f["properties"]["objectType"] == "detection" for f in features)
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(float(result.attention.max()))
    assert len(features) == int((result.attention > 0).sum())  # every tissue cell of a small slide, none off tissue


def test_each_cell_is_its_attention_grid_square_in_level0_pixels_inside_the_slide(predicted):
    result, files, _ = predicted
    meta = files["attention.json"]
    ds, (oy, ox) = meta["downsample"], meta["origin"]
    height, width = result.slide_shape
    for feature, (x0, y0, x1, y1) in zip(files["attention.geojson"]["features"], boxes(files["attention.geojson"])):
        i, j = feature["properties"]["cell"]
        assert (x0, y0) == pytest.approx((ox + j * ds, oy + i * ds), abs=0.01)
        assert (x1, y1) == pytest.approx((min(ox + (j + 1) * ds, width), min(oy + (i + 1) * ds, height)), abs=0.01)
        assert result.attention[i, j] == pytest.approx(feature["properties"]["measurements"]["attention"])


def test_every_sampled_patch_centre_lies_in_a_listed_attention_cell(predicted):
    _, files, _ = predicted
    cells, patches = boxes(files["attention.geojson"]), boxes(files["patches.geojson"])
    cx, cy = (patches[:, 0] + patches[:, 2]) / 2, (patches[:, 1] + patches[:, 3]) / 2
    inside = (cells[None, :, 0] <= cx[:, None]) & (cx[:, None] <= cells[None, :, 2])
    inside &= (cells[None, :, 1] <= cy[:, None]) & (cy[:, None] <= cells[None, :, 3])
    assert len(patches) and inside.any(axis=1).all()


def test_an_unjudged_slide_lists_no_cells(predicted):
    result, _, _ = predicted
    assert attention_geojson(replace(result, attention=np.zeros((0, 0), np.float32), warnings=("blank",)))["features"] == []


def test_the_limit_keeps_the_most_attended_cells(predicted):
    result, _, _ = predicted
    top = attention_geojson(result, limit=3)["features"]
    assert [f["properties"]["measurements"]["attention"] for f in top] == sorted(result.attention.reshape(-1))[::-1][:3]


@pytest.fixture(scope="module")
def ome_image(predicted, tmp_path_factory):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, _, files = predicted
    folder = tmp_path_factory.mktemp("zarr") / "s"
    write_slide_folder(folder, files)
    write_slide_folder(folder, files)  # a rewrite replaces the store whole
    assert slide_folder_complete(folder) and sorted(os.listdir(folder)) == sorted(SLIDE_FILES)
    node = next(iter(Reader(parse_url(str(folder / "attention.ome.zarr")))()))
    return node.metadata, [np.asarray(d) for d in node.data], json.loads((folder / "attention.ome.zarr" / "zarr.json").read_text())


def test_the_ome_zarr_is_version_0_5_float32_multiscale_holding_the_attention_map(predicted, ome_image):
    result, _, _ = predicted
    metadata, levels, group = ome_image
    assert group["attributes"]["ome"]["version"] == "0.5" and len(levels) > 1
    assert all(level.dtype == np.float32 for level in levels) and np.array_equal(levels[0], result.attention)
    assert [a["unit"] for a in metadata["axes"]] == ["micrometer", "micrometer"]


def test_the_ome_zarr_places_each_cell_on_its_level0_square_in_micrometres(predicted, ome_image):
    result, files, _ = predicted
    metadata, levels, _ = ome_image
    (x0, y0, x1, y1), cell = boxes(files["attention.geojson"])[0], files["attention.geojson"]["features"][0]["properties"]["cell"]
    for k, transforms in enumerate(metadata["coordinateTransformations"]):
        scale, translation = transforms[0]["scale"], transforms[1]["translation"]
        if k == 0:  # the top cell's centre, in µm, is where its QuPath square's centre is
            centre = np.multiply(scale, cell) + translation
            assert centre == pytest.approx(np.multiply(((y0 + y1) / 2, (x0 + x1) / 2), result.mpp))
        assert scale == pytest.approx([result.attention_downsample * 2**k * result.mpp] * 2)
        assert levels[k].shape == tuple(-(-n // 2**k) for n in levels[0].shape)


def test_a_killed_runs_half_written_store_is_swept_when_the_folder_is_written_again(predicted, tmp_path):
    _, _, files = predicted
    half = tmp_path / "s" / ".attention.ome.zarr.tmp-999999" / "0"
    half.mkdir(parents=True)
    (half / "zarr.json").write_text("{")
    write_slide_folder(tmp_path / "s", files)
    assert sorted(os.listdir(tmp_path / "s")) == sorted(SLIDE_FILES)
