"""A client used before ``fork()`` keeps working in the parent and the child:
grpcio channels must not cross a fork, so the child connects again."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

import drover

FIB_2_TO_10 = [1, 2, 3, 5, 8, 13, 21, 34, 55]


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """Reaps a forked child, polling with a deadline; returns its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child {pid} did not finish within {timeout} s (a deadlock?)")
        time.sleep(0.01)


def run_in_child(fn) -> dict:
    """Forks, runs ``fn()`` in the child and returns what it returned (as
    JSON through a pipe), or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            try:
                out = {"ok": fn()}
            except BaseException as e:  # report everything to the parent
                out = {"error": f"{type(e).__name__}: {e}"}
                code = 1
            with os.fdopen(w, "w") as f:
                json.dump(out, f)
        finally:
            os._exit(code)
    os.close(w)
    # Reaped first, with a deadline: a child stuck on a channel that crossed
    # the fork would otherwise hang this read. Its answer fits in the pipe.
    code = wait_child(pid)
    with os.fdopen(r) as f:
        text = f.read()
    assert text, f"the child exited with {code} and said nothing"
    out = json.loads(text)
    assert "error" not in out, out["error"]
    assert code == 0
    return out["ok"]


def test_a_pool_used_before_fork_works_in_the_child_and_the_parent(cluster):
    with drover.Pool(master=cluster.url) as pool:
        assert pool.map(drover.fib, range(2, 11)) == FIB_2_TO_10
        parent_channel = pool.client._channel
        # Work in flight in the parent's background threads at the fork.
        pending = pool.apply_async(drover.sleep, (0.3,))

        def child():
            assert pool.client._channel is None or pool.client._channel is not parent_channel
            values = pool.map(drover.fib, range(2, 11))
            one = pool.apply(drover.is_prime, (1112582705942171,))
            return {"map": values, "apply": one, "new_channel": pool.client._channel is not parent_channel}

        got = run_in_child(child)
        assert got == {"map": FIB_2_TO_10, "apply": True, "new_channel": True}
        # The parent's channel and threads are untouched.
        assert pool.client._channel is parent_channel
        assert pending.get(timeout=30) is None
        assert pool.map(drover.fib, range(2, 11)) == FIB_2_TO_10


def test_an_executor_in_multiprocessing_fork_children(cluster):
    ex = drover.Executor(master=cluster.url)
    assert ex.submit(drover.fib, 20).result(timeout=30) == 6765
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def work(n):
        queue.put((n, ex.submit(drover.fib, n).result(timeout=30)))

    procs = [ctx.Process(target=work, args=(n,)) for n in (10, 11, 12)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == [(10, 55), (11, 89), (12, 144)]
    assert ex.submit(drover.fib, 21).result(timeout=30) == 10946
    ex.shutdown()
