"""``wsi-ats predict`` in a subprocess: exit codes, rows, and a batch killed with SIGKILL then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from predict_data import TIMEOUT, cli_env, cohort_slides, copy_slide, mixed_folder, trained_model

from wsi_ats.outputs import SLIDE_FILES, read_predictions

#: Slides of the killed batch: after the first row, the others take seconds; the kill takes 10 ms.
N_KILLED = 5


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


def predict_args(model, *inputs, out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsi_ats.cli",
        "predict",
        "--model",
        str(model),
        *map(str, inputs),
        "--out",
        str(out),
        "--scheduler",
        "threads",
    ]


def predict(model, *inputs, out) -> subprocess.CompletedProcess:
    return subprocess.run(predict_args(model, *inputs, out=out), capture_output=True, text=True, env=cli_env(), timeout=TIMEOUT)


def statuses(out) -> dict[str, str]:
    return {r["slide_id"]: r["status"] for r in read_predictions(out / "predictions.csv")}


def write_manifest(path, rows) -> None:
    path.write_text("slide_id,path,label\n" + "".join(f"{sid},{p},positive\n" for sid, p in rows))


def test_a_folder_with_bad_slides_exits_1_with_a_row_for_each_and_outputs_for_the_good(model_and_manifest, tmp_path):
    model, manifest = model_and_manifest
    folder = mixed_folder(tmp_path / "in", manifest)
    done = predict(model, folder, out=tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert statuses(tmp_path / "out") == {
        "empty": "error", "good_tiff": "ok", "good_zarr": "ok", "text": "error", "truncated": "error",
    }  # fmt: skip
    assert sorted(os.listdir(tmp_path / "out")) == [
        ".wsi-ats",
        "good_tiff",
        "good_zarr",
        "predictions.csv",
        "report.html",
    ]  # .wsi-ats: the lock
    assert "README.txt" in done.stderr  # skipped with a note
    assert "3 failed" in done.stdout  # the summary


def test_a_manifest_row_whose_file_is_missing_fails_that_row_and_exits_1(model_and_manifest, tmp_path):
    model, _ = model_and_manifest
    (tmp_path / "text.svs").write_text("not a slide\n")
    write_manifest(tmp_path / "m.csv", [("gone", "gone.svs"), ("text", "text.svs")])  # relative to the manifest
    done = subprocess.run(
        [*predict_args(model, out=tmp_path / "out"), "--manifest", str(tmp_path / "m.csv")],
        capture_output=True, text=True, env=cli_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert [(r["slide_id"], r["status"]) for r in rows] == [("gone", "error"), ("text", "error")]
    assert rows[0]["error"].startswith("FileNotFoundError") and str(tmp_path / "gone.svs") in rows[0]["error"]
    assert rows[1]["error"].startswith(f"SlideError: {tmp_path / 'text.svs'}: ")
    assert sorted(os.listdir(tmp_path / "out")) == [
        ".wsi-ats",
        "predictions.csv",
        "report.html",
        "summary.json",
    ]  # no slide folder; labels: a summary


def test_a_bad_manifest_exits_2_naming_the_line_before_any_slide(model_and_manifest, tmp_path):
    model, _ = model_and_manifest
    (tmp_path / "m.csv").write_text("slide_id,path,label\na,a.svs,x\na,b.svs,x\n")  # duplicate id on line 3
    done = subprocess.run(
        [*predict_args(model, out=tmp_path / "out"), "--manifest", str(tmp_path / "m.csv")],
        capture_output=True, text=True, env=cli_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "m.csv:3" in done.stderr
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_a_batch_killed_mid_way_loses_nothing_and_a_rerun_finishes_it(model_and_manifest, tmp_path):
    model, manifest = model_and_manifest
    slides = cohort_slides(manifest)
    for k in range(N_KILLED):
        src = slides[k % len(slides)]
        copy_slide(src, tmp_path / "in" / f"s{k}{''.join(src.suffixes)}")
    out, csv_path = tmp_path / "out", tmp_path / "out" / "predictions.csv"

    proc = subprocess.Popen(
        predict_args(model, tmp_path / "in", out=out),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (csv_path.exists() and read_predictions(csv_path)):
            assert proc.poll() is None, "the CLI ended before writing a row"
            assert time.monotonic() < deadline, "no row written in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    text = csv_path.read_text()
    assert text.endswith("\n")
    before = read_predictions(csv_path)  # parses: no half row
    assert 1 <= len(before) < N_KILLED and all(r["status"] == "ok" for r in before)
    for row in before:
        assert sorted(os.listdir(out / row["slide_id"])) == sorted(SLIDE_FILES)  # a row ok means its files are whole
    kept = {r["slide_id"]: {p.name: p.stat().st_mtime_ns for p in (out / r["slide_id"]).iterdir()} for r in before}

    done = predict(model, tmp_path / "in", out=out)
    assert done.returncode == 0, done.stderr
    after = {r["slide_id"]: r for r in read_predictions(csv_path)}
    assert sorted(after) == [f"s{k}" for k in range(N_KILLED)] and all(r["status"] == "ok" for r in after.values())
    for row in before:
        assert after[row["slide_id"]] == row  # untouched, timing included
        assert {p.name: p.stat().st_mtime_ns for p in (out / row["slide_id"]).iterdir()} == kept[row["slide_id"]]
    assert not list(out.rglob("*.tmp"))  # temporaries of the killed run are swept
