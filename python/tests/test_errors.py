"""What a user sees when something goes wrong: failed and cancelled jobs,
refused arguments, an unreachable master."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time

import grpc
import pytest

import drover


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_job_raises_job_failed_with_every_attempts_reason(pool):
    failing = pool.options(max_attempts=2, timeout=0.05)
    with pytest.raises(drover.JobFailed) as raised:
        # Element 3 is in the second submit: its index is still the map's.
        failing.map(drover.sleep, [0, 0, 0, 5], chunksize=2)
    e = raised.value
    assert (e.kind, e.arg, e.index) == ("sleep", "5000", 3)
    assert e.attempts == 2
    assert e.attempt_errors == ["attempt 1: timed out after 50 ms", "attempt 2: timed out after 50 ms"]
    assert e.job_id in str(e) and "timed out after 50 ms" in str(e)


def test_imap_raises_at_the_failed_place_and_goes_on(pool):
    results = pool.options(max_attempts=1, timeout=0.05).imap(drover.sleep, [0, 5, 0])
    assert next(results) is None
    with pytest.raises(drover.JobFailed):
        next(results)
    assert next(results) is None
    assert next(results, "end") == "end"


def test_a_cancelled_job_raises_cancelled_error_from_a_map(pool, client):
    results = pool.imap(drover.sleep, [60])
    batch = results._batches[0].batch_id
    assert client.cancel(batch) == (1, 0)
    with pytest.raises(cf.CancelledError, match="cancelled"):
        next(results)


def test_an_unreachable_master_is_named(cluster):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with drover.Pool(master=url) as pool:
        with pytest.raises(drover.MasterUnavailable, match=f"cannot reach the master at {url}"):
            pool.map(drover.fib, [1, 2])
    with drover.Executor(master=url) as ex:
        with pytest.raises(ConnectionError, match=url):
            ex.submit(drover.fib, 3).result(timeout=30)
    with drover.Client(url) as client, pytest.raises(drover.MasterUnavailable, match=url):
        client.wait_ready(timeout=0.5)
    assert time.monotonic() - started < 20


def test_refused_arguments_name_the_maps_element_and_the_limit(pool):
    # Element 15 is past --max-fib-n, in the second submit of chunks of 10.
    args = list(range(20))
    args[15] = 10**12
    with pytest.raises(drover.InvalidArgument) as raised:
        pool.map(drover.fib, args, chunksize=10)
    msg = str(raised.value)
    assert "jobs[15].arg" in msg and "--max-fib-n" in msg, msg
    assert isinstance(raised.value, ValueError)


def test_one_bad_submit_does_not_fail_the_others_sent_with_it(executor):
    futures = [executor.submit(drover.fib, n) for n in (5, 10**12, 6)]
    assert futures[0].result(timeout=30) == 5
    assert futures[2].result(timeout=30) == 8
    with pytest.raises(drover.InvalidArgument, match="--max-fib-n"):
        futures[1].result(timeout=30)


def test_bad_connection_settings_are_refused_up_front(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="https"):
        drover.Client("https://127.0.0.1:1")
    with pytest.raises(ValueError, match="scheme"):
        drover.Client("ftp://127.0.0.1:1")
    pem = tmp_path / "not.pem"
    pem.write_text("hello")
    with pytest.raises(ValueError, match="not PEM"):
        drover.Client("https://127.0.0.1:1", ca=str(pem))
    with pytest.raises(ValueError, match="visible ASCII"):
        drover.Client("http://127.0.0.1:1", token="a b")
    monkeypatch.setenv("DROVER_TOKEN", "x")
    monkeypatch.setenv("DROVER_TOKEN_FILE", str(pem))
    with pytest.raises(ValueError, match="not both"):
        drover.Client("http://127.0.0.1:1")


class _Unavailable(grpc.RpcError):
    """What grpc raises for an UNAVAILABLE call, with ``details``."""

    def __init__(self, details: str):
        self._details = details

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details


def test_a_jobs_unreachable_master_is_named_by_its_worker_not_the_proxy():
    from drover import _errors

    proxy = "http://127.0.0.1:41234"
    said = "worker w1 failed to connect to the master at http://10.0.0.5:50051: connection refused"
    e = _errors.from_rpc_error(_Unavailable(said), proxy, via_worker=True)
    assert isinstance(e, drover.MasterUnavailable)
    # The worker's words name the master; the proxy's loopback URL is not
    # passed off as the master's.
    assert str(e) == said
    e = _errors.from_rpc_error(_Unavailable("failed to connect to all addresses"), proxy, via_worker=True)
    assert str(e) == f"cannot reach this job's worker (its Coord proxy at {proxy}): failed to connect to all addresses"
    # A client of the master itself names the master as before.
    e = _errors.from_rpc_error(_Unavailable("connection refused"), proxy)
    assert str(e) == f"cannot reach the master at {proxy}: connection refused"
