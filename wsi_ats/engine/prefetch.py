"""Keep the decoder busy while the model computes: the next job is fetched on a background thread."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


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

    def __enter__(self) -> Prefetcher[J, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
