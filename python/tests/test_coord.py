"""Shared state across hosts (``drover.coord``) against the real master:
the seed's shared-counter and dict-with-lock programs with the import
changed, semaphores, events and barriers."""

from __future__ import annotations

import threading
import uuid

import pytest

import drover
from drover.v1 import drover_pb2 as pb
from drover.v1 import drover_pb2_grpc as pb_grpc


def fresh(prefix: str) -> str:
    """A name no other test uses (the cluster is shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def in_threads(target, n: int) -> None:
    """Runs ``target`` in ``n`` threads at once and waits for them all."""
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_lock_guards_a_read_modify_write_across_threads(client):
    total = drover.Value(fresh("total"), client=client)
    total.value = 0
    lock = drover.Lock(fresh("lock"), client=client)

    def work():
        mine = drover.Lock(lock.name, client=client)
        for _ in range(25):
            with mine:
                total.value = total.value + 1

    in_threads(work, 4)
    assert total.value == 100


def test_value_add_is_atomic(client):
    v = drover.Value(fresh("n"), client=client)

    def work():
        for _ in range(50):
            v.add(2)

    in_threads(work, 4)
    assert v.value == 400
    assert v.add(-400) == 0


def test_a_semaphore_grants_its_permits_and_no_more(client):
    name = fresh("sem")
    a = drover.Semaphore(name, 2, client=client)
    b = drover.Semaphore(name, 2, client=client)
    c = drover.Semaphore(name, 2, client=client)
    assert a.acquire() and b.acquire()
    assert b.fencing_token > a.fencing_token
    assert c.acquire(timeout=0.2) is False
    a.release()
    assert c.acquire(timeout=30)
    assert c.fencing_token > b.fencing_token
    b.release()
    c.release()
    with pytest.raises(ValueError):
        c.release()


def test_a_dict_is_a_mutable_mapping_over_its_prefix(client):
    d = drover.Dict(fresh("dict"), client=client)
    other = drover.Dict(d.name + "x", client=client)
    d["a"] = [1, 2]
    d["b"] = {"k": "v"}
    other["a"] = 3
    assert d["a"] == [1, 2]
    assert sorted(d) == ["a", "b"]
    assert len(d) == 2
    assert dict(d.items()) == {"a": [1, 2], "b": {"k": "v"}}
    del d["a"]
    with pytest.raises(KeyError):
        d["a"]
    with pytest.raises(KeyError):
        del d["a"]
    with pytest.raises(TypeError):
        d[1] = 2
    assert other["a"] == 3


def test_an_event_wakes_its_waiters(client):
    e = drover.Event(fresh("ev"), client=client)
    assert e.wait(timeout=0.1) is False
    assert not e.is_set()
    woke = []
    t = threading.Thread(target=lambda: woke.append(e.wait(timeout=60)))
    t.start()
    e.set()
    t.join()
    assert woke == [True]
    assert e.is_set()
    e.clear()
    assert not e.is_set()


def test_a_barrier_gives_each_party_an_index_and_breaks_on_a_timeout(client):
    name = fresh("bar")
    got = []

    def party():
        got.append(drover.Barrier(name, 3, client=client).wait(timeout=60))

    in_threads(party, 3)
    assert sorted(got) == [0, 1, 2]

    broken = []

    def waiter(timeout):
        try:
            drover.Barrier(name + "b", 3, client=client).wait(timeout=timeout)
        except threading.BrokenBarrierError as e:
            broken.append(str(e))

    long = threading.Thread(target=waiter, args=(60,))
    long.start()
    waiter(0.3)
    long.join()
    assert len(broken) == 2
    assert all("timed out" in b for b in broken), broken


def test_bad_names_are_refused_naming_the_field_and_the_limit(client):
    with pytest.raises(drover.InvalidArgument, match="key: 300 bytes is over the limit of 256"):
        drover.Dict("d", client=client)["k" * 298] = 1


def test_dict_namespaces_do_not_overlap(client):
    base = fresh("ns")
    outer = drover.Dict(base, client=client)
    inner = drover.Dict(base + "/x", client=client)
    outer["x/y"] = "outer"
    inner["y"] = "inner"
    outer["50%"] = "percent"
    assert outer["x/y"] == "outer" and inner["y"] == "inner"
    assert sorted(outer) == ["50%", "x/y"]
    assert list(inner) == ["y"]
    del outer["x/y"]
    assert inner["y"] == "inner"


def test_closing_the_session_releases_its_locks_at_once(client):
    name = fresh("closed")
    lock = drover.Lock(name, client=client)
    assert lock.acquire(timeout=5)
    stub = pb_grpc.CoordStub(client._channel_here())

    def inspect():
        return stub.Inspect(pb.InspectRequest(name=name), metadata=client._metadata)

    assert list(inspect().lock_tokens) == [lock.fencing_token]
    drover.coord.close()
    assert list(inspect().lock_tokens) == []
    # The next use opens a new session.
    other = drover.Lock(name, client=client)
    assert other.acquire(timeout=5)
    other.release()


def test_coord_objects_carry_on_across_a_master_restart(new_cluster, tmp_path):
    cluster = new_cluster("--store", "redb", "--data-dir", str(tmp_path / "data"), workers=0)
    c = drover.Client(cluster.url)
    try:
        total = drover.Value(fresh("total"), client=c)
        d = drover.Dict(fresh("d"), client=c)
        lock = drover.Lock(fresh("held"), client=c)
        total.value = 5
        d["k"] = [1]
        assert lock.acquire(timeout=5)
        token = lock.fencing_token
        cluster.restart_master()
        # Reads, sets and adds reach the new master; the lock held before
        # the restart is still this session's to release.
        assert total.add(2) == 7
        assert d["k"] == [1]
        d["k"] = [2]
        lock.release()
        again = drover.Lock(lock.name, client=c)
        assert again.acquire(timeout=5)
        assert again.fencing_token > token
        again.release()
    finally:
        c.close()


def test_jobs_carry_their_limits(client):
    with drover.Executor(client=client, limits={"pydb": 1}) as ex:
        futs = [ex.submit(drover.sleep, 0.05) for _ in range(3)]
        assert [f.result(timeout=60) for f in futs] == [None] * 3
    infos = [client.job(f.job_id) for f in futs]
    assert all([(l.name, l.permits) for l in i.limits] == [("pydb", 1)] for i in infos)
    spans = sorted((i.started_at_ms, i.finished_at_ms) for i in infos)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    with drover.Executor(client=client, limits={"pydb": 0}) as ex:
        with pytest.raises(drover.InvalidArgument, match=r"limits\[0\]\.permits"):
            ex.submit(drover.sleep, 0).result(timeout=60)
