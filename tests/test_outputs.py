"""Batch-prediction outputs: CSV rows, attention map + sidecar, GeoJSON, heatmap PNG.

A `SlideResult` is built by hand here (the model is tested elsewhere); the heatmap is
drawn over the thumbnail of a real in-memory slide.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from wsi_ats.outputs import (
    SLIDE_FILES,
    complete,
    error_row,
    patches_geojson,
    read_predictions,
    render_heatmap_png,
    result_row,
    slide_files,
    slide_folder_complete,
    write_predictions,
    write_slide_folder,
)
from wsi_ats.outputs.csvrows import columns, format_predictions
from wsi_ats.result import SlideResult

LEVEL0 = (4096, 8192)  # (H, W): a wide slide, so a swapped y/x shows
GRID_DS = 256.0


def make_result(hot: tuple[int, int] = (2, 28), draws: int = 1, slide_id: str = "s1") -> SlideResult:
    """A 16 x 32 attention grid (256 level-0 px per cell) peaked at ``hot``, with 5 patches per draw."""
    rng = np.random.default_rng(0)
    attention = np.full((16, 32), 1e-4)
    attention[hot] = 1.0
    attention /= attention.sum()
    top_left = rng.integers(-100, 4000, size=(5 * draws, 2)).astype(np.int64)  # draw after draw
    patch_attention = rng.random(5 * draws)
    return SlideResult(
        slide_id=slide_id,
        source=f"/data/{slide_id}.tif",
        class_names=("benign", "tumour"),
        probabilities=np.array([0.25, 0.75], dtype=np.float32),
        attention=attention.astype(np.float32),
        attention_level=2,
        attention_downsample=GRID_DS,
        attention_origin=(0.0, 0.0),
        patch_level=0,
        patch_downsample=1.0,
        patch_top_left=top_left,
        patch_size_level0=128,
        patch_attention=patch_attention,
        patches_fetched=12,
        seconds=0.5,
    )


@pytest.fixture(scope="module")
def thumbnail() -> np.ndarray:
    """Thumbnail of a real in-memory slide: grey-pink tissue on white."""
    from wsi_ats import open_slide

    image = np.full((1024, 2048, 3), 255, np.uint8)
    image[200:900, 300:1800] = (210, 160, 190)
    with open_slide(image) as slide:
        return slide.thumbnail(512)


# -- predictions.csv ---------------------------------------------------------------------------


def test_csv_rows_read_back_exactly(tmp_path):
    rows = [result_row(make_result(), "/data/s1.tif", 1.23456), error_row("s2", "/data/s2.svs", "SlideError: /data/s2.svs: bad", 0.1)]
    write_predictions(tmp_path / "p.csv", rows)
    back = read_predictions(tmp_path / "p.csv")
    assert back == [{**r, "seconds": round(r["seconds"], 3)} for r in complete(rows)]  # seconds: ms only
    assert back[0]["probability"] == pytest.approx(0.75) and back[0]["prob_benign"] == pytest.approx(0.25)
    assert back[1]["prediction"] == "" and back[1]["probability"] is None and back[1]["prob_tumour"] is None


def test_csv_columns_are_the_contract_then_one_probability_per_class(tmp_path):
    rows = [result_row(make_result(), "/data/s1.tif", 1.0)]
    assert columns(rows) == [
        "slide_id", "path", "status", "error", "warning", "note", "prediction", "probability",
        "prob_benign", "prob_tumour", "probability_se", "probability_low", "probability_high", "draws", "confident",
        "seconds", "patches_fetched",
    ]  # fmt: skip


def test_a_result_with_warnings_is_an_unjudged_row_without_a_class(tmp_path):
    result = SlideResult(**{**make_result().__dict__, "probabilities": np.full(2, np.nan), "warnings": ("blank slide", "and\nmore")})
    row = result_row(result, "/data/s1.tif", 1.0)
    assert (row["status"], row["error"], row["warning"], row["prediction"], row["probability"]) == (
        "unjudged",
        "",
        "blank slide; and more",
        "",
        None,
    )
    write_predictions(tmp_path / "p.csv", [row, result_row(make_result(), "/data/s2.tif", 1.0)])
    back = read_predictions(tmp_path / "p.csv")
    assert back[0]["warning"] == "blank slide; and more" and back[0]["prob_benign"] is None and back[0]["prob_tumour"] is None
    assert back[1]["status"] == "ok" and back[1]["warning"] == ""


def test_a_predictions_file_from_before_the_warning_column_reads_with_it_empty(tmp_path):
    (tmp_path / "p.csv").write_text(
        "slide_id,path,status,error,prediction,probability,seconds,patches_fetched\ns1,/data/s1.tif,ok,,tumour,0.75,1.000,12\n"
    )
    (row,) = read_predictions(tmp_path / "p.csv")
    assert (row["status"], row["warning"], row["prediction"], row["probability"]) == ("ok", "", "tumour", 0.75)


def test_error_reason_is_kept_on_one_line_even_with_commas_and_newlines(tmp_path):
    row = error_row("s2", "/data/a,b.svs", "SlideError: /data/a,b.svs: bad\nheader, truly", 0.0)
    write_predictions(tmp_path / "p.csv", [row])
    assert len(format_predictions([row]).splitlines()) == 2
    assert read_predictions(tmp_path / "p.csv")[0]["error"] == "SlideError: /data/a,b.svs: bad header, truly"


def test_a_file_that_is_not_a_predictions_csv_is_refused_by_name(tmp_path):
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="p.csv.*slide_id"):
        read_predictions(tmp_path / "p.csv")


# -- per-slide files ---------------------------------------------------------------------------


def test_geojson_is_a_feature_collection_of_closed_level0_rectangles_in_xy_order():
    result = make_result()
    gj = patches_geojson(result)
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 5
    for (y, x), feature in zip(result.patch_top_left, gj["features"]):
        geometry, props = feature["geometry"], feature["properties"]
        assert geometry["type"] == "Polygon"
        (ring,) = geometry["coordinates"]
        assert ring[0] == ring[-1] and len(ring) == 5
        s = result.patch_size_level0
        assert ring[:4] == [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]
        assert props["objectType"] == "annotation" and props["classification"]["name"]
        assert props["draw"] == 0
    assert [f["properties"]["attention"] for f in gj["features"]] == pytest.approx(result.patch_attention)
    json.dumps(gj)  # plain JSON types only


def test_geojson_numbers_every_draw_when_patches_come_from_several():
    result = make_result(draws=3)
    features = patches_geojson(result, draws=3)["features"]
    assert [f["properties"]["draw"] for f in features] == [d for d in range(3) for _ in range(5)]
    assert [f["properties"]["rank"] for f in features] == [k for _ in range(3) for k in range(5)]
    y, x = result.patch_top_left[-1]
    assert features[-1]["geometry"]["coordinates"][0][0] == [x, y]


def test_geojson_refuses_patch_arrays_of_mismatched_shape():
    bad = make_result()
    bad = SlideResult(**{**bad.__dict__, "patch_attention": np.ones(4)})
    with pytest.raises(ValueError, match="s1.*patch_top_left"):
        patches_geojson(bad)
    with pytest.raises(ValueError, match="draws = 2"):
        patches_geojson(make_result(), draws=2)  # 5 patches are not 2 equal draws


def test_attention_npy_and_sidecar_locate_the_grid_on_the_slide(tmp_path, thumbnail):
    result = make_result()
    write_slide_folder(tmp_path / "s1", slide_files(result, thumbnail, LEVEL0))
    np.testing.assert_array_equal(np.load(tmp_path / "s1" / "attention.npy"), result.attention)
    meta = json.loads((tmp_path / "s1" / "attention.json").read_text())
    assert meta == {
        "slide_id": "s1", "axes": ["y", "x"], "level": 2, "downsample": GRID_DS, "origin": [0.0, 0.0], "shape": [16, 32],
    }  # fmt: skip


def test_slide_folder_is_complete_only_with_every_file(tmp_path, thumbnail):
    folder = tmp_path / "s1"
    write_slide_folder(folder, slide_files(make_result(), thumbnail, LEVEL0))
    assert sorted(os.listdir(folder)) == sorted(SLIDE_FILES)
    assert slide_folder_complete(folder)
    (folder / "patches.geojson").unlink()
    assert not slide_folder_complete(folder)


def _hot_centroid(png: bytes, min_pixels: int = 20) -> tuple[float, float]:
    """Relative (y, x) centre of the overlay's hot (red) colours in the plot area."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    plot = rgb[:, : int(rgb.shape[1] * 0.8)]  # the colour bar is on the right
    red = (plot[..., 0] - plot[..., 1] > 60) & (plot[..., 0] - plot[..., 2] > 60)
    assert red.sum() >= min_pixels, "the hot cell is not drawn"
    ys, xs = np.nonzero(red)
    return ys.mean() / plot.shape[0], xs.mean() / plot.shape[1]


def test_heatmap_is_a_png_with_the_hot_cell_where_the_attention_is(thumbnail):
    top_right = _hot_centroid(render_heatmap_png(make_result(hot=(2, 26)), thumbnail, LEVEL0))
    bottom_left = _hot_centroid(render_heatmap_png(make_result(hot=(13, 5)), thumbnail, LEVEL0))
    assert top_right[0] < 0.4 and top_right[1] > 0.6
    assert bottom_left[0] > 0.6 and bottom_left[1] < 0.4


def test_heatmap_is_larger_than_the_thumbnail_and_keeps_its_aspect(thumbnail):
    image = Image.open(io.BytesIO(render_heatmap_png(make_result(), thumbnail, LEVEL0)))
    assert image.format == "PNG"
    assert image.width >= thumbnail.shape[1] and image.height >= thumbnail.shape[0]
    assert image.width > image.height  # the slide is twice as wide as tall


def test_a_lone_hot_cell_of_a_grid_finer_than_the_thumbnail_still_shows(thumbnail):
    fine = make_result()
    attention = np.full((512, 1024), 1e-7, np.float32)  # 8 level-0 px per cell: 4 cells per thumbnail pixel
    attention[60, 800] = 1.0
    fine = SlideResult(**{**fine.__dict__, "attention": attention, "attention_downsample": 8.0})
    y, x = _hot_centroid(render_heatmap_png(fine, thumbnail, LEVEL0), min_pixels=1)
    assert y < 0.3 and 0.6 < x < 0.8
