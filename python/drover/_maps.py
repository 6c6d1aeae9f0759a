"""Maps streamed through the master: the input is read lazily, submitted in
batches (``chunksize`` jobs, a few MiB at most, under the master's
``--max-batch-jobs`` and ``--max-message-bytes``), at most ``max_in_flight``
jobs are submitted and not yet read back, and results are read with
``Watch`` as they come: in submission order (``map``, ``imap``) or as they
finish (``imap_unordered``). A map of a million elements never holds a
million results, or a million queued jobs.

Closing a map before its end (``break`` and the iterator dropped, an error,
a timeout) cancels its unfinished jobs on the master.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from ._errors import DroverError, JobFailed
from ._results import SUCCEEDED, error_of
from .v1 import drover_pb2 as pb

#: Jobs per submit when the caller does not say.
DEFAULT_CHUNKSIZE = 10_000
#: The first chunk of a map without a chunksize: the workers start on it
#: while the next, larger ones are encoded and sent.
FIRST_CHUNK = 1_000
#: Jobs a map keeps submitted but not yet read back, when the caller does not say.
DEFAULT_MAX_IN_FLIGHT = 100_000
# Per job on the wire besides its argument (tags, lengths, options), roughly.
_SPEC_OVERHEAD = 16


class _Batch:
    """One submitted batch of a map."""

    __slots__ = ("batch_id", "count", "first", "finished")

    def __init__(self, batch_id: str, count: int, first: int):
        self.batch_id = batch_id
        #: Jobs in it.
        self.count = count
        #: The map position of its first job.
        self.first = first
        #: Whether every result was read.
        self.finished = False


class MapRun(Iterator[Any]):
    """One map: an iterator of its results.

    ``next()`` raises a job's :class:`drover.JobFailed` or
    ``concurrent.futures.CancelledError`` at that job's place; iterating
    again goes on with the next result. ``close()`` (also on ``with``
    exit and garbage collection) cancels whatever has not finished.
    """

    def __init__(
        self,
        client: Any,
        kind: Any,
        items: Iterable[Any],
        options: Any,
        chunksize: Optional[int],
        max_in_flight: int,
        ordered: bool,
        deadline: Optional[float] = None,
        star: bool = False,
    ):
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int, got {chunksize!r}")
        self._client = client
        self._kind = kind
        # The input: one argument per job, or (star) a tuple of arguments.
        self._items = iter(items)
        self._star = star
        self._fields = options.spec_fields()
        self._key = options.idempotency_key
        self._chunksize = chunksize or DEFAULT_CHUNKSIZE
        self._grow = chunksize is None
        self._chunk = FIRST_CHUNK if self._grow else self._chunksize
        self._max_in_flight = max(max_in_flight, self._chunksize)
        self._ordered = ordered
        self._deadline = deadline
        # Map positions given out so far.
        self._next_index = 0
        self._exhausted = False
        self._closed = False
        # Submitted batches whose results are not all read, oldest first.
        self._batches: Deque[_Batch] = deque()
        # The map position of each batch's first job (a few per million jobs).
        self._first_of: Dict[str, int] = {}
        self._unread = 0
        # Results of the current message not yet returned.
        self._buffer: List[Any] = []
        self._pos = 0
        # Ordered: the watch of the oldest batch.
        self._stream: Optional[Iterator[Any]] = None
        # Unordered: messages from the watch threads.
        self._inbox: "queue.Queue[Tuple[str, Any, Any]]" = queue.Queue(maxsize=16)
        self._watchers: Dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    # ---- submitting ----

    def start(self) -> None:
        """Submits the first jobs now (up to max_in_flight), as pools and
        executors start work when it is handed to them."""
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    def _fill(self) -> None:
        """Submits chunks of the input until max_in_flight jobs are unread or
        the input ends. One submit is in flight while the next chunk is
        built, so encoding overlaps the master's work."""
        sent: Optional[Tuple[Any, Any, int]] = None
        try:
            while not self._exhausted and self._unread < self._max_in_flight:
                req = self._next_chunk()
                if not req.jobs:
                    break
                first = self._next_index - len(req.jobs)
                call = self._client._submit_start(req)
                self._unread += len(req.jobs)
                # This submit is recorded even if the previous one fails, so
                # that close() can cancel its jobs.
                previous, sent = sent, (call, req, first)
                if previous is not None:
                    self._record(*previous)
        finally:
            if sent is not None:
                self._record(*sent)

    def _record(self, call: Any, req: Any, first: int) -> None:
        """Waits for a submit and queues its batches for reading."""
        try:
            parts = self._client._submit_finish(call, req, first)
        except BaseException:
            self._unread -= len(req.jobs)
            raise
        for offset, resp in parts:
            b = _Batch(resp.batch_id, len(resp.job_ids), first + offset)
            self._batches.append(b)
            self._first_of[b.batch_id] = b.first
            if not self._ordered:
                self._start_watcher(b)

    def _next_chunk(self) -> Any:
        room = min(self._chunk, self._max_in_flight - self._unread, self._client.max_batch_jobs or self._chunk)
        max_bytes = self._client.max_submit_bytes
        # Without a chunksize, chunks start small so that the workers start
        # early, and double up to the default.
        self._chunk = min(self._chunk * 2, self._chunksize) if self._grow else self._chunk
        kind, fields, key = self._kind.kind, self._fields, self._key
        if self._star:
            encode_args = self._kind.encode
            encode = lambda args: encode_args(tuple(args), {})  # noqa: E731
        else:
            encode = self._kind.encode_one
        # With several masters, a request id: the submit may go to another.
        req = pb.SubmitRequest(request_id=self._client._request_id())
        add = req.jobs.add
        size = 0
        n = 0
        for item in self._items:
            arg = encode(item)
            if key is not None:
                # Unique across the whole map, not per chunk.
                add(kind=kind, arg=arg, idempotency_key=f"{key}#{self._next_index}", **fields)
            elif fields:
                add(kind=kind, arg=arg, **fields)
            else:
                add(kind=kind, arg=arg)
            self._next_index += 1
            n += 1
            size += len(arg) + _SPEC_OVERHEAD
            if n >= room or size >= max_bytes:
                return req
        self._exhausted = True
        return req

    # ---- reading ----

    def __iter__(self) -> "MapRun":
        return self

    def __next__(self) -> Any:
        while True:
            if self._pos < len(self._buffer):
                info = self._buffer[self._pos]
                self._pos += 1
                if info.state == SUCCEEDED:
                    return self._kind.decode(info.output)
                raise self._error(info)
            if self._closed:
                raise StopIteration
            try:
                if not self._refill():
                    self._closed = True
                    raise StopIteration
            except StopIteration:
                raise
            except BaseException:
                self.close()
                raise

    def _refill(self) -> bool:
        """Reads the next message of results into the buffer; False at the end."""
        while True:
            if self._ordered:
                if self._stream is None:
                    self._fill()
                    if not self._batches:
                        return False
                    self._stream = self._client._watch(self._batches[0].batch_id, True, self._deadline)
                msg = next(self._stream, None)
                if msg is None:
                    self._stream = None
                    self._batch_done(self._batches[0].batch_id)
                    continue
            else:
                self._fill()
                if not self._batches:
                    return False
                msg = self._take()
                if msg is None:
                    continue
            self._buffer = msg.jobs
            self._pos = 0
            if self._buffer:
                return True

    def _error(self, info: Any) -> BaseException:
        """The exception of a failed or cancelled job, its index the map's."""
        e = error_of(info)
        if isinstance(e, JobFailed):
            e.index = self._first_of.get(info.batch_id, 0) + info.index
        return e

    def _batch_done(self, batch_id: str) -> None:
        for i, b in enumerate(self._batches):
            if b.batch_id == batch_id:
                b.finished = True
                self._unread -= b.count
                del self._batches[i]
                return

    # ---- unordered: a watch thread per batch ----

    def _start_watcher(self, b: _Batch) -> None:
        t = threading.Thread(target=self._watcher, args=(b.batch_id,), name="drover-map-watch", daemon=True)
        self._watchers[b.batch_id] = t
        t.start()

    def _watcher(self, batch_id: str) -> None:
        try:
            for msg in self._client._watch(batch_id, False, self._deadline):
                if not self._put(("msg", batch_id, msg)):
                    return
            self._put(("end", batch_id, None))
        except BaseException as e:
            self._put(("error", batch_id, e))

    def _put(self, item: Tuple[str, Any, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._inbox.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self) -> Any:
        """The next message of any batch, or None when a batch ended."""
        timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            what, batch_id, payload = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("timed out waiting for the map's results") from None
        if what == "msg":
            return payload
        self._watchers.pop(batch_id, None)
        if what == "end":
            self._batch_done(batch_id)
            return None
        raise payload

    # ---- the whole list at once ----

    def collect(self) -> List[Any]:
        """Every result in order, as a list; raises the first failure (and
        cancels the rest)."""
        out: List[Any] = []
        decode = self._kind._decode
        try:
            while True:
                if self._pos < len(self._buffer):
                    jobs = self._buffer[self._pos :] if self._pos else self._buffer
                    self._pos = len(self._buffer)
                    values = [decode(j.output) for j in jobs if j.state == SUCCEEDED]
                    if len(values) != len(jobs):
                        bad = next(j for j in jobs if j.state != SUCCEEDED)
                        raise self._error(bad)
                    out.extend(values)
                if not self._refill():
                    self._closed = True
                    return out
        except BaseException:
            self.close()
            raise

    # ---- ending early ----

    def close(self) -> None:
        """Stops the map and cancels its unfinished jobs on the master."""
        if self._closed and not self._batches:
            return
        self._closed = True
        self._stop.set()
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()  # cancels the watch call
            except Exception:
                pass
        batches, self._batches = list(self._batches), deque()
        self._buffer, self._pos = [], 0
        for b in batches:
            try:
                self._client._cancel(batch_id=b.batch_id)
            except DroverError:
                pass  # the master is gone: nothing to cancel there

    def __enter__(self) -> "MapRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._batches:
                self.close()
        except Exception:
            pass
