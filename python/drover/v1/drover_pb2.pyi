from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_FIB: _ClassVar[JobKind]
    JOB_KIND_PRIME: _ClassVar[JobKind]
    JOB_KIND_SLEEP: _ClassVar[JobKind]
    JOB_KIND_PYTHON: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Certainty(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CERTAINTY_UNSPECIFIED: _ClassVar[Certainty]
    CERTAINTY_PROVEN: _ClassVar[Certainty]
    CERTAINTY_PROBABLE: _ClassVar[Certainty]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_FIB: JobKind
JOB_KIND_PRIME: JobKind
JOB_KIND_SLEEP: JobKind
JOB_KIND_PYTHON: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
CERTAINTY_UNSPECIFIED: Certainty
CERTAINTY_PROVEN: Certainty
CERTAINTY_PROBABLE: Certainty

class JobSpec(_message.Message):
    __slots__ = ("kind", "arg", "priority", "timeout_ms", "max_attempts", "idempotency_key", "limits")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARG_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    kind: JobKind
    arg: str
    priority: int
    timeout_ms: int
    max_attempts: int
    idempotency_key: str
    limits: _containers.RepeatedCompositeFieldContainer[JobLimit]
    def __init__(self, kind: _Optional[_Union[JobKind, str]] = ..., arg: _Optional[str] = ..., priority: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., limits: _Optional[_Iterable[_Union[JobLimit, _Mapping]]] = ...) -> None: ...

class JobLimit(_message.Message):
    __slots__ = ("name", "permits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    permits: int
    def __init__(self, name: _Optional[str] = ..., permits: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("jobs", "request_id", "wait", "timeout_ms")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSpec]
    request_id: str
    wait: bool
    timeout_ms: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSpec, _Mapping]]] = ..., request_id: _Optional[str] = ..., wait: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("batch_id", "job_ids", "result")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    result: GetResponse
    def __init__(self, batch_id: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ..., result: _Optional[_Union[GetResponse, _Mapping]] = ...) -> None: ...

class JobOutput(_message.Message):
    __slots__ = ("fib", "prime", "slept_ms", "json")
    FIB_FIELD_NUMBER: _ClassVar[int]
    PRIME_FIELD_NUMBER: _ClassVar[int]
    SLEPT_MS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    fib: str
    prime: PrimeOutput
    slept_ms: int
    json: str
    def __init__(self, fib: _Optional[str] = ..., prime: _Optional[_Union[PrimeOutput, _Mapping]] = ..., slept_ms: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...

class PrimeOutput(_message.Message):
    __slots__ = ("is_prime", "certainty")
    IS_PRIME_FIELD_NUMBER: _ClassVar[int]
    CERTAINTY_FIELD_NUMBER: _ClassVar[int]
    is_prime: bool
    certainty: Certainty
    def __init__(self, is_prime: _Optional[bool] = ..., certainty: _Optional[_Union[Certainty, str]] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "batch_id", "index", "kind", "arg", "state", "priority", "attempts", "max_attempts", "output", "error", "worker", "attempt_errors", "run_us", "counted_attempts", "limits", "started_at_ms", "finished_at_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    RUN_US_FIELD_NUMBER: _ClassVar[int]
    COUNTED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_id: str
    index: int
    kind: JobKind
    arg: str
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    output: JobOutput
    error: str
    worker: str
    attempt_errors: _containers.RepeatedScalarFieldContainer[str]
    run_us: int
    counted_attempts: int
    limits: _containers.RepeatedCompositeFieldContainer[JobLimit]
    started_at_ms: int
    finished_at_ms: int
    def __init__(self, job_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., index: _Optional[int] = ..., kind: _Optional[_Union[JobKind, str]] = ..., arg: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., priority: _Optional[int] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., output: _Optional[_Union[JobOutput, _Mapping]] = ..., error: _Optional[str] = ..., worker: _Optional[str] = ..., attempt_errors: _Optional[_Iterable[str]] = ..., run_us: _Optional[int] = ..., counted_attempts: _Optional[int] = ..., limits: _Optional[_Iterable[_Union[JobLimit, _Mapping]]] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("job_ids", "batch_id", "wait", "timeout_ms", "page_token")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    batch_id: str
    wait: bool
    timeout_ms: int
    page_token: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., batch_id: _Optional[str] = ..., wait: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("jobs", "complete", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    complete: bool
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., complete: _Optional[bool] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("batch_id", "ordered", "resume_from", "received")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ORDERED_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    ordered: bool
    resume_from: int
    received: bytes
    def __init__(self, batch_id: _Optional[str] = ..., ordered: _Optional[bool] = ..., resume_from: _Optional[int] = ..., received: _Optional[bytes] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("jobs", "done", "total")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    done: int
    total: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_ids", "batch_id")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    batch_id: str
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled", "already_finished")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FINISHED_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    already_finished: int
    def __init__(self, cancelled: _Optional[int] = ..., already_finished: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "name", "host", "cpu_slots", "io_slots", "running", "completed", "child_pids", "children_restarted", "version", "draining", "connected_s", "pid", "kinds", "python_modules", "python_slots")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_SLOTS_FIELD_NUMBER: _ClassVar[int]
    IO_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CHILD_PIDS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_RESTARTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_S_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_MODULES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_SLOTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    name: str
    host: str
    cpu_slots: int
    io_slots: int
    running: int
    completed: int
    child_pids: _containers.RepeatedScalarFieldContainer[int]
    children_restarted: int
    version: str
    draining: bool
    connected_s: int
    pid: int
    kinds: _containers.RepeatedScalarFieldContainer[JobKind]
    python_modules: _containers.RepeatedScalarFieldContainer[str]
    python_slots: int
    def __init__(self, worker_id: _Optional[str] = ..., name: _Optional[str] = ..., host: _Optional[str] = ..., cpu_slots: _Optional[int] = ..., io_slots: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., child_pids: _Optional[_Iterable[int]] = ..., children_restarted: _Optional[int] = ..., version: _Optional[str] = ..., draining: _Optional[bool] = ..., connected_s: _Optional[int] = ..., pid: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[JobKind, str]]] = ..., python_modules: _Optional[_Iterable[str]] = ..., python_slots: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("queued", "running", "succeeded", "failed", "cancelled", "workers", "jobs_per_s", "late_results_dropped", "retried", "version", "uptime_s", "waiting_for_capability", "missing_modules", "leader_epoch", "leader_address")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    JOBS_PER_S_FIELD_NUMBER: _ClassVar[int]
    LATE_RESULTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    MISSING_MODULES_FIELD_NUMBER: _ClassVar[int]
    LEADER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    jobs_per_s: float
    late_results_dropped: int
    retried: int
    version: str
    uptime_s: int
    waiting_for_capability: int
    missing_modules: _containers.RepeatedScalarFieldContainer[str]
    leader_epoch: int
    leader_address: str
    def __init__(self, queued: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., jobs_per_s: _Optional[float] = ..., late_results_dropped: _Optional[int] = ..., retried: _Optional[int] = ..., version: _Optional[str] = ..., uptime_s: _Optional[int] = ..., waiting_for_capability: _Optional[int] = ..., missing_modules: _Optional[_Iterable[str]] = ..., leader_epoch: _Optional[int] = ..., leader_address: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "limit", "batch_id", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    limit: int
    batch_id: str
    page_token: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., limit: _Optional[int] = ..., batch_id: _Optional[str] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "truncated", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    truncated: bool
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., truncated: _Optional[bool] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryRequest(_message.Message):
    __slots__ = ("job_ids", "batch_id", "all_failed")
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FAILED_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    batch_id: str
    all_failed: bool
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ..., batch_id: _Optional[str] = ..., all_failed: _Optional[bool] = ...) -> None: ...

class RetryResponse(_message.Message):
    __slots__ = ("retried",)
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    retried: int
    def __init__(self, retried: _Optional[int] = ...) -> None: ...

class LimitsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LimitHolder(_message.Message):
    __slots__ = ("job_id", "worker")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker: str
    def __init__(self, job_id: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class LimitInfo(_message.Message):
    __slots__ = ("name", "holders", "waiters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    WAITERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    holders: _containers.RepeatedCompositeFieldContainer[LimitHolder]
    waiters: int
    def __init__(self, name: _Optional[str] = ..., holders: _Optional[_Iterable[_Union[LimitHolder, _Mapping]]] = ..., waiters: _Optional[int] = ...) -> None: ...

class LimitsResponse(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[LimitInfo]
    def __init__(self, limits: _Optional[_Iterable[_Union[LimitInfo, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job_id", "kind", "arg", "timeout_ms", "attempt", "priority", "slot")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    arg: str
    timeout_ms: int
    attempt: int
    priority: int
    slot: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., arg: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., attempt: _Optional[int] = ..., priority: _Optional[int] = ..., slot: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("job_id", "attempt", "output", "failure", "run_us", "slot")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RUN_US_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    output: JobOutput
    failure: JobFailure
    run_us: int
    slot: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., output: _Optional[_Union[JobOutput, _Mapping]] = ..., failure: _Optional[_Union[JobFailure, _Mapping]] = ..., run_us: _Optional[int] = ..., slot: _Optional[int] = ...) -> None: ...

class JobFailure(_message.Message):
    __slots__ = ("reason", "retryable")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retryable: bool
    def __init__(self, reason: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol", "name", "host", "cpu_slots", "io_slots", "version", "pid", "kinds", "python_modules", "python_slots")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    CPU_SLOTS_FIELD_NUMBER: _ClassVar[int]
    IO_SLOTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_MODULES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_SLOTS_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    name: str
    host: str
    cpu_slots: int
    io_slots: int
    version: str
    pid: int
    kinds: _containers.RepeatedScalarFieldContainer[JobKind]
    python_modules: _containers.RepeatedScalarFieldContainer[str]
    python_slots: int
    def __init__(self, protocol: _Optional[int] = ..., name: _Optional[str] = ..., host: _Optional[str] = ..., cpu_slots: _Optional[int] = ..., io_slots: _Optional[int] = ..., version: _Optional[str] = ..., pid: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[JobKind, str]]] = ..., python_modules: _Optional[_Iterable[str]] = ..., python_slots: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("cpu", "io", "python")
    CPU_FIELD_NUMBER: _ClassVar[int]
    IO_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    io: int
    python: int
    def __init__(self, cpu: _Optional[int] = ..., io: _Optional[int] = ..., python: _Optional[int] = ...) -> None: ...

class Results(_message.Message):
    __slots__ = ("results", "seq")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[JobResult]
    seq: int
    def __init__(self, results: _Optional[_Iterable[_Union[JobResult, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class PoolState(_message.Message):
    __slots__ = ("child_pids", "children_restarted")
    CHILD_PIDS_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_RESTARTED_FIELD_NUMBER: _ClassVar[int]
    child_pids: _containers.RepeatedScalarFieldContainer[int]
    children_restarted: int
    def __init__(self, child_pids: _Optional[_Iterable[int]] = ..., children_restarted: _Optional[int] = ...) -> None: ...

class Returned(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "credit", "results", "heartbeat", "pool", "returned", "draining")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    RETURNED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    credit: Credit
    results: Results
    heartbeat: Heartbeat
    pool: PoolState
    returned: Returned
    draining: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., results: _Optional[_Union[Results, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., pool: _Optional[_Union[PoolState, _Mapping]] = ..., returned: _Optional[_Union[Returned, _Mapping]] = ..., draining: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("worker_id", "lease_ms", "heartbeat_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_ms: int
    heartbeat_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., lease_ms: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ...) -> None: ...

class Assign(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class CancelJobs(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResultsAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class MasterMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "drain", "ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: Assign
    cancel: CancelJobs
    drain: Drain
    ack: ResultsAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[Assign, _Mapping]] = ..., cancel: _Optional[_Union[CancelJobs, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., ack: _Optional[_Union[ResultsAck, _Mapping]] = ...) -> None: ...

class ChildJob(_message.Message):
    __slots__ = ("slot_id", "kind", "arg")
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARG_FIELD_NUMBER: _ClassVar[int]
    slot_id: int
    kind: JobKind
    arg: str
    def __init__(self, slot_id: _Optional[int] = ..., kind: _Optional[_Union[JobKind, str]] = ..., arg: _Optional[str] = ...) -> None: ...

class ChildRequest(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ChildJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[ChildJob, _Mapping]]] = ...) -> None: ...

class ChildResult(_message.Message):
    __slots__ = ("slot_id", "output", "failure", "run_us")
    SLOT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RUN_US_FIELD_NUMBER: _ClassVar[int]
    slot_id: int
    output: JobOutput
    failure: JobFailure
    run_us: int
    def __init__(self, slot_id: _Optional[int] = ..., output: _Optional[_Union[JobOutput, _Mapping]] = ..., failure: _Optional[_Union[JobFailure, _Mapping]] = ..., run_us: _Optional[int] = ...) -> None: ...

class ChildResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChildResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ChildResult, _Mapping]]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("lease_ms", "owner")
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    lease_ms: int
    owner: str
    def __init__(self, lease_ms: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session", "lease_ms")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    session: int
    lease_ms: int
    def __init__(self, session: _Optional[int] = ..., lease_ms: _Optional[int] = ...) -> None: ...

class KeepAliveRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: int
    def __init__(self, session: _Optional[int] = ...) -> None: ...

class KeepAliveResponse(_message.Message):
    __slots__ = ("lease_ms",)
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    lease_ms: int
    def __init__(self, lease_ms: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: int
    def __init__(self, session: _Optional[int] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class KvEntry(_message.Message):
    __slots__ = ("key", "value", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    version: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class KvGetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class KvGetResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: KvEntry
    def __init__(self, entry: _Optional[_Union[KvEntry, _Mapping]] = ...) -> None: ...

class KvPutRequest(_message.Message):
    __slots__ = ("key", "value", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., expected_version: _Optional[int] = ...) -> None: ...

class KvPutResponse(_message.Message):
    __slots__ = ("applied", "version")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    version: int
    def __init__(self, applied: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class KvDeleteRequest(_message.Message):
    __slots__ = ("key", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class KvDeleteResponse(_message.Message):
    __slots__ = ("deleted", "version")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    version: int
    def __init__(self, deleted: _Optional[bool] = ..., version: _Optional[int] = ...) -> None: ...

class KvListRequest(_message.Message):
    __slots__ = ("prefix", "start_after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    start_after: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class KvListResponse(_message.Message):
    __slots__ = ("entries", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[KvEntry]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[KvEntry, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class KvWatchRequest(_message.Message):
    __slots__ = ("key", "prefix")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    key: str
    prefix: bool
    def __init__(self, key: _Optional[str] = ..., prefix: _Optional[bool] = ...) -> None: ...

class KvEvent(_message.Message):
    __slots__ = ("key", "value", "version", "deleted")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    version: int
    deleted: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class CounterAddRequest(_message.Message):
    __slots__ = ("name", "delta")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    delta: int
    def __init__(self, name: _Optional[str] = ..., delta: _Optional[int] = ...) -> None: ...

class CounterGetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CounterSetRequest(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...

class CounterResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: int
    def __init__(self, value: _Optional[int] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("name", "permits", "session", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMITS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    permits: int
    session: int
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., permits: _Optional[int] = ..., session: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("fencing_token",)
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    fencing_token: int
    def __init__(self, fencing_token: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("name", "fencing_token", "session")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    fencing_token: int
    session: int
    def __init__(self, name: _Optional[str] = ..., fencing_token: _Optional[int] = ..., session: _Optional[int] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class EventWaitRequest(_message.Message):
    __slots__ = ("name", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class EventResponse(_message.Message):
    __slots__ = ("is_set",)
    IS_SET_FIELD_NUMBER: _ClassVar[int]
    is_set: bool
    def __init__(self, is_set: _Optional[bool] = ...) -> None: ...

class BarrierWaitRequest(_message.Message):
    __slots__ = ("name", "parties", "session", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parties: int
    session: int
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., parties: _Optional[int] = ..., session: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class BarrierWaitResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: int
    def __init__(self, index: _Optional[int] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("lock_permits", "lock_tokens", "lock_waiters", "barrier_parties", "barrier_arrived", "event_set")
    LOCK_PERMITS_FIELD_NUMBER: _ClassVar[int]
    LOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOCK_WAITERS_FIELD_NUMBER: _ClassVar[int]
    BARRIER_PARTIES_FIELD_NUMBER: _ClassVar[int]
    BARRIER_ARRIVED_FIELD_NUMBER: _ClassVar[int]
    EVENT_SET_FIELD_NUMBER: _ClassVar[int]
    lock_permits: int
    lock_tokens: _containers.RepeatedScalarFieldContainer[int]
    lock_waiters: int
    barrier_parties: int
    barrier_arrived: int
    event_set: bool
    def __init__(self, lock_permits: _Optional[int] = ..., lock_tokens: _Optional[_Iterable[int]] = ..., lock_waiters: _Optional[int] = ..., barrier_parties: _Optional[int] = ..., barrier_arrived: _Optional[int] = ..., event_set: _Optional[bool] = ...) -> None: ...
