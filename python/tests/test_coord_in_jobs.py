"""Shared state inside Python jobs: ``drover.Lock``, ``Value`` and ``Dict``
called in a job reach the master through the job's worker, which needs
nothing of the master's in the job (no address, no token), and a job's
session ends with its attempt.

The master has a client token and a worker token; the workers know only
theirs. Their Python processes renew sessions with a lease of 60 s, so a
lock that comes back within seconds came back because its job ended, not
because its lease ran out."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import drover
import drover_testjobs as tj
from drover.v1 import drover_pb2 as pb

from conftest import Cluster

HERE = Path(__file__).resolve().parent
CLIENT_TOKEN = "client-" + uuid.uuid4().hex
WORKER_TOKEN = "worker-" + uuid.uuid4().hex
#: The lease the jobs' sessions get (DROVER_LEASE_S in the workers' env).
LEASE_S = 60
#: Well under the lease: how long a released lock may take to come back.
RELEASED_WITHIN_S = 10


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_cluster(*master_flags: str, workers: int = 1, python_processes: int = 2) -> Cluster:
    """A master with both tokens (and ``master_flags``) and ``workers``
    workers that know only the worker token, each with one CPU child and
    ``python_processes`` Python processes."""
    c = Cluster()
    try:
        c.start_master("--worker-token", WORKER_TOKEN, *master_flags, token=CLIENT_TOKEN)
        for _ in range(workers):
            c.start_worker(
                1,
                "--token",
                WORKER_TOKEN,
                "--python",
                sys.executable,
                "--python-modules",
                "drover_testjobs",
                "--python-processes",
                str(python_processes),
                env={"PYTHONPATH": str(HERE), "DROVER_LEASE_S": str(LEASE_S)},
            )
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster():
    """Two workers, each with two Python processes."""
    c = start_cluster(workers=2)
    try:
        yield c
    finally:
        c.stop()


def holders(client, name: str) -> list:
    return list(drover.coord._call(client, "Inspect", pb.InspectRequest(name=name)).lock_tokens)


def test_the_seeds_shared_counter_runs_as_jobs_across_workers(pool, client, tmp_path):
    lock, counter, log = fresh("lock"), fresh("total"), tmp_path / "holds.log"
    n = 40
    tokens = pool.starmap(tj.locked_increment, [(lock, counter, str(log), 0.005)] * n)
    # Every read-modify-write under the lock counted: none lost to a race.
    assert drover.Value(counter, client=client).value == n
    assert len(set(tokens)) == n
    # The holds, in fencing-token order, never overlap.
    holds = sorted(tuple(float(x) for x in line.split()) for line in log.read_text().splitlines())
    assert [int(h[0]) for h in holds] == sorted(tokens)
    for (_, _, end), (_, start, _) in zip(holds, holds[1:]):
        assert end <= start, holds
    # Both workers ran some of them.
    workers = {w.name: w.completed for w in client.stats().workers}
    assert len(workers) == 2 and all(done > 0 for done in workers.values()), workers
    # Each job closed its session on return: nothing is left held.
    assert holders(client, lock) == []


def test_the_seeds_dict_with_a_lock_runs_as_jobs(pool, client):
    name, lock = fresh("squares"), fresh("dict-lock")
    keys = list(range(30))
    assert sorted(pool.starmap(tj.record_square, [(name, lock, k) for k in keys])) == keys
    d = drover.Dict(name, client=client)
    assert d["writes"] == len(keys)
    assert {k: d[k] for k in d if k != "writes"} == {str(k): k * k for k in keys}


def test_a_lock_a_job_returns_with_is_released_when_it_ends(pool, client):
    name = fresh("kept")
    token = pool.apply(tj.grab, (name,))
    assert token > 0
    # Its session ended with the job, so another holder gets the lock now,
    # a lease (60 s) early.
    mine = drover.Lock(name, client=client)
    started = time.monotonic()
    assert mine.acquire(timeout=RELEASED_WITHIN_S)
    assert time.monotonic() - started < RELEASED_WITHIN_S
    assert mine.fencing_token > token
    mine.release()


@pytest.mark.parametrize("end", ["cancel", "crash", "return"])
def test_a_running_jobs_lock_is_released_when_its_attempt_ends(cluster, client, end):
    name, event = fresh("held"), fresh("go")
    with drover.Executor(client=client) as ex:
        f = ex.submit(tj.grab_and_wait, name, event, "crash" if end == "crash" else None)
        drover.Event(event + ".held", client=client).wait(60)
        held = holders(client, name)
        assert len(held) == 1, held
        lock = drover.Lock(name, client=client)
        # Held by the running job: not free.
        assert not lock.acquire(timeout=0.2)
        if end == "cancel":
            cluster.wait_for("the job to be running", lambda: f.job_id is not None)
            assert f.cancel()
            with pytest.raises(cf.CancelledError):
                f.result(timeout=30)
        else:
            drover.Event(event, client=client).set()
            if end == "crash":
                # Retried after the crash, the next attempt finds the event
                # set, takes the lock and crashes again; a single attempt
                # is what this test is about.
                with pytest.raises(drover.JobFailed):
                    f.result(timeout=60)
            else:
                assert f.result(timeout=60) == held[0]
        started = time.monotonic()
        assert lock.acquire(timeout=RELEASED_WITHIN_S), f"the lock is still held by {holders(client, name)}"
        assert time.monotonic() - started < RELEASED_WITHIN_S
        assert lock.fencing_token > held[0]
        lock.release()


def test_the_proxy_needs_its_secret_and_ties_only_running_jobs(cluster, client):
    """The proxy names sessions after jobs that run on it only: a caller
    claiming a slot that is not running (a process a job left behind)
    gets an ordinary session, renewed and ended like any other; and
    without the worker's secret nothing gets through at all."""
    stats = client.stats()
    assert all(pb.JOB_KIND_PYTHON in w.kinds for w in stats.workers)
    # The proxies listen on loopback ports of their own; the Python
    # processes know them from their environment only. Read one from
    # /proc, as a process of the same user could.
    pids = [pid for w in stats.workers for pid in w.child_pids]
    env = None
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        entries = dict(e.split(b"=", 1) for e in raw.split(b"\0") if b"=" in e)
        if b"DROVER_COORD" in entries:
            env = {k.decode(): v.decode() for k, v in entries.items() if k.startswith(b"DROVER_COORD")}
            break
    assert env is not None, "no Python process has DROVER_COORD in its environment"
    proxy = drover.Client(env["DROVER_COORD"], env["DROVER_COORD_TOKEN"], "", tls_cert="", tls_key="")
    try:
        opened = drover.coord._call(
            proxy,
            "OpenSession",
            pb.OpenSessionRequest(lease_ms=60_000, owner="left-behind"),
            metadata=(("drover-job-slot", "999999999"),),
        )
        name = fresh("untied")
        token = drover.coord._call(
            proxy, "Acquire", pb.AcquireRequest(name=name, permits=1, session=opened.session)
        ).fencing_token
        # Jobs come and go on the workers; the untied session stays.
        with drover.Pool(client=client) as jobs:
            assert jobs.map(tj.square, range(8)) == [x * x for x in range(8)]
        drover.coord._call(proxy, "KeepAlive", pb.KeepAliveRequest(session=opened.session))
        assert holders(client, name) == [token]
        drover.coord._call(proxy, "CloseSession", pb.CloseSessionRequest(session=opened.session))
        assert holders(client, name) == []
        # Calls that need no session pass through to the master.
        v = drover.Value(fresh("via-proxy"), client=proxy)
        assert v.add(5) == 5
    finally:
        proxy.close()
    wrong = drover.Client(env["DROVER_COORD"], "not-the-secret", "", tls_cert="", tls_key="")
    try:
        with pytest.raises(drover.DroverError) as refused:
            drover.Value(fresh("nope"), client=wrong).add(1)
        assert "DROVER_COORD_TOKEN" in str(refused.value)
    finally:
        wrong.close()


def test_a_semaphore_shared_by_clients_and_jobs_never_has_more_holders_than_permits(cluster, client, tmp_path):
    """Client threads and jobs on both workers contend for one semaphore
    while jobs holding a permit are killed with SIGKILL; every hold is
    logged as (fencing token, start, end) and checked for overlap."""
    name, permits = fresh("sem"), 2
    log = tmp_path / "holds.log"
    intervals = []
    guard = threading.Lock()

    def contend():
        sem = drover.Semaphore(name, permits, client=client)
        mine = []
        for _ in range(40):
            with sem:
                start = time.time()
                time.sleep(0.001)
                mine.append((sem.fencing_token, start, time.time()))
        with guard:
            intervals.extend(mine)

    threads = [threading.Thread(target=contend) for _ in range(3)]
    with drover.Pool(client=client) as pool:
        rounds = pool.starmap_async(tj.semaphore_rounds, [(name, permits, str(log), 20)] * 12)
        for t in threads:
            t.start()
        for i in range(3):
            path = str(tmp_path / f"held{i}")
            killed = pool.options(max_attempts=1).apply_async(tj.hold_until_killed, (name, permits, path))
            line = cluster.wait_for("a job to hold a permit", lambda: Path(path).exists() and Path(path).read_text())
            token, pid, start = line.split()
            # Its hold ends when SIGKILL is sent: the permit is released
            # only after the worker saw the process die, so a grant to
            # anyone before this moment would be a second holder.
            intervals.append((int(token), float(start), time.time()))
            os.kill(int(pid), signal.SIGKILL)
            with pytest.raises(drover.JobFailed):
                killed.get(timeout=60)
        for t in threads:
            t.join()
        assert rounds.get(timeout=120) == [20] * 12
    for line in log.read_text().splitlines():
        token, start, end = line.split()
        intervals.append((int(token), float(start), float(end)))
    assert len(intervals) == 3 * 40 + 12 * 20 + 3
    tokens = [i[0] for i in intervals]
    assert len(set(tokens)) == len(tokens), "a fencing token was granted twice"
    # The most holders at once: sweep the starts and ends in time order.
    events = sorted([(s, 1) for _, s, _ in intervals] + [(e, -1) for _, _, e in intervals])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    assert most <= permits, f"{most} holders at once of a semaphore of {permits}"
    # The killed jobs' permits came back with their attempts, a lease early.
    cluster.wait_for("every permit to come back", lambda: holders(client, name) == [], timeout=RELEASED_WITHIN_S)


def test_a_job_rides_out_a_restart_of_the_master(tmp_path):
    """A job waiting on an event when the durable master is killed and
    started again waits anew through its worker, as a client does."""
    c = start_cluster("--store", "redb", "--data-dir", str(tmp_path / "data"), python_processes=1)
    try:
        name = fresh("restart")
        client = c.client()
        try:
            with drover.Pool(client=client) as pool:
                waiting = pool.apply_async(tj.wait_for_event, (name,))
                drover.Event(name + ".waiting", client=client).wait(60)
                c.restart_master()
                drover.Value(name, client=client).value = 7
                drover.Event(name, client=client).set()
                assert waiting.get(timeout=120) == [True, 7]
        finally:
            client.close()
    finally:
        c.stop()


def test_jobs_waiting_in_many_threads_do_not_hold_up_other_jobs_calls():
    """Waits hold a stream each for as long as they wait, and a master that
    allows 4 streams per connection: 12 threads of one job waiting for a
    lock and at a barrier must all reach the master, and another job's
    quick calls and tries of a lock, through the same worker, must not
    queue behind them."""
    c = start_cluster("--max-concurrent-streams", "4")
    try:
        name = fresh("waits")
        client = c.client()
        try:
            held, busy = drover.Lock(name, client=client), drover.Lock(name + ".busy", client=client)
            assert held.acquire(timeout=10) and busy.acquire(timeout=10)

            def inspect(n):
                return drover.coord._call(client, "Inspect", pb.InspectRequest(name=n))

            with drover.Pool(client=client) as pool:
                waiting = pool.apply_async(tj.wait_in_threads, (name, name + ".barrier", 6))
                # All twelve waits are open at the master at once.
                c.wait_for("the six threads to wait for the lock", lambda: inspect(name).lock_waiters == 6)
                c.wait_for("the six threads at the barrier", lambda: inspect(name + ".barrier").barrier_arrived == 6)
                # Meanwhile another job's calls go through at once: a try
                # of a held lock answers, one with a timeout keeps it.
                now, took_now, later, took_later = pool.apply(tj.try_lock, (name + ".busy", 0.5))
                assert (now, later) == (False, False)
                assert took_now < 1, took_now
                assert 0.4 < took_later < 5, took_later
                assert pool.apply(tj.add_many, (name + ".adds", 50)) == 50
                assert not waiting.ready()
                held.release()
                mine = drover.Barrier(name + ".barrier", 7, client=client).wait(60)
                got, indexes = waiting.get(timeout=60)
                assert got == 6
                assert sorted(indexes + [mine]) == list(range(7))
        finally:
            client.close()
    finally:
        c.stop()
