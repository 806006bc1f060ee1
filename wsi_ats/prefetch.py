"""Keep the decoder busy while the model computes: background fetch of the next job, and device staging.

Kept apart from `wsi_ats.fetch` so that readers and fetch never import torch;
torch is imported inside `to_tensor` only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

J = TypeVar("J")
R = TypeVar("R")


def to_tensor(
    patches: np.ndarray,
    device: "str | torch.device" = "cpu",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> "torch.Tensor":
    """``(n, P, P, 3) uint8`` -> float32 ``[n, 3, P, P]`` on ``device``, scaled to [0, 1], then ``(x - mean) / std``.

    The uint8 array crosses to the device (four times fewer bytes than floats)
    from pinned memory with a non-blocking copy when the device is CUDA; scaling
    and normalisation then run on the device.
    """
    import torch

    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"to_tensor expects (n, P, P, 3) uint8 patches, got {patches.shape} {patches.dtype}")
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(patches))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).to(dtype=torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    if mean is not None:
        x.sub_(torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1))
    if std is not None:
        x.div_(torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))
    return x


class Prefetcher(Generic[J, R]):
    """Iterate ``(job, fetch(job))`` in job order, fetching up to ``depth`` jobs ahead on a background thread.

    While the caller works on one result the next fetch is already running. An
    exception raised by ``fetch`` or by the jobs iterable surfaces at the point in
    the order where that job would have been yielded. Close it (or use ``with``)
    when leaving early so that no fetch keeps running.
    """

    def __init__(self, jobs: Iterable[J], fetch: Callable[[J], R], *, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"Prefetcher depth must be at least 1, got {depth}")
        self._jobs = iter(jobs)
        self._fetch = fetch
        self._depth = depth
        self._pending: deque[tuple[J | None, Future]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-ats-prefetch")
        self._exhausted = False

    def __iter__(self) -> Iterator[tuple[J, R]]:
        return self

    def __next__(self) -> tuple[J, R]:
        self._fill(1)
        if not self._pending:
            self.close()
            raise StopIteration
        job, future = self._pending.popleft()
        self._fill(self._depth)  # queue the next fetch before waiting on this one
        try:
            return job, future.result()  # type: ignore[return-value]
        except BaseException:
            self.close()
            raise

    def _fill(self, count: int) -> None:
        while not self._exhausted and len(self._pending) < count:
            try:
                job = next(self._jobs)
            except StopIteration:
                self._exhausted = True
                return
            except Exception as exc:  # keep the failure in order behind the jobs already queued
                failed: Future = Future()
                failed.set_exception(exc)
                self._pending.append((None, failed))
                self._exhausted = True
                return
            self._pending.append((job, self._pool.submit(self._fetch, job)))

    def close(self) -> None:
        """Cancel fetches not yet started and stop the thread; later `next` calls end the iteration."""
        self._exhausted = True
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Prefetcher[J, R]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
