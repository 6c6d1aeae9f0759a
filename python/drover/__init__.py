"""drover: run work on a drover master's workers from Python, with the APIs of
``multiprocessing.Pool`` and ``concurrent.futures``.

    import drover

    with drover.Pool() as pool:                  # DROVER_MASTER, or master="http://HOST:50051"
        pool.map(drover.fib, range(2, 21))       # [1, 2, 3, 5, ..., 6765]

    with drover.Executor() as ex:
        f = ex.submit(drover.is_prime, 1112582705942171)
        f.result()                               # True

Layout:

- ``_client``: :class:`Client`, the connection (URL, TLS, token, one channel
  per process, renewed after ``fork()``) and the master's limits.
- ``_kinds``: the job kinds (:data:`fib`, :data:`is_prime`, :data:`sleep`),
  :class:`PythonFunction` (your own functions, run by workers started with
  ``--python``) and :func:`job_kind`, the one place a callable becomes a job
  kind.
- ``_maps``: streamed maps (submitted in batches, read with ``Watch``).
- ``_tracker``: single jobs as futures, submitted together in the background.
- ``pool`` and ``executor``: the two APIs over those.
- ``coord``: shared state across hosts over the ``Coord`` service
  (:class:`Lock`, :class:`Semaphore`, :class:`Value`, :class:`Dict`,
  :class:`Event`, :class:`Barrier`).
- ``v1``: the generated wire protocol (``scripts/gen_stubs.py``).
"""

from concurrent.futures import CancelledError

from ._client import DEFAULT_MASTER_URL, Client
from ._errors import (
    AuthError,
    DroverError,
    InvalidArgument,
    JobFailed,
    LimitExceeded,
    MasterUnavailable,
)
from ._kinds import BuiltinKind, PythonFunction, fib, is_prime, job_kind, sleep
from ._options import JobOptions
from ._tracker import JobFuture
from .coord import Barrier, Dict, Event, Lock, Semaphore, Value
from .executor import Executor
from .pool import AsyncResult, Pool

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "AuthError",
    "Barrier",
    "BuiltinKind",
    "CancelledError",
    "Client",
    "DEFAULT_MASTER_URL",
    "Dict",
    "DroverError",
    "Event",
    "Executor",
    "InvalidArgument",
    "JobFailed",
    "JobFuture",
    "JobOptions",
    "LimitExceeded",
    "Lock",
    "MasterUnavailable",
    "Pool",
    "PythonFunction",
    "Semaphore",
    "Value",
    "fib",
    "is_prime",
    "job_kind",
    "sleep",
]
