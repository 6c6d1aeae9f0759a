//! The worker's engine: one task that owns every job the worker holds, the
//! process pool and the credit it grants the master.
//!
//! It reacts to events (the session's messages, the children's results and
//! exits, finished sleeps, timers, the shutdown signal) and after each batch
//! of events "pumps": hands queued jobs to idle children in batches, sends
//! finished results, grants credit for the room it has, and reports the pool.
//! Where it is in a drain is one [`Phase`]; the results the master has not
//! acknowledged are one [`ResultsOutbox`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use drover_common::JobClass;
use drover_common::pb::{self, child_result, job_result, master_message, worker_message};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Config;
use crate::drain::{Expired, Phase};
use crate::pool::{Launcher, Pool, PoolEvent};
use crate::results::ResultsOutbox;
use crate::session::{Outbox, SessionEvent};

#[cfg(test)]
mod tests;

/// A job's timeout is judged with this slack, since the child reports its
/// progress at most a millisecond late.
const TIMEOUT_SLACK: Duration = Duration::from_millis(2);

#[derive(Debug)]
enum Place {
    Queued,
    InChild(usize),
    Sleeping(AbortHandle),
}

/// A job the worker holds.
#[derive(Debug)]
struct LocalJob {
    job_id: String,
    /// The master's slot for the job, sent back with its result.
    slot: Option<u32>,
    attempt: u32,
    kind: i32,
    arg: String,
    timeout_ms: u64,
    priority: i32,
    class: JobClass,
    place: Place,
    /// Cancelled while in a child's batch behind another job: its result
    /// is dropped when it comes.
    cancelled: bool,
}

/// A finished sleep job.
#[derive(Debug)]
struct SleepDone {
    key: u64,
    outcome: job_result::Outcome,
    run_us: u64,
}

/// The engine's state.
pub(crate) struct Engine {
    cfg: Config,
    pool: Pool,
    jobs: HashMap<u64, LocalJob>,
    /// Jobs waiting for a process, per class (CPU: a Rust child, Python: an
    /// interpreter; the IO queue stays empty): highest priority first,
    /// then arrival.
    queues: [BTreeMap<(Reverse<i32>, u64), u64>; JobClass::COUNT],
    next_key: u64,
    /// Jobs held per class, to judge the room left for credit.
    held: [u64; JobClass::COUNT],
    /// Credit granted on this session and not yet used by assignments.
    outstanding: [u64; JobClass::COUNT],
    outbox: Option<Outbox>,
    /// Results the master has not acknowledged yet.
    results: ResultsOutbox,
    /// Mean run time per kind, in microseconds, to size batches and prefetch.
    mean_us: HashMap<i32, f64>,
    pool_changed: bool,
    /// Running, or where in a drain.
    phase: Phase,
    sleep_tx: mpsc::UnboundedSender<SleepDone>,
    completed: u64,
    /// Whether a session is open (the outbox may already be dropped while
    /// the session closes).
    connected: bool,
    /// How often to tell the master we are alive, from its welcome.
    heartbeat_every: Duration,
}

impl Engine {
    /// Runs the engine until it has drained after `shutdown`. Its children
    /// are started by `launcher`; once drained it cancels `closing` and
    /// drops its sender, which closes our half of the stream.
    pub(crate) async fn run(
        cfg: Config,
        launcher: Box<dyn Launcher>,
        mut session_rx: mpsc::UnboundedReceiver<SessionEvent>,
        closing: CancellationToken,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let (pool_tx, mut pool_rx) = mpsc::unbounded_channel();
        // The Python processes are the slots after the CPU children.
        let slots = cfg.processes + cfg.python.as_ref().map_or(0, |p| p.processes);
        let pool = Pool::start(slots, launcher, pool_tx)
            .map_err(|e| anyhow::anyhow!("cannot start child processes: {e}"))?;
        let (sleep_tx, mut sleep_rx) = mpsc::unbounded_channel();
        let mut engine = Engine {
            cfg,
            pool,
            jobs: HashMap::new(),
            queues: Default::default(),
            next_key: 0,
            held: [0; JobClass::COUNT],
            outstanding: [0; JobClass::COUNT],
            outbox: None,
            results: ResultsOutbox::default(),
            mean_us: HashMap::new(),
            pool_changed: true,
            phase: Phase::Running,
            sleep_tx,
            completed: 0,
            connected: false,
            heartbeat_every: Duration::from_secs(1),
        };
        let mut next_heartbeat = Instant::now() + engine.heartbeat_every;
        loop {
            let next_timeout = engine.next_timeout();
            let next_restart = engine.pool.next_restart();
            let phase_deadline = engine.phase.deadline();
            tokio::select! {
                ev = session_rx.recv() => match ev {
                    Some(ev) => engine.on_session(ev),
                    None => break,
                },
                Some(ev) = pool_rx.recv() => engine.on_pool(ev),
                Some(done) = sleep_rx.recv() => engine.on_sleep_done(done),
                _ = sleep_until_opt(next_timeout) => engine.enforce_timeouts(),
                _ = sleep_until_opt(next_restart) => {
                    if engine.pool.restart_due(Instant::now()) {
                        engine.pool_changed = true;
                    }
                }
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    engine.send(worker_message::Msg::Heartbeat(pb::Heartbeat {}));
                    next_heartbeat = Instant::now() + engine.heartbeat_every;
                }
                _ = shutdown.cancelled(), if engine.phase.is_running() => {
                    engine.start_drain(Some(Instant::now() + engine.cfg.grace));
                }
                _ = sleep_until_opt(phase_deadline) => match engine.phase.expire() {
                    Some(Expired::Grace) => {
                        tracing::warn!(grace_ms = engine.cfg.grace.as_millis() as u64, "grace period over, stopping running jobs");
                        engine.abandon_all();
                    }
                    Some(Expired::Close) => {
                        tracing::warn!("the master did not close the session in time");
                        break;
                    }
                    // Waiting for acknowledgements ran out: settled below.
                    None => {}
                },
            }
            // Take every event that is already waiting before pumping, so
            // a burst of results becomes one message and one credit grant.
            for _ in 0..256 {
                match pool_rx.try_recv() {
                    Ok(ev) => engine.on_pool(ev),
                    Err(_) => break,
                }
            }
            engine.pump();
            let acked = engine.results.is_settled();
            let close = engine.phase.settle(
                Instant::now(),
                !engine.jobs.is_empty(),
                acked,
                engine.connected,
            );
            if close {
                if !acked {
                    tracing::warn!(
                        results = engine.results.pending(),
                        "the master did not acknowledge the last results; they will run again"
                    );
                }
                // Closing our half of the stream lets the master end the
                // session cleanly.
                closing.cancel();
                engine.outbox = None;
            }
            if engine.phase == Phase::Done {
                break;
            }
        }
        engine.pool.kill_all();
        tracing::info!(completed = engine.completed, "worker stopped");
        Ok(())
    }

    fn span(&self, job: &LocalJob) -> tracing::Span {
        job_span(&self.cfg.name, &job.job_id, job.kind, job.attempt)
    }

    fn send(&mut self, msg: worker_message::Msg) {
        if let Some(outbox) = &self.outbox
            && outbox.send(pb::WorkerMessage { msg: Some(msg) }).is_err()
        {
            self.outbox = None;
        }
    }

    fn on_session(&mut self, ev: SessionEvent) {
        match ev {
            SessionEvent::Connected {
                outbox,
                worker_id,
                heartbeat,
            } => {
                tracing::debug!(%worker_id, held = self.jobs.len(), "session open");
                self.outbox = Some(outbox);
                self.connected = true;
                self.heartbeat_every = heartbeat;
                self.outstanding = [0; JobClass::COUNT];
                self.pool_changed = true;
                // Whatever the last session may have lost goes again; the
                // master drops what it already has.
                let resend: Vec<_> = self.results.to_resend().collect();
                for message in resend {
                    self.send(worker_message::Msg::Results(message));
                }
                if !self.phase.is_running() {
                    self.send(worker_message::Msg::Draining(pb::Heartbeat {}));
                }
            }
            SessionEvent::Disconnected { reason } => {
                tracing::debug!(%reason, "session closed");
                self.outbox = None;
                self.connected = false;
                self.outstanding = [0; JobClass::COUNT];
            }
            SessionEvent::Message(m) => match m {
                master_message::Msg::Assign(a) => self.on_assign(a.jobs),
                master_message::Msg::Cancel(c) => self.on_cancel(&c.job_ids),
                // The master gives no grace period: running jobs finish.
                master_message::Msg::Drain(_) => self.start_drain(None),
                master_message::Msg::Ack(a) => self.results.ack(a.seq),
                master_message::Msg::Welcome(_) => {}
            },
        }
    }

    fn on_assign(&mut self, jobs: Vec<pb::Assignment>) {
        for a in jobs {
            let class = JobClass::of_wire(a.kind);
            let c = class.index();
            self.outstanding[c] = self.outstanding[c].saturating_sub(1);
            if !self.phase.is_running() {
                // Sent before the master saw our drain: hand it straight back.
                self.send(worker_message::Msg::Returned(pb::Returned {
                    job_ids: vec![a.job_id],
                }));
                continue;
            }
            let key = self.next_key;
            self.next_key += 1;
            self.held[c] += 1;
            if tracing::enabled!(tracing::Level::DEBUG) {
                job_span(&self.cfg.name, &a.job_id, a.kind, a.attempt)
                    .in_scope(|| tracing::debug!(arg = %a.arg, "assigned"));
            }
            let mut job = LocalJob {
                job_id: a.job_id,
                slot: a.slot,
                attempt: a.attempt,
                kind: a.kind,
                arg: a.arg,
                timeout_ms: a.timeout_ms,
                priority: a.priority,
                class,
                place: Place::Queued,
                cancelled: false,
            };
            if class == JobClass::Python {
                if let Some(coord) = &self.cfg.coord {
                    coord.started(key, &job.job_id, job.attempt);
                }
                let modules = self.cfg.python.as_ref().map(|p| p.modules.as_slice());
                if let Some(f) = crate::python::refusal(modules, &job.arg) {
                    // Never imported: the job fails here, not retried.
                    self.jobs.insert(key, job);
                    let job = self.take_job(key).expect("just inserted");
                    self.finish(job, job_result::Outcome::Failure(f), 0);
                    continue;
                }
            }
            match class {
                JobClass::Cpu | JobClass::Python => {
                    self.queues[c].insert((Reverse(job.priority), key), key);
                }
                JobClass::Io => {
                    job.place = Place::Sleeping(self.start_sleep(key, &job));
                }
            }
            self.jobs.insert(key, job);
        }
    }

    fn start_sleep(&self, key: u64, job: &LocalJob) -> AbortHandle {
        let ms: u64 = job.arg.parse().unwrap_or(0);
        let timeout_ms = job.timeout_ms;
        let tx = self.sleep_tx.clone();
        let task = async move {
            let (outcome, run_us) = crate::sleep::run(ms, timeout_ms).await;
            let _ = tx.send(SleepDone {
                key,
                outcome,
                run_us,
            });
        };
        tokio::spawn(task.instrument(self.span(job))).abort_handle()
    }

    fn on_sleep_done(&mut self, done: SleepDone) {
        if let Some(job) = self.take_job(done.key) {
            self.finish(job, done.outcome, done.run_us);
        }
    }

    /// Removes a job from the worker's books.
    fn take_job(&mut self, key: u64) -> Option<LocalJob> {
        let job = self.jobs.remove(&key)?;
        self.held[job.class.index()] -= 1;
        if job.class == JobClass::Python
            && let Some(coord) = &self.cfg.coord
        {
            // Its attempt is over here: so are its coordination sessions.
            coord.ended(key);
        }
        Some(job)
    }

    fn finish(&mut self, job: LocalJob, outcome: job_result::Outcome, run_us: u64) {
        if job.cancelled {
            return;
        }
        match &outcome {
            job_result::Outcome::Output(_) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    self.span(&job)
                        .in_scope(|| tracing::debug!(run_us, "succeeded"));
                }
            }
            job_result::Outcome::Failure(f) => self
                .span(&job)
                .in_scope(|| tracing::info!(reason = %f.reason, retryable = f.retryable, "failed")),
        }
        self.completed += 1;
        self.results.push(pb::JobResult {
            job_id: job.job_id,
            attempt: job.attempt,
            outcome: Some(outcome),
            run_us,
            slot: job.slot,
        });
    }

    fn on_cancel(&mut self, ids: &[String]) {
        // A set: one Cancel can name every job the worker holds, and a
        // scan of the list per held job froze the worker for seconds at
        // 100,000 (its heartbeats too, so the master ended the session).
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let keys: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, j)| ids.contains(j.job_id.as_str()))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(job) = self.jobs.get_mut(&key) else {
                continue;
            };
            job.cancelled = true;
            job_span(&self.cfg.name, &job.job_id, job.kind, job.attempt)
                .in_scope(|| tracing::info!("cancelled"));
            match &job.place {
                Place::Queued => {
                    let k = (Reverse(job.priority), key);
                    self.queues[job.class.index()].remove(&k);
                    self.take_job(key);
                }
                Place::Sleeping(handle) => {
                    handle.abort();
                    self.take_job(key);
                }
                Place::InChild(slot) => {
                    let slot = *slot;
                    if self.pool.children[slot].in_flight.first() == Some(&key) {
                        // It is running: kill its process now.
                        self.kill_child(slot, None);
                    }
                    // Else it waits behind another job in the batch; its
                    // result is dropped when it comes.
                }
            }
        }
    }

    /// Kills the child in `slot` and replaces it. The job it was running
    /// gets `failure` (or is dropped if cancelled); the rest of its batch
    /// goes back to the queue, or to the master in a drain.
    fn kill_child(&mut self, slot: usize, failure: Option<pb::JobFailure>) {
        let in_flight = self.pool.replace(slot);
        self.pool_changed = true;
        self.requeue_batch(in_flight, failure);
    }

    fn requeue_batch(&mut self, in_flight: Vec<u64>, failure: Option<pb::JobFailure>) {
        let mut iter = in_flight.into_iter();
        if let Some(head) = iter.next()
            && let Some(job) = self.take_job(head)
            && let Some(f) = failure
        {
            self.finish(job, job_result::Outcome::Failure(f), 0);
        }
        let mut returned = Vec::new();
        for key in iter {
            let Some(job) = self.jobs.get_mut(&key) else {
                continue;
            };
            if job.cancelled {
                self.take_job(key);
            } else if self.phase.is_running() {
                job.place = Place::Queued;
                self.queues[job.class.index()].insert((Reverse(job.priority), key), key);
            } else if let Some(job) = self.take_job(key) {
                // Not started, like those handed back when the drain began:
                // the master has it run elsewhere now, rather than after
                // this worker's running jobs, and counts no attempt.
                returned.push(job.job_id);
            }
        }
        if !returned.is_empty() {
            self.send(worker_message::Msg::Returned(pb::Returned {
                job_ids: returned,
            }));
        }
    }

    fn on_pool(&mut self, ev: PoolEvent) {
        match ev {
            PoolEvent::Output {
                slot,
                generation,
                response,
            } => {
                if self.pool.children[slot].generation != generation {
                    return;
                }
                let now = Instant::now();
                for r in response.results {
                    let child = &mut self.pool.children[slot];
                    if let Some(pos) = child.in_flight.iter().position(|k| *k == r.slot_id) {
                        child.in_flight.remove(pos);
                    }
                    child.current_started = now;
                    child.jobs_run += 1;
                    let Some(job) = self.take_job(r.slot_id) else {
                        continue;
                    };
                    let mean = self.mean_us.entry(job.kind).or_insert(r.run_us as f64);
                    *mean = 0.8 * *mean + 0.2 * r.run_us as f64;
                    // The child checks the size too, before it writes: this
                    // is the worker's word on it, whatever the child.
                    let outcome = r
                        .outcome
                        .map(|o| crate::child::limit_result(o, self.cfg.max_result_bytes));
                    let outcome = match outcome {
                        Some(child_result::Outcome::Output(o)) => job_result::Outcome::Output(o),
                        Some(child_result::Outcome::Failure(f)) => job_result::Outcome::Failure(f),
                        None => job_result::Outcome::Failure(pb::JobFailure {
                            reason: "the child process sent an empty result".into(),
                            retryable: true,
                        }),
                    };
                    self.finish(job, outcome, r.run_us);
                }
                let child = &self.pool.children[slot];
                if self.cfg.max_jobs_per_child > 0
                    && child.is_idle()
                    && child.jobs_run >= self.cfg.max_jobs_per_child
                {
                    tracing::debug!(
                        slot,
                        pid = child.pid,
                        jobs = child.jobs_run,
                        "recycling child"
                    );
                    self.kill_child(slot, None);
                }
            }
            PoolEvent::Exited {
                slot,
                generation,
                status,
            } => {
                let child = &self.pool.children[slot];
                if child.generation != generation {
                    return;
                }
                let pid = child.pid;
                tracing::warn!(slot, pid, %status, "child process died");
                let failure = pb::JobFailure {
                    reason: format!("child process {pid} {status} while running the job"),
                    retryable: true,
                };
                self.kill_child(slot, Some(failure));
            }
        }
    }

    /// When the job running in `slot` is past its timeout, if it has one.
    fn timeout_at(&self, slot: usize) -> Option<Instant> {
        let child = &self.pool.children[slot];
        let head = self.jobs.get(child.in_flight.first()?)?;
        (head.timeout_ms > 0)
            .then(|| child.current_started + Duration::from_millis(head.timeout_ms) + TIMEOUT_SLACK)
    }

    /// The earliest moment a running job's timeout is passed.
    fn next_timeout(&self) -> Option<Instant> {
        (0..self.pool.children.len())
            .filter_map(|slot| self.timeout_at(slot))
            .min()
    }

    fn enforce_timeouts(&mut self) {
        let now = Instant::now();
        for slot in 0..self.pool.children.len() {
            // Judged at the very moment `next_timeout` wakes for, so that a
            // clock that reads exactly that moment does not wake us again
            // and again.
            if self.timeout_at(slot).is_some_and(|at| now >= at) {
                let child = &self.pool.children[slot];
                let head = &self.jobs[&child.in_flight[0]];
                self.span(head).in_scope(|| {
                    tracing::info!(
                        timeout_ms = head.timeout_ms,
                        pid = child.pid,
                        "timed out, killing its process"
                    )
                });
                let failure = pb::JobFailure {
                    reason: format!(
                        "timed out after {} ms (its process was killed)",
                        head.timeout_ms
                    ),
                    retryable: true,
                };
                self.kill_child(slot, Some(failure));
            }
        }
    }

    /// Starts a drain, unless one is under way: no more credit, and the
    /// jobs not started go back to the master (so do any a killed child
    /// had not started, later in the drain: see `requeue_batch`). Running
    /// ones are stopped at `grace_until`, if given.
    fn start_drain(&mut self, grace_until: Option<Instant>) {
        if !self.phase.drain(grace_until) {
            return;
        }
        tracing::info!(
            held = self.jobs.len(),
            "draining: finishing running jobs, returning the rest"
        );
        self.send(worker_message::Msg::Draining(pb::Heartbeat {}));
        let queued: Vec<u64> = self
            .queues
            .iter_mut()
            .flat_map(|q| std::mem::take(q).into_values())
            .collect();
        let mut returned = Vec::new();
        for key in queued {
            if let Some(job) = self.take_job(key) {
                returned.push(job.job_id);
            }
        }
        if !returned.is_empty() {
            self.send(worker_message::Msg::Returned(pb::Returned {
                job_ids: returned,
            }));
        }
    }

    /// Ends every job still running when the grace period is over: each is
    /// reported as a retriable failure, so it runs again elsewhere.
    fn abandon_all(&mut self) {
        let reason = format!("worker {} stopped before the job finished", self.cfg.name);
        let failure = || pb::JobFailure {
            reason: reason.clone(),
            retryable: true,
        };
        for slot in 0..self.pool.children.len() {
            let in_flight = std::mem::take(&mut self.pool.children[slot].in_flight);
            let mut first = true;
            for key in in_flight {
                if let Some(job) = self.take_job(key) {
                    if first {
                        self.finish(job, job_result::Outcome::Failure(failure()), 0);
                    } else if !job.cancelled {
                        self.send(worker_message::Msg::Returned(pb::Returned {
                            job_ids: vec![job.job_id],
                        }));
                    }
                }
                first = false;
            }
        }
        self.pool.kill_all();
        let keys: Vec<u64> = self.jobs.keys().copied().collect();
        for key in keys {
            if let Some(job) = self.take_job(key) {
                if let Place::Sleeping(h) = &job.place {
                    h.abort();
                }
                self.finish(job, job_result::Outcome::Failure(failure()), 0);
            }
        }
    }

    fn pump(&mut self) {
        // In a drain the queue stays empty: every job not started was
        // handed back, and so is any a killed child had not started.
        debug_assert!(self.phase.is_running() || self.queues.iter().all(|q| q.is_empty()));
        self.dispatch_to_children();
        self.flush_results();
        if self.pool_changed && self.outbox.is_some() {
            self.pool_changed = false;
            self.send(worker_message::Msg::Pool(pb::PoolState {
                child_pids: self.pool.pids(),
                children_restarted: self.pool.restarted,
            }));
        }
        self.grant_credit();
    }

    fn flush_results(&mut self) {
        if self.outbox.is_none() {
            return;
        }
        // Several messages if need be: each bounded in bytes, so none is
        // over the master's message limit however many results are ready.
        while let Some(message) = self.results.next_message() {
            self.send(worker_message::Msg::Results(message));
        }
    }

    /// The class of jobs the process in `slot` runs: the CPU children come
    /// first, then the Python processes.
    fn slot_class(&self, slot: usize) -> JobClass {
        if slot < self.cfg.processes {
            JobClass::Cpu
        } else {
            JobClass::Python
        }
    }

    fn dispatch_to_children(&mut self) {
        for class in [JobClass::Cpu, JobClass::Python] {
            self.dispatch_class(class);
        }
    }

    fn dispatch_class(&mut self, class: JobClass) {
        let c = class.index();
        if self.queues[c].is_empty() {
            return;
        }
        let idle: Vec<usize> = (0..self.pool.children.len())
            .filter(|&s| {
                self.slot_class(s) == class
                    && self.pool.children[s].is_idle()
                    && self.pool.is_alive(s)
            })
            .collect();
        let mut idle_left = idle.len();
        for slot in idle {
            if self.queues[c].is_empty() {
                break;
            }
            let fair = self.queues[c].len().div_ceil(idle_left);
            idle_left -= 1;
            let first_key = *self.queues[c].values().next().expect("not empty");
            let kind = self.jobs[&first_key].kind;
            let size = fair.min(crate::frame_jobs(self.mean_us.get(&kind).copied()));
            let mut batch = Vec::with_capacity(size);
            let mut bytes = 0;
            while batch.len() < size {
                let Some((_, &key)) = self.queues[c].first_key_value() else {
                    break;
                };
                let job = self.jobs.get_mut(&key).expect("queued job is held");
                let child_job = pb::ChildJob {
                    slot_id: key,
                    kind: job.kind,
                    arg: job.arg.clone(),
                };
                // A frame aims at a bounded size; a job larger alone goes
                // alone.
                let job_bytes = crate::child::repeated_len(&child_job);
                if !batch.is_empty() && bytes + job_bytes > crate::child::FRAME_BYTES {
                    break;
                }
                self.queues[c].pop_first();
                job.place = Place::InChild(slot);
                bytes += job_bytes;
                batch.push(child_job);
            }
            let keys: Vec<u64> = batch.iter().map(|j| j.slot_id).collect();
            if let Err(e) = self.pool.send(slot, batch) {
                // Only a job whose argument alone is over the frame limit
                // gets here (the session's message limit keeps it below):
                // it could never run, so say so rather than lose it.
                for key in keys {
                    if let Some(job) = self.take_job(key) {
                        let failure = pb::JobFailure {
                            reason: format!("cannot hand the job to a child process: {e}"),
                            retryable: false,
                        };
                        self.finish(job, job_result::Outcome::Failure(failure), 0);
                    }
                }
            }
        }
    }

    /// Room for more jobs: every process plus an adaptive prefetch for CPU
    /// and Python jobs (short jobs need a deeper queue to hide the round
    /// trip to the master; long ones need none, so a slow worker never
    /// hoards the queue), and the async slots for IO jobs. Only live
    /// processes count: a slot whose process cannot start takes no jobs.
    fn capacity(&self) -> [u64; JobClass::COUNT] {
        let mut cap = [0; JobClass::COUNT];
        cap[JobClass::Io.index()] = self.cfg.io_slots as u64;
        for class in [JobClass::Cpu, JobClass::Python] {
            let procs = (0..self.pool.children.len())
                .filter(|&s| self.slot_class(s) == class && self.pool.is_alive(s))
                .count() as u64;
            if procs == 0 {
                continue;
            }
            let means = self
                .mean_us
                .iter()
                .filter(|(k, _)| JobClass::of_wire(**k) == class)
                .map(|(_, v)| *v);
            let prefetch = crate::adaptive_prefetch(procs, means, self.cfg.prefetch);
            cap[class.index()] = procs + prefetch;
        }
        cap
    }

    fn grant_credit(&mut self) {
        if !self.phase.is_running() || self.outbox.is_none() {
            return;
        }
        let cap = self.capacity();
        let mut grant = [0u64; JobClass::COUNT];
        for c in JobClass::ALL.map(JobClass::index) {
            let used = self.held[c] + self.outstanding[c];
            grant[c] = cap[c].saturating_sub(used);
            self.outstanding[c] += grant[c];
        }
        if grant.iter().all(|&g| g == 0) {
            return;
        }
        self.send(worker_message::Msg::Credit(pb::Credit {
            cpu: grant[JobClass::Cpu.index()] as u32,
            io: grant[JobClass::Io.index()] as u32,
            python: grant[JobClass::Python.index()] as u32,
        }));
    }
}

/// A job's span, with the same fields as the master's (trace.rs), so that
/// `grep <job id>` follows a job across both logs. Made where an event is
/// logged, not per job: a span kept for every job cost an allocation and a
/// formatting of its fields on the hot path.
fn job_span(worker: &str, job_id: &str, kind: i32, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "job", id = %job_id, kind = drover_common::job::kind_name(kind),
        attempt, worker = %worker
    )
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
