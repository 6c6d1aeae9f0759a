"""Results awaited across a restart of a durable master: the client reaches
it again and every result arrives."""

from __future__ import annotations

import threading
import time

import drover
from conftest import wait_until


def test_maps_and_futures_survive_a_master_restart(new_cluster, tmp_path):
    cluster = new_cluster("--store", "redb", "--data-dir", str(tmp_path / "data"))
    with drover.Pool(master=cluster.url) as pool:
        results = pool.imap(drover.sleep, [0.01, 0.01, 1.0, 1.0])
        pending = pool.apply_async(drover.fib, (30,))
        slow = pool.apply_async(drover.sleep, (1.0,))
        assert next(results) is None and next(results) is None
        assert pending.get(timeout=30) == 832040
        started = time.monotonic()
        cluster.restart_master()
        # The ordered watch resumes after the two results read; the
        # future's watch is opened again; the worker reconnects by itself.
        assert list(results) == [None, None]
        assert slow.get(timeout=60) is None
        assert time.monotonic() - started < 30
        assert pool.map(drover.fib, range(5)) == [0, 1, 1, 2, 3]


def test_an_apply_waiting_through_a_master_restart_returns_its_result_once(new_cluster, tmp_path):
    cluster = new_cluster("--store", "redb", "--data-dir", str(tmp_path / "data"))
    with drover.Pool(master=cluster.url) as pool:
        got = []
        caller = threading.Thread(target=lambda: got.append(pool.apply(drover.sleep, (1.5,))))
        caller.start()
        # Its Submit waits on the master for the running job: kill it there.
        wait_until("the job to run", lambda: pool.client.stats().running == 1)
        cluster.restart_master()
        caller.join(timeout=60)
        assert not caller.is_alive(), "apply did not return after the restart"
        assert got == [None]
        # Sent again with its request id, the submit named the same job.
        stats = pool.client.stats()
        assert (stats.queued, stats.running, stats.succeeded) == (0, 0, 1), stats
