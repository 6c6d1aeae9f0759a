"""drover.Pool as a multiprocessing user would use it, against a real master
and worker."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import CancelledError

import pytest

import drover
from conftest import wait_until

# The notes' tables: fib(1..19) of the seed is F(2..20); its six primes.
FIB_2_TO_20 = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765]
PRIMES = [1112272535095293, 1112582705942171, 1112272535095291, 1115280095190773, 1115797848077099, 11099726899285419]
PRIME_ANSWERS = [False, True, True, False, False, False]


def reference_fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_map_gives_the_seed_tables_as_python_values(pool):
    fibs = pool.map(drover.fib, range(2, 21))
    assert fibs == FIB_2_TO_20
    assert all(type(v) is int for v in fibs)
    primes = pool.map(drover.is_prime, PRIMES)
    assert primes == PRIME_ANSWERS
    assert all(type(v) is bool for v in primes)


def test_big_fib_results_come_back_exact_past_pythons_digit_limit(pool):
    # F(30000) has 6,270 digits: past int(str)'s default limit of 4,300.
    assert pool.apply(drover.fib, (30000,)) == reference_fib(30000)


def test_sleeps_run_at_once_not_one_after_another(pool):
    started = time.monotonic()
    assert pool.map(drover.sleep, [0.5] * 8) == [None] * 8
    elapsed = time.monotonic() - started
    # One after another would be 4 s; sleeps run on the worker's async slots.
    assert elapsed < 2.5, f"8 sleeps of 0.5 s took {elapsed:.2f} s"


def test_apply_and_starmap(pool):
    assert pool.apply(drover.fib, (20,)) == 6765
    assert pool.apply(drover.is_prime, kwds=None, args=(1112582705942171,)) is True
    assert pool.starmap(drover.fib, [(10,), (11,), (12,)]) == [55, 89, 144]


def test_apply_async_callbacks_and_async_result(pool):
    got = []
    errors = []
    r = pool.apply_async(drover.fib, (25,), callback=got.append, error_callback=errors.append)
    assert r.get(timeout=30) == 75025
    # As in multiprocessing, the callback has run when get() returns.
    assert got == [75025] and errors == []
    assert r.ready() and r.successful()
    assert r.job_id

    slow = pool.apply_async(drover.sleep, (30,))
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.05)
    assert not slow.ready()
    with pytest.raises(ValueError):
        slow.successful()
    slow.wait(0.01)
    assert not slow.ready()


def test_error_callback_gets_the_failure(pool):
    got, errors = [], []
    done = threading.Event()

    def on_error(e):
        errors.append(e)
        done.set()

    failing = pool.options(max_attempts=1, timeout=0.05)
    r = failing.apply_async(drover.sleep, (5,), callback=got.append, error_callback=on_error)
    with pytest.raises(drover.JobFailed):
        r.get(timeout=30)
    assert done.is_set() and got == []
    assert isinstance(errors[0], drover.JobFailed)
    assert "timed out after 50 ms" in errors[0].error
    assert r.ready() and not r.successful()


def test_map_async_callback_gets_the_list(pool):
    got = []
    r = pool.map_async(drover.fib, range(2, 21), callback=got.append)
    assert r.get(timeout=30) == FIB_2_TO_20
    assert got == [FIB_2_TO_20]
    assert pool.starmap_async(drover.fib, [(3,), (4,)]).get(timeout=30) == [2, 3]


def test_imap_is_in_order_and_imap_unordered_in_completion_order(pool):
    assert list(pool.imap(drover.fib, range(2, 21))) == FIB_2_TO_20
    # Sleeps of different lengths finish shortest first.
    lengths = [0.9, 0.1, 0.5]
    started = time.monotonic()
    seen = []
    for _ in pool.imap_unordered(drover.sleep, lengths):
        seen.append(round(time.monotonic() - started, 1))
    assert len(seen) == 3
    assert seen == sorted(seen)
    assert seen[0] < 0.6 and seen[-1] >= 0.85, seen

    # Results as they finish, checked by value: is_prime of sleeps cannot tell.
    squares = sorted(pool.imap_unordered(drover.fib, range(30)))
    assert squares == sorted(reference_fib(n) for n in range(30))


def test_a_map_chunked_with_an_idempotency_key_keeps_every_element(pool, client):
    # Keys are KEY#i over the whole map: chunk 2 must not reuse chunk 1's jobs.
    keyed = pool.options(idempotency_key=f"fibs-{time.time_ns()}")
    assert keyed.map(drover.fib, range(25), chunksize=10) == [reference_fib(n) for n in range(25)]
    # The same map again is answered by the same jobs, not run again.
    before = client.stats().succeeded
    assert keyed.map(drover.fib, range(25), chunksize=10) == [reference_fib(n) for n in range(25)]
    assert client.stats().succeeded == before


def test_job_options_reach_the_master(pool, client):
    r = pool.options(priority=7, max_attempts=2, timeout=30).apply_async(drover.fib, (10,))
    assert r.get(timeout=30) == 55
    info = client.job(r.job_id)
    assert (info.priority, info.max_attempts) == (7, 2)
    p = drover.Pool(client=client, priority=-3)
    r = p.apply_async(drover.fib, (11,))
    assert r.get(timeout=30) == 89
    assert client.job(r.job_id).priority == -3
    with pytest.raises(TypeError, match="unknown job option"):
        pool.options(prioritty=1)
    with pytest.raises(ValueError, match="max_attempts"):
        pool.options(max_attempts=0)


def test_bad_calls_are_refused_with_a_clear_type_error(pool):
    def square(x):
        return x * x

    with pytest.raises(TypeError, match="nested function .* must be importable on the workers"):
        pool.map(square, [1, 2])
    with pytest.raises(TypeError, match="lambda .* must be importable on the workers"):
        pool.apply_async(lambda x: x, ([1],))
    with pytest.raises(TypeError, match="is not callable"):
        pool.apply_async(7, ([1],))
    with pytest.raises(TypeError, match="exactly one"):
        pool.apply(drover.fib, (1, 2))
    with pytest.raises(TypeError, match="must be an int"):
        pool.map(drover.fib, ["7"])
    with pytest.raises(ValueError, match="non-negative"):
        pool.map(drover.is_prime, [-7])


def test_terminate_cancels_the_pools_jobs_on_the_master(client):
    pool = drover.Pool(client=client)
    results = [pool.apply_async(drover.sleep, (60,)) for _ in range(3)]
    stream = pool.imap(drover.sleep, [60] * 4)
    wait_until("the jobs to be submitted", lambda: all(r.job_id for r in results))
    cancelled_before = client.stats().cancelled
    pool.terminate()
    # The three apply_async jobs and the imap's four.
    assert client.stats().cancelled - cancelled_before == 7
    for r in results:
        with pytest.raises(CancelledError):
            r.get(timeout=10)
        assert client.job(r.job_id).state == drover.v1.drover_pb2.JOB_STATE_CANCELLED
    # The imap was cancelled too: nothing more comes from it.
    assert next(stream, "ended") == "ended"
    with pytest.raises(ValueError, match="not running"):
        pool.apply_async(drover.fib, (1,))


def test_close_then_join_waits_for_the_work(client):
    pool = drover.Pool(client=client)
    results = [pool.apply_async(drover.sleep, (0.2,)) for _ in range(3)]
    pool.close()
    with pytest.raises(ValueError):
        pool.apply(drover.fib, (1,))
    pool.join()
    assert all(r.ready() and r.successful() for r in results)


def test_a_pool_closes_its_own_connection_and_threads(cluster):
    def submitters():
        return [t for t in threading.enumerate() if t.name == "drover-submit"]

    # Other tests' pools may still be ending their own threads: follow this
    # pool's thread, not a count.
    before = set(submitters())
    with drover.Pool(master=cluster.url) as pool:
        # apply runs in the calling thread; apply_async starts the submitter.
        assert pool.apply_async(drover.fib, (9,)).get(timeout=60) == 34
        mine = [t for t in submitters() if t not in before]
        assert len(mine) == 1, mine
    wait_until("the submitter thread to end", lambda: not mine[0].is_alive())
    with pytest.raises(drover.DroverError, match="closed"):
        pool.client.stats()


@pytest.mark.parametrize("how", ["apply_async", "apply"])
def test_terminate_during_an_apply_cancels_its_job(client, how):
    pool = drover.Pool(client=client)
    got = []

    def call():
        try:
            if how == "apply":
                got.append(pool.apply(drover.sleep, (20,)))
            else:
                got.append(pool.apply_async(drover.sleep, (20,)).get())
        except BaseException as e:
            got.append(e)

    running_before = client.stats().running
    caller = threading.Thread(target=call)
    caller.start()
    wait_until("the job to run", lambda: client.stats().running > running_before)
    pool.terminate()  # within the first second of the apply
    caller.join(timeout=10)
    assert not caller.is_alive(), "the call still waits for a job of a terminated pool"
    assert isinstance(got[0], CancelledError), got
    wait_until("the job to be cancelled", lambda: client.stats().running == running_before, timeout=5)


@pytest.mark.parametrize("how", ["apply_async", "apply"])
def test_an_unreachable_master_fails_at_once(how):
    with drover.Pool(master="http://127.0.0.1:1") as pool:
        started = time.monotonic()
        with pytest.raises(drover.MasterUnavailable):
            if how == "apply":
                pool.apply(drover.fib, (3,))
            else:
                pool.apply_async(drover.fib, (3,)).get(timeout=60)
        assert time.monotonic() - started < 5
