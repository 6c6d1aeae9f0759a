"""``drover.Executor``: a ``concurrent.futures.Executor`` whose work runs as
drover jobs.

    with drover.Executor() as ex:
        futures = [ex.submit(drover.is_prime, n) for n in PRIMES]
        for f in concurrent.futures.as_completed(futures):
            print(f.result())

``submit`` returns :class:`drover.JobFuture` objects, real
``concurrent.futures.Future`` subclasses, so ``as_completed``, ``wait`` and
``add_done_callback`` work as with any executor. ``shutdown(cancel_futures=True)``
cancels the unfinished jobs on the master.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Mapping, Optional, Set

from ._client import Client, Masters, PathOrPem, client_for
from ._kinds import job_kind
from ._maps import DEFAULT_MAX_IN_FLIGHT, MapRun
from ._options import JobOptions
from ._tracker import JobFuture


class _ExecutorState:
    """What an executor and its ``options()`` views share."""

    def __init__(self, client: Client, owns_client: bool, max_in_flight: int):
        self.client = client
        self.owns_client = owns_client
        self.max_in_flight = max_in_flight
        self.lock = threading.Lock()
        self.shutdown = False
        # Futures of submit() not yet done.
        self.outstanding: Set[JobFuture] = set()
        # Maps that may still hold unfinished jobs.
        self.maps: "weakref.WeakSet[MapRun]" = weakref.WeakSet()


class Executor(cf.Executor):
    """Runs calls as jobs on a drover master's workers.

    Connection arguments and job options are as for :class:`drover.Pool`:
    ``master``/``token``/``ca`` (or ``client=``), and ``priority``,
    ``timeout`` (seconds a job may run on a worker), ``max_attempts``, ``limits`` (e.g. ``{"db": 4}``);
    ``executor.options(...)`` gives a view with other options (also
    ``idempotency_key``) that shares the executor's connection and shutdown.
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
        self._state = _ExecutorState(client, owns, max_in_flight)
        self._options = options

    @property
    def client(self) -> Client:
        """The connection to the master."""
        return self._state.client

    def options(self, **changes: Any) -> "Executor":
        """A view whose jobs use other options (``priority``, ``timeout``,
        ``max_attempts``, ``idempotency_key``)."""
        view = Executor.__new__(Executor)
        view._state = self._state
        view._options = self._options.merge(**changes)
        return view

    def __repr__(self) -> str:
        return f"<drover.Executor master={self._state.client.url!r}>"

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> JobFuture:
        """Runs ``fn(*args, **kwargs)`` as a job; returns its future."""
        st = self._state
        if st.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        kind = job_kind(fn)
        arg = kind.encode(args, kwargs)
        fields = self._options.spec_fields()
        if self._options.idempotency_key is not None:
            fields["idempotency_key"] = self._options.idempotency_key
        fut = st.client._tracker_here().submit(kind, arg, fields)
        with st.lock:
            st.outstanding.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Any) -> None:
        with self._state.lock:
            self._state.outstanding.discard(fut)

    def map(
        self, fn: Any, *iterables: Iterable[Any], timeout: Optional[float] = None, chunksize: Optional[int] = None
    ) -> Iterator[Any]:
        """Results of ``fn`` over zipped ``iterables``, in order, streamed.

        Jobs are submitted at once (up to the executor's ``max_in_flight``,
        the rest as results are read). ``timeout`` counts from this call: past
        it, the iterator raises ``concurrent.futures.TimeoutError`` and the
        map's unfinished jobs are cancelled, as are they when the iterator is
        closed early. ``chunksize`` is jobs per submit.
        """
        st = self._state
        if st.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        deadline = None if timeout is None else time.monotonic() + timeout
        run = MapRun(
            st.client,
            job_kind(fn),
            zip(*iterables),
            self._options,
            chunksize,
            st.max_in_flight,
            ordered=True,
            deadline=deadline,
            star=True,
        )
        st.maps.add(run)
        run.start()
        return _timed(run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accepts no more work. ``cancel_futures`` cancels every unfinished
        job on the master, running ones too (their process is killed);
        ``wait`` waits for every submitted future to finish."""
        st = self._state
        st.shutdown = True
        with st.lock:
            futs = list(st.outstanding)
        if cancel_futures:
            if futs:
                st.client._tracker_here().cancel(futs)
            for run in list(st.maps):
                run.close()
        if wait:
            cf.wait(futs)
            if st.owns_client:
                st.client.close()


def _timed(run: MapRun) -> Iterator[Any]:
    """Iterates a map, turning its deadline into concurrent.futures.TimeoutError."""
    try:
        while True:
            try:
                value = next(run)
            except StopIteration:
                return
            except TimeoutError as e:
                raise cf.TimeoutError(str(e)) from None
            yield value
    finally:
        run.close()
