"""Job options: priority, timeout, attempts, idempotency key and
concurrency limits, as one immutable value that Pool, Executor and their
``options()`` views share."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from .v1 import drover_pb2 as pb

# The master's own bounds (its --max-attempts is checked against 1..=100).
_MAX_ATTEMPTS = 100
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class JobOptions:
    """What every job submitted with these options asks for."""

    #: Higher runs first; FIFO within a priority (an int32).
    priority: int = 0
    #: Seconds a job may run on a worker before its process is killed (the
    #: attempt then fails and may be retried); None means no limit. Not a
    #: limit on how long you wait: that is ``get(timeout)`` / ``result(timeout)``.
    timeout: Optional[float] = None
    #: Attempts before the job FAILS; None means the master's default (3).
    max_attempts: Optional[int] = None
    #: A second submit with the same key returns the first job instead of
    #: running another. A map gives its element i the key ``KEY#i``.
    idempotency_key: Optional[str] = None
    #: Concurrency limits, e.g. ``{"db": 4}``: each job runs only while
    #: fewer than 4 jobs holding ``db`` run, across all workers. Kept as
    #: sorted (name, permits) pairs.
    limits: Optional[Mapping[str, int]] = None

    def __post_init__(self) -> None:
        if self.limits is not None:
            items = self.limits.items() if isinstance(self.limits, Mapping) else self.limits
            pairs: Tuple[Tuple[str, int], ...] = tuple(sorted((n, p) for n, p in items))
            for name, permits in pairs:
                if not isinstance(name, str) or not name:
                    raise TypeError(f"limits: a limit name must be a non-empty str, got {name!r}")
                if isinstance(permits, bool) or not isinstance(permits, int):
                    raise TypeError(f"limits[{name!r}] must be an int, got {permits!r}")
            object.__setattr__(self, "limits", pairs or None)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, got {self.priority!r}")
        if not _INT32[0] <= self.priority <= _INT32[1]:
            raise ValueError(f"priority {self.priority} does not fit in 32 bits")
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
                raise TypeError(f"timeout must be seconds (an int or a float), got {self.timeout!r}")
            if not self.timeout > 0 or math.isinf(self.timeout):
                raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.max_attempts is not None:
            if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
                raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
            if not 1 <= self.max_attempts <= _MAX_ATTEMPTS:
                raise ValueError(f"max_attempts {self.max_attempts} is outside 1..{_MAX_ATTEMPTS}")
        if self.idempotency_key is not None:
            if not isinstance(self.idempotency_key, str) or not self.idempotency_key:
                raise ValueError(f"idempotency_key must be a non-empty str, got {self.idempotency_key!r}")

    def merge(self, **changes: Any) -> "JobOptions":
        """Returns these options with ``changes`` applied (unknown names are a
        TypeError naming them)."""
        unknown = set(changes) - {"priority", "timeout", "max_attempts", "idempotency_key", "limits"}
        if unknown:
            raise TypeError(
                f"unknown job option(s) {', '.join(sorted(unknown))}; the options are "
                "priority, timeout, max_attempts, idempotency_key and limits"
            )
        return replace(self, **changes)

    def spec_fields(self) -> Dict[str, Any]:
        """The ``JobSpec`` fields these options set (the key aside), leaving
        defaults out so that building many specs stays cheap."""
        fields: Dict[str, Any] = {}
        if self.priority:
            fields["priority"] = self.priority
        if self.timeout is not None:
            fields["timeout_ms"] = max(1, math.ceil(self.timeout * 1000))
        if self.max_attempts is not None:
            fields["max_attempts"] = self.max_attempts
        if self.limits:
            fields["limits"] = [pb.JobLimit(name=n, permits=p) for n, p in self.limits]
        return fields
