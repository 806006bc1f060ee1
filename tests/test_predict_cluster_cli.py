"""``wsi-ats predict`` on a running dask cluster (``dask scheduler`` + two ``dask worker`` processes) writes
the CSV of an in-process run; a scheduler file finds that cluster; a bad ``--scheduler`` is a usage error.

(``--scheduler local`` is `tests/test_cluster.py`'s module cluster.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from predict_data import TIMEOUT, cli_env, cohort_slides, trained_model

from wsi_ats.cluster import session
from wsi_ats.commands import predict_command
from wsi_ats.outputs import TIMING_COLUMNS, read_predictions
from wsi_ats.pipeline import Pipeline

DASK = str(Path(sys.executable).parent / "dask")


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a process group started here: SIGTERM (workers close cleanly), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def threads_rows(tmp_path_factory, model_and_manifest):
    """The reference rows: the cohort predicted in this process, no distributed."""
    model, manifest = model_and_manifest
    return Pipeline(model, device="cpu", seed=0).run_many(cohort_slides(manifest), tmp_path_factory.mktemp("ref"), verbose=False)


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory):
    """``(tcp://127.0.0.1:PORT, scheduler file)`` of a ``dask scheduler`` with two ``dask worker`` processes (1 thread each)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    file = logs / "scheduler.json"
    procs = [spawn(logs / "scheduler.log", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--scheduler-file", str(file))]
    try:
        for k in range(2):
            procs.append(spawn(logs / f"worker{k}.log", "worker", address, "--nthreads", "1", "--no-dashboard"))
        with Client(address, timeout=TIMEOUT) as client:
            client.wait_for_workers(2, timeout=TIMEOUT)
        yield address, file
    finally:
        for proc in reversed(procs):
            stop(proc)


def spawn(log: Path, *args: str) -> subprocess.Popen:
    """``dask *args`` in its own process group, output to ``log``, this checkout importable (tasks unpickle its functions)."""
    with log.open("wb") as out:
        return subprocess.Popen([DASK, *args], stdout=out, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)


def predict(model, slides, out, *options: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wsi_ats.cli", "predict", "--model", str(model), *map(str, slides), "--out", str(out), *options]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=TIMEOUT)


def test_predict_on_a_running_cluster_writes_the_csv_of_an_in_process_run(running_cluster, model_and_manifest, threads_rows, tmp_path):
    model, manifest = model_and_manifest
    address, _ = running_cluster
    done = predict(model, cohort_slides(manifest), tmp_path, "--scheduler", address)
    assert done.returncode == 0, done.stderr
    assert f"dask scheduler {address}: 2 workers, 2 threads; dashboard http" in done.stderr
    assert untimed(read_predictions(tmp_path / "predictions.csv")) == untimed(threads_rows)


def test_a_scheduler_file_connects_to_its_cluster(running_cluster):
    address, file = running_cluster
    said = []
    with session(str(file), say=said.append) as client:
        assert client.scheduler.address == address
        link = client.dashboard_link
    assert said == [f"dask scheduler {address}: 2 workers, 2 threads; dashboard {link}"]


@pytest.mark.parametrize(
    ("scheduler", "workers", "message"),
    [("lcoal", None, "'lcoal': not 'local', 'threads'"), ("tcp://127.0.0.1:1", 2, "--workers sizes --scheduler local only")],
)
def test_an_unusable_scheduler_exits_2_before_the_model_is_read(tmp_path, capsys, scheduler, workers, message):
    code = predict_command(model=tmp_path / "absent.pt", slides=[tmp_path], out=tmp_path / "out", scheduler=scheduler, workers=workers)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
