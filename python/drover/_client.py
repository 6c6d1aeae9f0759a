"""The connection to a master: its address, TLS and token (read like the
``drover`` CLI reads them), one gRPC channel per process, and the ``Queue``
calls the pools make, with the master's limits handled here once.

grpcio channels must not cross a ``fork()`` (grpc/grpc#13873): a client
notices that it runs in a new process (``os.register_at_fork`` and the pid)
and opens a new channel there, leaving the parent's untouched.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

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

# The limits in the master's refusals (limits.rs, state/lifecycle.rs).
_LIMIT_JOBS = re.compile(r"over the limit of (\d+) per submit")
_LIMIT_BYTES = re.compile(r"over the limit of (\d+) bytes")
_LIMIT_QUEUED = re.compile(r"this batch adds (\d+), over the limit of (\d+) queued jobs")

PathOrPem = Union[str, bytes, "os.PathLike[str]"]

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
    master: Optional[str],
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


class Client:
    """A connection to a drover master, shared by pools and executors.

    ``master`` is the master's URL (``http://HOST:PORT``, or ``https://`` with
    ``ca``); ``token`` the client token; ``ca`` the CA certificate that signed
    the master's certificate (a path or PEM bytes); ``tls_cert``/``tls_key``
    this client's certificate for mutual TLS. Each one not given is read from
    the variable the CLI reads: ``DROVER_MASTER`` (default
    ``http://127.0.0.1:50051``), ``DROVER_TOKEN`` or ``DROVER_TOKEN_FILE``,
    ``DROVER_CA``, ``DROVER_TLS_CERT`` and ``DROVER_TLS_KEY``.

    Nothing connects until the first call; a master that cannot be reached
    then raises :class:`drover.MasterUnavailable` naming the address.
    """

    def __init__(
        self,
        master: Optional[str] = None,
        token: Optional[str] = None,
        ca: Optional[PathOrPem] = None,
        *,
        tls_cert: Optional[PathOrPem] = None,
        tls_key: Optional[PathOrPem] = None,
    ):
        env = os.environ
        url = (master or env.get("DROVER_MASTER") or DEFAULT_MASTER_URL).strip()
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest, url = "http", url, f"http://{url}"
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"bad master URL {url!r}: the scheme must be http:// or https://")
        target = rest.rstrip("/")
        if not target or "/" in target:
            raise ValueError(f"bad master URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        #: The master's URL, as errors name it.
        self.url = url
        self._target = target
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
        https = scheme == "https"
        if https and self._ca is None:
            raise ValueError(
                f"{url} is https: give the CA certificate that signed the master's certificate "
                "with ca= (or DROVER_CA)"
            )
        if not https and self._ca is not None:
            raise ValueError(f"ca is given, so TLS is meant, but {url} is not an https:// URL")
        if not https and self._identity is not None:
            raise ValueError(f"tls_cert is given, so TLS is meant, but {url} is not an https:// URL")
        self._https = https
        # Sent with every call: `authorization: Bearer <token>` (auth.rs).
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {self._token}"),) if self._token else ()
        )
        self._lock = threading.Lock()
        self._pid = -1
        self._channel: Optional[grpc.Channel] = None
        self._stub: Optional[pb_grpc.QueueStub] = None
        self._tracker: Any = None
        self._closed = False
        #: Set on a job's client of its worker's Coord proxy: errors say so.
        self._via_worker = False
        #: The master's --max-batch-jobs, once a refusal has told it; maps
        #: cut their submits to it.
        self.max_batch_jobs: Optional[int] = None
        #: Argument bytes a map puts in one submit: lowered when the master's
        #: --max-message-bytes refuses a submit.
        self.max_submit_bytes = MAX_SUBMIT_BYTES
        _CLIENTS.add(self)

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
        return f"drover.Client({self.url!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes this process's channel; results still awaited fail."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
            tracker, self._tracker = self._tracker, None
        if channel is not None and self._pid == os.getpid():
            if tracker is not None:
                tracker.stop()
            channel.close()

    # ---- the channel, per process ----

    def _forget_parent(self) -> None:
        """In a forked child: drops (without touching) the parent's channel
        and background threads, and renews the lock."""
        if self._channel is not None:
            _ABANDONED.append(self._channel)
        self._channel = self._stub = None
        self._tracker = None
        self._pid = -1
        self._lock = threading.Lock()

    def _queue(self) -> pb_grpc.QueueStub:
        """The Queue stub of this process, connecting (lazily) if needed."""
        stub = self._stub
        if stub is not None and self._pid == os.getpid():
            return stub
        with self._lock:
            if self._closed:
                raise DroverError(f"the client of {self.url} is closed")
            if self._pid != os.getpid():
                # A fork that register_at_fork did not see (os.fork from C).
                if self._channel is not None:
                    _ABANDONED.append(self._channel)
                self._channel = self._stub = None
                self._tracker = None
            if self._stub is None:
                self._channel = self._open_channel()
                self._stub = pb_grpc.QueueStub(self._channel)
                self._pid = os.getpid()
            return self._stub

    def _open_channel(self) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # As net.rs: keepalive every 10 s, dead after 20 s without an answer.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Each Client its own connection, even to the same master.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self._https:
            cert, key = self._identity if self._identity else (None, None)
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._ca, private_key=key, certificate_chain=cert
            )
            return grpc.secure_channel(self._target, creds, options=options)
        return grpc.insecure_channel(self._target, options=options)

    def _tracker_here(self) -> Any:
        """The background submitter and result watcher of this process."""
        self._queue()
        with self._lock:
            if self._tracker is None:
                from ._tracker import Tracker

                self._tracker = Tracker(self)
            return self._tracker

    def _error(self, err: grpc.RpcError, first_index: int = 0) -> DroverError:
        return _errors.from_rpc_error(err, self.url, first_index, self._via_worker)

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
        return self._queue().Submit.future(req, metadata=self._metadata)

    def _submit_finish(self, call: Any, req: Any, first_index: int) -> List[Tuple[int, Any]]:
        """The answer to a submit sent by _submit_start, as _submit gives it
        (a refusal by a master limit handled the same way)."""
        try:
            return [(0, call.result())]
        except grpc.RpcError as err:
            e = self._error(err, first_index)
        out: List[Tuple[int, Any]] = []
        self._submit_into(req, 0, first_index, out, refused=e)
        return out

    def _submit_into(
        self, req: Any, offset: int, first_index: int, out: List[Tuple[int, Any]], refused: Optional[DroverError] = None
    ) -> None:
        delay = 0.01
        warned = False
        while True:
            if refused is None:
                try:
                    out.append((offset, self._queue().Submit(req, metadata=self._metadata)))
                    return
                except grpc.RpcError as err:
                    e = self._error(err, first_index + offset)
            else:
                e, refused = refused, None
            if not isinstance(e, LimitExceeded):
                raise e
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
                    part = pb.SubmitRequest(jobs=req.jobs[start : start + min(piece, n - 1)])
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
        RECONNECT_PATIENCE_S; an ordered watch resumes where it stopped, an
        unordered one sends every finished job again (receivers ignore
        repeats). Past ``deadline`` (time.monotonic()) it raises TimeoutError.
        """
        sent = 0
        patience_until: Optional[float] = None
        delay = 0.05
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            call = self._queue().Watch(
                pb.WatchRequest(batch_id=batch_id, ordered=ordered),
                metadata=self._metadata,
                timeout=timeout,
            )
            try:
                skip = sent if ordered else 0
                for msg in call:
                    patience_until = None
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
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None:
                    raise TimeoutError(f"timed out waiting for the results of batch {batch_id}") from None
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise self._error(err) from None
                now = time.monotonic()
                if patience_until is None:
                    patience_until = now + RECONNECT_PATIENCE_S
                if now >= patience_until:
                    raise self._error(err) from None
                log.info("drover: lost the watch of batch %s (%s); reconnecting", batch_id, err.details())
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()

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
            try:
                resp = self._queue().Get(req, metadata=self._metadata)
            except grpc.RpcError as err:
                raise self._error(err) from None
            jobs.extend(resp.jobs)
            if not resp.next_page_token:
                del resp.jobs[:]
                resp.jobs.extend(jobs)
                return resp
            req.page_token = resp.next_page_token
            req.wait = False

    def _cancel(self, job_ids: Sequence[str] = (), batch_id: str = "") -> Any:
        try:
            return self._queue().Cancel(
                pb.CancelRequest(job_ids=list(job_ids), batch_id=batch_id), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise self._error(err) from None

    # ---- for people and tests ----

    def stats(self) -> Any:
        """The master's ``StatsResponse``: queue depth by state, workers,
        jobs per second."""
        try:
            return self._queue().Stats(pb.StatsRequest(), metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

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
        """Waits until the master answers, raising MasterUnavailable naming
        the address after ``timeout`` seconds."""
        ready = grpc.channel_ready_future(self._channel_here())
        try:
            ready.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            # Stops its connectivity polling thread, which would otherwise
            # go on (and count as a gRPC call in flight at a fork).
            ready.cancel()
            raise MasterUnavailable(
                f"cannot reach the master at {self.url}: no connection within {timeout:g} s"
            ) from None

    def _channel_here(self) -> grpc.Channel:
        self._queue()
        assert self._channel is not None
        return self._channel
