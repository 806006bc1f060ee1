"""Slides behind URLs: a real S3-compatible server (moto) and an HTTP server with Range, both on 127.0.0.1.

Pixels through URLs equal local reads, reads fetch only the bytes asked for, broken or
unreachable objects fail with one clear error each, and a dask worker opens the URL itself.
"""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_ats.readers import SlideError, open_slide
from wsi_ats.readers.remote import read_stats, source_size, touching_spans
from wsi_ats.synth import make_slide
from wsi_ats.testing.servers import moto_server, range_http_server, s3_client, s3_env, storage_options, upload

REPO = Path(__file__).resolve().parents[1]
#: A 2048-px slide: levels 1, 4, 16 in 256-px tiles (64 tiles at level 0).
SIZE = 2048
BUCKET = "slides"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same slide as a JPEG TIFF and an OME-Zarr store, plus a truncated copy of the TIFF."""
    root = tmp_path_factory.mktemp("remote-slides")
    make_slide(root / "slide.tiff", SIZE, positive=True, seed=3)
    make_slide(root / "slide.zarr", SIZE, positive=True, seed=3)
    data = (root / "slide.tiff").read_bytes()
    (root / "truncated.tiff").write_bytes(data[: len(data) * 2 // 3])
    shutil.copyfile(root / "slide.tiff", root / "slide.ndpi")
    return root


@pytest.fixture(scope="module")
def s3(local):
    """``(endpoint, {name: s3 URL})``: moto's server with the slides uploaded."""
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        urls = {p.name: upload(client, BUCKET, p, p.name) for p in sorted(local.iterdir())}
        yield endpoint, urls


@pytest.fixture(scope="module")
def http(local):
    with range_http_server(local) as base:
        yield base


def same_pixels(a, b) -> None:
    assert [lv.shape for lv in a.levels] == [lv.shape for lv in b.levels]
    assert a.mpp == b.mpp
    for level in range(len(a.levels)):
        h, w = a.levels[level].shape
        box = ((h // 3, w // 5), (h // 2, w // 2))
        np.testing.assert_array_equal(a.read_region(level, *box), b.read_region(level, *box))


@pytest.mark.parametrize("name", ["slide.tiff", "slide.zarr"])
def test_a_slide_on_s3_reads_the_pixels_of_its_local_copy(s3, local, name):
    endpoint, urls = s3
    remote = open_slide(urls[name], storage_options=storage_options(endpoint))
    assert remote.backend == ("tiff" if name.endswith(".tiff") else "zarr")
    same_pixels(remote, open_slide(local / name))


def test_a_tiff_over_http_with_range_requests_reads_the_pixels_of_its_local_copy(http, local):
    same_pixels(open_slide(f"{http}/slide.tiff"), open_slide(local / "slide.tiff"))


def test_reading_one_tile_over_a_url_fetches_the_header_and_that_tiles_bytes_only_once(s3, local):
    endpoint, _ = s3
    url = upload(s3_client(endpoint), BUCKET, local / "slide.tiff", "read-once.tiff")  # read by no other test
    before = read_stats(url)
    slide = open_slide(url, storage_options=storage_options(endpoint))
    header = read_stats(url) - before
    slide.read_tile(0, 3, 4)
    tile = read_stats(url) - before - header
    slide.read_tile(0, 3, 4)  # a small level's decoded tiles are kept: not fetched again
    size = (local / "slide.tiff").stat().st_size
    assert source_size(url, storage_options(endpoint)) == size
    assert tile.requests == 1 and 0 < tile.bytes < size / 40  # one of 64 tiles
    assert read_stats(url) - before - header == tile
    assert header.bytes < size / 3


def test_the_tiles_of_a_region_are_requested_together_one_request_per_row_of_touching_tiles(s3, local):
    endpoint, urls = s3
    slide = open_slide(urls["slide.tiff"], storage_options=storage_options(endpoint))
    before = read_stats(urls["slide.tiff"])
    tiles = slide.read_tiles(0, [(0, 0), (0, 1), (1, 0), (1, 1)])
    read = read_stats(urls["slide.tiff"]) - before
    with tifffile.TiffFile(local / "slide.tiff") as tif:  # a row's tiles lie one after the other
        counts = tif.pages[0].databytecounts
        across = len(range(0, tif.pages[0].imagewidth, 256))
    assert read.requests == 2 and read.bytes == sum(counts[k] for k in (0, 1, across, across + 1))  # not a byte more
    np.testing.assert_array_equal(tiles[3], slide.read_region(0, (256, 256), (256, 256)))


def test_touching_ranges_are_merged_into_spans_of_at_most_the_limit():
    assert touching_spans([(30, 40), (0, 10), (10, 20), (15, 18), (50, 60)]) == [(0, 20), (30, 40), (50, 60)]
    assert touching_spans([(0, 10), (10, 20), (20, 30)], limit=20) == [(0, 20), (20, 30)]


def test_a_pickled_url_slide_reopens_with_its_storage_options(s3):
    endpoint, urls = s3
    slide = open_slide(urls["slide.tiff"], storage_options=storage_options(endpoint), mpp=0.5)
    again = pickle.loads(pickle.dumps(slide))
    assert again.storage_options == storage_options(endpoint) and again.mpp == 0.5
    np.testing.assert_array_equal(again.read_tile(1, 0, 0), slide.read_tile(1, 0, 0))


def test_a_missing_object_is_file_not_found_naming_the_url(s3):
    endpoint, _ = s3
    url = f"s3://{BUCKET}/no-such-slide.tiff"
    with pytest.raises(FileNotFoundError, match=re.escape(url)):
        open_slide(url, storage_options=storage_options(endpoint))


def test_a_truncated_object_is_a_slide_error_saying_so(s3):
    endpoint, urls = s3
    with pytest.raises(SlideError, match=r"truncated"):
        open_slide(urls["truncated.tiff"], storage_options=storage_options(endpoint))


def test_a_denied_bucket_is_a_slide_error_naming_the_url_and_the_credentials():
    with moto_server(free_actions=2) as endpoint:  # the probe and the bucket's creation, then credentials count
        s3_client(endpoint).create_bucket(Bucket="locked")
        url = "s3://locked/slide.tiff"
        with pytest.raises(SlideError, match=re.escape(url) + r": access denied .*check the credentials"):
            open_slide(url, storage_options=storage_options(endpoint))


def test_an_openslide_only_format_over_a_url_says_to_stage_it_or_copy_it_locally(s3):
    endpoint, urls = s3
    with pytest.raises(SlideError, match=r"NDPI slides are read by OpenSlide, which reads local files only; stage it with --stage DIR"):
        open_slide(urls["slide.ndpi"], storage_options=storage_options(endpoint))


def test_openslide_cannot_be_forced_on_a_url(http):
    with pytest.raises(ValueError, match="OpenSlide reads local files only"):
        open_slide(f"{http}/slide.tiff", backend="openslide")


@pytest.mark.slow
def test_a_local_cluster_worker_opens_the_url_itself(s3, local):
    from distributed import Client, LocalCluster

    endpoint, urls = s3
    url = urls["slide.tiff"]
    slide = open_slide(url, storage_options=storage_options(endpoint))
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        pixels = client.submit(lambda s: s.read_region(0, (300, 500), (400, 300)), slide).result()
        worker_stats = client.run(read_stats, url)
    np.testing.assert_array_equal(pixels, open_slide(local / "slide.tiff").read_region(0, (300, 500), (400, 300)))
    assert [stats.bytes > 0 for stats in worker_stats.values()] == [True]  # the worker fetched the bytes


@pytest.mark.parametrize("workers", [1, 3])
def test_fetching_patches_from_a_url_gives_the_local_pixels_requesting_each_covering_tile_once(s3, local, workers):
    from wsi_ats.engine.fetch import fetch_patches_with_stats

    endpoint, _ = s3
    url = upload(s3_client(endpoint), BUCKET, local / "slide.tiff", f"fetch-{workers}.tiff")  # read by no other test
    slide = open_slide(url, storage_options=storage_options(endpoint))
    corners = np.array([[100, 100], [700, 1300], [1500, 40], [1800, 1800]])
    before = read_stats(url)
    patches, stats = fetch_patches_with_stats(slide, 0, corners, 224, num_workers=workers)
    read = read_stats(url) - before
    expected, _ = fetch_patches_with_stats(open_slide(local / "slide.tiff"), 0, corners, 224, num_workers=1)
    np.testing.assert_array_equal(patches, expected)
    with tifffile.TiffFile(local / "slide.tiff") as tif:
        counts, across = tif.pages[0].databytecounts, len(range(0, tif.pages[0].imagewidth, 256))
    span = lambda v: range(v // 256, (v + 223) // 256 + 1)  # noqa: E731 - the tiles a 224-px patch side covers
    covering = {(ty, tx) for y, x in corners for ty in span(y) for tx in span(x)}
    assert len(covering) == stats.tiles and read.bytes == sum(counts[ty * across + tx] for ty, tx in covering)  # each once
    assert read.requests < stats.tiles  # a patch's touching tiles in one request


@pytest.mark.slow
def test_predict_on_a_manifest_of_s3_urls_writes_the_rows_of_its_local_copies_and_a_clear_error_per_bad_object(
    s3, tmp_path_factory, tmp_path
):
    """The CLI finds the server and keys in the environment (AWS_*), as a user's shell gives them."""
    from predict_data import TIMEOUT, cli_env, cohort_slides, trained_model

    from wsi_ats.outputs import TIMING_COLUMNS, read_predictions

    endpoint, urls = s3
    model, manifest = trained_model(tmp_path_factory.getbasetemp())
    tiff, _, zarr, _ = cohort_slides(manifest)
    client = s3_client(endpoint)
    remote = {"tiff": upload(client, BUCKET, tiff, "cohort/" + tiff.name), "zarr": upload(client, BUCKET, zarr, "cohort/" + zarr.name)}
    bad = {"gone": f"s3://{BUCKET}/cohort/gone.tiff", "truncated": urls["truncated.tiff"]}

    def predict(rows: dict[str, str], out):
        (tmp_path / f"{out}.csv").write_text("slide_id,path,label\n" + "".join(f"{k},{v},positive\n" for k, v in rows.items()))
        args = ["predict", "--model", str(model), "--manifest", str(tmp_path / f"{out}.csv"), "--out", str(tmp_path / out)]
        done = subprocess.run(
            [sys.executable, "-m", "wsi_ats.cli", *args, "--scheduler", "threads"],
            capture_output=True, text=True, env={**cli_env(), **s3_env(endpoint)}, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        return done, read_predictions(tmp_path / out / "predictions.csv")

    _, local_rows = predict({"tiff": str(tiff), "zarr": str(zarr)}, "local")
    done, url_rows = predict({**remote, **bad}, "urls")
    assert done.returncode == 1, done.stderr
    drop = {*TIMING_COLUMNS, "path"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in url_rows[:2]] == [
        {k: v for k, v in r.items() if k not in drop} for r in local_rows
    ]
    assert [r["path"] for r in url_rows] == [*remote.values(), *bad.values()]
    assert [r["slide_bytes"] for r in url_rows[:2]] == [tiff.stat().st_size, sum(f.stat().st_size for f in zarr.rglob("*") if f.is_file())]
    assert all(r["bytes_read"] > 0 for r in url_rows[:2])  # tiny slides: more than their size (levels are read again)
    gone, truncated = url_rows[2:]
    assert gone["status"] == "error" and gone["error"].startswith("FileNotFoundError") and bad["gone"] in gone["error"]
    assert truncated["status"] == "error" and "truncated" in truncated["error"] and bad["truncated"] in truncated["error"]


@pytest.mark.slow
def test_training_on_a_manifest_under_an_s3_root_learns_the_same_weights_as_on_the_local_copies(s3, tmp_path, monkeypatch):
    """Credentials and endpoint from the environment, as for the CLI; relative manifest paths under ``--root s3://...``."""
    import torch

    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    endpoint, _ = s3
    for name, value in s3_env(endpoint).items():
        monkeypatch.setenv(name, value)
    manifest = make_cohort(tmp_path / "cohort", n=2, size=1024, formats=("tiff", "zarr"), seed=1, workers=1, progress=False)
    client = s3_client(endpoint)
    for slide in sorted((tmp_path / "cohort" / "slides").iterdir()):
        upload(client, BUCKET, slide, f"train/slides/{slide.name}")
    recipe = REPO / "pipelines" / "synthetic_wsi.toml"
    train(manifest, recipe, tmp_path / "local", seed=0, epochs=1, device="cpu", progress=False)
    train(manifest, recipe, tmp_path / "remote", seed=0, epochs=1, device="cpu", progress=False, root=f"s3://{BUCKET}/train")
    local, remote = (torch.load(tmp_path / run / "model.pt", weights_only=False)["state_dict"] for run in ("local", "remote"))
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)


def test_the_http_server_answers_each_request_after_its_latency_and_concurrent_requests_wait_side_by_side(tmp_path):
    (tmp_path / "blob").write_bytes(bytes(range(256)))
    with range_http_server(tmp_path, latency=0.3) as base:
        start = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(f"{base}/blob", headers={"Range": "bytes=2-5"})) as answer:
            assert answer.read() == bytes([2, 3, 4, 5])
        one = time.perf_counter() - start
        with ThreadPoolExecutor(4) as pool:
            start = time.perf_counter()
            list(pool.map(lambda _: urllib.request.urlopen(f"{base}/blob").read(), range(4)))
            four = time.perf_counter() - start
    assert 0.3 <= one < 0.3 * 3
    assert 0.3 <= four < 0.3 * 3  # not 4 x 0.3: the server answers in parallel
