"""`wsi_ats.engine.prefetch`: jobs fetched one ahead on a background thread, in order, failures in their place."""

from __future__ import annotations

import itertools
import threading

import pytest

from wsi_ats.engine.prefetch import Prefetcher


def test_prefetcher_yields_every_job_with_its_result_in_order():
    assert list(Prefetcher(range(6), lambda j: j * j, depth=2)) == [(j, j * j) for j in range(6)]


def test_prefetcher_fetches_the_next_job_while_the_caller_works():
    started = {j: threading.Event() for j in range(3)}

    def fetch(job):
        started[job].set()
        return job

    with Prefetcher(range(3), fetch) as jobs:
        for job, _ in jobs:
            if job < 2:  # still holding `job`: the next one must already be under way
                assert started[job + 1].wait(timeout=10)


def test_prefetcher_draws_jobs_only_depth_ahead_and_stops_when_closed():
    drawn = []

    def endless():
        for j in itertools.count():
            drawn.append(j)
            yield j

    with Prefetcher(endless(), lambda j: j, depth=2) as jobs:
        for job, _ in jobs:
            assert len(drawn) <= job + 1 + 2
            if job == 3:
                break
    assert next(jobs, None) is None and len(drawn) == 6


def test_prefetcher_raises_a_failed_fetch_in_its_place():
    def fetch(job):
        if job == 2:
            raise RuntimeError("tile 2 is corrupt")
        return job

    seen = []
    with pytest.raises(RuntimeError, match="tile 2 is corrupt"):
        for job, _ in Prefetcher(range(5), fetch):
            seen.append(job)
    assert seen == [0, 1]


def test_prefetcher_raises_a_failing_job_source_after_the_jobs_before_it():
    def jobs():
        yield from (0, 1)
        raise OSError("manifest unreadable")

    seen = []
    with pytest.raises(OSError, match="manifest unreadable"):
        for job, _ in Prefetcher(jobs(), lambda j: j, depth=3):
            seen.append(job)
    assert seen == [0, 1]
