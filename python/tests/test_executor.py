"""drover.Executor as a concurrent.futures user would use it."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest

import drover
from drover.v1 import drover_pb2 as pb
from conftest import wait_until

PRIMES = [1112272535095293, 1112582705942171, 1112272535095291, 1115280095190773, 1115797848077099, 11099726899285419]


def test_it_is_a_real_executor_with_real_futures(executor):
    assert isinstance(executor, cf.Executor)
    futures = [executor.submit(drover.is_prime, n) for n in PRIMES]
    assert all(isinstance(f, cf.Future) for f in futures)
    assert [f.result(timeout=30) for f in futures] == [False, True, True, False, False, False]
    done, not_done = cf.wait(futures, timeout=30)
    assert len(done) == len(PRIMES) and not not_done


def test_as_completed_yields_in_completion_order(executor):
    lengths = [0.9, 0.1, 0.5, 0.3]
    futures = {executor.submit(drover.sleep, s): s for s in lengths}
    order = [futures[f] for f in cf.as_completed(futures, timeout=30)]
    assert order == sorted(lengths)


def test_wait_first_completed(executor):
    slow = executor.submit(drover.sleep, 30)
    fast = executor.submit(drover.fib, 10)
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    assert fast.result() == 55
    assert slow.cancel()


def test_done_callbacks_run_once_with_the_future(executor):
    seen = []
    f = executor.submit(drover.fib, 12)
    f.add_done_callback(lambda fut: seen.append(fut.result()))
    assert f.result(timeout=30) == 144
    wait_until("the callback", lambda: seen == [144])


def test_map_is_ordered_and_its_timeout_cancels_the_rest(executor, client):
    assert list(executor.map(drover.fib, range(10))) == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
    # Several iterables, zipped, as the standard executors do.
    assert list(executor.map(drover.fib, [5, 6])) == [5, 8]

    cancelled_before = client.stats().cancelled
    results = executor.map(drover.sleep, [0.01, 60, 60], timeout=1.0)
    assert next(results) is None
    with pytest.raises(cf.TimeoutError):
        next(results)
    # Both 60 s sleeps were cancelled on the master.
    assert client.stats().cancelled - cancelled_before == 2


def test_cancel_cancels_the_job_on_the_master(executor, client):
    f = executor.submit(drover.sleep, 60)
    wait_until("the job to be submitted", lambda: f.job_id is not None)
    assert f.cancel()
    assert f.cancelled() and f.done()
    with pytest.raises(cf.CancelledError):
        f.result()
    # wait() and as_completed() see it as done.
    assert list(cf.as_completed([f], timeout=5)) == [f]
    assert cf.wait([f], timeout=5).done == {f}
    assert client.job(f.job_id).state == pb.JOB_STATE_CANCELLED

    done = executor.submit(drover.fib, 5)
    assert done.result(timeout=30) == 5
    assert not done.cancel()
    assert done.result() == 5


def test_a_job_cancelled_elsewhere_raises_cancelled_error(executor, client):
    f = executor.submit(drover.sleep, 60)
    wait_until("the job to be submitted", lambda: f.job_id is not None)
    # Cancelled by someone else: `drover cancel BATCH` does this.
    assert client.cancel(f.batch_id) == (1, 0)
    with pytest.raises(cf.CancelledError):
        f.result(timeout=30)


def test_shutdown_with_cancel_futures_cancels_on_the_master(client):
    ex = drover.Executor(client=client)
    futures = [ex.submit(drover.sleep, 60) for _ in range(5)]
    finished = ex.submit(drover.fib, 7)
    assert finished.result(timeout=30) == 13
    wait_until("the jobs to be submitted", lambda: all(f.job_id for f in futures))
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)
    assert not finished.cancelled() and finished.result() == 13
    for f in futures:
        assert client.job(f.job_id).state == pb.JOB_STATE_CANCELLED
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(drover.fib, 1)


def test_with_block_waits_for_the_work(client):
    with drover.Executor(client=client) as ex:
        futures = [ex.submit(drover.sleep, 0.2) for _ in range(4)]
    assert all(f.done() and f.result() is None for f in futures)


def test_options_view_and_failed_jobs(executor):
    f = executor.options(max_attempts=2, timeout=0.05).submit(drover.sleep, 5)
    with pytest.raises(drover.JobFailed) as raised:
        f.result(timeout=30)
    e = raised.value
    assert e.job_id == f.job_id
    assert e.attempts == 2
    assert len(e.attempt_errors) == 2
    assert all("timed out after 50 ms" in r for r in e.attempt_errors)
    assert "timed out after 50 ms" in str(e)
