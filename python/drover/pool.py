"""``drover.Pool``: ``multiprocessing.Pool``'s API with the master's workers
as the pool.

    with drover.Pool() as pool:
        pool.map(drover.fib, range(2, 21))          # [1, 2, 3, 5, ..., 6765]
        r = pool.apply_async(drover.is_prime, (1112582705942171,))
        r.get(timeout=30)                             # True

Differences from multiprocessing, all from the pool being a cluster:
``processes``, ``initializer`` and ``maxtasksperchild`` belong to the
workers (``drover-worker --processes N --max-jobs-per-child M``);
``chunksize`` is the number of jobs per submit (each job is still
scheduled on its own); leaving the ``with`` block calls ``terminate()``, as
multiprocessing does, which here cancels the pool's unfinished jobs on the
master.
"""

from __future__ import annotations

import multiprocessing
import threading
import weakref
from concurrent.futures import CancelledError, Future
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ._client import Client, Masters, PathOrPem, client_for
from ._kinds import job_kind
from ._maps import DEFAULT_MAX_IN_FLIGHT, MapRun
from ._options import JobOptions
from ._tracker import JobFuture


class AsyncResult:
    """The result of ``apply_async`` or ``map_async``, like
    ``multiprocessing.pool.AsyncResult``.

    Callbacks run in a background thread of the client (as in
    multiprocessing, they should return quickly) and have run by the time
    ``get()`` returns. A cancelled job raises
    ``concurrent.futures.CancelledError`` from ``get()`` and passes that to
    ``error_callback``.
    """

    def __init__(
        self,
        future: Future,
        callback: Optional[Callable[[Any], Any]] = None,
        error_callback: Optional[Callable[[BaseException], Any]] = None,
    ):
        #: The underlying ``concurrent.futures.Future``.
        self.future = future
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        future.add_done_callback(self._on_done)

    @property
    def job_id(self) -> Optional[str]:
        """The job's id, once submitted (None for map_async)."""
        return getattr(self.future, "job_id", None)

    def _on_done(self, fut: Future) -> None:
        try:
            if fut.cancelled():
                if self._error_callback is not None:
                    self._error_callback(CancelledError(f"job {self.job_id} was cancelled"))
            elif fut.exception() is not None:
                if self._error_callback is not None:
                    self._error_callback(fut.exception())
            elif self._callback is not None:
                self._callback(fut.result())
        finally:
            self._event.set()

    def ready(self) -> bool:
        """Whether the job has finished (and its callbacks have run)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether it finished without an error; ValueError if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self.future.cancelled() and self.future.exception() is None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until it is ready, or ``timeout`` seconds."""
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The result; raises the job's exception, or
        ``multiprocessing.TimeoutError`` after ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError(f"no result within {timeout} s")
        return self.future.result(0)

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<drover.AsyncResult {state} job={self.job_id}>"


class _PoolState:
    """What a pool and its ``options()`` views share."""

    def __init__(self, client: Client, owns_client: bool, max_in_flight: int):
        self.client = client
        self.owns_client = owns_client
        self.max_in_flight = max_in_flight
        self.lock = threading.Lock()
        self.running = True
        # Futures of apply_async not yet done.
        self.outstanding: Set[JobFuture] = set()
        # AsyncResults not yet ready, for join().
        self.results: Set[AsyncResult] = set()
        # Maps that may still hold unfinished jobs, for terminate().
        self.maps: "weakref.WeakSet[MapRun]" = weakref.WeakSet()


class Pool:
    """A pool whose processes are the drover workers of a master.

    ``master``, ``token`` and ``ca`` (and ``tls_cert``/``tls_key``) are as for
    :class:`drover.Client`, defaulting to ``DROVER_MASTER`` and the other
    variables the CLI reads (``master`` may name several masters, which the
    pool's calls move between as the client's do); or pass ``client=`` to
    share a connection.
    ``priority``, ``timeout`` (seconds a job may run on a worker),
    ``max_attempts`` and ``limits`` (e.g. ``{"db": 4}``, see
    :class:`JobOptions`) apply to every job; ``pool.options(...)`` gives a view
    with other options (also ``idempotency_key``). ``max_in_flight`` bounds
    the jobs a map keeps submitted and unread (memory and queue use).
    """

    def __init__(
        self,
        master: Masters = None,
        token: Optional[str] = None,
        ca: Optional[PathOrPem] = None,
        *,
        client: Optional[Client] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        max_attempts: Optional[int] = None,
        limits: Optional[Mapping[str, int]] = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        tls_cert: Optional[PathOrPem] = None,
        tls_key: Optional[PathOrPem] = None,
    ):
        client, owns = client_for(client, master, token, ca, tls_cert, tls_key)
        options = JobOptions(
            priority=priority, timeout=timeout, max_attempts=max_attempts, limits=limits
        )
        self._state = _PoolState(client, owns, max_in_flight)
        self._options = options

    @classmethod
    def _view(cls, state: _PoolState, options: JobOptions) -> "Pool":
        view = cls.__new__(cls)
        view._state = state
        view._options = options
        return view

    @property
    def client(self) -> Client:
        """The connection to the master."""
        return self._state.client

    def options(self, **changes: Any) -> "Pool":
        """A view of this pool whose jobs use other options: ``priority``,
        ``timeout``, ``max_attempts``, ``idempotency_key``. It shares the
        pool's connection, and ``close``/``terminate`` of either is both's."""
        return Pool._view(self._state, self._options.merge(**changes))

    def __repr__(self) -> str:
        state = "running" if self._state.running else "closed"
        return f"<drover.Pool {state} master={self._state.client.url!r}>"

    def _check_running(self) -> None:
        if not self._state.running:
            raise ValueError("Pool not running")

    # ---- one job ----

    def apply_async(
        self,
        func: Any,
        args: Tuple[Any, ...] = (),
        kwds: Optional[Dict[str, Any]] = None,
        callback: Optional[Callable[[Any], Any]] = None,
        error_callback: Optional[Callable[[BaseException], Any]] = None,
    ) -> AsyncResult:
        """Runs ``func(*args, **kwds)`` as one job; returns an AsyncResult."""
        self._check_running()
        kind = job_kind(func)
        arg = kind.encode(tuple(args), dict(kwds or {}))
        fut = self._state.client._tracker_here().submit(kind, arg, self._spec_fields())
        result = AsyncResult(fut, callback, error_callback)
        self._remember(fut, result)
        return result

    def apply(self, func: Any, args: Tuple[Any, ...] = (), kwds: Optional[Dict[str, Any]] = None) -> Any:
        """Runs ``func(*args, **kwds)`` as one job and returns its result: one
        round trip to the master, which answers once the job is finished."""
        self._check_running()
        kind = job_kind(func)
        arg = kind.encode(tuple(args), dict(kwds or {}))
        tracker = self._state.client._tracker_here()
        fut = tracker.future(kind)
        result = AsyncResult(fut, None, None)
        # Counted before it is sent: terminate() meanwhile cancels it.
        self._remember(fut, result)
        tracker.apply(fut, arg, self._spec_fields())
        return result.get()

    def _spec_fields(self) -> Dict[str, Any]:
        """The JobSpec fields of this pool's options."""
        fields = self._options.spec_fields()
        key = self._options.idempotency_key
        if key is not None:
            fields["idempotency_key"] = key
        return fields

    def _remember(self, fut: Optional[JobFuture], result: AsyncResult) -> None:
        st = self._state
        with st.lock:
            if fut is not None:
                st.outstanding.add(fut)
            st.results.add(result)

        def forget(_: Any) -> None:
            with st.lock:
                if fut is not None:
                    st.outstanding.discard(fut)
                st.results.discard(result)

        result.future.add_done_callback(forget)

    # ---- many jobs ----

    def _run(
        self, func: Any, items: Iterable[Any], chunksize: Optional[int], ordered: bool, star: bool = False
    ) -> MapRun:
        self._check_running()
        run = MapRun(
            self._state.client,
            job_kind(func),
            items,
            self._options,
            chunksize,
            self._state.max_in_flight,
            ordered,
            star=star,
        )
        self._state.maps.add(run)
        run.start()
        return run

    def imap(self, func: Any, iterable: Iterable[Any], chunksize: Optional[int] = None) -> MapRun:
        """Results in order, streamed: the input is read and submitted as
        results are consumed (at most ``max_in_flight`` jobs ahead). A failed
        job raises at its place; closing the iterator early cancels the rest."""
        return self._run(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Any, iterable: Iterable[Any], chunksize: Optional[int] = None) -> MapRun:
        """Like imap, with results in the order the jobs finish."""
        return self._run(func, iterable, chunksize, ordered=False)

    def map(self, func: Any, iterable: Iterable[Any], chunksize: Optional[int] = None) -> List[Any]:
        """``[func(x) for x in iterable]``, run as jobs; raises the first
        failure in order (:class:`drover.JobFailed`) and cancels the rest."""
        return self.imap(func, iterable, chunksize).collect()

    def starmap(self, func: Any, iterable: Iterable[Iterable[Any]], chunksize: Optional[int] = None) -> List[Any]:
        """Like map, calling ``func(*args)`` for each ``args`` of iterable."""
        return self._run(func, iterable, chunksize, ordered=True, star=True).collect()

    def map_async(
        self,
        func: Any,
        iterable: Iterable[Any],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[Any], Any]] = None,
        error_callback: Optional[Callable[[BaseException], Any]] = None,
    ) -> AsyncResult:
        """map in a background thread; the AsyncResult's value is the list."""
        return self._async(self.imap(func, iterable, chunksize), callback, error_callback)

    def starmap_async(
        self,
        func: Any,
        iterable: Iterable[Iterable[Any]],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[Any], Any]] = None,
        error_callback: Optional[Callable[[BaseException], Any]] = None,
    ) -> AsyncResult:
        """starmap in a background thread; the AsyncResult's value is the list."""
        run = self._run(func, iterable, chunksize, ordered=True, star=True)
        return self._async(run, callback, error_callback)

    def _async(self, run: MapRun, callback: Any, error_callback: Any) -> AsyncResult:
        fut: Future = Future()

        def collect() -> None:
            try:
                fut.set_result(run.collect())
            except BaseException as e:
                fut.set_exception(e)

        result = AsyncResult(fut, callback, error_callback)
        self._remember(None, result)
        threading.Thread(target=collect, name="drover-map-async", daemon=True).start()
        return result

    # ---- the pool's life ----

    def close(self) -> None:
        """Accepts no more work; what was submitted still runs."""
        self._state.running = False

    def terminate(self) -> None:
        """Accepts no more work and cancels the pool's unfinished jobs on the
        master (a running job's process is killed)."""
        st = self._state
        st.running = False
        with st.lock:
            futs = list(st.outstanding)
        maps = list(st.maps)
        if futs:
            try:
                st.client._tracker_here().cancel(futs)
            except Exception:
                pass  # an unreachable master has nothing of ours to cancel
        for run in maps:
            run.close()
        self._release()

    def _release(self) -> None:
        # A pool that made its own connection closes it: grpcio channels are
        # not closed by garbage collection.
        if self._state.owns_client:
            self._state.client.close()

    def join(self) -> None:
        """Waits for every apply_async and map_async result; call close() or
        terminate() first."""
        if self._state.running:
            raise ValueError("Pool is still running")
        while True:
            with self._state.lock:
                pending = list(self._state.results)
            if not pending:
                self._release()
                return
            for r in pending:
                r.wait()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()
