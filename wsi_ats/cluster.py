"""Where batch prediction runs, and how slide tasks reach a ``dask.distributed`` cluster.

``threads`` runs in this process, without distributed; ``local`` starts a `LocalCluster`
sized to this machine; an address (``tcp://host:port``) or a scheduler file (JSON, as
``dask scheduler --scheduler-file`` writes it) connects to a running cluster. Why it is
built this way:

- One task per slide, one task at a time per worker process: a slide already keeps
  several cores busy (torch's intra-op threads, the tile decoders of `wsi_ats.engine.fetch`),
  and when a slide crashes its process it takes only itself down.
- Torch threads per local worker = cores // workers (``OMP_NUM_THREADS`` in the worker's
  environment, read by torch at import): every core busy, none oversubscribed.
- The model travels as its checkpoint path, which each worker process loads once
  (`wsi_ats.pipeline.load_model` caches per process); slides travel as paths or URLs and
  open on the worker. Client and workers must therefore see the same files.
- Tasks that run the networks ask for ``resources={"GPU": 1}`` when any worker
  advertises a ``GPU`` resource (``dask worker ... --resources GPU=1``), else any worker.
- No more slides in flight than the cluster has slots (worker threads, or GPUs): the
  scheduler counts a worker's death against every task assigned to it, so slides queued
  behind one that crashes its worker would otherwise be blamed, and failed, with it.
- A worker that dies mid-slide (a codec's segfault, out of memory): distributed runs the
  slide again on another worker, up to ``allowed-failures`` times (`RETRIES` on a local
  cluster, the scheduler's own setting otherwise), then gives up with ``KilledWorker``,
  which the slide's row reports (`killed_worker_error`). A retried slide gives the same
  result: its seed comes from its id.
- A scheduler that does not answer is an error within ``timeout`` seconds (`CONNECT_TIMEOUT`),
  not distributed's 30; a scheduler file is read here, so an empty or foreign one is one line.
- Local workers exit quietly: each freezes its heap at exit (`dask_setup`), so the
  interpreter's final collections skip the model and the imported libraries. Without it
  a worker on a busy machine took more than the 4 s its nanny waits, and every run ended
  with "Worker process still alive after 4.0 seconds, killing".
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import itertools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client, Future, KilledWorker, LocalCluster

THREADS, LOCAL, ADDRESS, SCHEDULER_FILE = "threads", "local", "address", "scheduler-file"
#: Times a slide may kill its worker and still be run again, on a local cluster.
RETRIES = 2
#: The worker resource that marks a GPU; a slide task asks for one.
GPU = "GPU"
#: Memory budget of one local worker process (torch, the model, one slide's buffers).
GIB_PER_WORKER = 2.0
#: Seconds a running scheduler (an address or a scheduler file) has to answer.
CONNECT_TIMEOUT = 10.0
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DASK_NUM_WORKERS")
_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$")


class SchedulerError(ValueError):
    """A ``--scheduler`` (or ``--workers``) that cannot be used; the message says why."""


@dataclass(frozen=True)
class Layout:
    """How a local cluster uses the machine: worker processes, and torch threads in each."""

    workers: int
    torch_threads: int


def scheduler_kind(scheduler: str, workers: int | None = None) -> str:
    """Which of `THREADS`, `LOCAL`, `ADDRESS`, `SCHEDULER_FILE` ``scheduler`` names; checked before anything starts."""
    if scheduler in (THREADS, LOCAL):
        kind = scheduler
    elif "://" in scheduler or _HOST_PORT.match(scheduler):
        kind = ADDRESS
    elif os.path.isfile(scheduler):
        kind = SCHEDULER_FILE
    else:
        raise SchedulerError(
            f"--scheduler {scheduler!r}: not 'local', 'threads', an address like tcp://HOST:PORT or an existing scheduler file"
        )
    if workers is not None and kind != LOCAL:
        raise SchedulerError(f"--workers sizes --scheduler local only; {scheduler!r} brings its own workers")
    if workers is not None and workers < 1:
        raise SchedulerError(f"--workers must be at least 1, got {workers}")
    return kind


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_layout(workers: int | None = None, *, cores: int | None = None, memory_gib: float | None = None, cuda: bool = False) -> Layout:
    """Worker processes and torch threads per worker for a cluster on this machine.

    By default one worker per core, fewer where memory allows less than `GIB_PER_WORKER`
    each; with CUDA one worker, which keeps one CUDA context on the GPU (more GPUs: one
    ``dask worker`` per GPU, see the README). Torch threads share the cores out evenly.
    """
    cores = cores or usable_cores()
    if memory_gib is None:
        import psutil

        memory_gib = psutil.virtual_memory().total / 2**30
    if workers is None:
        workers = 1 if cuda else max(1, min(cores, int(memory_gib // GIB_PER_WORKER)))
    if workers < 1:
        raise SchedulerError(f"--workers must be at least 1, got {workers}")
    return Layout(workers, max(1, cores // workers))


def local_cluster(workers: int | None = None, *, retries: int = RETRIES, cuda: bool = False) -> LocalCluster:
    """A `LocalCluster` of worker processes (behind nannies, which restart a dead worker) laid out by
    `local_layout`, its dashboard on port 8787 (or a free one)."""
    from distributed import LocalCluster

    layout = local_layout(workers, cuda=cuda)
    return LocalCluster(
        n_workers=layout.workers,
        threads_per_worker=1,
        processes=True,
        env={name: str(layout.torch_threads) for name in _THREAD_VARIABLES},
        scheduler_kwargs={"allowed_failures": retries},
        preload=[__name__],  # each worker process runs `dask_setup`, restarted ones too
    )


def dask_setup(worker: Any) -> None:
    """Run by every local worker process as it starts (a distributed preload): freeze the heap at exit.

    `gc.freeze` moves every live object out of the collector's reach, so the interpreter's
    final collections, which walked torch's and the model's hundreds of thousands of objects
    for seconds, have nothing to walk: the process exits well within its nanny's grace period.
    """
    atexit.unregister(gc.freeze)  # once per process, however often the worker is set up
    atexit.register(gc.freeze)


def scheduler_address(path: str) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file FILE`` writes it); `SchedulerError` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise SchedulerError(f"--scheduler {path}: cannot read the scheduler file: {err}") from None
    if not text.strip():
        raise SchedulerError(
            f"--scheduler {path}: the scheduler file is empty (is the scheduler still starting? "
            "`dask scheduler --scheduler-file FILE` writes it once it listens)"
        )
    try:
        info = json.loads(text)
    except ValueError as err:
        raise SchedulerError(f"--scheduler {path}: not a scheduler file (not JSON: {err})") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or not address:
        raise SchedulerError(f'--scheduler {path}: not a scheduler file (no "address"; `dask scheduler --scheduler-file FILE` writes one)')
    return address


@contextlib.contextmanager
def session(
    scheduler: str = LOCAL,
    workers: int | None = None,
    *,
    device: str | None = None,
    retries: int = RETRIES,
    timeout: float = CONNECT_TIMEOUT,
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
) -> Iterator[Client | None]:
    """A client for ``scheduler`` (None for `THREADS`), closed on exit with any cluster it started.

    A running scheduler (address or file) that does not answer within ``timeout`` seconds is
    a `SchedulerError`. ``say`` receives one line naming the cluster, its workers and its
    dashboard link.
    """
    kind = scheduler_kind(scheduler, workers)
    if not timeout > 0:
        raise SchedulerError(f"--timeout must be a positive number of seconds, got {timeout}")
    if kind == THREADS:
        yield None
        return
    address = scheduler_address(scheduler) if kind == SCHEDULER_FILE else scheduler
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if kind == LOCAL:
            try:
                cluster = stack.enter_context(local_cluster(workers, retries=retries, cuda=_wants_cuda(device)))
                client = stack.enter_context(Client(cluster))
            except OSError as err:  # no free port, no room for the workers' folders
                raise SchedulerError(f"--scheduler local: cannot start a cluster on this machine: {_first_line(err)}") from None
        else:
            where = scheduler if address == scheduler else f"{scheduler} (address {address})"
            client = stack.enter_context(_connect(address, where, timeout))
        say(describe(client))
        yield client


def _connect(address: str, where: str, timeout: float) -> Client:
    """A client of the scheduler at ``address``; `SchedulerError` when none answers within ``timeout`` s."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except OSError as err:  # nothing listening, no such host, no route (a TimeoutError is an OSError)
        detail = "" if str(err).startswith("Timed out") else f" ({_first_line(err)})"
        raise SchedulerError(
            f"--scheduler {where}: no dask scheduler answered within {timeout:g} s{detail}; "
            "is it running at that address? (--timeout waits longer)"
        ) from None
    except Exception as err:  # noqa: BLE001 - something else answered: a web server, the dashboard's port
        raise SchedulerError(
            f"--scheduler {where}: what answers there is not a dask scheduler ({type(err).__name__}); "
            "a scheduler listens on port 8786 by default, its dashboard on 8787"
        ) from None


def _wants_cuda(device: str | None) -> bool:
    if device is not None and not str(device).startswith(("cuda", "auto")):
        return False
    import torch

    return torch.cuda.is_available()


def _workers(client: Client) -> list[dict[str, Any]]:
    return list(client.scheduler_info(n_workers=-1)["workers"].values())


def describe(client: Client) -> str:
    """One line: the scheduler, its workers, whether slides ask for GPUs, and the dashboard link."""
    info = client.scheduler_info(n_workers=-1)
    workers = list(info["workers"].values())
    threads = sum(w["nthreads"] for w in workers)
    gpus = sum(w.get("resources", {}).get(GPU, 0) for w in workers)
    where = f"dask scheduler {info['address']}: {len(workers)} workers, {threads} threads"
    where += f", {gpus:g} GPUs (slides ask for {GPU}=1)" if gpus else ""
    if "dashboard" in info.get("services", {}):
        return f"{where}; dashboard {client.dashboard_link}"
    return f"{where}; the scheduler serves no dashboard"


def gpu_request(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when any worker advertises a GPU resource, else None (any worker will do)."""
    return {GPU: 1} if any(w.get("resources", {}).get(GPU, 0) >= 1 for w in _workers(client)) else None


def slots(client: Client, resources: dict[str, float] | None = None) -> int:
    """Tasks the cluster runs at once: its GPUs when tasks ask for one, else its worker threads (at least 1)."""
    if resources:
        return max(1, int(sum(w.get("resources", {}).get(GPU, 0) for w in _workers(client))))
    return max(1, client.scheduler_info(n_workers=0)["total_threads"])  # no per-worker listing: cheap on big clusters


def map_completed(
    client: Client, fn: Callable[..., Any], jobs: Sequence[tuple[str, tuple]], *, name: str, **kwargs: Any
) -> Iterator[tuple[int, Future]]:
    """Run ``fn(*args, **kwargs)`` for each ``(label, args)`` job; yield ``(index, future)`` as each finishes.

    At most `slots` jobs are in flight; the next is submitted before a finished one is
    handed over, so workers stay busy while the caller writes results. Keys are
    ``("<name>-<run>", label)``: one task group on the dashboard, labelled by job.
    """
    from distributed import as_completed

    resources = gpu_request(client)
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    pending = iter(enumerate(jobs))
    owner: dict[Future, int] = {}
    finished = as_completed()

    def top_up() -> None:
        for index, (label, args) in itertools.islice(pending, max(0, slots(client, resources) - len(owner))):
            future = client.submit(fn, *args, key=(group, label), pure=False, resources=resources, **kwargs)
            owner[future] = index
            finished.add(future)

    top_up()
    for future in finished:
        index = owner.pop(future)
        top_up()
        yield index, future


def killed_worker_error(err: KilledWorker) -> str:
    """A row's error for a slide that crashed every worker it ran on."""
    last = getattr(err.last_worker, "address", err.last_worker)
    return f"KilledWorker: slide crashed its worker {err.allowed_failures + 1} times (last {last}); its log says why"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
