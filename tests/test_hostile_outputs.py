"""Hostile names, links and output folders: every slide a row, nothing written outside OUT, no result lost.

Real slides (the tiny cohort of `predict_data`), a real trained model, real files named
as a careless or hostile folder names them, real links, a real second ``wsi-ats predict``
process, a read-only OUT and a disk that fills up (``ENOSPC`` injected at ``fsync``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from predict_data import TIMEOUT, cli_env, cohort_slides, copy_slide, trained_model
from test_atomic import dead_pid
from test_discover import touch
from test_predict_cli import predict_args

from wsi_ats.commands import predict_command
from wsi_ats.discover import discover, slide_stem
from wsi_ats.manifest import ManifestRow
from wsi_ats.outputs import PREDICTIONS_CSV, error_row, folder_name, read_predictions, slide_folder_complete, write_predictions
from wsi_ats.outputs.report import REPORT_HTML
from wsi_ats.pipeline import Pipeline, predict_one


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def model(model_and_manifest):
    return model_and_manifest[0]


@pytest.fixture(scope="module")
def pipeline(model):
    return Pipeline(model, device="cpu", seed=0)


@pytest.fixture(scope="module")
def slides(model_and_manifest):
    """Two different tiny TIFF slides."""
    return cohort_slides(model_and_manifest[1])[:2]


@pytest.fixture(scope="module")
def site_a(tmp_path_factory, pipeline, slides):
    """``(OUT, siteA/case1.tiff)``: an OUT holding one result, slide id ``case1``; tests copy it."""
    root = tmp_path_factory.mktemp("site_a")
    case1 = copy_slide(slides[0], root / "siteA" / "case1.tiff")
    (row,) = pipeline.run_many([case1], root / "out", verbose=False)
    assert (row["slide_id"], row["status"]) == ("case1", "ok")
    return root / "out", case1


def copy_of(out: Path, dst: Path) -> Path:
    shutil.copytree(out, dst)
    return dst


def snapshot(root: Path, out: Path) -> dict[str, tuple[int, int] | None]:
    """Every entry under ``root`` outside ``out``: files by size and mtime, folders by name."""
    entries: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) != out]
        for name in dirs:
            entries[os.path.relpath(Path(folder, name), root)] = None
        for name in files:
            st = Path(folder, name).lstat()
            entries[os.path.relpath(Path(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return entries


def visible(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if not n.startswith("."))


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def ids_status(rows) -> list[tuple[str, str]]:
    return [(r["slide_id"], r["status"]) for r in rows]


# -- slide ids are names, not paths ------------------------------------------------------------------


def test_files_named_with_dots_keep_their_ids_and_write_only_inside_out(pipeline, slides, tmp_path):
    dots = [copy_slide(slides[0], tmp_path / "in" / "...tiff"), copy_slide(slides[1], tmp_path / "in" / "..tiff")]
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    rows = pipeline.run_many(dots, out, verbose=False)
    assert [(r["slide_id"], r["path"], r["status"]) for r in rows] == [("..", str(dots[0]), "ok"), (".", str(dots[1]), "ok")]
    assert ids_status(read_predictions(out / PREDICTIONS_CSV)) == [("..", "ok"), (".", "ok")]
    assert visible(out) == sorted([folder_name(".."), folder_name("."), PREDICTIONS_CSV, REPORT_HTML])
    assert all(slide_folder_complete(out / folder_name(sid)) for sid in ("..", "."))
    assert snapshot(tmp_path, out) == before  # nothing written, changed or deleted outside OUT


def test_manifest_ids_with_nul_control_characters_300_characters_or_tex_get_rows_and_safe_folders(pipeline, slides, tmp_path):
    ids = ["a\0b", "red\x1b[31m\ttab\n", "x" * 300, "$\\frac$"]  # "$...$": no formula in the heatmap's title
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    rows = pipeline.run_many([ManifestRow(sid, str(slides[0]), "positive") for sid in ids], out, verbose=False)
    assert ids_status(rows) == [(sid, "ok") for sid in ids]
    assert [r["slide_id"] for r in read_predictions(out / PREDICTIONS_CSV)] == ids  # the CSV keeps each id exactly
    assert visible(out) == sorted([*map(folder_name, ids), PREDICTIONS_CSV, REPORT_HTML])
    assert all(slide_folder_complete(out / folder_name(sid)) for sid in ids)
    assert snapshot(tmp_path, out) == before


@pytest.mark.parametrize(
    "slide_id",
    ["..", ".", "", "a/b", "../../etc", "a\\b", "a\0b", "tab\there", "bell\x07", "rtl\u202eoverride", "caf\udce9",
     ".evil.tmp", ".wsi-ats", "CON", "con.txt", "Lpt1", "predictions.csv", "PREDICTIONS.CSV", "summary.json", "Report.html",
     "x" * 300, "é" * 60, "ends.", "ends ", "a:b", "what?", 'quote"d', "case~0123456789abcdef"],
)  # fmt: skip
def test_an_id_that_is_not_a_safe_name_maps_to_one_inside_out(slide_id, tmp_path):
    name = folder_name(slide_id)
    assert name != slide_id and name == folder_name(slide_id)  # mapped, deterministically
    assert re.fullmatch(r"[^/\\:*?\"<>|.][^/\\:*?\"<>|]*~[0-9a-f]{16}", name) and name.isprintable()
    assert len(name.encode("utf-8")) <= 100 + 17
    (tmp_path / name).mkdir()  # a real folder of that name, directly in OUT
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_safe_ids_are_their_own_folder_names_and_mapped_names_never_meet():
    for sid in ["case 1", "TCGA-AB-1234-01Z-00-DX1.svs", "Präparat_7", "s-2", "x" * 100, "console", "c" * 16]:
        assert folder_name(sid) == sid
    hostile = ["..", ".", "", "a/b", "a\\b", "a_b", "a\0b", "a\x01b", ".x", "_x", "x" * 300, "x" * 301, "CON", "con"]
    names = {folder_name(sid) for sid in hostile}
    assert len(names) == len(hostile)  # "a_b" is kept, "a/b" and "a\\b" map to distinct "a_b~..." names


def test_a_file_name_in_another_encoding_is_predicted_and_resumed(pipeline, slides, tmp_path):
    path = copy_slide(slides[0], tmp_path / "in" / os.fsdecode(b"caf\xe9.tiff"))  # Latin-1 bytes on a UTF-8 system
    out = tmp_path / "out"
    (first,) = pipeline.run_many([path], out, verbose=False)
    assert (first["slide_id"], first["path"], first["status"]) == ("caf\udce9", str(path), "ok")
    before = mtimes(out / folder_name("caf\udce9"))
    (second,) = pipeline.run_many([path], out, verbose=False)
    assert second == first | {"seconds": round(first["seconds"], 3)}  # read back from the CSV, skipped
    assert mtimes(out / folder_name("caf\udce9")) == before


# -- the sweep removes only its own dead temporaries -------------------------------------------------


def test_a_slide_folder_that_looks_temporary_and_other_programs_temporaries_survive_reruns(pipeline, slides, tmp_path):
    out = tmp_path / "out"
    touch(out / ".evil.tmp" / "attention.png", b"an older run's heatmap")  # a slide folder named like a temporary
    touch(out / ".notes.txt.tmp", b"another program's temporary")
    stale = touch(out / f".predictions.csv.wsi-ats-{dead_pid()}-0123456789ab.tmp", b"half a csv of a killed run")
    evil = copy_slide(slides[0], tmp_path / "in" / ".evil.tmp.tiff")
    for _ in range(2):
        assert ids_status(pipeline.run_many([evil], out, verbose=False)) == [(".evil.tmp", "ok")]
    assert (out / ".evil.tmp" / "attention.png").read_bytes() == b"an older run's heatmap"
    assert (out / ".notes.txt.tmp").read_bytes() == b"another program's temporary"
    assert not stale.exists()
    assert slide_folder_complete(out / folder_name(".evil.tmp"))


# -- one id, one file, across runs -------------------------------------------------------------------


def test_the_same_file_name_from_another_folder_later_gets_a_new_id_and_keeps_the_first_result(pipeline, site_a, slides, tmp_path):
    out, case1 = copy_of(site_a[0], tmp_path / "out"), site_a[1]
    site_b = copy_slide(slides[1], tmp_path / "siteB" / "case1.tiff")
    kept = mtimes(out / "case1")
    (row,) = pipeline.run_many([site_b], out, verbose=False)
    assert (row["slide_id"], row["path"], row["status"]) == ("case1-2", str(site_b), "ok")
    assert [(r["slide_id"], r["path"]) for r in read_predictions(out / PREDICTIONS_CSV)] == [
        ("case1-2", str(site_b)),
        ("case1", str(case1)),
    ]
    assert mtimes(out / "case1") == kept

    done = mtimes(out / "case1-2")
    (again,) = pipeline.run_many([site_b], out, verbose=False)  # the same file again: the same id, already done
    assert (again["slide_id"], again["path"]) == ("case1-2", str(site_b)) and mtimes(out / "case1-2") == done


def test_a_manifest_id_naming_another_files_result_in_out_exits_2_before_any_work(model, site_a, slides, tmp_path, capsys):
    out, case1 = copy_of(site_a[0], tmp_path / "out"), site_a[1]
    site_b = copy_slide(slides[1], tmp_path / "siteB" / "other.tiff")
    (tmp_path / "m.csv").write_text(f"slide_id,path,label\ncase1,{site_b},positive\n")
    csv_before, kept = (out / PREDICTIONS_CSV).read_bytes(), mtimes(out / "case1")
    assert predict_command(model=model, manifest=tmp_path / "m.csv", out=out, scheduler="threads") == 2
    assert capsys.readouterr().err == (
        f"wsi-ats predict: {out / PREDICTIONS_CSV}: slide_id 'case1' ({site_b}) already names {case1}: predicting it here "
        "would overwrite that result; give the slide another slide_id in the manifest or give another --out\n"
    )
    assert (out / PREDICTIONS_CSV).read_bytes() == csv_before and mtimes(out / "case1") == kept


def test_a_manifest_id_whose_earlier_row_failed_for_another_file_is_predicted_for_the_new_one(pipeline, slides, tmp_path):
    broken = touch(tmp_path / "old" / "s.tiff", b"not a slide")
    out = tmp_path / "out"
    assert ids_status(pipeline.run_many([ManifestRow("s", str(broken), "positive")], out, verbose=False)) == [("s", "error")]
    rows = pipeline.run_many([ManifestRow("s", str(slides[0]), "positive")], out, verbose=False)
    assert ids_status(rows) == [("s", "ok")] and ids_status(read_predictions(out / PREDICTIONS_CSV)) == [("s", "ok")]


# -- one run at a time; rows merged from disk ---------------------------------------------------------


def test_a_second_predict_into_a_busy_out_exits_2_naming_the_first_and_both_keep_every_row(model, pipeline, slides, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(predict_args(model, slides[0], out=out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / ".wsi-ats" / "owner.json").exists():  # the first run holds OUT
            assert first.poll() is None and time.monotonic() < deadline, "the first run never claimed OUT"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # paused while holding it: the second surely meets it busy
        second = subprocess.run(
            predict_args(model, slides[1], out=out), check=False, capture_output=True, text=True, env=cli_env(), timeout=TIMEOUT
        )
        first.send_signal(signal.SIGCONT)
        assert first.wait(TIMEOUT) == 0
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert re.fullmatch(
        rf"wsi-ats predict: {re.escape(str(out))}: in use by another wsi-ats run \(pid {first.pid} on "
        rf"{re.escape(socket.gethostname())}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it to finish or give another --out\n",
        second.stderr,
    ), second.stderr
    assert ids_status(read_predictions(out / PREDICTIONS_CSV)) == [("slide_000", "ok")]  # the refused run wrote nothing

    pipeline.run_many([slides[1]], out, verbose=False)  # the second run, once the first is done
    assert ids_status(read_predictions(out / PREDICTIONS_CSV)) == [("slide_001", "ok"), ("slide_000", "ok")]


def test_rows_another_writer_adds_during_a_run_are_kept(model, slides, tmp_path):
    csv_path = tmp_path / "out" / PREDICTIONS_CSV
    theirs = error_row("theirs", "/elsewhere/theirs.svs", "SlideError: not a slide", 1.0)

    def predict_beside_a_careless_writer(*args, **kwargs):  # e.g. an older wsi-ats that takes no lock
        write_predictions(csv_path, [*read_predictions(csv_path), theirs])
        return predict_one(*args, **kwargs)

    Pipeline(model, device="cpu", predict_fn=predict_beside_a_careless_writer).run_many([slides[0]], tmp_path / "out", verbose=False)
    assert ids_status(read_predictions(csv_path)) == [(slide_stem(slides[0]), "ok"), ("theirs", "error")]


# -- an OUT that cannot be written: exit 2, one line, the previous CSV intact ------------------------


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only: by its mode, or (for root, who ignores modes) immutable; skip where neither works."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        made.append(folder)
        if _writable(folder) and subprocess.run(["chattr", "+i", str(folder)], check=False, capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        if _writable(folder):
            pytest.skip("cannot make a folder read-only here")

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
        folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_a_read_only_out_exits_2_in_one_line_and_keeps_the_previous_csv(model, site_a, slides, tmp_path, read_only, capsys):
    out = copy_of(site_a[0], tmp_path / "out")
    csv_before = (out / PREDICTIONS_CSV).read_bytes()
    read_only(out)
    assert predict_command(model=model, slides=[slides[1]], out=out, scheduler="threads") == 2
    assert re.fullmatch(
        rf"wsi-ats predict: {re.escape(str(out / PREDICTIONS_CSV))}: cannot write the predictions "
        r"\((Permission denied|Operation not permitted)\); make it writable or give another --out\n",
        capsys.readouterr().err,
    )
    assert (out / PREDICTIONS_CSV).read_bytes() == csv_before and visible(out) == ["case1", PREDICTIONS_CSV, REPORT_HTML]


def test_an_out_that_is_a_file_exits_2_in_one_line_and_stays_as_it_was(model, slides, tmp_path, capsys):
    out = touch(tmp_path / "out", b"my notes\n")
    assert predict_command(model=model, slides=[slides[0]], out=out, scheduler="threads") == 2
    assert capsys.readouterr().err == (
        f"wsi-ats predict: {out}: cannot use it as the output folder (File exists); give --out a folder, not a file\n"
    )
    assert out.read_bytes() == b"my notes\n" and os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file an fsync is for")
def test_a_disk_full_while_writing_the_csv_exits_2_in_one_line_and_keeps_the_previous_csv(
    model, site_a, slides, tmp_path, monkeypatch, capsys
):
    out = copy_of(site_a[0], tmp_path / "out")
    csv_before = (out / PREDICTIONS_CSV).read_bytes()
    fsync = os.fsync

    def fsync_on_a_full_disk(fd: int) -> None:  # delayed allocation: the space runs out when the data is flushed
        if PREDICTIONS_CSV in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    assert predict_command(model=model, slides=[slides[1]], out=out, scheduler="threads") == 2
    assert capsys.readouterr().err == (
        f"wsi-ats predict: {out / PREDICTIONS_CSV}: cannot write the predictions (No space left on device); "
        "free some space and run again (finished slides are kept)\n"
    )
    assert (out / PREDICTIONS_CSV).read_bytes() == csv_before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# -- discovery: links -------------------------------------------------------------------------------


def test_a_link_to_its_own_folder_finds_each_slide_once(tmp_path):
    touch(tmp_path / "a.svs")
    (tmp_path / "self").symlink_to(".")
    found = discover([tmp_path])
    assert [(s.slide_id, s.path) for s in found.slides] == [("a", str(tmp_path / "a.svs"))]
    assert found.notes == (f"{tmp_path / 'self'}: skipped, already searched",)


def test_folders_linking_to_each_other_are_each_searched_once(tmp_path):
    for name, other in [("x", "y"), ("y", "x")]:
        touch(tmp_path / name / f"{name}.svs")
        for k in range(3):  # three ways back per folder: 3^40 paths before the kernel's link limit, were links followed blindly
            (tmp_path / name / f"to_{other}_{k}").symlink_to(Path("..") / other)
    found = discover([tmp_path])
    assert sorted(s.slide_id for s in found.slides) == ["x", "y"]  # each once, whichever way it was reached first


def test_a_file_reached_by_two_names_is_predicted_once(tmp_path):
    touch(tmp_path / "a.svs")
    (tmp_path / "b.svs").symlink_to("a.svs")
    found = discover([tmp_path, tmp_path / "a.svs"])
    assert [s.slide_id for s in found.slides] == ["a"]
    assert found.notes == (
        f"{tmp_path / 'b.svs'}: the same file as {tmp_path / 'a.svs'}, predicted once",
        f"{tmp_path / 'a.svs'}: listed more than once, predicted once",
    )


def test_a_subfolder_that_cannot_be_read_is_skipped_with_a_note(tmp_path):
    touch(tmp_path / "a.svs")
    touch(tmp_path / "locked" / "b.svs")
    (tmp_path / "locked").chmod(0)
    try:
        if os.access(tmp_path / "locked", os.R_OK):
            pytest.skip("this user reads any folder (root)")
        found = discover([tmp_path])
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [s.slide_id for s in found.slides] == ["a"]
    assert found.notes == (f"{tmp_path / 'locked'}: skipped, cannot be read (Permission denied)",)
