"""Slides behind URLs read twice: staged whole into a local folder (``--stage``), or by range through a disk cache
(``--remote-cache``); a real S3-compatible server (moto) on 127.0.0.1.

A staged slide is downloaded once and reused until its object changes; OpenSlide-only formats
read that way have their local copy's pixels; a cache serves a second read without a byte from
the server, and never a changed object's old bytes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import write_dicom_series

from wsi_ats.readers import SlideError, open_slide
from wsi_ats.readers import tiff as tiff_backend
from wsi_ats.readers import zarr as zarr_backend
from wsi_ats.readers.remote import read_stats
from wsi_ats.readers.stage import stage
from wsi_ats.synth import make_slide
from wsi_ats.testing.servers import moto_server, range_http_server, s3_client, storage_options, upload

SIZE = 1024
BUCKET = "staged"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A JPEG TIFF (also named ``.svs``), its OME-Zarr twin, a second TIFF, the TIFF as a DICOM series, and a MIRAX-like pair."""
    root = tmp_path_factory.mktemp("stage-slides")
    make_slide(root / "slide.tiff", SIZE, positive=True, seed=3)
    make_slide(root / "slide.zarr", SIZE, positive=True, seed=3)
    make_slide(root / "other.tiff", SIZE, positive=False, seed=4)
    (root / "slide.svs").write_bytes((root / "slide.tiff").read_bytes())
    write_dicom_series(root / "slide.tiff", root / "dicom", mpp=0.25)
    (root / "scan.mrxs").write_text("[GENERAL]\n")
    (root / "scan").mkdir()
    (root / "scan" / "Slidedat.ini").write_text("[GENERAL]\n")
    (root / "scan" / "Data0000.dat").write_bytes(b"\0" * 100)
    (root / "lonely.mrxs").write_text("[GENERAL]\n")
    return root


@pytest.fixture(scope="module")
def s3(local):
    """``(client, storage options, {name: s3 URL})``: moto's server with the slides uploaded."""
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        urls = {p.name: upload(client, BUCKET, p, p.name) for p in sorted(local.iterdir())}
        yield client, storage_options(endpoint), urls


@pytest.fixture(scope="module")
def http(local):
    with range_http_server(local) as base:
        yield base


def same_pixels(a, b) -> None:
    assert [lv.shape for lv in a.levels] == [lv.shape for lv in b.levels]
    for level in range(len(a.levels)):
        h, w = a.levels[level].shape
        box = ((h // 5, w // 7), (h // 2, w // 2))
        np.testing.assert_array_equal(a.read_region(level, *box), b.read_region(level, *box))


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# -- staging ---------------------------------------------------------------------------------------
def test_a_staged_slide_is_downloaded_once_and_a_rerun_reuses_it(s3, local, tmp_path):
    _, options, urls = s3
    url, size = urls["slide.tiff"], (local / "slide.tiff").stat().st_size
    before = read_stats(url)
    first = open_slide(url, storage_options=options, stage=tmp_path)
    downloaded = read_stats(url) - before
    again = open_slide(url, storage_options=options, stage=tmp_path)
    assert downloaded.bytes == size and (read_stats(url) - before).bytes == size  # the second open downloaded nothing
    assert first.source == again.source and Path(first.source).parent.parent.parent == tmp_path
    assert Path(first.source).name == "slide.tiff" and Path(first.source).read_bytes() == (local / "slide.tiff").read_bytes()
    same_pixels(first, open_slide(local / "slide.tiff"))


def test_a_changed_object_is_staged_again_and_its_old_copy_removed(s3, local, tmp_path):
    client, options, _ = s3
    url = upload(client, BUCKET, local / "slide.tiff", "changing.tiff")
    old = Path(stage(url, tmp_path, options).path)
    upload(client, BUCKET, local / "other.tiff", "changing.tiff")
    new = stage(url, tmp_path, options)
    assert new.downloaded == (local / "other.tiff").stat().st_size and new.path != old and not old.exists()
    same_pixels(open_slide(url, storage_options=options, stage=tmp_path), open_slide(local / "other.tiff"))


def test_concurrent_stagings_of_one_url_download_it_once(s3, local, tmp_path):
    _, options, urls = s3
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: stage(urls["slide.zarr"], tmp_path, options), range(4)))
    assert len({d.path for d in done}) == 1
    assert sum(d.downloaded for d in done) == sum(f.stat().st_size for f in (local / "slide.zarr").rglob("*") if f.is_file())
    assert [name for name in files_under(tmp_path) if ".download-" in name] == []


def test_a_download_cut_short_is_an_error_and_leaves_no_partial_copy(s3, local, tmp_path, monkeypatch):
    """The server sends fewer bytes than it listed (a dropped connection): the copy is refused and removed."""
    from wsi_ats.readers import stage as staging

    _, options, urls = s3
    listed = staging._objects
    monkeypatch.setattr(staging, "_objects", lambda *a: [replace(o, size=o.size + 1) for o in listed(*a)])
    with pytest.raises(SlideError, match=r"download of slide.tiff stopped at \d+ of \d+ bytes; try again"):
        stage(urls["slide.tiff"], tmp_path, options)
    assert files_under(tmp_path) == []


def test_an_svs_read_by_openslide_over_a_url_with_stage_has_the_local_files_pixels(s3, local, tmp_path):
    _, options, urls = s3
    slide = open_slide(urls["slide.svs"], storage_options=options, stage=tmp_path, backend="openslide")
    assert slide.backend == "openslide"
    same_pixels(slide, open_slide(local / "slide.svs", backend="openslide"))


def test_a_dicom_series_folder_on_s3_is_staged_whole_and_read_by_openslide(s3, local, tmp_path):
    _, options, urls = s3
    slide = open_slide(urls["dicom"], storage_options=options, stage=tmp_path)
    assert slide.backend == "openslide" and sorted(p.name for p in Path(slide.source).iterdir()) == sorted(
        p.name for p in (local / "dicom").iterdir()
    )
    same_pixels(slide, open_slide(local / "dicom"))


def test_a_mirax_slide_is_staged_with_its_data_folder_beside_it(s3, tmp_path):
    _, options, urls = s3
    staged = stage(urls["scan.mrxs"], tmp_path, options)
    assert staged.path.name == "scan.mrxs"
    assert sorted(p.relative_to(staged.path.parent).as_posix() for p in staged.path.parent.rglob("*") if p.is_file()) == [
        "scan.mrxs",
        "scan/Data0000.dat",
        "scan/Slidedat.ini",
    ]


def test_a_mirax_slide_without_its_data_folder_is_refused_saying_so(s3, tmp_path):
    _, options, urls = s3
    with pytest.raises(SlideError, match=re.escape(urls["lonely.mrxs"]) + r": a MIRAX slide needs its data folder lonely/"):
        stage(urls["lonely.mrxs"], tmp_path, options)


def test_a_missing_object_with_stage_is_file_not_found_naming_the_url_and_writes_nothing(s3, tmp_path):
    _, options, _ = s3
    url = f"s3://{BUCKET}/no-such-slide.ndpi"
    with pytest.raises(FileNotFoundError, match=re.escape(url)):
        open_slide(url, storage_options=options, stage=tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


def test_an_openslide_only_format_over_a_url_without_stage_says_to_stage_it(s3):
    _, options, urls = s3
    with pytest.raises(SlideError, match=r"MIRAX slides are read by OpenSlide, which reads local files only; stage it with --stage DIR"):
        open_slide(urls["scan.mrxs"], storage_options=options)


def test_a_folder_over_plain_http_is_refused_by_stage_saying_why_and_writes_nothing(http, tmp_path):
    url = f"{http}/dicom"
    with pytest.raises(SlideError, match=re.escape(url) + r": the server answers with a web page \(a folder over plain HTTP"):
        open_slide(url, stage=tmp_path / "stage")
    assert not (tmp_path / "stage").exists()


def test_a_tiff_over_plain_http_is_staged_by_its_last_modified_date(http, local, tmp_path):
    staged = stage(f"{http}/slide.tiff", tmp_path)
    assert staged.downloaded == (local / "slide.tiff").stat().st_size and stage(f"{http}/slide.tiff", tmp_path).downloaded == 0


def test_stage_and_remote_cache_together_are_refused(s3, tmp_path):
    _, options, urls = s3
    with pytest.raises(ValueError, match="not both"):
        open_slide(urls["slide.tiff"], storage_options=options, stage=tmp_path / "a", remote_cache=tmp_path / "b")


# -- the cache of remote reads ---------------------------------------------------------------------
def forget_open_slides() -> None:
    """What a new process starts with: no parsed headers or zarr metadata in memory."""
    tiff_backend._HANDLES.clear()
    zarr_backend._PYRAMIDS.clear()


@pytest.mark.parametrize("name", ["slide.tiff", "slide.zarr"])
def test_a_second_read_through_the_cache_fetches_nothing_from_the_server(s3, local, tmp_path, name):
    _, options, urls = s3
    url = urls[name]
    forget_open_slides()
    before = read_stats(url)
    first = open_slide(url, storage_options=options, remote_cache=tmp_path)
    same_pixels(first, open_slide(local / name))
    fetched = read_stats(url) - before
    forget_open_slides()
    again = open_slide(url, storage_options=options, remote_cache=tmp_path)
    same_pixels(again, open_slide(local / name))
    assert fetched.bytes > 0 and read_stats(url) - before == fetched  # header, metadata and tiles all from disk


def test_the_cache_never_serves_a_changed_objects_old_bytes(s3, local, tmp_path):
    client, options, _ = s3
    url = upload(client, BUCKET, local / "slide.tiff", "cached-changing.tiff")
    forget_open_slides()
    same_pixels(open_slide(url, storage_options=options, remote_cache=tmp_path), open_slide(local / "slide.tiff"))
    upload(client, BUCKET, local / "other.tiff", "cached-changing.tiff")
    forget_open_slides()
    same_pixels(open_slide(url, storage_options=options, remote_cache=tmp_path), open_slide(local / "other.tiff"))


def test_a_zarr_store_over_plain_http_is_read_uncached_with_a_warning_saying_why(http, local, tmp_path):
    with pytest.warns(UserWarning, match=r"cannot be listed .* its reads are not cached"):
        slide = open_slide(f"{http}/slide.zarr", remote_cache=tmp_path)
    same_pixels(slide, open_slide(local / "slide.zarr"))
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_slide_keeps_its_cache_folder(s3, tmp_path):
    import pickle

    _, options, urls = s3
    slide = open_slide(urls["slide.tiff"], storage_options=options, remote_cache=tmp_path)
    assert pickle.loads(pickle.dumps(slide)).remote_cache == str(tmp_path)


# -- the commands ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_with_stage_reads_an_openslide_only_format_from_s3_downloads_once_and_writes_only_out_and_stage(
    s3, tmp_path_factory, tmp_path
):
    """A DICOM series (OpenSlide only) and a TIFF on S3, keys in the environment as for a user: the rows of the local copies."""
    from predict_data import TIMEOUT, cli_env, cohort_slides, trained_model

    from wsi_ats.manifest import ManifestRow
    from wsi_ats.outputs import TIMING_COLUMNS, read_predictions
    from wsi_ats.pipeline import Pipeline

    client, options, _ = s3
    model, manifest = trained_model(tmp_path_factory.getbasetemp())
    tiff = cohort_slides(manifest)[0]
    dicom = write_dicom_series(tiff, tmp_path / "slides" / "dicom", mpp=0.25)
    remote = {"tiff": upload(client, BUCKET, tiff, "cohort/" + tiff.name), "dicom": upload(client, BUCKET, dicom, "cohort/dicom")}
    gone = f"s3://{BUCKET}/cohort/gone.ndpi"
    env = {**cli_env(), "AWS_ENDPOINT_URL": options["endpoint_url"], "AWS_ACCESS_KEY_ID": options["key"],
           "AWS_SECRET_ACCESS_KEY": options["secret"], "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    (tmp_path / "cwd").mkdir()

    def predict(rows: dict[str, str], out: str, *extra: str):
        (tmp_path / f"{out}.csv").write_text("slide_id,path\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
        args = ["predict", "--model", str(model), "--manifest", str(tmp_path / f"{out}.csv"), "--out", str(tmp_path / out), *extra]
        done = subprocess.run([sys.executable, "-m", "wsi_ats.cli", *args, "--scheduler", "threads"], cwd=tmp_path / "cwd",
                              capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False)  # fmt: skip
        return done, read_predictions(tmp_path / out / "predictions.csv")

    local = [ManifestRow("tiff", str(tiff)), ManifestRow("dicom", str(dicom))]
    local_rows = Pipeline(model).run_many(local, tmp_path / "local", verbose=False)
    done, staged = predict({**remote, "gone": gone}, "staged", "--stage", str(tmp_path / "stage"))
    _, again = predict(remote, "again", "--stage", str(tmp_path / "stage"))
    assert done.returncode == 1, done.stderr
    drop = {*TIMING_COLUMNS, "path"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in staged[:2]] == [
        {k: v for k, v in r.items() if k not in drop} for r in local_rows
    ]
    sizes = [tiff.stat().st_size, sum(f.stat().st_size for f in dicom.iterdir())]
    assert [(r["bytes_read"], r["slide_bytes"]) for r in staged[:2]] == list(zip(sizes, sizes))  # the download
    assert [(r["bytes_read"], r["slide_bytes"]) for r in again] == list(zip([0, 0], sizes))  # reused
    assert staged[2]["status"] == "error" and staged[2]["error"].startswith("FileNotFoundError") and gone in staged[2]["error"]
    assert list((tmp_path / "cwd").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cwd", "slides", "local", "staged", "staged.csv", "again", "again.csv", "stage"]
    )
    staged_files = files_under(tmp_path / "stage")
    assert len(staged_files) == 1 + len(list(dicom.iterdir())) and all("/.download-" not in f for f in staged_files)


@pytest.mark.slow
def test_training_over_s3_with_a_remote_cache_fetches_almost_nothing_after_the_first_epoch_and_nothing_on_a_rerun(
    s3, tmp_path, monkeypatch
):
    """Keys and endpoint from the environment, as for ``wsi-ats train --remote-cache DIR``; the rerun learns the same weights."""
    import torch
    from s3fs import S3FileSystem

    from wsi_ats.synth import make_cohort
    from wsi_ats.train import train

    client, options, _ = s3
    env = {"AWS_ENDPOINT_URL": options["endpoint_url"], "AWS_ACCESS_KEY_ID": options["key"], "AWS_SECRET_ACCESS_KEY": options["secret"]}
    for name, value in {**env, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    S3FileSystem.clear_instance_cache()  # one made for another server would be reused
    manifest = make_cohort(tmp_path / "cohort", n=2, size=1024, formats=("tiff", "zarr"), seed=1, workers=1, progress=False)
    for slide in sorted((tmp_path / "cohort" / "slides").iterdir()):
        upload(client, BUCKET, slide, f"train/slides/{slide.name}")
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic_wsi.toml"

    def run(out: str) -> dict:
        forget_open_slides()
        return train(manifest, recipe, tmp_path / out, seed=0, epochs=2, device="cpu", progress=False, root=f"s3://{BUCKET}/train",
                     remote_cache=tmp_path / "cache")  # fmt: skip

    cold, warm = run("cold"), run("warm")
    S3FileSystem.clear_instance_cache()
    first, second = (e["bytes_read"] for e in cold["epochs"])
    assert cold["bytes_read_setup"] > 0 and first > 0 and second <= first / 10
    assert warm["bytes_read_setup"] == 0 and [e["bytes_read"] for e in warm["epochs"]] == [0, 0]
    a, b = (torch.load(tmp_path / out / "model.pt", weights_only=False)["state_dict"] for out in ("cold", "warm"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_and_remote_cache_are_one_or_the_other_on_the_command_line(capsys):
    from wsi_ats.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["train", "--manifest", "m.csv", "--config", "c", "--out", "o", "--stage", "a", "--remote-cache", "b"])
    assert exited.value.code == 2 and "--remote-cache: not allowed with argument --stage" in capsys.readouterr().err
