"""The asynchronous side of a client in one process: jobs handed over one at
a time (``apply_async``, ``Executor.submit``) become futures at once, are
submitted together in the background, and have their results delivered as
they finish.

- One submitter thread takes every job waiting and sends them as one batch,
  so a loop of ``submit`` calls costs a few RPCs, not one each.
- Each batch is watched (unordered ``Watch``) by a thread of its own, at most
  ``MAX_WATCHES`` at a time; the master also limits watches per client
  address (``--max-watches-per-client``). Batches past either limit are
  followed by one poller thread with ``Get`` instead, a little later.
- A future cancelled before its batch is sent is dropped from it; after, the
  job is cancelled on the master and the future is cancelled once the master
  says it was (a job that had already finished keeps its result).
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED as _FUTURE_CANCELLED
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ._client import RECONNECT_PATIENCE_S
from ._errors import DroverError, InvalidArgument, LimitExceeded, MasterUnavailable, never_sent
from ._results import CANCELLED, FINISHED, SUCCEEDED, error_of
from .v1 import drover_pb2 as pb

#: Watch threads per process; further batches go to the poller.
MAX_WATCHES = 32
#: The most jobs the submitter sends in one batch.
MAX_BATCH = 10_000
#: How long the poller's Get waits for its jobs before it looks again (s).
POLL_WAIT_S = 0.25
# How long an apply's Submit waits for its job before it is followed like
# any other (a blocking call is not interrupted by Ctrl-C).
APPLY_WAIT_S = 1.0


class JobFuture(Future):
    """A ``concurrent.futures.Future`` of one drover job.

    ``job_id`` and ``batch_id`` are set once the job is submitted (None
    before). ``cancel()`` cancels the job on the master. A job's start on a
    worker is not reported, so ``running()`` stays False.
    """

    def __init__(self, tracker: "Tracker", kind: Any):
        super().__init__()
        self._tracker = tracker
        self._kind = kind
        #: The job's id, once submitted.
        self.job_id: Optional[str] = None
        #: The id of the batch it was submitted in, once submitted.
        self.batch_id: Optional[str] = None
        # Set once the submit is over, successful or not.
        self._submitted = threading.Event()

    def cancel(self) -> bool:
        """Cancels the job: True if it is cancelled (also on the master),
        False if it had already finished."""
        return self._tracker.cancel([self]) == 1

    def _cancel_here(self) -> bool:
        """Cancels this future (not the job), and tells ``wait`` and
        ``as_completed``: they count a cancelled future as done only once
        notified, which an executor does (set_running_or_notify_cancel)."""
        with self._condition:  # an RLock: Future.cancel takes it again
            if not super().cancel():
                return False
            if self._state == _FUTURE_CANCELLED:
                self.set_running_or_notify_cancel()
            return True

    def _deliver(self, info: Any) -> None:
        """Completes the future from a finished job's JobInfo (once)."""
        if self.done():
            return
        try:
            if info.state == SUCCEEDED:
                try:
                    value = self._kind.decode(info.output)
                except Exception as e:  # a malformed answer must not kill the watcher
                    self.set_exception(e)
                else:
                    self.set_result(value)
            elif info.state == CANCELLED:
                self._cancel_here()
            else:
                self.set_exception(error_of(info))
        except InvalidStateError:
            pass  # cancelled or completed meanwhile

    def _fail(self, exc: BaseException) -> None:
        if not self.done():
            try:
                self.set_exception(exc)
            except InvalidStateError:
                pass


class Tracker:
    """Submits and follows single jobs for one client in one process."""

    def __init__(self, client: Any):
        self._client = client
        self._cond = threading.Condition()
        # Jobs waiting for the submitter: (JobSpec, future).
        self._waiting: List[Tuple[Any, JobFuture]] = []
        self._submitter: Optional[threading.Thread] = None
        self._watches = 0
        # Jobs followed by the poller: job id -> future.
        self._polled: Dict[str, JobFuture] = {}
        self._poller: Optional[threading.Thread] = None
        self._stopped = False

    def stop(self) -> None:
        """Ends the submitter thread (the client is closing); jobs still
        waiting to be submitted fail."""
        with self._cond:
            self._stopped = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        self._fail_all(waiting, DroverError(f"the client of {self._client.url} was closed"))

    def submit(self, kind: Any, arg: str, fields: Dict[str, Any]) -> JobFuture:
        """Queues one job for the submitter and returns its future."""
        fut = JobFuture(self, kind)
        spec = pb.JobSpec(kind=kind.kind, arg=arg, **fields)
        with self._cond:
            if self._stopped:
                raise DroverError(f"the client of {self._client.url} is closed")
            self._waiting.append((spec, fut))
            if self._submitter is None:
                self._submitter = threading.Thread(target=self._submit_loop, name="drover-submit", daemon=True)
                self._submitter.start()
            self._cond.notify_all()
        return fut

    def future(self, kind: Any) -> JobFuture:
        """A future for :meth:`apply` to complete, made first so that the
        pool can count it (and ``terminate`` cancel its job) from the start."""
        with self._cond:
            if self._stopped:
                raise DroverError(f"the client of {self._client.url} is closed")
        return JobFuture(self, kind)

    def apply(self, fut: JobFuture, arg: str, fields: Dict[str, Any]) -> None:
        """Submits ``fut``'s job from the calling thread in a Submit that
        waits for it, so that a job finished within APPLY_WAIT_S costs one
        round trip; ``fut`` is done on return unless the wait ended first
        (then the job is followed like any other). The Submit carries a
        request id: sent again (without the wait) after the master went away
        during the call, or after an interrupt, it names the job the first
        one made, so the job is neither doubled nor lost from the pool's
        view (``terminate`` can cancel it)."""
        spec = pb.JobSpec(kind=fut._kind.kind, arg=arg, **fields)
        req = pb.SubmitRequest(
            jobs=[spec], request_id=str(uuid.uuid4()), wait=True, timeout_ms=int(APPLY_WAIT_S * 1000)
        )
        parts: List[Tuple[int, Any]] = []
        try:
            try:
                self._submit_again_while_away(req, parts)
            except Exception as e:
                self._fail_all([(spec, fut)], e)
                return
            except BaseException:
                # Ctrl-C during the wait: learn the job (the same request id
                # again, not waiting) so that the pool still holds it, then
                # let the interrupt go on.
                req.wait = False
                try:
                    self._client._submit_into(req, 0, 0, parts)
                except Exception as e:
                    self._fail_all([(spec, fut)], e)
                else:
                    self._settle_apply(fut, parts)
                raise
            self._settle_apply(fut, parts)
        finally:
            # Whatever happened (a second Ctrl-C, say), terminate() must not
            # wait for this submit forever.
            if not fut._submitted.is_set():
                self._fail_all([(spec, fut)], DroverError("the submit of this job was interrupted"))

    def _settle_apply(self, fut: JobFuture, parts: List[Tuple[int, Any]]) -> None:
        """Gives an applied job's future its id and its result, or follows
        the job when the reply has no result yet."""
        _, resp = parts[-1]
        fut.job_id, fut.batch_id = resp.job_ids[0], resp.batch_id
        fut._submitted.set()
        done = [info for info in resp.result.jobs if info.state in FINISHED]
        if resp.result.complete and done:
            fut._deliver(done[0])
        else:
            self._follow(resp.batch_id, [fut])

    def _submit_again_while_away(self, req: Any, parts: List[Tuple[int, Any]]) -> None:
        """Sends ``req`` (which has a request id). If the master went away
        during the call, sends it again without its wait while it cannot be
        reached, for up to RECONNECT_PATIENCE_S: a repeat names the batch the
        first one made, if it made one. A master never reached fails at
        once, as every other call does. With several masters, the submit
        went around them already (``Client._submit_into``)."""
        try:
            self._client._submit_into(req, 0, 0, parts)
            return
        except MasterUnavailable as e:
            if never_sent(str(e)) or len(self._client.urls) > 1:
                raise
        req.wait = False
        patience_until = time.monotonic() + RECONNECT_PATIENCE_S
        delay = 0.05
        while True:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                self._client._submit_into(req, 0, 0, parts)
                return
            except MasterUnavailable:
                if time.monotonic() >= patience_until:
                    raise

    # ---- submitting ----

    def _submit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                # The master's --max-batch-jobs, once a refusal told it.
                most = min(MAX_BATCH, self._client.max_batch_jobs or MAX_BATCH)
                batch = self._waiting[:most]
                del self._waiting[:most]
            self._submit_batch(batch)

    def _submit_batch(self, batch: List[Tuple[Any, JobFuture]]) -> None:
        while batch:
            # The parts the master took, in order: a prefix of the batch even
            # when a limit split it and a later part was refused.
            parts: List[Tuple[int, Any]] = []
            try:
                req = pb.SubmitRequest(jobs=[spec for spec, _ in batch], request_id=self._client._request_id())
                self._client._submit_into(req, 0, 0, parts)
                self._settle(batch, parts)
                return
            except InvalidArgument as e:
                taken = self._settle(batch, parts)
                batch = batch[taken:]
                # One bad job must not fail the others sent with it: the
                # master names it (jobs[i]); fail it alone and send the rest.
                bad = _bad_index(str(e), taken + len(batch))
                if bad is None or bad < taken:
                    self._fail_all(batch, e)
                    return
                spec, fut = batch.pop(bad - taken)
                fut._fail(InvalidArgument(str(e).replace(f"jobs[{bad}]", "jobs[0]"), e.code))
                fut._submitted.set()
            except BaseException as e:  # keep the thread alive, tell the futures
                self._fail_all(batch[self._settle(batch, parts) :], e)
                return

    def _settle(self, batch: List[Tuple[Any, JobFuture]], parts: List[Tuple[int, Any]]) -> int:
        """Gives the futures of submitted parts their ids and follows them;
        returns how many jobs of the batch that covers."""
        covered = 0
        for offset, resp in parts:
            futs = [fut for _, fut in batch[offset : offset + len(resp.job_ids)]]
            for fut, job_id in zip(futs, resp.job_ids):
                fut.job_id, fut.batch_id = job_id, resp.batch_id
                fut._submitted.set()
            self._follow(resp.batch_id, futs)
            covered = offset + len(resp.job_ids)
        return covered

    @staticmethod
    def _fail_all(batch: List[Tuple[Any, JobFuture]], exc: BaseException) -> None:
        for _, fut in batch:
            fut._fail(exc)
            fut._submitted.set()

    # ---- following results ----

    def _follow(self, batch_id: str, futs: List[JobFuture]) -> None:
        with self._cond:
            if self._watches < MAX_WATCHES:
                self._watches += 1
                threading.Thread(
                    target=self._watch, args=(batch_id, futs), name="drover-watch", daemon=True
                ).start()
                return
        self._poll(futs)

    def _watch(self, batch_id: str, futs: List[JobFuture]) -> None:
        try:
            for msg in self._client._watch(batch_id, ordered=False):
                for info in msg.jobs:
                    if info.index < len(futs):
                        futs[info.index]._deliver(info)
        except LimitExceeded:
            # The master's --max-watches-per-client: the poller takes over.
            self._poll([f for f in futs if not f.done()])
        except BaseException as e:
            for f in futs:
                f._fail(e)
        finally:
            with self._cond:
                self._watches -= 1

    def _poll(self, futs: Iterable[JobFuture]) -> None:
        with self._cond:
            for f in futs:
                if not f.done() and f.job_id is not None:
                    self._polled[f.job_id] = f
            if self._polled and self._poller is None:
                self._poller = threading.Thread(target=self._poll_loop, name="drover-poll", daemon=True)
                self._poller.start()

    def _poll_loop(self) -> None:
        while True:
            with self._cond:
                ids = list(self._polled)[:MAX_BATCH]
                if not ids:
                    self._poller = None
                    return
            try:
                # Returns when all are finished, or after POLL_WAIT_S.
                jobs = self._client._get(job_ids=ids, wait=True, timeout_s=POLL_WAIT_S).jobs
            except BaseException as e:
                with self._cond:
                    futs = [self._polled.pop(i) for i in ids if i in self._polled]
                for f in futs:
                    f._fail(e)
                continue
            for info in jobs:
                if info.state in FINISHED:
                    with self._cond:
                        fut = self._polled.pop(info.job_id, None)
                    if fut is not None:
                        fut._deliver(info)

    # ---- cancelling ----

    def cancel(self, futs: List[JobFuture]) -> int:
        """Cancels the jobs of ``futs``; returns how many futures are now
        cancelled."""
        with self._cond:
            waiting = {id(f) for f in futs}
            kept = []
            for spec, f in self._waiting:
                if id(f) in waiting:
                    f._cancel_here()
                    f._submitted.set()
                else:
                    kept.append((spec, f))
            self._waiting = kept
        rest = [f for f in futs if not f.done()]
        for f in rest:
            f._submitted.wait()  # its submit is under way
        ids = [f.job_id for f in rest if f.job_id is not None and not f.done()]
        if ids:
            by_id = {f.job_id: f for f in rest}
            for start in range(0, len(ids), MAX_BATCH):
                chunk = ids[start : start + MAX_BATCH]
                self._client._cancel(job_ids=chunk)
                # The cancel reply only counts; read each job's state so
                # that every future is settled before cancel() returns.
                for info in self._client._get(job_ids=chunk).jobs:
                    if info.state in FINISHED:
                        by_id[info.job_id]._deliver(info)
        return sum(1 for f in futs if f.cancelled())


def _bad_index(message: str, n: int) -> Optional[int]:
    """The i of ``jobs[i]`` in a refusal, if it names one of n jobs."""
    start = message.find("jobs[")
    if start < 0:
        return None
    end = message.find("]", start)
    try:
        i = int(message[start + 5 : end])
    except ValueError:
        return None
    return i if 0 <= i < n else None
