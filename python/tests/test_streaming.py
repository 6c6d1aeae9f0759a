"""Large maps: in order, streamed with bounded memory and a bounded number of
jobs on the master, and under the master's limits on batches, message size
and queue depth."""

from __future__ import annotations

import time
import tracemalloc

import pytest

import drover

MiB = 1024 * 1024


def sieve(n: int) -> bytearray:
    """is_prime for 0..n-1, independently of drover."""
    flags = bytearray([1]) * n
    flags[0:2] = b"\x00\x00"
    for p in range(2, int(n**0.5) + 1):
        if flags[p]:
            flags[p * p :: p] = bytearray(len(range(p * p, n, p)))
    return flags


def rss() -> int:
    """This process's resident memory now, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_a_10000_job_map_returns_every_result_in_order(pool):
    start = 1_000_000
    expected = [bool(v) for v in sieve(start + 10_000)[start:]]
    results = pool.map(drover.is_prime, range(start, start + 10_000))
    assert len(results) == 10_000
    assert results == expected


def test_imap_streams_a_long_map_with_bounded_memory_and_queue(client):
    n = 200_000
    window = 20_000
    primes = sieve(n)
    pool = drover.Pool(client=client, max_in_flight=window)
    before = client.stats()
    tracemalloc.start()
    try:
        base_rss = rss()
        peak_rss = base_rss
        most_on_master = 0
        started = time.monotonic()
        # A generator: the input is never a list either.
        results = pool.imap(drover.is_prime, (i for i in range(n)))
        for i, value in enumerate(results):
            assert value == bool(primes[i]), f"element {i}"
            if i % 25_000 == 0:
                peak_rss = max(peak_rss, rss())
                s = client.stats()
                most_on_master = max(most_on_master, s.queued + s.running)
        elapsed = time.monotonic() - started
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert i == n - 1
    assert client.stats().succeeded - before.succeeded == n
    # Never more than the window submitted and unread, so never more on the master.
    assert most_on_master <= window, most_on_master
    # Holding 200,000 results' JobInfo messages would take tens of MiB (and
    # 1,000,000 over 100 MiB); the stream holds one window's worth of ids.
    assert traced_peak < 8 * MiB, f"Python objects peaked at {traced_peak / MiB:.1f} MiB"
    assert peak_rss - base_rss < 48 * MiB, f"RSS grew by {(peak_rss - base_rss) / MiB:.1f} MiB"
    print(f"imap of {n} jobs: {elapsed:.1f} s, RSS +{(peak_rss - base_rss) / MiB:.1f} MiB")


def test_the_client_splits_batches_and_waits_for_queue_room(new_cluster):
    # Limits far below what the client sends by default: a submit of 1,000
    # jobs is over --max-batch-jobs 300, a 6,000-job map is over
    # --max-queued 2000, and 600 arguments of 3,000 digits are over
    # --max-message-bytes 1 MiB.
    cluster = new_cluster("--max-batch-jobs", "300", "--max-queued", "2000", "--max-message-bytes", str(MiB))
    start = 2_000_000
    expected = [bool(v) for v in sieve(start + 6_000)[start:]]
    with drover.Pool(master=cluster.url) as pool:
        assert pool.map(drover.is_prime, range(start, start + 6_000), chunksize=1_000) == expected
        unordered = sorted(pool.imap_unordered(drover.fib, range(2_500)))
        assert len(unordered) == 2_500
        big_evens = [10**2999 + 2 * k for k in range(600)]
        assert pool.map(drover.is_prime, big_evens, chunksize=600) == [False] * 600
    with drover.Executor(master=cluster.url) as ex:
        futures = [ex.submit(drover.is_prime, start + i) for i in range(3_000)]
        assert [f.result(timeout=60) for f in futures] == expected[:3_000]

    # A refused argument in a batch the client had to split: the parts the
    # master took are not sent again, and the bad job fails alone.
    client = cluster.client()
    before = client.stats().succeeded
    with drover.Executor(client=client) as ex:
        args = list(range(700))
        args[500] = 10**12
        # Held, the tracker's lock (reentrant) keeps its submitter from
        # taking jobs until all 700 wait: they go as one batch, split in 300s.
        with client._tracker_here()._cond:
            futures = [ex.submit(drover.fib, n) for n in args]
        with pytest.raises(drover.InvalidArgument, match="--max-fib-n"):
            futures[500].result(timeout=60)
        values = [f.result(timeout=60) for i, f in enumerate(futures) if i != 500]
    assert len(values) == 699 and values[:3] == [0, 1, 1]
    assert client.stats().succeeded - before == 699
