"""The exceptions the client raises, and the one place gRPC statuses become
them.

A job that ran and failed raises :class:`JobFailed`; a cancelled job raises
``concurrent.futures.CancelledError``; a refused call raises a
:class:`DroverError` subclass named for what went wrong, whose message is the
master's (it names the field and the limit).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import grpc


class DroverError(Exception):
    """A call to the master failed. ``code`` is the gRPC status code, if the
    master (or the transport) gave one."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.code = code


class MasterUnavailable(DroverError, ConnectionError):
    """The master cannot be reached (or is shutting down). The message names
    the address."""


class InvalidArgument(DroverError, ValueError):
    """The master refused a job's argument or option; the message names the
    job (``jobs[i]``, counted across the whole map) and the limit."""


class LimitExceeded(DroverError):
    """A master limit refused the call (RESOURCE_EXHAUSTED); the message names
    the master flag. The client already splits batches and waits for queue
    room on its own; this reaches you only when that cannot help."""


class AuthError(DroverError, PermissionError):
    """The master refused the token: missing, wrong, or of the wrong role."""


# How a worker's Python runner words a job that raised: `Type: message`, a
# blank line, then the formatted traceback.
_TRACEBACK = "\n\nTraceback (most recent call last):\n"


def parse_remote_exception(error: str) -> Optional[Tuple[str, str, str]]:
    """Returns (type, message, traceback) of a Python job's failure that
    was an exception the function raised, else None (a crash, a timeout, a
    refusal)."""
    at = error.find(_TRACEBACK)
    if at < 0:
        return None
    head, traceback = error[:at], error[at + 2 :]
    name, sep, message = head.partition(": ")
    if not name or " " in name:
        return None
    return name, message if sep else "", traceback


class JobFailed(DroverError):
    """A job ran out of attempts. ``attempt_errors`` holds the reason of every
    attempt, oldest first; ``error`` is the last one.

    For a Python job whose function raised, ``remote_type`` is the
    exception's type (``ValueError``, ``mypkg.errors.BadInput``),
    ``remote_message`` its message and ``remote_traceback`` the traceback
    formatted on the worker; all three are None for other failures (a
    crash, a timeout, a refused module)."""

    def __init__(
        self,
        job_id: str,
        kind: str,
        arg: str,
        error: str,
        attempt_errors: Sequence[str],
        attempts: int,
        batch_id: str = "",
        index: int = 0,
    ):
        self.job_id = job_id
        self.batch_id = batch_id
        self.index = index
        self.kind = kind
        self.arg = arg
        self.error = error
        self.attempt_errors = list(attempt_errors)
        self.attempts = attempts
        remote = parse_remote_exception(error) if kind == "python" else None
        self.remote_type, self.remote_message, self.remote_traceback = remote or (None, None, None)
        if remote is not None:
            super().__init__(
                f"job {job_id} ({kind} {_short(arg)}) raised {error}"
                if attempts <= 1
                else f"job {job_id} ({kind} {_short(arg)}) failed after {attempts} attempt(s), "
                f"the last raised {error}"
            )
            return
        # The master's reasons already say which attempt they are.
        reasons = "; ".join(self.attempt_errors)
        super().__init__(
            f"job {job_id} ({kind} {_short(arg)}) failed after {attempts} attempt(s): "
            f"{error}" + (f" [{reasons}]" if reasons else "")
        )

    def __reduce__(self):
        # Exceptions pickle through their args; this one has keyword state.
        return (
            JobFailed,
            (
                self.job_id,
                self.kind,
                self.arg,
                self.error,
                self.attempt_errors,
                self.attempts,
                self.batch_id,
                self.index,
            ),
        )


def _short(s: str, limit: int = 40) -> str:
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} characters)"


# `jobs[12].arg: ...`: the master counts within one submit.
_JOB_INDEX = re.compile(r"^jobs\[(\d+)\]")


def from_rpc_error(err: grpc.RpcError, url: str, first_index: int = 0, via_worker: bool = False) -> DroverError:
    """Turns a failed call into the exception a user should see. ``url`` is
    the master's, for unreachable masters (with ``via_worker``: the job's
    worker's Coord proxy, which names the master itself when it cannot
    reach it); ``first_index`` is the position of the submit's first job in
    its map, so that ``jobs[i]`` names the map's element."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        if via_worker and details.startswith("worker "):
            return MasterUnavailable(details, code)
        if via_worker:
            return MasterUnavailable(f"cannot reach this job's worker (its Coord proxy at {url}): {details}", code)
        return MasterUnavailable(f"cannot reach the master at {url}: {details}", code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if first_index:
            details = _JOB_INDEX.sub(lambda m: f"jobs[{int(m.group(1)) + first_index}]", details)
        return InvalidArgument(f"invalid argument: {details}", code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitExceeded(f"limit reached: {details}", code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        name = "unauthenticated" if code == grpc.StatusCode.UNAUTHENTICATED else "permission denied"
        return AuthError(f"{name}: {details} (master {url})", code)
    name = code.name.lower().replace("_", " ") if code is not None else "error"
    return DroverError(f"{name}: {details} (master {url})", code)


def never_sent(details: str) -> bool:
    """Whether an UNAVAILABLE call, by its details, failed before it reached
    any master (gRPC's words for a channel that could not connect), so no
    master can have acted on it."""
    details = details.lower()
    return any(s in details for s in ("failed to connect", "connection refused", "connections to all backends failing"))
