"""The one atomic writer: whole files or the old ones, plain-open permissions, and a sweep that removes only its own litter."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from predict_data import cli_env

from wsi_ats.outputs.atomic import atomic_write_bytes, atomic_write_json, atomic_writer, remove_stale_temps

#: A writer that gets as far as half a file, says so, and waits to be killed.
KILLED_WRITER = """
import sys, time
from wsi_ats.outputs.atomic import atomic_writer
with atomic_writer(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def restore_umask():
    """The process umask as it was before the test."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_a_plain_open_gives_under_the_umask(tmp_path, restore_umask, mask):
    os.umask(mask)
    atomic_write_bytes(tmp_path / "atomic.bin", b"x")
    (tmp_path / "plain.bin").write_bytes(b"x")
    mode = stat.S_IMODE((tmp_path / "atomic.bin").stat().st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)


def test_an_exception_mid_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"the good checkpoint")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(target) as f:
        f.write(b"half of a new one")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"the good checkpoint"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a.bin", "text is not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_json_is_indented_with_a_final_newline(tmp_path):
    atomic_write_json(tmp_path / "metrics.json", {"accuracy": 0.75, "epochs": [1, 2]})
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n  "accuracy": 0.75' in text
    assert json.loads(text) == {"accuracy": 0.75, "epochs": [1, 2]}


def test_the_sweep_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"whole")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, env=cli_env())
    try:
        assert writer.stdout.readline() == b"writing\n"
    finally:
        writer.kill()
        writer.wait()
    assert len(os.listdir(tmp_path)) == 2  # the half-written temporary is still there

    assert remove_stale_temps(tmp_path) == 1
    assert os.listdir(tmp_path) == ["a.bin"] and target.read_bytes() == b"whole"


def test_the_sweep_leaves_a_running_writers_temporary_alone(tmp_path):
    with atomic_writer(tmp_path / "a.bin") as f:
        f.write(b"first half, ")
        assert remove_stale_temps(tmp_path) == 0
        f.write(b"second half")
    assert (tmp_path / "a.bin").read_bytes() == b"first half, second half"


def test_the_sweep_never_removes_what_it_did_not_make(tmp_path):
    pid = dead_pid()
    (tmp_path / ".evil.tmp").mkdir()  # a slide folder that happens to look temporary
    (tmp_path / ".notes.txt.tmp").write_text("another program's temporary")
    (tmp_path / ".attention.png.0a1b2c3d4e5f.tmp").write_bytes(b"no pid, not ours")
    (tmp_path / f".slide.wsi-ats-{pid}-0123456789ab.tmp").mkdir()  # our name, but a folder
    before = sorted(os.listdir(tmp_path))
    assert remove_stale_temps(tmp_path) == 0
    assert sorted(os.listdir(tmp_path)) == before


def test_sweeping_a_folder_that_does_not_exist_removes_nothing(tmp_path):
    assert remove_stale_temps(tmp_path / "absent") == 0
