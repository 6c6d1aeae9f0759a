"""The connection to a master: its address, TLS and token (read like the
``drover`` CLI reads them), one gRPC channel per process, and the ``Queue``
calls the pools make, with the master's limits handled here once.

Given several masters (``DROVER_MASTER=a,b,c``: the masters of one
PostgreSQL database, one the leader, the others standbys), a call goes to
the master the client talks to now and moves to the next one, wrapping
around, when that one is away and the call is safe to send again
(:class:`_Failover`, the rules of the CLI's ``cli/src/masters.rs``).

grpcio channels must not cross a ``fork()`` (grpc/grpc#13873): a client
notices that it runs in a new process (``os.register_at_fork`` and the pid)
and opens new channels there, leaving the parent's untouched.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc

from . import _errors
from ._errors import DroverError, LimitExceeded, MasterUnavailable
from .v1 import drover_pb2 as pb
from .v1 import drover_pb2_grpc as pb_grpc

log = logging.getLogger("drover")

#: Where the master listens when nothing says otherwise (as the CLI).
DEFAULT_MASTER_URL = "http://127.0.0.1:50051"

#: The largest message sent or accepted, as the Rust side (net.rs).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Argument bytes per submit, far under the default 64 MiB message.
MAX_SUBMIT_BYTES = 4 * 1024 * 1024

#: The longest token the master accepts, in bytes (auth.rs).
MAX_TOKEN_BYTES = 4096

# How long the client keeps trying to reach a master that went away while it
# was waiting for results (a restart of a durable master), before it gives up.
RECONNECT_PATIENCE_S = 30.0

#: With several masters, how long a call safe to send again (a submit named
#: by its request id, a read of results, a watch) goes around them while
#: none answers, as the CLI does (``RECONNECT_FOR``, cli/src/client.rs): a
#: takeover waits out the old leader's lease, which may be set long.
FAILOVER_PATIENCE_S = 120.0

#: The metadata key of the UNAVAILABLE a standby master answers with
#: (``common::net::STANDBY_METADATA``): the call was not applied, so even
#: one unsafe to send twice may go to the next master.
STANDBY_METADATA = "drover-standby"

# The limits in the master's refusals (limits.rs, state/lifecycle.rs).
_LIMIT_JOBS = re.compile(r"over the limit of (\d+) per submit")
_LIMIT_BYTES = re.compile(r"over the limit of (\d+) bytes")
_LIMIT_QUEUED = re.compile(r"this batch adds (\d+), over the limit of (\d+) queued jobs")

T = TypeVar("T")

PathOrPem = Union[str, bytes, "os.PathLike[str]"]
#: One master's URL, several separated by commas, or a list of them.
Masters = Union[None, str, Sequence[str]]

# Every live client, to reset after fork() (a lock held by another thread at
# the fork would stay held in the child forever).
_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()
# Channels of a parent process, kept referenced in the child so that their
# finalizers never run there: the child must not touch them at all.
_ABANDONED: List[Any] = []


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_token(text: str, what: str) -> str:
    t = text.strip()
    if not t:
        raise ValueError(f"{what}: the token is empty")
    if len(t.encode()) > MAX_TOKEN_BYTES:
        raise ValueError(f"{what}: the token has {len(t.encode())} bytes, over the limit of {MAX_TOKEN_BYTES}")
    if not all(33 <= ord(c) <= 126 for c in t):
        raise ValueError(f"{what}: the token may hold only visible ASCII characters (no spaces)")
    return t


def _read_pem(value: PathOrPem, what: str) -> bytes:
    """Reads PEM given as bytes or as a path, naming ``what`` in errors."""
    if isinstance(value, bytes):
        pem = value
        where = "the bytes given"
    else:
        path = os.fspath(value)
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ValueError(f"{what}: cannot read {path}: {e.strerror or e}") from None
        where = path
    if b"-----BEGIN " not in pem:
        raise ValueError(f"{what}: {where} is not PEM (no -----BEGIN line)")
    return pem


def client_for(
    client: Optional["Client"],
    master: Masters,
    token: Optional[str],
    ca: Optional[PathOrPem],
    tls_cert: Optional[PathOrPem],
    tls_key: Optional[PathOrPem],
) -> Tuple["Client", bool]:
    """The client a Pool or an Executor works through: the one given, or a
    new one from the connection settings; and whether it owns (and so
    closes) it."""
    if client is not None and (master or token or ca or tls_cert or tls_key):
        raise ValueError("give client= or the connection settings, not both")
    if client is not None:
        return client, False
    return Client(master, token, ca, tls_cert=tls_cert, tls_key=tls_key), True


def _master_urls(master: Masters, env: Any) -> Tuple[str, ...]:
    """The masters' URLs, from ``master`` (a URL, several separated by
    commas, or a list of them) or ``DROVER_MASTER``, each as one master's
    would be: ``HOST:PORT`` means ``http://HOST:PORT``, and a trailing ``/``
    is dropped. An empty entry is refused, naming it (as the CLI's
    ``--master: empty address``)."""
    if master is None or master == "":
        what, given = "DROVER_MASTER", env.get("DROVER_MASTER") or DEFAULT_MASTER_URL
    else:
        what, given = "master", master
    entries = given.split(",") if isinstance(given, str) else list(given)
    if not entries:
        raise ValueError(f"{what}: no master address given")
    urls = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise TypeError(f"{what}: a master's URL is a str, not {type(entry).__name__} ({entry!r})")
        if not entry.strip():
            raise ValueError(f"{what}: address {i + 1} of {given!r} is empty")
        urls.append(_normalised(entry.strip()))
    return tuple(urls)


def _normalised(url: str) -> str:
    """One master's URL, with ``http://`` added when it has no scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest, url = "http", url, f"http://{url}"
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"bad master URL {url!r}: the scheme must be http:// or https://")
    target = rest.rstrip("/")
    if not target or "/" in target:
        raise ValueError(f"bad master URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    return url


def _target(url: str) -> str:
    """The ``HOST:PORT`` a channel to ``url`` dials."""
    return url.partition("://")[2].rstrip("/")


def _https(url: str) -> bool:
    return url.lower().startswith("https://")


def from_standby(err: grpc.RpcError) -> bool:
    """Whether a standby master answered the call (its UNAVAILABLE carries
    :data:`STANDBY_METADATA`), so that no master applied it."""
    if _code(err) != grpc.StatusCode.UNAVAILABLE:
        return False
    for part in ("trailing_metadata", "initial_metadata"):
        get = getattr(err, part, None)
        try:
            metadata = get() if get is not None else None
        except Exception:  # a call that never started has none
            metadata = None
        if any(key == STANDBY_METADATA for key, _ in metadata or ()):
            return True
    return False


def _code(err: grpc.RpcError) -> Optional[grpc.StatusCode]:
    return err.code() if hasattr(err, "code") else None


def _details(err: grpc.RpcError) -> str:
    return (err.details() if hasattr(err, "details") else None) or str(err)


class _Failover:
    """How one call moves between the masters after failures (with one
    master: how it tries that one again). The CLI's rules
    (``cli/src/masters.rs``):

    - ``safe``: a call whose second delivery changes nothing (a read, a
      submit named by its request id, a cancel) goes on after any
      UNAVAILABLE, the sign of a master away or a connection cut.
    - not ``safe``: only when no master can have applied it: the connection
      could not be made, or a standby answered (:func:`from_standby`). A
      master shutting down may answer a bare UNAVAILABLE after applying it.

    Each failure moves the client to the next master, wrapping around, so
    that later calls start at the one that answers. After a full round
    without an answer it waits (50 ms, doubling up to ``max_delay``) and goes
    around again, until ``patience`` seconds have passed without an answer;
    with ``patience`` None, it goes around once. Then it raises
    :class:`drover.MasterUnavailable`, naming every master tried.
    """

    def __init__(self, client: "Client", safe: bool, patience: Optional[float], max_delay: float = 2.0):
        self._client = client
        self._safe = safe
        self._patience = patience
        self._max_delay = max_delay
        self._delay = 0.05
        self._since: Optional[float] = None
        # Masters tried since the last wait.
        self._tried = 0
        # The last failure of each master tried, by index.
        self._failures: dict = {}

    def allows(self, err: grpc.RpcError) -> bool:
        """Whether ``err`` lets the call be sent again, here or elsewhere."""
        if _code(err) != grpc.StatusCode.UNAVAILABLE:
            return False
        return self._safe or _errors.never_sent(_details(err)) or from_standby(err)

    def after(self, at: int, err: grpc.RpcError, first_index: int = 0) -> None:
        """Called when the call failed with ``err`` at master ``at``: moves
        to the next master and returns when the call may be made again;
        raises the error for a person when ``err`` does not allow that or
        no master answered for too long."""
        if not self.allows(err):
            raise self._client._error(err, first_index, at=at) from None
        now = time.monotonic()
        if self._since is None:
            self._since = now
        self._failures[at] = _details(err)
        if not _errors.never_sent(_details(err)):
            self._client._answered = True
        urls = self._client.urls
        nxt = self._client._move_on(at)
        self._tried += 1
        if self._tried < len(urls):
            log.info("drover: the master at %s is unavailable (%s); trying %s", urls[at], _details(err), urls[nxt])
            return
        self._tried = 0
        never = len(urls) > 1 and not self._client._answered
        if self._patience is None or never or now - self._since >= self._patience:
            raise self._gave_up(err, at, now - self._since) from None
        log.info("drover: lost the master (%s); reconnecting", _details(err))
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, self._max_delay)

    def progress(self) -> None:
        """Notes an answer: the next loss starts a fresh wait."""
        self._since = None
        self._delay = 0.05
        self._tried = 0

    def _gave_up(self, err: grpc.RpcError, at: int, waited: float) -> DroverError:
        urls = self._client.urls
        if len(urls) == 1:
            return self._client._error(err, at=at)
        during = f" in {waited:.0f} s" if waited >= 1 else ""
        tried = "; ".join(f"{urls[i]}: {d}" for i, d in sorted(self._failures.items()))
        return MasterUnavailable(f"none of the {len(urls)} masters answered{during}: {tried}", _code(err))


class Client:
    """A connection to a drover master, shared by pools and executors.

    ``master`` is the master's URL (``http://HOST:PORT``, or ``https://`` with
    ``ca``); ``token`` the client token; ``ca`` the CA certificate that signed
    the master's certificate (a path or PEM bytes); ``tls_cert``/``tls_key``
    this client's certificate for mutual TLS. Each one not given is read from
    the variable the CLI reads: ``DROVER_MASTER`` (default
    ``http://127.0.0.1:50051``), ``DROVER_TOKEN`` or ``DROVER_TOKEN_FILE``,
    ``DROVER_CA``, ``DROVER_TLS_CERT`` and ``DROVER_TLS_KEY``.

    ``master`` (and ``DROVER_MASTER``) may name several masters of one
    PostgreSQL database, separated by commas (``"http://a:50051,http://b:50051"``)
    or as a list, with the same TLS and token. Calls go to the first that
    answers, and that one keeps them while it does. When it goes away (it
    died, or it is a standby), a call moves to the next master, wrapping
    around, if sending it again is safe: reads, submits (each carries a
    request id), cancels, and the coordination calls safe to repeat; others
    (a counter's ``add``, a compare-and-set, a delete, a lock's acquire or
    release, a barrier) only when no master can have applied them (no
    connection was made, or a standby refused them). Submits, results and
    watches go around for up to ``FAILOVER_PATIENCE_S`` while none answers
    (a takeover waits out the old leader's lease); maps and futures read on
    where they stopped. With one master, calls behave as they always did.

    Nothing connects until the first call; a master that cannot be reached
    then raises :class:`drover.MasterUnavailable` naming the address (with
    several, naming each).
    """

    def __init__(
        self,
        master: Masters = None,
        token: Optional[str] = None,
        ca: Optional[PathOrPem] = None,
        *,
        tls_cert: Optional[PathOrPem] = None,
        tls_key: Optional[PathOrPem] = None,
    ):
        env = os.environ
        #: Every master's URL, in the order given.
        self.urls = _master_urls(master, env)
        self._token = self._token_from(token, env)
        ca = ca if ca is not None else env.get("DROVER_CA")
        cert = tls_cert if tls_cert is not None else env.get("DROVER_TLS_CERT")
        key = tls_key if tls_key is not None else env.get("DROVER_TLS_KEY")
        self._ca = _read_pem(ca, "ca (DROVER_CA)") if ca else None
        if bool(cert) != bool(key):
            raise ValueError("tls_cert needs tls_key and tls_key needs tls_cert (DROVER_TLS_CERT, DROVER_TLS_KEY)")
        self._identity = (
            (_read_pem(cert, "tls_cert (DROVER_TLS_CERT)"), _read_pem(key, "tls_key (DROVER_TLS_KEY)"))
            if cert
            else None
        )
        for url in self.urls:
            https = _https(url)
            if https and self._ca is None:
                raise ValueError(
                    f"{url} is https: give the CA certificate that signed the master's certificate "
                    "with ca= (or DROVER_CA)"
                )
            if not https and self._ca is not None:
                raise ValueError(f"ca is given, so TLS is meant, but {url} is not an https:// URL")
            if not https and self._identity is not None:
                raise ValueError(f"tls_cert is given, so TLS is meant, but {url} is not an https:// URL")
        # Sent with every call: `authorization: Bearer <token>` (auth.rs).
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {self._token}"),) if self._token else ()
        )
        several = len(self.urls) > 1
        #: How long calls that waited across a restart of one master (watches,
        #: coordination calls, an apply's submit) keep trying.
        self._reconnect_s = FAILOVER_PATIENCE_S if several else RECONNECT_PATIENCE_S
        #: How long submits and reads of results keep trying: with one
        #: master they are made once, as they always were.
        self._failover_s: Optional[float] = FAILOVER_PATIENCE_S if several else None
        self._lock = threading.Lock()
        self._pid = -1
        #: The index in ``urls`` of the master calls go to now.
        self._current = 0
        # This process's channel to each master, opened on its first call,
        # and the stubs on them by (master, stub class).
        self._channels: List[Optional[grpc.Channel]] = [None] * len(self.urls)
        self._stubs: dict = {}
        self._tracker: Any = None
        self._closed = False
        #: Whether a master was ever reached (it answered a call, or a
        #: connection to it was made). Until then a call goes around several
        #: masters once, as the CLI's first connection does: a list of which
        #: none can be reached fails at once.
        self._answered = False
        #: Set on a job's client of its worker's Coord proxy: errors say so.
        self._via_worker = False
        #: The master's --max-batch-jobs, once a refusal has told it; maps
        #: cut their submits to it.
        self.max_batch_jobs: Optional[int] = None
        #: Argument bytes a map puts in one submit: lowered when the master's
        #: --max-message-bytes refuses a submit.
        self.max_submit_bytes = MAX_SUBMIT_BYTES
        _CLIENTS.add(self)

    @property
    def url(self) -> str:
        """The URL of the master calls go to now, as errors name it."""
        return self.urls[self._current]

    @staticmethod
    def _token_from(token: Optional[str], env: Any) -> Optional[str]:
        if token is not None:
            return _check_token(token, "token")
        value, file = env.get("DROVER_TOKEN"), env.get("DROVER_TOKEN_FILE")
        if value and file:
            raise ValueError("give DROVER_TOKEN or DROVER_TOKEN_FILE, not both")
        if value:
            return _check_token(value, "DROVER_TOKEN")
        if file:
            try:
                with open(file, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise ValueError(f"DROVER_TOKEN_FILE: cannot read {file}: {e.strerror or e}") from None
            return _check_token(text, f"DROVER_TOKEN_FILE {file}")
        return None

    def __repr__(self) -> str:
        return f"drover.Client({','.join(self.urls)!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes this process's channels; results still awaited fail."""
        with self._lock:
            self._closed = True
            channels, self._channels = self._channels, [None] * len(self.urls)
            self._stubs = {}
            tracker, self._tracker = self._tracker, None
        if self._pid == os.getpid():
            if tracker is not None:
                tracker.stop()
            for channel in channels:
                if channel is not None:
                    channel.close()

    # ---- the channels, per process ----

    def _forget_parent(self) -> None:
        """In a forked child: drops (without touching) the parent's channels
        and background threads, and renews the lock."""
        _ABANDONED.extend(c for c in self._channels if c is not None)
        self._channels = [None] * len(self.urls)
        self._stubs = {}
        self._tracker = None
        self._pid = -1
        self._lock = threading.Lock()

    @property
    def _channel(self) -> Optional[grpc.Channel]:
        """This process's channel to the current master, if it is open."""
        return self._channels[self._current] if self._pid == os.getpid() else None

    def _stub(self, at: int, kind: Any = pb_grpc.QueueStub) -> Any:
        """A ``kind`` stub (QueueStub, CoordStub) on this process's channel
        to master ``at``, connecting (lazily) if needed."""
        stub = self._stubs.get((at, kind))
        if stub is not None and self._pid == os.getpid():
            return stub
        with self._lock:
            if self._closed:
                raise DroverError(f"the client of {self.url} is closed")
            if self._pid != os.getpid():
                # A fork that register_at_fork did not see (os.fork from C).
                _ABANDONED.extend(c for c in self._channels if c is not None)
                self._channels = [None] * len(self.urls)
                self._stubs = {}
                self._tracker = None
                self._pid = os.getpid()
            channel = self._channels[at]
            if channel is None:
                channel = self._channels[at] = self._open_channel(self.urls[at])
            stub = self._stubs.get((at, kind))
            if stub is None:
                stub = self._stubs[(at, kind)] = kind(channel)
            return stub

    def _queue(self) -> pb_grpc.QueueStub:
        """The Queue stub of the current master in this process."""
        return self._stub(self._current)

    def _move_on(self, at: int) -> int:
        """Moves on from master ``at``, whose call failed: the next one is
        current, unless another call moved on already. Returns the index of
        the current one."""
        with self._lock:
            if self._current == at:
                self._current = (at + 1) % len(self.urls)
            return self._current

    def _note_answer(self, answer: T) -> T:
        """Notes that a master answered (see ``_answered``); returns ``answer``."""
        self._answered = True
        return answer

    def _failover(self, safe: bool, patience: Optional[float], max_delay: float = 2.0) -> _Failover:
        return _Failover(self, safe, patience, max_delay)

    def _request_id(self) -> str:
        """A request id for a submit, with several masters: sent again to
        another master, the submit names the batch the first one made. With
        one master, none (submits are made once, as they always were)."""
        return str(uuid.uuid4()) if len(self.urls) > 1 else ""

    def _open_channel(self, url: str) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # As net.rs: keepalive every 10 s, dead after 20 s without an answer.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Each Client its own connection, even to the same master.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if len(self.urls) > 1:
            # A master that was down (a leader killed, started again as a
            # standby) is tried again within 2 s, as the CLI's rounds do,
            # not after gRPC's default of up to 2 minutes.
            options.append(("grpc.max_reconnect_backoff_ms", 2_000))
        target = _target(url)
        if _https(url):
            cert, key = self._identity if self._identity else (None, None)
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._ca, private_key=key, certificate_chain=cert
            )
            return grpc.secure_channel(target, creds, options=options)
        return grpc.insecure_channel(target, options=options)

    def _tracker_here(self) -> Any:
        """The background submitter and result watcher of this process."""
        self._queue()
        with self._lock:
            if self._tracker is None:
                from ._tracker import Tracker

                self._tracker = Tracker(self)
            return self._tracker

    def _error(self, err: grpc.RpcError, first_index: int = 0, at: Optional[int] = None) -> DroverError:
        url = self.urls[self._current if at is None else at]
        return _errors.from_rpc_error(err, url, first_index, self._via_worker)

    # ---- the Queue calls ----

    def _submit(self, req: Any, first_index: int = 0) -> List[Tuple[int, Any]]:
        """Submits a SubmitRequest and returns ``(offset, SubmitResponse)``
        pairs covering its jobs in order: more than one when a master limit
        (``--max-batch-jobs``, ``--max-message-bytes``) made the client split
        it. A full queue (``--max-queued``) is waited out. ``first_index`` is
        the position of its first job in a map, for error messages."""
        out: List[Tuple[int, Any]] = []
        self._submit_into(req, 0, first_index, out)
        return out

    def _submit_start(self, req: Any) -> Any:
        """Sends a submit without waiting for its answer (see _submit_finish)."""
        at = self._current
        return at, self._stub(at).Submit.future(req, metadata=self._metadata)

    def _submit_finish(self, call: Any, req: Any, first_index: int) -> List[Tuple[int, Any]]:
        """The answer to a submit sent by _submit_start, as _submit gives it
        (a refusal by a master limit, or a master away, handled the same
        way)."""
        at, future = call
        try:
            return [(0, self._note_answer(future.result()))]
        except grpc.RpcError as err:
            refused = (at, err)
        out: List[Tuple[int, Any]] = []
        self._submit_into(req, 0, first_index, out, refused=refused)
        return out

    def _submit_into(
        self,
        req: Any,
        offset: int,
        first_index: int,
        out: List[Tuple[int, Any]],
        refused: Optional[Tuple[int, grpc.RpcError]] = None,
    ) -> None:
        delay = 0.01
        warned = False
        # Sent again elsewhere only when it names what it made: its request
        # id, or every job's idempotency key.
        safe = bool(req.request_id) or all(j.idempotency_key for j in req.jobs)
        failover = self._failover(safe, self._failover_s)
        while True:
            if refused is None:
                at = self._current
                try:
                    resp = self._stub(at).Submit(req, metadata=self._metadata)
                    out.append((offset, self._note_answer(resp)))
                    return
                except grpc.RpcError as err:
                    refused = (at, err)
            at, err = refused
            refused = None
            if _code(err) == grpc.StatusCode.UNAVAILABLE:
                failover.after(at, err, first_index + offset)
                continue
            e = self._error(err, first_index + offset, at=at)
            if not isinstance(e, LimitExceeded):
                raise e
            failover.progress()  # a master answered
            msg = str(e)
            n = len(req.jobs)
            piece = 0
            if "--max-batch-jobs" in msg:
                # Learned once: later chunks are cut to the master's limit.
                m = _LIMIT_JOBS.search(msg)
                self.max_batch_jobs = int(m.group(1)) if m else max(1, n // 2)
                piece = self.max_batch_jobs
            elif "--max-queued" in msg and _LIMIT_QUEUED.search(msg):
                # A batch bigger than the whole queue's limit never fits:
                # send it in pieces that do (half, to fit beside others).
                m = _LIMIT_QUEUED.search(msg)
                limit = int(m.group(2))
                if n > limit:
                    piece = max(1, limit // 2)
                    self.max_batch_jobs = min(self.max_batch_jobs or piece, piece)
            elif "--max-message-bytes" in msg or "larger than max" in msg:
                m = _LIMIT_BYTES.search(msg)
                if m:
                    self.max_submit_bytes = min(self.max_submit_bytes, int(m.group(1)) // 2)
                piece = max(1, n // 2)
            if piece and n > 1:
                for start in range(0, n, min(piece, n - 1)):
                    jobs = req.jobs[start : start + min(piece, n - 1)]
                    part = pb.SubmitRequest(jobs=jobs, request_id=self._request_id())
                    self._submit_into(part, offset + start, first_index, out)
                return
            if "--max-queued" not in msg:
                raise e
            # Back-pressure: the queue is full until workers catch up.
            if not warned:
                log.info("drover: the master's queue is full; waiting for room (%s)", msg)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _watch(self, batch_id: str, ordered: bool, deadline: Optional[float] = None) -> Iterator[Any]:
        """Yields the WatchResponses of a batch until every job is finished.

        A master that goes away (a restart) is reached again for up to
        RECONNECT_PATIENCE_S; with several masters the watch moves to the
        next one (a failover) for up to FAILOVER_PATIENCE_S. An ordered
        watch resumes where it stopped, an unordered one sends every
        finished job again (receivers ignore repeats). Past ``deadline``
        (time.monotonic()) it raises TimeoutError.
        """
        sent = 0
        failover = self._failover(True, self._reconnect_s)
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            at = self._current
            call = self._stub(at).Watch(
                pb.WatchRequest(batch_id=batch_id, ordered=ordered),
                metadata=self._metadata,
                timeout=timeout,
            )
            try:
                skip = sent if ordered else 0
                for msg in call:
                    self._answered = True
                    failover.progress()
                    if skip:
                        n = len(msg.jobs)
                        if n <= skip:
                            skip -= n
                            continue
                        del msg.jobs[:skip]
                        skip = 0
                    sent += len(msg.jobs)
                    yield msg
                return
            except grpc.RpcError as err:
                if _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise TimeoutError(f"timed out waiting for the results of batch {batch_id}") from None
                failover.after(at, err)
            finally:
                call.cancel()

    def _unary(
        self,
        method: str,
        req: Any,
        safe: bool = True,
        patience: Optional[float] = None,
        *,
        kind: Any = pb_grpc.QueueStub,
        timeout: Optional[float] = None,
        metadata: Tuple[Tuple[str, str], ...] = (),
        max_delay: float = 2.0,
        check: Optional[Callable[[grpc.RpcError], None]] = None,
    ) -> Any:
        """Makes the call ``method`` of a ``kind`` stub (the Queue's unless
        said) at the current master and, as :class:`_Failover` allows, at
        the next ones. ``check`` sees each failure first, to raise an
        error of its own."""
        failover = self._failover(safe, patience, max_delay)
        while True:
            at = self._current
            try:
                call = getattr(self._stub(at, kind), method)
                return self._note_answer(call(req, metadata=self._metadata + metadata, timeout=timeout))
            except grpc.RpcError as err:
                if check is not None:
                    check(err)
                failover.after(at, err)

    def _get(self, job_ids: Sequence[str] = (), batch_id: str = "", wait: bool = False, timeout_s: float = 0) -> Any:
        req = pb.GetRequest(
            job_ids=list(job_ids),
            batch_id=batch_id,
            wait=wait,
            timeout_ms=max(1, int(timeout_s * 1000)) if timeout_s else 0,
        )
        # The master answers in pages bounded in bytes: read them all.
        jobs = []
        while True:
            resp = self._unary("Get", req, patience=self._failover_s)
            jobs.extend(resp.jobs)
            if not resp.next_page_token:
                del resp.jobs[:]
                resp.jobs.extend(jobs)
                return resp
            req.page_token = resp.next_page_token
            req.wait = False

    def _cancel(self, job_ids: Sequence[str] = (), batch_id: str = "") -> Any:
        # A job cancelled already stays cancelled: safe to send twice.
        return self._unary("Cancel", pb.CancelRequest(job_ids=list(job_ids), batch_id=batch_id))

    # ---- for people and tests ----

    def stats(self) -> Any:
        """The master's ``StatsResponse``: queue depth by state, workers,
        jobs per second."""
        return self._unary("Stats", pb.StatsRequest())

    def job(self, job_id: str) -> Any:
        """The ``JobInfo`` of one job, in whatever state it is."""
        jobs = self._get(job_ids=[job_id]).jobs
        if not jobs:
            raise DroverError(f"job {job_id} is not known to the master at {self.url}")
        return jobs[0]

    def cancel(self, id: str) -> Tuple[int, int]:
        """Cancels a job, or every unfinished job of a batch (a running job's
        process is killed). Returns (cancelled, already finished)."""
        resp = self._cancel(job_ids=[id])
        return resp.cancelled, resp.already_finished

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Waits until the master accepts a connection, raising
        MasterUnavailable naming the address after ``timeout`` seconds.
        With several masters, until one of them does (calls then go to the
        current one if it did, else to the first in the list that did)."""
        channels = [self._channel_at(i) for i in range(len(self.urls))]
        futures = [grpc.channel_ready_future(c) for c in channels]
        any_ready = threading.Event()
        for f in futures:
            f.add_done_callback(lambda _: any_ready.set())
        any_ready.wait(timeout)
        ready = [i for i, f in enumerate(futures) if f.done() and not f.cancelled()]
        # Stops their connectivity polling threads, which would otherwise go
        # on (and count as gRPC calls in flight at a fork).
        for f in futures:
            f.cancel()
        if not ready:
            if len(self.urls) == 1:
                where = f"the master at {self.url}"
            else:
                where = f"any of the masters {', '.join(self.urls)}"
            raise MasterUnavailable(f"cannot reach {where}: no connection within {timeout:g} s")
        with self._lock:
            if self._current not in ready:
                self._current = ready[0]

    def _channel_at(self, at: int) -> grpc.Channel:
        """This process's channel to master ``at``, opened if needed."""
        self._stub(at)
        channel = self._channels[at]
        assert channel is not None
        return channel

    def _channel_here(self) -> grpc.Channel:
        """This process's channel to the current master."""
        return self._channel_at(self._current)
