"""Several masters given to the client (``DROVER_MASTER=a,b``,
``Client(master=[a, b])``): a dead one first is passed over by pools,
executors and the coordination objects; a standby's UNAVAILABLE (with its
``drover-standby`` mark) sends every call on, a bare UNAVAILABLE only the
calls safe to send twice; when none answers, the error names each; an
empty entry is refused. The real failover (a leader killed under a map)
is tests/tests/ha.rs's, with PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import List

import grpc
import pytest

import drover
from drover._client import STANDBY_METADATA
from test_errors import free_port

FIB_2_TO_20 = [drover.fib(n) for n in range(2, 21)]
# The calls of the Queue and Coord services that stream their answers.
STREAMING = {"/drover.v1.Queue/Watch", "/drover.v1.Coord/KvWatch"}


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


class StandIn(grpc.GenericRpcHandler):
    """A stand-in for a standby master: a gRPC server that answers every
    call at once with UNAVAILABLE naming the leader, with the standby mark
    when ``marked`` (as a real standby does); unmarked, it is a master
    answering UNAVAILABLE for a reason of its own (shutting down, maybe
    after applying the call). It records the method of every call."""

    def __init__(self, leader: str, marked: bool):
        self.leader = leader
        self.marked = marked
        self.calls: List[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((self,))
        self.url = f"http://127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def service(self, details):
        self.calls.append(details.method)

        def refuse(request, context):
            if self.marked:
                context.set_trailing_metadata(((STANDBY_METADATA, self.leader),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"this master is a standby; the leader is {self.leader}")

        if details.method in STREAMING:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def stand_in(cluster):
    made: List[StandIn] = []

    def make(marked: bool) -> StandIn:
        s = StandIn(cluster.url, marked)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_a_dead_master_first_is_passed_over(cluster, monkeypatch):
    masters = f"{dead_url()},{cluster.url}"
    with drover.Pool(master=masters) as pool:
        assert pool.map(drover.fib, range(2, 21)) == FIB_2_TO_20
        assert pool.apply(drover.fib, (30,)) == 832040
        # Later calls go straight to the master that answered.
        assert pool.client.url == cluster.url
    with drover.Executor(master=[dead_url(), cluster.url]) as ex:
        assert [f.result(timeout=30) for f in [ex.submit(drover.fib, n) for n in (10, 20)]] == [55, 6765]
    # DROVER_MASTER too; and a call unsafe to send twice (an add) goes on,
    # since no connection was made to the dead one.
    monkeypatch.setenv("DROVER_MASTER", masters)
    with drover.Client() as client:
        name = f"failover-{time.monotonic_ns()}"
        assert drover.Value(name, client=client).add(3) == 3
        assert client.url == cluster.url
        with drover.Lock(name, client=client) as lock:
            assert lock.fencing_token is not None


def test_a_standby_sends_every_call_on_to_the_leader(cluster, stand_in):
    standby = stand_in(marked=True)
    with drover.Client([standby.url, cluster.url]) as client:
        name = f"standby-{time.monotonic_ns()}"
        # Unsafe to send twice, and sent on: a standby applied nothing.
        assert drover.Value(name, client=client).add(5) == 5
        assert "/drover.v1.Coord/CounterAdd" in standby.calls
        assert client.url == cluster.url
        with drover.Pool(client=client) as pool:
            assert pool.map(drover.fib, range(2, 21)) == FIB_2_TO_20
    with drover.Pool(master=[standby.url, cluster.url]) as pool:
        assert pool.map(drover.fib, range(2, 21)) == FIB_2_TO_20
    assert "/drover.v1.Queue/Submit" in standby.calls


def test_a_bare_unavailable_sends_on_only_the_calls_safe_to_send_twice(cluster, stand_in):
    going = stand_in(marked=False)
    name = f"bare-{time.monotonic_ns()}"
    with drover.Client([going.url, cluster.url]) as client:
        # It may have applied the add before it answered: not sent again.
        with pytest.raises(drover.MasterUnavailable, match=f"{going.url}: this master is a standby"):
            drover.Value(name, client=client).add(5)
        assert going.calls == ["/drover.v1.Coord/CounterAdd"]
        assert client.url == going.url
        # A read goes on, and the master that answered keeps the calls.
        assert drover.Value(name, client=client).value == 0
        assert client.url == cluster.url
        assert drover.Value(name, client=client).add(5) == 5
        assert going.calls == ["/drover.v1.Coord/CounterAdd", "/drover.v1.Coord/CounterGet"]


def test_when_no_master_answers_the_error_names_each():
    dead = [dead_url(), dead_url()]
    started = time.monotonic()
    with drover.Pool(master=dead) as pool:
        with pytest.raises(drover.MasterUnavailable, match="none of the 2 masters answered") as raised:
            pool.map(drover.fib, [1, 2])
    for url in dead:
        assert url in str(raised.value)
    with drover.Client(",".join(dead)) as client:
        with pytest.raises(drover.MasterUnavailable, match=f"{dead[0]}.*{dead[1]}"):
            client.stats()
        with pytest.raises(drover.MasterUnavailable, match="any of the masters"):
            client.wait_ready(timeout=0.2)
    # Never reached, the list is gone around once, as the CLI's first connection.
    assert time.monotonic() - started < 20


def test_wait_ready_picks_a_master_that_accepts(cluster):
    with drover.Client([dead_url(), cluster.url]) as client:
        client.wait_ready(timeout=10)
        assert client.url == cluster.url


def test_an_empty_address_is_refused_naming_it(monkeypatch):
    with pytest.raises(ValueError, match=r"master: address 2 of 'http://127.0.0.1:1,,http://127.0.0.1:2' is empty"):
        drover.Client("http://127.0.0.1:1,,http://127.0.0.1:2")
    with pytest.raises(ValueError, match="master: address 2 of"):
        drover.Client(["http://127.0.0.1:1", " "])
    monkeypatch.setenv("DROVER_MASTER", "http://127.0.0.1:1,")
    with pytest.raises(ValueError, match="DROVER_MASTER: address 2 of 'http://127.0.0.1:1,' is empty"):
        drover.Pool()
    monkeypatch.delenv("DROVER_MASTER")
    # Each one as one master's URL would be.
    client = drover.Client(" 127.0.0.1:1 , http://h:2/ ")
    assert client.urls == ("http://127.0.0.1:1", "http://h:2/")
    with pytest.raises(ValueError, match="scheme"):
        drover.Client("http://127.0.0.1:1,ftp://127.0.0.1:2")


def test_threads_moving_on_at_once_all_reach_the_live_master(cluster):
    # Threads whose calls fail on one master at once move the client on
    # once, not once each: none skips the live master.
    with drover.Client([dead_url(), dead_url(), cluster.url]) as client:
        got: List[int] = []
        threads = [threading.Thread(target=lambda: got.append(len(client.stats().workers))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(got) == 8 and client.url == cluster.url
