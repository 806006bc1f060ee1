"""Batch prediction on a real dask.distributed cluster: same results as threads, one model load per worker,
workers killed mid-slide, a slide that crashes every worker, GPU resources, and the local cluster's layout.

One local cluster for the module, the one ``wsi-ats predict --scheduler local --workers 2``
starts (2 worker processes behind nannies, 1 thread each), except that a slide may crash
its worker only once and still be retried.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from predict_data import cli_env, cohort_slides, trained_model

from wsi_ats.cluster import (
    Layout,
    SchedulerError,
    local_layout,
    scheduler_kind,
    session,
    slots,
)
from wsi_ats.outputs import TIMING_COLUMNS
from wsi_ats.pipeline import Pipeline, predict_one

#: Seconds any one wait in these tests may take before it fails (a loaded 2-core machine).
WAIT = 90
#: Worker deaths a slide survives on the module's cluster (each costs a worker restart).
RETRIES = 1


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}  # + the OME-Zarr store


# -- per-slide functions run on the workers (importable from this module) ---------------------------


def stall_first_attempt(marker: str, victim: str, model, source, slide_id, seed, mpp=None, **options):
    """`predict_one`, except that ``victim``'s first attempt writes its process id to ``marker`` and stalls."""
    if slide_id == victim and not os.path.exists(marker):
        Path(marker + ".tmp").write_text(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        time.sleep(WAIT)  # killed long before this ends
    return predict_one(model, source, slide_id, seed, mpp, **options)


def crash_on(victim: str, model, source, slide_id, seed, mpp=None, **options):
    """`predict_one`, except that ``victim`` ends its worker process every time."""
    if slide_id == victim:
        os._exit(13)
    return predict_one(model, source, slide_id, seed, mpp, **options)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_and_manifest(tmp_path_factory):
    return trained_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def slides(model_and_manifest):
    """Two TIFFs and two OME-Zarr stores."""
    return cohort_slides(model_and_manifest[1])


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory, model_and_manifest, slides):
    """The reference: the same slides predicted in this process, no distributed."""
    out = tmp_path_factory.mktemp("threads")
    return out, Pipeline(model_and_manifest[0], device="cpu", seed=0).run_many(slides, out, verbose=False)


@pytest.fixture(scope="module")
def local():
    """``(client, the line the session said)`` of ``--scheduler local --workers 2``, the CLI's own path."""
    said = []
    with session("local", 2, retries=RETRIES, say=said.append) as client:
        client.wait_for_workers(2, timeout=WAIT)
        yield client, said


@pytest.fixture
def client(local):
    return local[0]


def run_on(client, model, slides, out, **options):
    client.wait_for_workers(2, timeout=WAIT)  # after a test that killed one
    return Pipeline(model, device="cpu", seed=0, **options).run_many(slides, out, client=client, verbose=False)


# -- results -----------------------------------------------------------------------------------------


def test_a_cluster_run_gives_the_threads_rows_and_files_exactly(client, model_and_manifest, slides, threads_run, tmp_path):
    reference, expected = threads_run
    rows = run_on(client, model_and_manifest[0], slides, tmp_path)
    assert untimed(rows) == untimed(expected) and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert folder_bytes(tmp_path / row["slide_id"]) == folder_bytes(reference / row["slide_id"])


def test_each_worker_process_loads_the_model_once(client, model_and_manifest, slides, tmp_path):
    def loads():
        from wsi_ats.pipeline import _load_cached

        info = _load_cached.cache_info()
        return info.misses, info.hits + info.misses

    run_on(client, model_and_manifest[0], slides, tmp_path)
    per_worker = client.run(loads).values()
    assert all(misses <= 1 for misses, _ in per_worker)
    assert sum(calls for _, calls in per_worker) >= 4


# -- fault tolerance ---------------------------------------------------------------------------------


def test_a_worker_killed_mid_slide_is_replaced_and_the_slide_redone_identically(client, model_and_manifest, slides, threads_run, tmp_path):
    _, expected = threads_run
    victim = expected[1]["slide_id"]
    marker = tmp_path / "victim.pid"
    stall = functools.partial(stall_first_attempt, str(marker), victim)
    client.wait_for_workers(2, timeout=WAIT)
    worker_pids = set(client.run(os.getpid).values())
    result = {}
    batch = threading.Thread(
        target=lambda: result.update(rows=run_on(client, model_and_manifest[0], slides, tmp_path / "out", predict_fn=stall))
    )
    batch.start()
    try:
        deadline = time.monotonic() + WAIT
        while not marker.exists():
            assert time.monotonic() < deadline and batch.is_alive(), "the victim's slide never started"
            time.sleep(0.02)
        pid = int(marker.read_text())
        assert pid in worker_pids  # a worker process of the cluster, running the victim's slide
        os.kill(pid, signal.SIGKILL)
    finally:
        batch.join(WAIT * 2)
    assert not batch.is_alive()
    assert untimed(result["rows"]) == untimed(expected)
    client.wait_for_workers(2, timeout=WAIT)  # the nanny started a new worker
    assert pid not in client.run(os.getpid).values()


def test_a_slide_that_keeps_crashing_its_worker_fails_its_row_after_the_retries_and_the_rest_succeed(
    client, model_and_manifest, slides, threads_run, tmp_path
):
    _, expected = threads_run
    victim = expected[0]["slide_id"]  # first: no slide that a worker holds behind it may be blamed for its crashes
    rows = run_on(client, model_and_manifest[0], slides, tmp_path, predict_fn=functools.partial(crash_on, victim))
    failed, *others = rows
    assert failed["slide_id"] == victim and failed["status"] == "error"
    assert failed["error"].startswith(f"KilledWorker: slide crashed its worker {RETRIES + 1} times")
    assert not (tmp_path / victim).exists()
    assert untimed(others) == untimed(expected[1:])


# -- GPU resources -----------------------------------------------------------------------------------


def test_slides_go_only_to_workers_that_advertise_a_gpu(client, model_and_manifest, slides, threads_run, tmp_path):
    from distributed import get_task_stream

    address = client.scheduler.address
    gpu_worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
         "--no-dashboard", "--resources", "GPU=1", "--name", "gpu-worker"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(),
    )  # fmt: skip
    try:
        client.wait_for_workers(3, timeout=WAIT)
        (gpu_address,) = [a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == "gpu-worker"]
        assert slots(client, {"GPU": 1}) == 1 and slots(client) == 3
        with get_task_stream(client) as stream:
            rows = run_on(client, model_and_manifest[0], slides, tmp_path)
        ran_on = {t["worker"] for t in stream.data if "wsi-ats-predict" in str(t["key"])}
        assert ran_on == {gpu_address}
        assert untimed(rows) == untimed(threads_run[1])
    finally:
        gpu_worker.terminate()
        gpu_worker.wait(WAIT)


# -- the local cluster -------------------------------------------------------------------------------


def test_the_local_session_names_its_scheduler_workers_and_dashboard(local):
    client, said = local
    assert said == [f"dask scheduler {client.scheduler.address}: 2 workers, 2 threads; dashboard {client.dashboard_link}"]


def test_the_printed_dashboard_link_serves_the_dashboard(local):
    client, _ = local
    with urllib.request.urlopen(client.dashboard_link, timeout=WAIT) as page:
        assert page.status == 200
        assert b"bokeh" in page.read().lower()


def test_local_workers_run_one_slide_at_a_time_with_the_cores_shared_out_as_torch_threads(client):
    def threads():
        import torch

        return torch.get_num_threads()

    client.wait_for_workers(2, timeout=WAIT)
    assert set(client.nthreads().values()) == {1}
    assert set(client.run(threads).values()) == {local_layout(2).torch_threads}


def test_the_default_layout_is_a_worker_per_core_within_memory_and_one_with_cuda():
    assert local_layout(cores=16, memory_gib=64) == Layout(workers=16, torch_threads=1)
    assert local_layout(cores=16, memory_gib=8) == Layout(workers=4, torch_threads=4)  # 2 GiB each
    assert local_layout(4, cores=16, memory_gib=64) == Layout(workers=4, torch_threads=4)
    assert local_layout(3, cores=16, memory_gib=64) == Layout(workers=3, torch_threads=5)
    assert local_layout(cores=16, memory_gib=64, cuda=True) == Layout(workers=1, torch_threads=16)
    assert local_layout(cores=2, memory_gib=1) == Layout(workers=1, torch_threads=2)


# -- choosing the scheduler --------------------------------------------------------------------------


def test_scheduler_names_addresses_and_files_are_told_apart(tmp_path):
    (tmp_path / "scheduler.json").write_text("{}")
    assert scheduler_kind("threads") == "threads" and scheduler_kind("local", 2) == "local"
    assert scheduler_kind("tcp://10.0.0.1:8786") == scheduler_kind("node7:8786") == "address"
    assert scheduler_kind(str(tmp_path / "scheduler.json")) == "scheduler-file"
    with pytest.raises(SchedulerError, match="'lcoal'"):
        scheduler_kind("lcoal")
    with pytest.raises(SchedulerError, match="--workers"):
        scheduler_kind("tcp://10.0.0.1:8786", 2)
    with pytest.raises(SchedulerError, match="at least 1"):
        scheduler_kind("local", 0)


def test_threads_means_no_client_at_all():
    with session("threads") as client:
        assert client is None
