"""Batch prediction: one row per slide, outputs for good slides only, resume, seeds, dask.

Real components throughout: a model trained for one epoch on a synthetic cohort,
real TIFF and OME-Zarr slides, real broken files, a real dask LocalCluster.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from predict_data import GOOD, cohort_slides, copy_slide, mixed_folder, trained_model
from test_discover import touch

from wsi_ats.discover import slide_stem
from wsi_ats.manifest import ManifestRow
from wsi_ats.outputs import SLIDE_FILES, TIMING_COLUMNS, read_predictions
from wsi_ats.pipeline import NoSlidesError, Pipeline, exit_code, slide_seed


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def untimed_csv(path):
    """The CSV's text with the timing columns cut out."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    drop = {lines[0].index(c) for c in TIMING_COLUMNS}
    return [[cell for i, cell in enumerate(line) if i not in drop] for line in lines]


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def pipeline(model_and_manifest):
    return Pipeline(model_and_manifest[0], device="cpu", seed=0)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, model_and_manifest, pipeline):
    """One batch over a mixed folder plus a manifest row whose file is missing."""
    root = tmp_path_factory.mktemp("batch")
    folder = mixed_folder(root / "in", model_and_manifest[1])
    lost = ManifestRow("lost", str(root / "in" / "lost.svs"), "positive")
    rows = pipeline.run_many([folder, lost], root / "out", verbose=False)
    return folder, root / "out", rows


def by_id(rows):
    return {r["slide_id"]: r for r in rows}


def test_a_missing_model_fails_when_the_pipeline_is_made_not_per_slide(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        Pipeline(tmp_path / "model.pt")


def test_inputs_without_any_slide_are_a_usage_error(tmp_path, pipeline):
    touch(tmp_path / "in" / "README.txt")
    with pytest.raises(NoSlidesError, match="no slides"):
        pipeline.run_many([tmp_path / "in"], tmp_path / "out", verbose=False)


# -- one batch over good and bad inputs ------------------------------------------------------------


def test_every_slide_gets_a_row_in_input_order_and_non_slides_none(batch):
    _, _, rows = batch
    assert [(r["slide_id"], r["status"]) for r in rows] == [
        ("empty", "error"),
        ("good_tiff", "ok"),
        ("good_zarr", "ok"),
        ("text", "error"),
        ("truncated", "error"),
        ("lost", "error"),
    ]
    assert exit_code(rows) == 1
    assert exit_code([r for r in rows if r["status"] == "ok"]) == 0


def test_a_bad_slide_fails_its_own_row_with_the_reason_and_its_path(batch):
    folder, _, rows = batch
    rows = by_id(rows)
    for sid, name in [("empty", "empty.tiff"), ("text", "text.svs"), ("truncated", "truncated.tiff")]:
        assert rows[sid]["error"].startswith(f"SlideError: {folder / name}: ")
    assert rows["lost"]["error"].startswith("FileNotFoundError: ") and "lost.svs" in rows["lost"]["error"]
    for sid in ("empty", "text", "truncated", "lost"):
        assert rows[sid]["prediction"] == "" and rows[sid]["probability"] is None and rows[sid]["patches_fetched"] is None


def test_a_good_row_holds_the_prediction_its_probabilities_and_patch_count(batch, pipeline):
    _, out, rows = batch
    for row in (r for r in rows if r["status"] == "ok"):
        probs = {c: row[f"prob_{c}"] for c in pipeline.model.class_names}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["prediction"] == max(probs, key=probs.get) and row["probability"] == max(probs.values())
        features = json.loads((out / row["slide_id"] / "patches.geojson").read_text())["features"]
        assert row["patches_fetched"] == len(features) > 0 and row["error"] == "" and row["seconds"] > 0


def test_outputs_exist_for_good_slides_only_and_the_csv_says_what_was_returned(batch):
    _, out, rows = batch
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(
        [*GOOD, "predictions.csv", "report.html"]
    )  # .wsi-ats: the lock
    for sid in GOOD:
        assert sorted(os.listdir(out / sid)) == sorted(SLIDE_FILES)
    on_disk = read_predictions(out / "predictions.csv")
    assert untimed(on_disk) == untimed(rows)
    assert [r["seconds"] for r in on_disk] == [round(r["seconds"], 3) for r in rows]


def test_attention_map_and_sidecar_describe_the_grid(batch, pipeline):
    folder, out, _ = batch
    attention = np.load(out / "good_tiff" / "attention.npy")
    meta = json.loads((out / "good_tiff" / "attention.json").read_text())
    assert meta["shape"] == list(attention.shape) and attention.dtype == np.float32
    assert attention.sum() == pytest.approx(1.0, abs=1e-4) and attention.min() >= 0
    result = pipeline.run(folder / "good_tiff.tiff")
    assert meta["level"] == result.attention_level and meta["downsample"] == result.attention_downsample
    assert meta["origin"] == list(result.attention_origin)
    np.testing.assert_array_equal(attention, result.attention)


def test_geojson_rings_are_the_fetched_patches_in_level0_xy(batch, pipeline):
    folder, out, _ = batch
    result = pipeline.run(folder / "good_tiff.tiff")  # same slide id and seed as in the batch
    gj = json.loads((out / "good_tiff" / "patches.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(result.patch_top_left)
    size = pipeline.model.patch_size  # pixels of the patch level
    for feature, (y, x), a in zip(gj["features"], result.patch_top_left, result.patch_attention):
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) == 5
        (x0, y0), (x1, y1) = ring[0], ring[2]
        # level-0 corners are the patch level's integer corners times its downsample, clipped to the slide
        ds, (H, W) = result.patch_downsample, result.slide_shape
        assert x / ds == round(x / ds) and y / ds == round(y / ds)
        assert (x0, y0, x1, y1) == (max(x, 0), max(y, 0), min(x + size * ds, W), min(y + size * ds, H))
        assert feature["properties"]["attention"] == pytest.approx(float(a))
        assert feature["properties"]["objectType"] == "annotation" and feature["properties"]["draw"] == 0


# -- determinism -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_csv_except_the_timing_column(batch, model_and_manifest, tmp_path):
    folder, out, _ = batch
    lost = ManifestRow("lost", str(folder / "lost.svs"), "positive")
    Pipeline(model_and_manifest[0], device="cpu", seed=0).run_many([folder, lost], tmp_path / "again", verbose=False)
    assert untimed_csv(tmp_path / "again" / "predictions.csv") == untimed_csv(out / "predictions.csv")


def test_a_slides_result_does_not_depend_on_the_rest_of_the_batch(batch, pipeline, tmp_path):
    folder, _, rows = batch
    (alone,) = pipeline.run_many([folder / "nested" / "good_zarr.ome.zarr"], tmp_path / "alone", verbose=False)
    assert untimed([alone]) == untimed([by_id(rows)["good_zarr"]])


def test_each_slide_seed_comes_from_the_seed_and_the_slide_id_only():
    assert slide_seed(0, "a") == slide_seed(0, "a")
    assert len({slide_seed(0, "a"), slide_seed(1, "a"), slide_seed(0, "b")}) == 3


def test_another_seed_samples_other_patches(batch, model_and_manifest, pipeline):
    folder, _, _ = batch
    seeds = [Pipeline(model_and_manifest[0], device="cpu", seed=s).run(folder / "good_tiff.tiff") for s in (0, 1)]
    assert not np.array_equal(seeds[0].patch_top_left, seeds[1].patch_top_left)


def test_several_draws_are_numbered_in_the_geojson(model_and_manifest, tmp_path):
    tiff = cohort_slides(model_and_manifest[1])[0]
    (row,) = Pipeline(model_and_manifest[0], device="cpu", draws=2).run_many([tiff], tmp_path, verbose=False)
    features = json.loads((tmp_path / row["slide_id"] / "patches.geojson").read_text())["features"]
    draws = [f["properties"]["draw"] for f in features]
    assert row["patches_fetched"] == len(features) and draws == sorted(draws) and set(draws) == {0, 1}
    assert draws.count(0) == draws.count(1)


def test_a_dask_cluster_gives_the_same_rows_as_this_process(batch, pipeline, tmp_path):
    from distributed import Client, LocalCluster

    folder, _, rows = batch
    good = [folder / "good_tiff.tiff", folder / "nested" / "good_zarr.ome.zarr"]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        remote = pipeline.run_many(good, tmp_path, client=client, verbose=False)
    assert untimed(remote) == untimed([by_id(rows)[sid] for sid in GOOD])
    assert all(sorted(os.listdir(tmp_path / sid)) == sorted(SLIDE_FILES) for sid in GOOD)


# -- resume ----------------------------------------------------------------------------------------


def test_a_rerun_skips_done_slides_untouched_and_retries_failed_ones(model_and_manifest, pipeline, tmp_path):
    tiff = cohort_slides(model_and_manifest[1])[1]
    copy_slide(tiff, tmp_path / "in" / "good.tiff")
    (tmp_path / "in" / "later.tiff").write_bytes(tiff.read_bytes()[:1000])  # truncated for now
    first = pipeline.run_many([tmp_path / "in"], tmp_path / "out", verbose=False)
    assert [r["status"] for r in first] == ["ok", "error"]
    before = mtimes(tmp_path / "out" / "good")

    shutil.copyfile(tiff, tmp_path / "in" / "later.tiff")  # fixed: the retry succeeds
    second = pipeline.run_many([tmp_path / "in"], tmp_path / "out", verbose=False)
    assert second[0] == first[0] | {"seconds": round(first[0]["seconds"], 3)}  # the kept row, as read back
    assert mtimes(tmp_path / "out" / "good") == before
    assert second[1]["status"] == "ok" and sorted(os.listdir(tmp_path / "out" / "later")) == sorted(SLIDE_FILES)
    assert exit_code(second) == 0


def test_a_done_slide_with_a_missing_output_is_done_again(model_and_manifest, pipeline, tmp_path):
    tiff = cohort_slides(model_and_manifest[1])[0]
    pipeline.run_many([tiff], tmp_path, verbose=False)
    sid = slide_stem(tiff)
    (tmp_path / sid / "attention.png").unlink()
    (row,) = pipeline.run_many([tiff], tmp_path, verbose=False)
    assert row["status"] == "ok" and (tmp_path / sid / "attention.png").is_file()


def test_rows_of_other_slides_already_in_the_csv_are_kept(batch, pipeline, tmp_path):
    folder, out, rows = batch
    shutil.copytree(out, tmp_path / "out")
    tiff = folder / "good_tiff.tiff"
    pipeline.run_many([tiff], tmp_path / "out", verbose=False)
    kept = read_predictions(tmp_path / "out" / "predictions.csv")
    assert [r["slide_id"] for r in kept] == ["good_tiff"] + [r["slide_id"] for r in rows if r["slide_id"] != "good_tiff"]
