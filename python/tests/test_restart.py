"""Results awaited across a restart of a durable master: the client reaches
it again and every result arrives."""

from __future__ import annotations

import time

import drover


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
