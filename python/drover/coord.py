"""Shared state across hosts, over the master's ``Coord`` service: the
``multiprocessing`` synchronisation primitives and shared objects, with the
import changed.

    import drover

    total = drover.Value("total")
    with drover.Lock("total"):               # held under a lease, renewed here
        total.value = total.value + 1
    total.add(1)                             # atomic, without a lock

    d = drover.Dict("results")               # a MutableMapping over keys "results/..."
    d["a"] = [1, 2]

Locks and semaphores are leases tied to a session of this process: a
background thread renews it every third of the lease; if this process dies,
the master releases what it held within the lease. Each grant carries a
fencing token (``lock.fencing_token``) that grows with every grant, to hand
to what the lock protects. State lives in the master's store: with its redb
store it survives a restart of the master.

Each object works through a :class:`drover.Client` (``client=``), by default
one shared client built from ``DROVER_MASTER`` and the token variables.
Inside a Python job the default client reaches the master through the
job's worker (``DROVER_COORD``, set by the worker), and the job's session
belongs to its attempt: when the attempt ends (it returns, raises, times
out or is cancelled), the worker closes the session and the master
releases the locks it still holds at once.

A master that restarts is reached again, with backoff, for up to
``RECONNECT_PATIENCE_S``: a call that could not reach it is sent again, and
so is a read cut off in flight (and an event wait, which waits anew); a
write cut off in flight (an add, put, set, delete, acquire, release, or an
event's set or clear) raises :class:`drover.MasterUnavailable`, since it
may have been applied, and sent again after another client's write it
would undo that one.
The session, and the locks it holds, survive the restart. Sessions are
closed at exit (their locks released at once), or with :func:`close`.

Given several masters of one PostgreSQL database (``DROVER_MASTER=a,b``),
a call moves to the next master by the same rules, for up to
``FAILOVER_PATIENCE_S``: a call safe to send again moves on whenever its
master is away, a write only when no master can have applied it (the
connection could not be made, or a standby refused it). The session and
its locks live in the database: they are the new leader's after a
failover.
"""

from __future__ import annotations

import atexit
import os
import pickle
import re
import threading
from collections.abc import MutableMapping
from typing import Any, Dict as _Dict, Iterator, List, Optional, Tuple

import grpc

from . import _errors
from ._client import Client
from .v1 import drover_pb2 as pb
from .v1 import drover_pb2_grpc as pb_grpc

__all__ = ["Barrier", "Dict", "Event", "Lock", "Semaphore", "Value", "close"]

#: Calls whose second delivery changes nothing, even with other clients
#: writing in between: sent again when a restart of the master cut them
#: off. Writes (a put, a set, an event's set or clear) are not among them:
#: sent again after another client's write, they would undo it.
_RESENDABLE = frozenset(
    {
        "OpenSession",
        "KeepAlive",
        "CloseSession",
        "KvGet",
        "KvList",
        "CounterGet",
        "EventWait",
        "Inspect",
    }
)

#: The lease of this process's session, in seconds (``DROVER_LEASE_S``).
DEFAULT_LEASE_S = 10.0

_default_client: Optional[Client] = None
_sessions: _Dict[Tuple[int, int, Optional[str]], "_Session"] = {}
_guard = threading.Lock()


def _client(client: Optional[Client]) -> Client:
    global _default_client
    if client is not None:
        return client
    with _guard:
        if _default_client is None:
            proxy = os.environ.get("DROVER_COORD")
            if proxy:
                # In a Python job: through the worker, with its secret; the
                # job needs no address or token of the master's.
                token = os.environ.get("DROVER_COORD_TOKEN", "")
                _default_client = Client(proxy, token, "", tls_cert="", tls_key="")
                _default_client._via_worker = True
            else:
                _default_client = Client()
        return _default_client


def _call(
    client: Client,
    method: str,
    req: Any,
    timeout: Optional[float] = None,
    resend: bool = True,
    metadata: Tuple[Tuple[str, str], ...] = (),
) -> Any:
    """Calls ``Coord.method`` at the client's current master, sending it
    again across a restart of the master, or to the next of several
    masters, when that is safe (see the module docs; ``resend=False``: not
    across a restart, and to the next master only when none applied it);
    errors become :class:`drover.DroverError` subclasses naming what went
    wrong."""
    return client._unary(
        method,
        req,
        resend and method in _RESENDABLE,
        client._reconnect_s if resend else None,
        kind=pb_grpc.CoordStub,
        timeout=timeout,
        metadata=metadata,
        max_delay=1.0,
        check=_broken_barrier,
    )


def _broken_barrier(err: grpc.RpcError) -> None:
    """Raises a barrier's ABORTED as ``threading.BrokenBarrierError``."""
    if err.code() == grpc.StatusCode.ABORTED:
        raise threading.BrokenBarrierError(err.details()) from None


class _Session:
    """This process's session with the master: opened on first use, renewed
    by a daemon thread, closed (releasing what it holds) at exit."""

    def __init__(self, client: Client, lease_s: float, job_slot: Optional[str]):
        self.client = client
        resp = _call(
            client,
            "OpenSession",
            pb.OpenSessionRequest(lease_ms=int(lease_s * 1000), owner=f"{os.uname().nodename}:{os.getpid()}"),
            # The worker ties the session to the job running in this slot.
            metadata=(("drover-job-slot", job_slot),) if job_slot is not None else (),
        )
        self.id = resp.session
        self.lease_s = resp.lease_ms / 1000
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        threading.Thread(target=self._renew, name="drover-coord-session", daemon=True).start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                _call(self.client, "KeepAlive", pb.KeepAliveRequest(session=self.id), timeout=self.lease_s / 3)
            except _errors.DroverError as e:
                if e.code == grpc.StatusCode.NOT_FOUND:
                    self.lost = str(e)
                    return

    def close(self) -> None:
        """Ends the session: the master releases its grants at once."""
        self._stop.set()
        if self.lost is None:
            self.lost = "closed"
            try:
                _call(self.client, "CloseSession", pb.CloseSessionRequest(session=self.id), timeout=2.0, resend=False)
            except Exception:  # the master may be gone; the lease ends it then
                pass

    @staticmethod
    def of(client: Client) -> "_Session":
        # In a Python job, one session per attempt (the runner sets the
        # job's slot while it runs); elsewhere one per process.
        job_slot = os.environ.get("DROVER_JOB_SLOT")
        key = (id(client), os.getpid(), job_slot)
        with _guard:
            session = _sessions.get(key)
        if session is None or session.lost is not None:
            lease = float(os.environ.get("DROVER_LEASE_S", DEFAULT_LEASE_S))
            session = _Session(client, lease, job_slot)
            with _guard:
                _sessions[key] = session
        return session


def _job_ended(job_slot: str) -> None:
    """Called by the worker's runner when the job in ``job_slot`` has
    ended. The worker closes the sessions opened through it, so they are
    only no longer renewed here; one the job opened with a client of its
    own (straight to a master) is closed here, like at exit."""
    with _guard:
        mine = [k for k in _sessions if k[2] == job_slot]
        sessions = [_sessions.pop(k) for k in mine]
        via_worker = _default_client if os.environ.get("DROVER_COORD") else None
    for s in sessions:
        if via_worker is not None and s.client is via_worker:
            s._stop.set()
            s.lost = "the job that opened this session has ended"
        else:
            s.close()


def close() -> None:
    """Closes this process's sessions (run at exit): the locks and
    semaphore permits they hold are released at once rather than when
    their lease runs out."""
    pid = os.getpid()
    with _guard:
        mine = [k for k in _sessions if k[1] == pid]
        sessions = [_sessions.pop(k) for k in mine]
    for s in sessions:
        s.close()


atexit.register(close)


def _timeout_ms(timeout: Optional[float]) -> Optional[int]:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return int(timeout * 1000)


class Semaphore:
    """A semaphore of ``value`` permits shared by every holder of ``name``
    (all must agree on ``value``). Like ``threading.Semaphore``:
    ``acquire(blocking=True, timeout=None)`` returns whether it got a
    permit; ``release()`` gives the last one back; a context manager."""

    def __init__(self, name: str, value: int = 1, client: Optional[Client] = None):
        if value < 1:
            raise ValueError(f"value must be at least 1, not {value}")
        self.name = name
        self.permits = value
        self._client = _client(client)
        # (fencing token, session) of each permit held.
        self._tokens: List[Tuple[int, int]] = []

    @property
    def fencing_token(self) -> Optional[int]:
        """The fencing token of the last permit acquired and still held."""
        return self._tokens[-1][0] if self._tokens else None

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        if not blocking:
            timeout = 0.0
        session = _Session.of(self._client)
        req = pb.AcquireRequest(name=self.name, permits=self.permits, session=session.id)
        ms = _timeout_ms(timeout)
        if ms is not None:
            req.timeout_ms = ms
        try:
            resp = _call(self._client, "Acquire", req)
        except _errors.DroverError as e:
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False
            raise
        self._tokens.append((resp.fencing_token, session.id))
        return True

    def release(self) -> None:
        if not self._tokens:
            raise ValueError(f"{type(self).__name__} {self.name!r} released too many times")
        token, session = self._tokens.pop()
        _call(self._client, "Release", pb.ReleaseRequest(name=self.name, fencing_token=token, session=session))

    def __enter__(self) -> "Semaphore":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<drover.{type(self).__name__} {self.name!r} permits={self.permits} held={len(self._tokens)}>"


class Lock(Semaphore):
    """A lock shared across hosts: a :class:`Semaphore` of one permit."""

    def __init__(self, name: str, client: Optional[Client] = None):
        super().__init__(name, 1, client)


class Value:
    """A shared 64-bit integer, like ``multiprocessing.Value('i')``:
    ``.value`` reads and writes it; :meth:`add` adds atomically and
    returns the new value; :meth:`get_lock` is a :class:`Lock` for
    read-modify-write sequences."""

    def __init__(self, name: str, client: Optional[Client] = None):
        self.name = name
        self._client = _client(client)

    @property
    def value(self) -> int:
        return _call(self._client, "CounterGet", pb.CounterGetRequest(name=self.name)).value

    @value.setter
    def value(self, v: int) -> None:
        _call(self._client, "CounterSet", pb.CounterSetRequest(name=self.name, value=int(v)))

    def add(self, delta: int = 1) -> int:
        return _call(self._client, "CounterAdd", pb.CounterAddRequest(name=self.name, delta=int(delta))).value

    def get_lock(self) -> Lock:
        return Lock(f"{self.name}.lock", self._client)


def _escape(part: str) -> str:
    """``part`` with no ``/``: ``%`` and ``/`` become ``%25`` and ``%2F``."""
    return part.replace("%", "%25").replace("/", "%2F")


def _unescape(part: str) -> str:
    return re.sub("%(25|2F)", lambda m: "%" if m.group(1) == "25" else "/", part)


class Dict(MutableMapping):
    """A shared dict, like ``multiprocessing.Manager().dict()``: string
    keys, values pickled, kept as the keys ``NAME/KEY`` of the master's
    key-value store, with ``%`` and ``/`` in NAME and KEY written ``%25``
    and ``%2F`` (so ``Dict("a")["x/y"]`` and ``Dict("a/x")["y"]`` are two
    entries). Each operation is one atomic call; guard read-modify-write
    sequences with a :class:`Lock`."""

    def __init__(self, name: str, client: Optional[Client] = None):
        if not isinstance(name, str):
            raise TypeError(f"drover.Dict names are str, not {type(name).__name__}")
        self.name = name
        self._prefix = _escape(name) + "/"
        self._client = _client(client)

    def _key(self, key: Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"drover.Dict keys are str, not {type(key).__name__}")
        return self._prefix + _escape(key)

    def __getitem__(self, key: str) -> Any:
        resp = _call(self._client, "KvGet", pb.KvGetRequest(key=self._key(key)))
        if not resp.HasField("entry"):
            raise KeyError(key)
        return pickle.loads(resp.entry.value)

    def __setitem__(self, key: str, value: Any) -> None:
        _call(self._client, "KvPut", pb.KvPutRequest(key=self._key(key), value=pickle.dumps(value)))

    def __delitem__(self, key: str) -> None:
        resp = _call(self._client, "KvDelete", pb.KvDeleteRequest(key=self._key(key)))
        if not resp.deleted:
            raise KeyError(key)

    def _entries(self) -> Iterator[Any]:
        start_after = ""
        while True:
            page = _call(self._client, "KvList", pb.KvListRequest(prefix=self._prefix, start_after=start_after))
            yield from page.entries
            if not page.more or not page.entries:
                return
            start_after = page.entries[-1].key

    def _own(self) -> Iterator[str]:
        """The keys of this dict's entries, as stored; entries written
        under the prefix by other means (``drover kv put a/x/y``) with a
        ``/`` of their own are not its."""
        for e in self._entries():
            rest = e.key[len(self._prefix):]
            if "/" not in rest:
                yield rest

    def __iter__(self) -> Iterator[str]:
        for k in self._own():
            yield _unescape(k)

    def __len__(self) -> int:
        return sum(1 for _ in self._own())

    def __repr__(self) -> str:
        return f"<drover.Dict {self.name!r}>"


class Event:
    """A shared event, like ``threading.Event``."""

    def __init__(self, name: str, client: Optional[Client] = None):
        self.name = name
        self._client = _client(client)

    def set(self) -> None:
        _call(self._client, "EventSet", pb.EventRequest(name=self.name))

    def clear(self) -> None:
        _call(self._client, "EventClear", pb.EventRequest(name=self.name))

    def is_set(self) -> bool:
        return _call(self._client, "Inspect", pb.InspectRequest(name=self.name)).event_set

    def wait(self, timeout: Optional[float] = None) -> bool:
        req = pb.EventWaitRequest(name=self.name)
        ms = _timeout_ms(timeout)
        if ms is not None:
            req.timeout_ms = ms
        return _call(self._client, "EventWait", req).is_set


class Barrier:
    """A shared barrier of ``parties``, like ``threading.Barrier``:
    :meth:`wait` returns this party's index (0 to parties - 1) once all
    have arrived, or raises ``threading.BrokenBarrierError`` for every
    waiter when one times out or dies."""

    def __init__(self, name: str, parties: int, client: Optional[Client] = None):
        self.name = name
        self.parties = parties
        self._client = _client(client)

    def wait(self, timeout: Optional[float] = None) -> int:
        session = _Session.of(self._client)
        req = pb.BarrierWaitRequest(name=self.name, parties=self.parties, session=session.id)
        ms = _timeout_ms(timeout)
        if ms is not None:
            req.timeout_ms = ms
        return _call(self._client, "BarrierWait", req).index
