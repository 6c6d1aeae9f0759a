"""Python functions as jobs: a master and a worker started with
``--python <this interpreter> --python-modules drover_testjobs``, this
directory on its PYTHONPATH."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import drover
import drover_testjobs as tj
from drover.v1 import drover_pb2 as pb

from conftest import Cluster

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    """For this module, in place of the session's cluster (so the client,
    pool and executor fixtures use it): a master and a worker with one CPU
    child and three Python processes, with a short retry backoff."""
    c = Cluster()
    try:
        c.start_master("--retry-base", "50ms")
        c.start_worker(
            1,
            "--python",
            sys.executable,
            "--python-modules",
            "drover_testjobs",
            "--python-processes",
            "3",
            env={"PYTHONPATH": str(HERE)},
        )
        yield c
    finally:
        c.stop()


def python_worker(client) -> "pb.WorkerInfo":
    (w,) = [w for w in client.stats().workers if pb.JOB_KIND_PYTHON in w.kinds]
    return w


def test_pool_map_apply_and_starmap_run_python_functions(pool):
    assert pool.map(tj.square, range(10)) == [x * x for x in range(10)]
    assert pool.apply(tj.add, (1, 2), {"scale": 10}) == 30
    assert pool.starmap(tj.add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(pool.imap(tj.echo, [{"a": [1, None]}, "é", 2**70])) == [{"a": [1, None]}, "é", 2**70]
    assert pool.apply(tj.Shapes.area, (3, 4)) == 12
    # Built-in kinds and Python functions in one pool.
    assert pool.map(drover.fib, [10, 20]) == [55, 6765]


def test_apply_async_callbacks(pool, cluster):
    got, errors = [], []
    r = pool.apply_async(tj.add, (2, 3), callback=got.append, error_callback=errors.append)
    assert r.get(timeout=30) == 5
    cluster.wait_for("the callback", lambda: got == [5])
    bad = pool.apply_async(tj.fail, ("nope",), callback=got.append, error_callback=errors.append)
    bad.wait(30)
    assert bad.ready() and not bad.successful()
    cluster.wait_for("the error callback", lambda: len(errors) == 1)
    assert isinstance(errors[0], drover.JobFailed)
    assert errors[0].remote_type == "ValueError" and errors[0].remote_message == "nope"
    assert got == [5]


def test_executor_submit_with_kwargs_and_as_completed_order(executor):
    assert executor.submit(tj.add, 1, b=2, scale=3).result(timeout=30) == 9
    # Three processes run the three at once: they finish shortest first.
    futures = [executor.submit(tj.nap, s, value=s) for s in (1.2, 0.6, 0.0)]
    order = [f.result() for f in cf.as_completed(futures, timeout=60)]
    assert order == [0.0, 0.6, 1.2]
    assert list(executor.map(tj.square, [3, 4], timeout=60)) == [9, 16]


def test_remote_exception_carries_type_message_and_traceback(executor):
    f = executor.submit(tj.boom, "it broke\non two lines")
    with pytest.raises(drover.JobFailed) as raised:
        f.result(timeout=30)
    e = raised.value
    assert e.remote_type == "drover_testjobs.Boom"
    assert e.remote_message == "it broke\non two lines"
    tb = e.remote_traceback
    assert tb.startswith("Traceback (most recent call last):\n")
    assert "drover_testjobs.py" in tb and "in boom" in tb and "in _deeper" in tb
    assert "raise Boom(message)" in tb
    # The runner's own frames are left out.
    assert "runner" not in tb.split("\n", 2)[1]
    # Not retried: another attempt would raise it again.
    assert e.attempts == 1
    assert "drover_testjobs.Boom: it broke" in str(e)


def test_a_result_json_cannot_carry_is_a_clear_error(pool):
    with pytest.raises(drover.JobFailed) as raised:
        pool.apply(tj.not_json)
    e = raised.value
    assert e.error == (
        "the result of drover_testjobs:not_json, of type set, cannot be sent as JSON: "
        "Object of type set is not JSON serializable"
    )
    assert e.remote_type is None


def test_arguments_json_cannot_carry_are_refused_at_submit(pool):
    with pytest.raises(TypeError, match="arguments of drover_testjobs:echo must be JSON"):
        pool.apply(tj.echo, ({1, 2},))
    # json.dumps would send {"1": "a"}: the function would see another dict.
    with pytest.raises(TypeError, match="a dict key 1 is of type int, not str"):
        pool.apply(tj.echo, ({1: "a"},))


def test_a_result_with_int_keys_fails_rather_than_coming_back_changed(pool):
    with pytest.raises(drover.JobFailed) as raised:
        pool.apply(tj.int_keys, (3,))
    assert raised.value.error == (
        "the result of drover_testjobs:int_keys, of type dict, cannot be sent as JSON: "
        "a dict key 0 is of type int, not str"
    )


@pytest.mark.parametrize(
    "name, reason",
    [
        # drover_testjobs imports os, math and time: none of them is allowed.
        ("drover_testjobs:os.system", "reaches module os through drover_testjobs"),
        ("drover_testjobs:math.sqrt", "reaches module math through drover_testjobs"),
        ("drover_testjobs:isqrt", "is defined in module math, which is not allowed"),
    ],
)
def test_a_name_cannot_reach_through_an_allowed_module_into_another(pool, name, reason):
    # Sent as it is, as a client other than this package could.
    fn = drover.PythonFunction(os.system, name)
    with pytest.raises(drover.JobFailed) as raised:
        pool.options(max_attempts=1).apply(fn, ("touch /tmp/drover-reached-through",))
    assert reason in raised.value.error, raised.value.error
    assert "--python-modules drover_testjobs" in raised.value.error


def test_functions_that_are_not_importable_are_refused_at_submit(pool, executor):
    def nested(x):
        return x

    with pytest.raises(TypeError, match="nested function .* must be importable on the workers"):
        pool.map(nested, [1])
    with pytest.raises(TypeError, match="lambda .* must be importable on the workers"):
        executor.submit(lambda: 1)
    main = type(sys)("__main__")
    exec("def script_fn(x):\n    return x\n", main.__dict__)
    with pytest.raises(TypeError, match="defined in __main__.*must be importable on the workers"):
        pool.apply_async(main.script_fn, (1,))


def test_stdout_and_stdin_of_a_job_do_not_break_the_frames(pool):
    assert pool.map(tj.chatty, [1, 2, 3]) == [1, 2, 3]


def test_a_timeout_kills_the_process_of_a_sleeping_job(pool, client, cluster):
    before = python_worker(client).children_restarted
    started = time.monotonic()
    with pytest.raises(drover.JobFailed) as raised:
        pool.options(timeout=0.5, max_attempts=1).apply(tj.nap, (60,))
    assert time.monotonic() - started < 30
    assert "timed out after 500 ms (its process was killed)" in raised.value.error
    cluster.wait_for("the killed process to be replaced", lambda: python_worker(client).children_restarted > before)


def test_cancel_kills_the_running_python_job(executor, client, cluster):
    before = python_worker(client).children_restarted
    f = executor.submit(tj.nap, 60)
    cluster.wait_for("the job to run", lambda: f.job_id is not None and client.job(f.job_id).state == pb.JOB_STATE_RUNNING)
    assert f.cancel()
    with pytest.raises(cf.CancelledError):
        f.result(timeout=5)
    cluster.wait_for("its process to be killed and replaced", lambda: python_worker(client).children_restarted > before)
    # The pool still runs jobs.
    assert executor.submit(tj.square, 7).result(timeout=30) == 49


@pytest.mark.parametrize(
    "fn, args, reason",
    [(tj.crash, (3,), "exited with status 3"), (tj.segfault, (), "killed by signal 11")],
)
def test_a_crashing_job_is_retried_then_fails_with_its_reasons(pool, fn, args, reason):
    with pytest.raises(drover.JobFailed) as raised:
        pool.options(max_attempts=2).apply(fn, args)
    e = raised.value
    assert e.attempts == 2
    assert len(e.attempt_errors) == 2
    for r in e.attempt_errors:
        assert "child process" in r and reason in r and "while running the job" in r, r
    assert e.remote_type is None


def test_a_module_outside_the_allow_list_waits_and_is_shown(pool, client, cluster):
    # os.path.join is importable, but the workers allow drover_testjobs only.
    r = pool.apply_async(os.path.join, ("a", "b"))
    cluster.wait_for("the job to be submitted", lambda: r.job_id is not None)
    module = os.path.join.__module__
    stats = cluster.wait_for(
        "the job to be counted as waiting", lambda: next((s for s in [client.stats()] if s.waiting_for_capability), None)
    )
    assert stats.waiting_for_capability == 1
    assert list(stats.missing_modules) == [module]
    assert client.job(r.job_id).state == pb.JOB_STATE_QUEUED
    # It does not hold up the jobs the worker may run.
    assert pool.map(tj.square, [5, 6]) == [25, 36]
    assert client.job(r.job_id).state == pb.JOB_STATE_QUEUED
    w = python_worker(client)
    assert list(w.python_modules) == ["drover_testjobs"] and w.python_slots == 3
    client.cancel(r.job_id)
    cluster.wait_for("the waiting count to drop", lambda: client.stats().waiting_for_capability == 0)


def test_a_ten_thousand_job_map_returns_in_order(pool):
    n = 10_000
    assert pool.map(tj.square, range(n)) == [x * x for x in range(n)]
    assert pool.map(tj.is_prime, range(100)) == [tj.is_prime(x) for x in range(100)]


def test_a_call_with_the_wrong_arguments_shows_no_runner_frame(pool):
    with pytest.raises(drover.JobFailed) as raised:
        pool.apply(tj.square, (1, 2))
    e = raised.value
    assert e.remote_type == "TypeError"
    assert "takes 1 positional argument but 2 were given" in e.remote_message
    assert e.remote_traceback.startswith("Traceback (most recent call last):\n")
    assert "<string>" not in e.remote_traceback, e.remote_traceback


def test_processes_are_reused(pool):
    pids = set(pool.map(tj.pid, range(200)))
    assert 1 <= len(pids) <= 3


def test_python_processes_are_recycled_and_a_sigterm_drains():
    """A worker of its own: --max-jobs-per-child recycles the interpreters,
    and SIGTERM lets the running Python job finish before the worker exits."""
    c = Cluster()
    try:
        c.start_master()
        worker = c.start_worker(
            1,
            "--python",
            sys.executable,
            "--python-modules",
            "drover_testjobs",
            "--python-processes",
            "1",
            "--max-jobs-per-child",
            "3",
            env={"PYTHONPATH": str(HERE)},
        )
        client = c.client()
        with drover.Pool(client=client) as pool:
            # One process, recycled after every 3 jobs: 9 jobs, 3 processes.
            pids = [pool.apply(tj.pid) for _ in range(9)]
            assert len(set(pids)) == 3, pids
            assert [len(set(pids[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1], pids
            r = pool.apply_async(tj.nap, (1.0, "finished"))
            c.wait_for(
                "the job to run",
                lambda: r.job_id is not None and client.job(r.job_id).state == pb.JOB_STATE_RUNNING,
            )
            worker.proc.send_signal(signal.SIGTERM)
            assert r.get(timeout=30) == "finished"
            assert worker.proc.wait(timeout=30) == 0
        client.close()
    finally:
        c.stop()
