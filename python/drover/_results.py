"""A finished job's ``JobInfo`` turned into what Python code expects: the
value, :class:`drover.JobFailed`, or ``concurrent.futures.CancelledError``."""

from __future__ import annotations

from concurrent.futures import CancelledError
from typing import Any

from ._errors import JobFailed
from .v1 import drover_pb2 as pb

SUCCEEDED = pb.JOB_STATE_SUCCEEDED
FAILED = pb.JOB_STATE_FAILED
CANCELLED = pb.JOB_STATE_CANCELLED
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

_KIND_NAMES = {
    pb.JOB_KIND_FIB: "fib",
    pb.JOB_KIND_PRIME: "prime",
    pb.JOB_KIND_SLEEP: "sleep",
    pb.JOB_KIND_PYTHON: "python",
}


def kind_name(kind: int) -> str:
    """The CLI's name of a wire kind."""
    return _KIND_NAMES.get(kind, f"kind {kind}")


def error_of(info: Any) -> BaseException:
    """The exception a FAILED or CANCELLED job raises."""
    if info.state == CANCELLED:
        why = f": {info.error}" if info.error else ""
        return CancelledError(f"job {info.job_id} ({kind_name(info.kind)} {info.arg}) was cancelled{why}")
    if info.state == FAILED:
        return JobFailed(
            job_id=info.job_id,
            kind=kind_name(info.kind),
            arg=info.arg,
            error=info.error,
            attempt_errors=list(info.attempt_errors),
            attempts=info.attempts,
            batch_id=info.batch_id,
            index=info.index,
        )
    return RuntimeError(f"job {info.job_id} is not finished (state {info.state})")
