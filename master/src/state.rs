//! The queue state machine: jobs, batches, the priority queues, worker
//! sessions and their credit. No I/O happens here: the services lock it,
//! change it, and send what it hands back once the lock is released.
//!
//! ```text
//! QUEUED -> RUNNING -> SUCCEEDED
//!    ^         |  \--> FAILED      (bad input, or attempts exhausted)
//!    +------ retry (child crashed, timed out, worker lost, lease expired)
//! QUEUED/RUNNING -> CANCELLED
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_common::pb::{self, JobKind, JobState};
use drover_common::{Error, JobArgs, Limits};
use prost::Message;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::store::{Changes, Loaded, Recovered, encode_batch};

/// A worker session: one `Connect` stream, from hello to its end.
pub type SessionId = std::num::NonZeroU64;

/// What the master may send a worker's stream: each message with the
/// commit it must wait for, so a worker is never told of a change that a
/// crash could undo.
pub type Outbox = mpsc::UnboundedSender<(Option<u64>, pb::MasterMessage)>;

/// How often (in commits) the assignment log is compacted.
const LOG_COMPACT_EVERY: u64 = 256;

/// A source of wall-clock time in Unix milliseconds (a test can fake it).
pub type Clock = Box<dyn Fn() -> u64 + Send>;

/// How long a retried job waits.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt, in milliseconds; it doubles
    /// with each further attempt.
    pub base_ms: u64,
    /// The longest wait, in milliseconds.
    pub max_ms: u64,
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts: exponential, capped, with
    /// jitter (between half and all of it) so retries do not move in herds.
    fn backoff_ms(&self, attempts: u32) -> u64 {
        if self.base_ms == 0 {
            return 0;
        }
        let exp = self
            .base_ms
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
        let full = exp.min(self.max_ms);
        let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
        (full as f64 * jitter) as u64
    }
}

/// A job: what the queue needs of it on every step. The rest, which most
/// queued jobs do not have yet, sits behind one pointer in [`JobExtra`]:
/// a million queued jobs must fit in a few hundred megabytes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: Uuid,
    pub(crate) batch: Uuid,
    pub(crate) arg: Box<str>,
    /// Submission order across the whole master: FIFO within a priority.
    pub(crate) seq: u64,
    pub(crate) timeout_ms: u64,
    /// A retried job waits in the delay queue until then (unix ms).
    pub(crate) not_before_ms: u64,
    /// The session running it, while RUNNING.
    pub(crate) session: Option<SessionId>,
    extra: Option<Box<JobExtra>>,
    /// Position in its batch.
    pub(crate) index: u32,
    pub(crate) priority: i32,
    pub(crate) max_attempts: u32,
    /// Attempts started; the attempt a worker reports must be this one.
    pub(crate) attempts: u32,
    pub(crate) kind: JobKind,
    pub(crate) state: JobState,
    /// Changed since the last commit, and listed in `State::dirty_jobs`.
    dirty: bool,
}

/// Jobs by id: a slab of records and an index from id to slot, so that a
/// hash table's spare capacity doubles only the small index, not the
/// records.
#[derive(Debug, Default)]
pub(crate) struct JobTable {
    slots: Vec<Option<Job>>,
    index: HashMap<Uuid, u32>,
    free: Vec<u32>,
}

impl JobTable {
    pub(crate) fn get(&self, id: &Uuid) -> Option<&Job> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: &Uuid) -> Option<&mut Job> {
        let slot = *self.index.get(id)?;
        self.slots[slot as usize].as_mut()
    }

    pub(crate) fn contains_key(&self, id: &Uuid) -> bool {
        self.index.contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: Uuid, job: Job) {
        if let Some(&slot) = self.index.get(&id) {
            self.slots[slot as usize] = Some(job);
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(job);
                slot
            }
            None => {
                self.slots.push(Some(job));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(id, slot);
    }

    pub(crate) fn remove(&mut self, id: &Uuid) -> Option<Job> {
        let slot = self.index.remove(id)?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Job> {
        self.slots.iter().flatten()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

impl std::ops::Index<&Uuid> for JobTable {
    type Output = Job;

    fn index(&self, id: &Uuid) -> &Job {
        self.get(id).expect("job is in the table")
    }
}

/// What a job gains once it runs or finishes.
#[derive(Debug, Default)]
pub(crate) struct JobExtra {
    /// The name of the worker that ran it last.
    pub(crate) worker: Option<Arc<str>>,
    pub(crate) output: Option<pb::JobOutput>,
    pub(crate) error: Option<String>,
    pub(crate) attempt_errors: Vec<String>,
    pub(crate) run_us: u64,
    /// When it finished (unix ms), for retention.
    pub(crate) finished_at_ms: u64,
    pub(crate) idempotency_key: Option<Box<str>>,
}

static NO_EXTRA: JobExtra = JobExtra {
    worker: None,
    output: None,
    error: None,
    attempt_errors: Vec::new(),
    run_us: 0,
    finished_at_ms: 0,
    idempotency_key: None,
};

impl Job {
    /// The job's extra fields (empty ones if it has none yet).
    pub(crate) fn x(&self) -> &JobExtra {
        self.extra.as_deref().unwrap_or(&NO_EXTRA)
    }

    /// The job's extra fields, made if need be.
    fn xm(&mut self) -> &mut JobExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn is_finished(&self) -> bool {
        matches!(
            self.state,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    fn class(&self) -> Class {
        Class::of(self.kind)
    }

    /// The record the store keeps.
    fn record(&self) -> pb::JobRecord {
        pb::JobRecord {
            id: self.id.as_bytes().to_vec(),
            batch: self.batch.as_bytes().to_vec(),
            index: self.index,
            kind: self.kind as i32,
            arg: self.arg.to_string(),
            priority: self.priority,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            state: self.state as i32,
            attempts: self.attempts,
            seq: self.seq,
            worker: self.x().worker.as_deref().unwrap_or_default().to_string(),
            output: self.x().output.clone(),
            error: self.x().error.clone().unwrap_or_default(),
            attempt_errors: self.x().attempt_errors.clone(),
            run_us: self.x().run_us,
            finished_at_ms: self.x().finished_at_ms,
            not_before_ms: self.not_before_ms,
            idempotency_key: self
                .x()
                .idempotency_key
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            running: self.state == JobState::Running,
        }
    }

    /// Rebuilds a job from its record.
    fn from_record(r: pb::JobRecord) -> Result<Job, String> {
        let id = uuid_from(&r.id).ok_or("a job record has a malformed id")?;
        let batch =
            uuid_from(&r.batch).ok_or_else(|| format!("job {id} has a malformed batch id"))?;
        let kind = JobKind::try_from(r.kind)
            .map_err(|_| format!("job {id} has unknown kind {}", r.kind))?;
        let state = JobState::try_from(r.state)
            .map_err(|_| format!("job {id} has unknown state {}", r.state))?;
        let extra = JobExtra {
            worker: (!r.worker.is_empty()).then(|| Arc::from(r.worker.as_str())),
            output: r.output,
            error: (!r.error.is_empty()).then_some(r.error),
            attempt_errors: r.attempt_errors,
            run_us: r.run_us,
            finished_at_ms: r.finished_at_ms,
            idempotency_key: (!r.idempotency_key.is_empty())
                .then(|| r.idempotency_key.into_boxed_str()),
        };
        let bare = extra.worker.is_none()
            && extra.output.is_none()
            && extra.error.is_none()
            && extra.attempt_errors.is_empty()
            && extra.idempotency_key.is_none()
            && extra.finished_at_ms == 0;
        Ok(Job {
            id,
            batch,
            index: r.index,
            kind,
            arg: r.arg.into_boxed_str(),
            priority: r.priority,
            timeout_ms: r.timeout_ms,
            max_attempts: r.max_attempts.max(1),
            state,
            attempts: r.attempts,
            seq: r.seq,
            session: None,
            not_before_ms: r.not_before_ms,
            extra: (!bare).then(|| Box::new(extra)),
            dirty: false,
        })
    }

    /// Renders the job for a client.
    pub(crate) fn info(&self) -> pb::JobInfo {
        pb::JobInfo {
            job_id: self.id.to_string(),
            batch_id: self.batch.to_string(),
            index: self.index,
            kind: self.kind as i32,
            arg: self.arg.to_string(),
            state: self.state as i32,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            output: self.x().output.clone(),
            error: self.x().error.clone().unwrap_or_default(),
            worker: self.x().worker.as_deref().unwrap_or_default().to_string(),
            attempt_errors: self.x().attempt_errors.clone(),
            run_us: self.x().run_us,
        }
    }
}

/// Which slots a job needs on a worker: CPU jobs go to its process pool,
/// IO jobs (sleep) to its async slots. Each has its own queue and credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Cpu = 0,
    Io = 1,
}

impl Class {
    fn of(kind: JobKind) -> Class {
        match kind {
            JobKind::Sleep => Class::Io,
            _ => Class::Cpu,
        }
    }
}

/// The jobs of one submit.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Job ids in submission order.
    pub(crate) jobs: Vec<Uuid>,
    /// Indexes of finished jobs, in the order they finished.
    pub(crate) finished: Vec<u32>,
    /// Bumped on every finish, so waiters and watchers wake.
    pub(crate) notify: watch::Sender<u64>,
}

/// A connected worker.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) name: Arc<str>,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) version: String,
    pub(crate) cpu_slots: u32,
    pub(crate) io_slots: u32,
    /// Jobs it may still be sent, per class.
    pub(crate) credit: [u64; 2],
    /// Jobs assigned to it and not yet reported.
    pub(crate) held: HashSet<Uuid>,
    pub(crate) outbox: Outbox,
    pub(crate) last_seen: Instant,
    pub(crate) connected_at: Instant,
    pub(crate) completed: u64,
    pub(crate) child_pids: Vec<u32>,
    pub(crate) children_restarted: u64,
    pub(crate) draining: bool,
}

/// Counters for `Stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) late_results_dropped: u64,
    pub(crate) retried: u64,
    /// Jobs finished per second, for the last few seconds.
    pub(crate) per_second: VecDeque<(u64, u64)>,
    /// Jobs by kind and outcome, run times and queue waits (metrics).
    pub(crate) jobs: crate::metrics::JobMetrics,
}

/// The whole queue.
pub struct State {
    limits: Limits,
    default_max_attempts: u32,
    pub(crate) jobs: JobTable,
    pub(crate) batches: HashMap<Uuid, Batch>,
    /// Queued jobs per class, highest priority first, then oldest first.
    queues: [BTreeMap<(Reverse<i32>, u64), Uuid>; 2],
    idempotency: HashMap<String, Uuid>,
    /// Retried jobs waiting out their backoff, by due time (unix ms).
    delayed: BTreeMap<(u64, u64), Uuid>,
    pub(crate) sessions: HashMap<SessionId, Session>,
    next_session: u64,
    next_seq: u64,
    /// Jobs in each state, indexed by the state's wire value.
    counts: [u64; 6],
    pub(crate) counters: Counters,
    started: Instant,
    retry: RetryPolicy,
    /// Finished jobs are purged this long after they finish.
    retention_ms: u64,
    clock: Clock,
    /// When the store was created (unix ms): tells an expired id from one
    /// never seen.
    created_at_ms: u64,
    /// Whether changes are committed to a store; if not, none are tracked.
    durable: bool,
    dirty_jobs: Vec<Uuid>,
    /// Assignments since the last commit, with their attempt.
    assign_log: Vec<(Uuid, u32)>,
    dirty_batches: Vec<Uuid>,
    deleted_jobs: Vec<Uuid>,
    deleted_batches: Vec<Uuid>,
    /// The number of the commit that will hold the changes made now.
    pending_commit: u64,
    /// Wakes the committer when the first change after a commit is made.
    kick: Option<std::sync::mpsc::Sender<()>>,
    kicked: bool,
    /// Batches with newly finished jobs, to wake once the change is safe.
    notify_pending: Vec<Uuid>,
}

/// How the state is set up.
pub struct Settings {
    /// What a job may ask for.
    pub limits: Limits,
    /// Attempts for a job that does not say.
    pub default_max_attempts: u32,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// How long finished jobs are kept, in milliseconds.
    pub retention_ms: u64,
    /// Whether changes must be committed before they are acknowledged.
    pub durable: bool,
}

/// What a change produced, to act on once the lock is released: messages
/// for workers, batches whose waiters to wake, and the commit that must
/// finish before any of it is acted on (with a durable store).
#[derive(Debug, Default)]
#[must_use = "the messages must be sent"]
pub struct Outgoing {
    /// The commit holding the change; `None` with no store or no change.
    pub ticket: Option<u64>,
    messages: Vec<(Outbox, pb::MasterMessage)>,
    notify: Vec<watch::Sender<u64>>,
}

impl Outgoing {
    /// Queues every message on its session's stream (which holds each back
    /// until its commit is done) and wakes the batches' waiters now, or,
    /// with a ticket, once `committed` shows the commit is done.
    pub fn send(self, committed: Option<&watch::Receiver<crate::committer::CommitState>>) {
        for (outbox, msg) in self.messages {
            // A closed outbox means the session is ending; its jobs are
            // handled when it ends.
            let _ = outbox.send((self.ticket, msg));
        }
        if self.notify.is_empty() {
            return;
        }
        match (self.ticket, committed) {
            (Some(ticket), Some(committed)) => {
                let mut committed = committed.clone();
                let notify = self.notify;
                tokio::spawn(async move {
                    if crate::committer::wait_for(&mut committed, ticket)
                        .await
                        .is_ok()
                    {
                        for n in notify {
                            n.send_modify(|v| *v += 1);
                        }
                    }
                });
            }
            _ => {
                for n in self.notify {
                    n.send_modify(|v| *v += 1);
                }
            }
        }
    }

    fn merge(&mut self, other: Outgoing) {
        self.ticket = self.ticket.max(other.ticket);
        self.messages.extend(other.messages);
        self.notify.extend(other.notify);
    }
}

impl State {
    /// Creates an empty queue.
    pub fn new(settings: Settings) -> Self {
        State {
            limits: settings.limits,
            default_max_attempts: settings.default_max_attempts.max(1),
            jobs: JobTable::default(),
            batches: HashMap::new(),
            queues: [BTreeMap::new(), BTreeMap::new()],
            idempotency: HashMap::new(),
            delayed: BTreeMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            next_seq: 0,
            counts: [0; 6],
            counters: Counters::default(),
            started: Instant::now(),
            retry: settings.retry,
            retention_ms: settings.retention_ms,
            clock: Box::new(crate::store::now_ms),
            created_at_ms: crate::store::now_ms(),
            durable: settings.durable,
            dirty_jobs: Vec::new(),
            assign_log: Vec::new(),
            dirty_batches: Vec::new(),
            deleted_jobs: Vec::new(),
            deleted_batches: Vec::new(),
            pending_commit: 1,
            kick: None,
            kicked: false,
            notify_pending: Vec::new(),
        }
    }

    /// Wakes the committer if changes are waiting (after recovery).
    pub fn nudge(&mut self) {
        if self.kicked
            && let Some(k) = &self.kick
        {
            let _ = k.send(());
        }
    }

    /// Sets the channel that wakes the committer.
    pub fn set_kick(&mut self, kick: std::sync::mpsc::Sender<()>) {
        self.kick = Some(kick);
    }

    /// Replaces the clock (tests).
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Rebuilds the queue from what the store held. Queued jobs keep their
    /// order and priority; jobs that were running go back to the queue with
    /// their attempt counted (a worker that reconnects and delivers the
    /// result before the job is handed out again still has it recorded).
    pub fn recover(&mut self, recovered: Recovered) -> anyhow::Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        self.created_at_ms = recovered.created_at_ms;
        for (id, ids, created) in recovered.batches {
            self.recover_item(Loaded::Batch(id, ids, created), &mut report)?;
        }
        for record in recovered.jobs {
            self.recover_item(Loaded::Job(Box::new(record)), &mut report)?;
        }
        for list in recovered.assignments {
            self.recover_item(Loaded::Assigned(list), &mut report)?;
        }
        self.finish_recovery(&mut report);
        Ok(report)
    }

    /// Sets when the store was created, as recovery begins.
    pub fn set_created_at(&mut self, created_at_ms: u64) {
        self.created_at_ms = created_at_ms;
    }

    /// Loads one item read from the store, in the store's order: batches
    /// (with their jobs' first records), then job records (which replace
    /// those), then the assignment log. Nothing is queued until
    /// [`State::finish_recovery`], when every job's last state is known.
    pub fn recover_item(
        &mut self,
        item: Loaded,
        report: &mut RecoveryReport,
    ) -> anyhow::Result<()> {
        match item {
            Loaded::Batch(batch_id, ids, created) => {
                for record in created {
                    self.load_record(record)?;
                }
                let (tx, _) = watch::channel(0);
                self.batches.insert(
                    batch_id,
                    Batch {
                        jobs: ids,
                        finished: Vec::new(),
                        notify: tx,
                    },
                );
                report.batches += 1;
            }
            Loaded::Job(record) => self.load_record(*record)?,
            Loaded::Assigned(list) => {
                for (id, attempt) in list {
                    // Handed out for an attempt its record has not reached:
                    // it was running.
                    if let Some(job) = self.jobs.get_mut(&id)
                        && !job.is_finished()
                        && job.attempts < attempt
                    {
                        job.attempts = attempt;
                        job.state = JobState::Running;
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts a recovered record in the table, replacing an older one; a job
    /// that was running is marked RUNNING until recovery finishes.
    fn load_record(&mut self, record: pb::JobRecord) -> anyhow::Result<()> {
        let was_running = record.running;
        let mut job = Job::from_record(record).map_err(anyhow::Error::msg)?;
        self.next_seq = self.next_seq.max(job.seq + 1);
        if let Some(key) = &job.x().idempotency_key {
            self.idempotency.insert(key.to_string(), job.id);
        }
        if was_running {
            job.state = JobState::Running;
        }
        self.jobs.insert(job.id, job);
        Ok(())
    }

    /// Ends recovery: queued jobs go back to their queues in order; jobs
    /// that were running are queued again with their attempt counted (a
    /// worker that reconnects and delivers the result before the job is
    /// handed out again still has it recorded); batches learn which of
    /// their jobs are finished.
    pub fn finish_recovery(&mut self, report: &mut RecoveryReport) {
        let ids: Vec<Uuid> = self.jobs.values().map(|j| j.id).collect();
        for id in ids {
            let (state, not_before) = match self.jobs.get(&id) {
                Some(j) => (j.state, j.not_before_ms),
                None => continue,
            };
            match state {
                JobState::Running => {
                    if let Some(job) = self.jobs.get_mut(&id) {
                        job.state = JobState::Queued;
                    }
                    self.counts[JobState::Queued as usize] += 1;
                    report.requeued += 1;
                    self.fail_attempt(id, "the master restarted while the job ran".into(), true);
                }
                JobState::Queued => {
                    self.counts[JobState::Queued as usize] += 1;
                    report.queued += 1;
                    self.enqueue(id, not_before);
                }
                other => {
                    self.counts[other as usize] += 1;
                    report.finished += 1;
                }
            }
        }
        let batch_ids: Vec<Uuid> = self.batches.keys().copied().collect();
        for b in batch_ids {
            let mut finished: Vec<(u64, u32)> = self.batches[&b]
                .jobs
                .iter()
                .enumerate()
                .filter_map(|(i, id)| {
                    let j = self.jobs.get(id)?;
                    j.is_finished().then_some((j.x().finished_at_ms, i as u32))
                })
                .collect();
            finished.sort_unstable();
            if let Some(batch) = self.batches.get_mut(&b) {
                batch.finished = finished.into_iter().map(|(_, i)| i).collect();
            }
        }
        self.notify_pending.clear();
    }

    /// Takes every change since the last commit, encoded, with the number
    /// of the commit that will hold it; `None` when nothing changed.
    pub fn take_changes(&mut self) -> Option<(u64, Changes)> {
        // Tickets were handed out for the pending commit only if kicked: it
        // must then be numbered and published, even if it writes nothing.
        if !self.kicked {
            return None;
        }
        self.kicked = false;
        let number = self.pending_commit;
        // Now and then every running job is written whole, so the
        // assignment log before this commit can go.
        let truncate_log = number.is_multiple_of(LOG_COMPACT_EVERY);
        if truncate_log {
            let running: Vec<Uuid> = self
                .sessions
                .values()
                .flat_map(|s| s.held.iter().copied())
                .collect();
            for id in running {
                self.mark(id);
            }
            self.kicked = false;
        }
        let mut changes = Changes {
            deleted_jobs: std::mem::take(&mut self.deleted_jobs),
            deleted_batches: std::mem::take(&mut self.deleted_batches),
            assignments: std::mem::take(&mut self.assign_log),
            number,
            truncate_log,
            ..Changes::default()
        };
        for id in std::mem::take(&mut self.dirty_batches) {
            let Some(b) = self.batches.get(&id) else {
                continue;
            };
            // The jobs this batch created travel inside its record, as
            // they are now; their later changes go to their own records.
            let mut created = Vec::new();
            for job_id in &b.jobs {
                if let Some(job) = self.jobs.get_mut(job_id)
                    && job.batch == id
                {
                    job.dirty = false;
                    created.push(job.record());
                }
            }
            changes.batches.push((id, encode_batch(&b.jobs, created)));
        }
        for id in std::mem::take(&mut self.dirty_jobs) {
            if let Some(job) = self.jobs.get_mut(&id)
                && job.dirty
            {
                job.dirty = false;
                changes.jobs.push((id, job.record().encode_to_vec()));
            }
        }
        self.pending_commit += 1;
        Some((number, changes))
    }

    fn kick(&mut self) {
        if !self.kicked {
            self.kicked = true;
            if let Some(k) = &self.kick {
                let _ = k.send(());
            }
        }
    }

    fn mark(&mut self, id: Uuid) {
        if !self.durable {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&id)
            && !job.dirty
        {
            job.dirty = true;
            self.dirty_jobs.push(id);
        }
        self.kick();
    }

    /// Wraps what a change produced with the commit it waits for.
    fn outgoing(&mut self, messages: Vec<(Outbox, pb::MasterMessage)>) -> Outgoing {
        let notify = self
            .notify_pending
            .drain(..)
            .filter_map(|b| self.batches.get(&b).map(|b| b.notify.clone()))
            .collect();
        Outgoing {
            ticket: (self.durable && self.kicked).then_some(self.pending_commit),
            messages,
            notify,
        }
    }

    /// The ticket for a reply: the commit it must wait for, if any.
    pub fn ticket(&self) -> Option<u64> {
        (self.durable && self.kicked).then_some(self.pending_commit)
    }

    /// Puts a job in its queue, or in the delay queue until `not_before`.
    fn enqueue(&mut self, id: Uuid, not_before_ms: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let now = (self.clock)();
        if not_before_ms > now {
            job.not_before_ms = not_before_ms;
            self.delayed.insert((not_before_ms, job.seq), id);
        } else {
            job.not_before_ms = 0;
            let key = (Reverse(job.priority), job.seq);
            self.queues[job.class() as usize].insert(key, id);
        }
    }

    /// Takes a queued job out of whichever queue holds it.
    fn unqueue(&mut self, id: Uuid) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.not_before_ms > 0 && self.delayed.remove(&(job.not_before_ms, job.seq)).is_some() {
            return;
        }
        let key = (Reverse(job.priority), job.seq);
        self.queues[job.class() as usize].remove(&key);
    }

    /// Moves retried jobs whose backoff is over into their queues and hands
    /// out what it can.
    pub fn promote_due(&mut self) -> Outgoing {
        let now = (self.clock)();
        let mut moved = false;
        while let Some((&(due, seq), &id)) = self.delayed.first_key_value() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, seq));
            self.enqueue(id, 0);
            moved = true;
        }
        if moved {
            self.dispatch()
        } else {
            Outgoing::default()
        }
    }

    /// Purges jobs finished longer ago than the retention period, and
    /// batches left empty. Returns how many jobs went.
    pub fn purge_expired(&mut self) -> usize {
        let cutoff = (self.clock)().saturating_sub(self.retention_ms);
        // A whole batch at a time: its record holds its jobs' first state,
        // so a job purged alone would come back at the next recovery.
        let expired: Vec<Uuid> = self
            .batches
            .iter()
            .filter(|(id, b)| {
                b.jobs.iter().all(|j| match self.jobs.get(j) {
                    Some(job) if job.batch == **id => {
                        job.is_finished() && job.x().finished_at_ms < cutoff
                    }
                    _ => true,
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let mut purged = 0;
        for b in expired {
            let Some(batch) = self.batches.remove(&b) else {
                continue;
            };
            for id in &batch.jobs {
                if self.jobs.get(id).is_none_or(|j| j.batch != b) {
                    continue;
                }
                if let Some(job) = self.jobs.remove(id) {
                    self.counts[job.state as usize] -= 1;
                    if let Some(key) = &job.x().idempotency_key {
                        self.idempotency.remove(key.as_ref());
                    }
                    if self.durable {
                        self.deleted_jobs.push(*id);
                    }
                    purged += 1;
                }
            }
            if self.durable {
                self.deleted_batches.push(b);
                self.kick();
            }
        }
        purged
    }

    /// Queues failed jobs again, with their attempts reset; returns how many.
    pub fn retry_jobs(&mut self, ids: &[Uuid]) -> (u32, Outgoing) {
        let mut n = 0;
        let mut touched = HashSet::new();
        for &id in ids {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state != JobState::Failed {
                continue;
            }
            job.attempts = 0;
            job.xm().error = None;
            job.xm().finished_at_ms = 0;
            touched.insert(job.batch);
            self.set_state(id, JobState::Queued);
            self.enqueue(id, 0);
            self.mark(id);
            n += 1;
        }
        // Their batches no longer count them as finished.
        for b in touched {
            let Some(batch) = self.batches.get(&b) else {
                continue;
            };
            let keep: Vec<u32> = batch
                .finished
                .iter()
                .copied()
                .filter(|&i| {
                    batch
                        .jobs
                        .get(i as usize)
                        .is_some_and(|id| self.is_finished(id))
                })
                .collect();
            if let Some(batch) = self.batches.get_mut(&b) {
                batch.finished = keep;
            }
        }
        let mut out = self.dispatch();
        let extra = self.outgoing(Vec::new());
        out.merge(extra);
        (n, out)
    }

    /// Ids of every failed job.
    pub fn failed_ids(&self) -> Vec<Uuid> {
        self.jobs
            .values()
            .filter(|j| j.state == JobState::Failed)
            .map(|j| j.id)
            .collect()
    }

    /// The limits jobs are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn set_state(&mut self, id: Uuid, to: JobState) {
        if let Some(job) = self.jobs.get_mut(&id) {
            self.counts[job.state as usize] -= 1;
            self.counts[to as usize] += 1;
            job.state = to;
        }
    }

    /// Jobs in a state.
    pub fn count(&self, state: JobState) -> u64 {
        self.counts[state as usize]
    }

    /// Checks and enqueues a batch, returning its id and the job ids.
    ///
    /// Nothing is enqueued unless every job is valid.
    pub fn submit(&mut self, specs: Vec<pb::JobSpec>) -> Result<(Uuid, Vec<Uuid>), Error> {
        if specs.is_empty() {
            return Err(Error::invalid(
                "jobs: the batch is empty; submit at least one job",
            ));
        }
        if specs.len() > self.limits.max_batch_jobs {
            return Err(Error::ResourceExhausted(format!(
                "jobs: the batch has {} jobs, over the limit of {} per submit (master flag --max-batch-jobs)",
                specs.len(),
                self.limits.max_batch_jobs
            )));
        }
        for (i, spec) in specs.iter().enumerate() {
            JobArgs::parse(spec.kind, &spec.arg, &self.limits)
                .map_err(|e| Error::invalid(format!("jobs[{i}].arg: {e}")))?;
            if spec.max_attempts > 100 {
                return Err(Error::invalid(format!(
                    "jobs[{i}].max_attempts: {} is over the limit of 100",
                    spec.max_attempts
                )));
            }
        }
        let batch_id = Uuid::now_v7();
        let mut ids = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            if !spec.idempotency_key.is_empty()
                && let Some(&existing) = self.idempotency.get(&spec.idempotency_key)
            {
                ids.push(existing);
                continue;
            }
            let id = Uuid::now_v7();
            let idempotency_key = (!spec.idempotency_key.is_empty())
                .then(|| spec.idempotency_key.clone().into_boxed_str());
            if !spec.idempotency_key.is_empty() {
                self.idempotency.insert(spec.idempotency_key, id);
            }
            let kind = JobKind::try_from(spec.kind).unwrap_or(JobKind::Unspecified);
            let seq = self.next_seq;
            self.next_seq += 1;
            let job = Job {
                id,
                batch: batch_id,
                index: i as u32,
                kind,
                arg: spec.arg.into_boxed_str(),
                priority: spec.priority,
                timeout_ms: spec.timeout_ms,
                max_attempts: if spec.max_attempts == 0 {
                    self.default_max_attempts
                } else {
                    spec.max_attempts
                },
                state: JobState::Queued,
                attempts: 0,
                seq,
                session: None,
                not_before_ms: 0,
                extra: idempotency_key.map(|key| {
                    Box::new(JobExtra {
                        idempotency_key: Some(key),
                        ..JobExtra::default()
                    })
                }),
                dirty: false,
            };
            self.queues[job.class() as usize].insert((Reverse(job.priority), seq), id);
            self.counts[JobState::Queued as usize] += 1;
            self.counters.jobs.submitted(kind);
            self.jobs.insert(id, job);
            self.mark(id);
            ids.push(id);
        }
        // A job named again by its idempotency key belongs to its first batch;
        // this batch lists it so the caller can read every result through it.
        let (tx, _) = watch::channel(0);
        let mut batch = Batch {
            jobs: ids.clone(),
            finished: Vec::new(),
            notify: tx,
        };
        for (i, id) in ids.iter().enumerate() {
            if self.jobs.get(id).is_some_and(|j| j.is_finished()) {
                batch.finished.push(i as u32);
            }
        }
        self.batches.insert(batch_id, batch);
        if self.durable {
            self.dirty_batches.push(batch_id);
            self.kick();
        }
        Ok((batch_id, ids))
    }

    /// Registers a worker session.
    pub fn add_session(&mut self, hello: &pb::Hello, outbox: Outbox) -> SessionId {
        let id = SessionId::new(self.next_session).expect("session ids start at 1");
        self.next_session += 1;
        let now = Instant::now();
        self.sessions.insert(
            id,
            Session {
                name: Arc::from(hello.name.as_str()),
                host: hello.host.clone(),
                pid: hello.pid,
                version: hello.version.clone(),
                cpu_slots: hello.cpu_slots,
                io_slots: hello.io_slots,
                credit: [0, 0],
                held: HashSet::new(),
                outbox,
                last_seen: now,
                connected_at: now,
                completed: 0,
                child_pids: Vec::new(),
                children_restarted: 0,
                draining: false,
            },
        );
        id
    }

    /// Notes that a session was heard from.
    pub fn touch(&mut self, session: SessionId) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Adds credit to a session and hands out what it can take.
    pub fn add_credit(&mut self, session: SessionId, cpu: u32, io: u32) -> Outgoing {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.credit[Class::Cpu as usize] += u64::from(cpu);
            s.credit[Class::Io as usize] += u64::from(io);
        }
        self.dispatch()
    }

    /// Records the pool of a session's worker.
    pub fn set_pool(&mut self, session: SessionId, pool: pb::PoolState) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.child_pids = pool.child_pids;
            s.children_restarted = pool.children_restarted;
        }
    }

    /// Stops sending jobs to a draining worker.
    pub fn set_draining(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.draining = true;
            s.credit = [0, 0];
        }
    }

    /// Assigns queued jobs to sessions with credit, spreading them so that
    /// no worker takes more than its share while others have room.
    pub fn dispatch(&mut self) -> Outgoing {
        let mut plan: HashMap<SessionId, Vec<Uuid>> = HashMap::new();
        for class in [Class::Cpu, Class::Io] {
            let c = class as usize;
            loop {
                let available = self.queues[c].len() as u64;
                if available == 0 {
                    break;
                }
                let open: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.credit[c] > 0 && !s.draining)
                    .map(|(id, _)| *id)
                    .collect();
                if open.is_empty() {
                    break;
                }
                let share = available.div_ceil(open.len() as u64);
                for sid in open {
                    let Some(s) = self.sessions.get_mut(&sid) else {
                        continue;
                    };
                    let take = share.min(s.credit[c]);
                    s.credit[c] -= take;
                    let list = plan.entry(sid).or_default();
                    for _ in 0..take {
                        let Some((_, id)) = self.queues[c].pop_first() else {
                            break;
                        };
                        list.push(id);
                    }
                }
            }
        }
        let mut messages = Vec::new();
        let now_ms = if plan.is_empty() { 0 } else { (self.clock)() };
        for (sid, ids) in plan {
            if ids.is_empty() {
                continue;
            }
            let mut assignments = Vec::with_capacity(ids.len());
            for id in &ids {
                self.set_state(*id, JobState::Running);
                let session = self.sessions.get_mut(&sid).expect("planned session exists");
                session.held.insert(*id);
                let job = self.jobs.get_mut(id).expect("queued job exists");
                job.attempts += 1;
                job.session = Some(sid);
                job.xm().worker = Some(session.name.clone());
                if job.attempts == 1 {
                    self.counters.jobs.waited(job.kind, id, now_ms);
                }
                assignments.push(pb::Assignment {
                    job_id: id.to_string(),
                    kind: job.kind as i32,
                    arg: job.arg.to_string(),
                    timeout_ms: job.timeout_ms,
                    attempt: job.attempts,
                    priority: job.priority,
                });
                let attempt = job.attempts;
                if self.durable {
                    // One log entry per commit records every assignment in
                    // it; the job's own record is rewritten only later.
                    self.assign_log.push((*id, attempt));
                    self.kick();
                }
            }
            let outbox = self.sessions[&sid].outbox.clone();
            messages.push((
                outbox,
                pb::MasterMessage {
                    msg: Some(pb::master_message::Msg::Assign(pb::Assign {
                        jobs: assignments,
                    })),
                },
            ));
        }
        self.outgoing(messages)
    }

    /// Records results from a session. The first result recorded for a job
    /// wins; one for an attempt that is no longer current is dropped and
    /// counted.
    ///
    /// The worker gets an acknowledgement of `seq` once the results are
    /// stored; until then it keeps them, to send again on a new session.
    pub fn record_results(
        &mut self,
        session: SessionId,
        seq: u64,
        results: Vec<pb::JobResult>,
    ) -> Outgoing {
        let mut requeued = false;
        for r in results {
            let Ok(id) = Uuid::parse_str(&r.job_id) else {
                self.counters.late_results_dropped += 1;
                continue;
            };
            if let Some(s) = self.sessions.get_mut(&session) {
                s.held.remove(&id);
            }
            let Some(job) = self.jobs.get(&id) else {
                self.counters.late_results_dropped += 1;
                continue;
            };
            // A result counts only for the job's current attempt, and only
            // while nobody else runs a newer one: a worker that lost its
            // session may still deliver it if the job was not handed out again.
            let current = r.attempt == job.attempts
                && matches!(job.state, JobState::Running | JobState::Queued)
                && (job.session.is_none() || job.session == Some(session));
            if !current {
                self.counters.late_results_dropped += 1;
                tracing::debug!(job = %id, attempt = r.attempt, "late result dropped");
                continue;
            }
            if job.state == JobState::Queued {
                self.unqueue(id);
            }
            let name = self.sessions.get(&session).map(|s| s.name.clone());
            if let Some(s) = self.sessions.get_mut(&session) {
                s.completed += 1;
            }
            match r.outcome {
                Some(pb::job_result::Outcome::Output(output)) => {
                    let job = self.jobs.get_mut(&id).expect("job exists");
                    job.session = None;
                    self.counters.jobs.ran(job.kind, r.run_us);
                    let x = job.xm();
                    x.output = Some(output);
                    x.run_us = r.run_us;
                    if name.is_some() {
                        x.worker = name;
                    }
                    self.finish(id, JobState::Succeeded, None);
                }
                Some(pb::job_result::Outcome::Failure(f)) => {
                    requeued |= self.fail_attempt(id, f.reason, f.retryable);
                }
                None => {
                    requeued |= self.fail_attempt(id, "worker sent an empty result".into(), true);
                }
            }
        }
        let mut out = if requeued {
            self.dispatch()
        } else {
            self.outgoing(Vec::new())
        };
        if seq > 0
            && let Some(s) = self.sessions.get(&session)
        {
            out.messages.push((
                s.outbox.clone(),
                pb::MasterMessage {
                    msg: Some(pb::master_message::Msg::Ack(pb::ResultsAck { seq })),
                },
            ));
        }
        out
    }

    /// Ends an attempt that failed: the job is queued again if it may be
    /// retried and has attempts left, else it is FAILED. Returns whether it
    /// was queued again.
    fn fail_attempt(&mut self, id: Uuid, reason: String, retryable: bool) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        job.session = None;
        let attempt = job.attempts;
        let kind = job.kind;
        job.xm()
            .attempt_errors
            .push(format!("attempt {attempt}: {reason}"));
        if retryable && job.attempts < job.max_attempts {
            job.xm().error = Some(reason);
            let wait = self.retry.backoff_ms(job.attempts);
            let now = (self.clock)();
            self.set_state(id, JobState::Queued);
            self.enqueue(id, if wait > 0 { now + wait } else { 0 });
            self.mark(id);
            self.counters.retried += 1;
            self.counters.jobs.retried(kind);
            true
        } else {
            let msg = if retryable {
                format!("{reason} (after {} attempts)", job.attempts)
            } else {
                reason
            };
            self.finish(id, JobState::Failed, Some(msg));
            false
        }
    }

    fn finish(&mut self, id: Uuid, to: JobState, error: Option<String>) {
        self.set_state(id, to);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        self.counters.jobs.finished(job.kind, to);
        let now = (self.clock)();
        let x = job.xm();
        if error.is_some() {
            x.error = error;
        } else if to == JobState::Succeeded {
            x.error = None;
        }
        x.finished_at_ms = now;
        let (batch, index) = (job.batch, job.index);
        if let Some(b) = self.batches.get_mut(&batch) {
            b.finished.push(index);
            if self.notify_pending.last() != Some(&batch) {
                self.notify_pending.push(batch);
            }
        }
        self.mark(id);
        let now = self.started.elapsed().as_secs();
        match self.counters.per_second.back_mut() {
            Some((sec, n)) if *sec == now => *n += 1,
            _ => {
                self.counters.per_second.push_back((now, 1));
                while self.counters.per_second.len() > 12 {
                    self.counters.per_second.pop_front();
                }
            }
        }
    }

    /// Takes back jobs a draining worker did not start: they are queued
    /// again without counting the attempt.
    pub fn return_jobs(&mut self, session: SessionId, ids: &[String]) -> Outgoing {
        for raw in ids {
            let Ok(id) = Uuid::parse_str(raw) else {
                continue;
            };
            let held = self
                .sessions
                .get_mut(&session)
                .is_some_and(|s| s.held.remove(&id));
            if !held {
                continue;
            }
            if let Some(job) = self.jobs.get_mut(&id)
                && job.state == JobState::Running
            {
                job.attempts = job.attempts.saturating_sub(1);
                job.session = None;
                self.set_state(id, JobState::Queued);
                self.enqueue(id, 0);
                self.mark(id);
            }
        }
        self.dispatch()
    }

    /// Ends a session: its jobs go back to the queue at once, each attempt
    /// counted. Returns false if it had ended already.
    pub fn end_session(&mut self, session: SessionId, reason: &str) -> (bool, Outgoing) {
        let Some(s) = self.sessions.remove(&session) else {
            return (false, self.outgoing(Vec::new()));
        };
        let n = s.held.len();
        for id in s.held {
            let still_running = self
                .jobs
                .get(&id)
                .is_some_and(|j| j.state == JobState::Running && j.session == Some(session));
            if still_running {
                self.fail_attempt(id, format!("worker {} lost: {reason}", s.name), true);
            }
        }
        tracing::info!(worker = %s.name, session, jobs = n, reason, "worker session ended");
        (true, self.dispatch())
    }

    /// Sessions not heard from within `lease`.
    pub fn expired_sessions(&self, lease: Duration) -> Vec<SessionId> {
        let now = Instant::now();
        self.sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) > lease)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Cancels jobs by id; running ones are cancelled on their worker too.
    pub fn cancel(&mut self, ids: &[Uuid]) -> Result<(pb::CancelResponse, Outgoing), Error> {
        for id in ids {
            if !self.jobs.contains_key(id) {
                return Err(self.not_found("job", *id));
            }
        }
        let mut resp = pb::CancelResponse::default();
        let mut per_session: HashMap<SessionId, Vec<String>> = HashMap::new();
        for &id in ids {
            let job = &self.jobs[&id];
            match job.state {
                JobState::Queued => {
                    self.unqueue(id);
                }
                JobState::Running => {
                    if let Some(sid) = job.session {
                        per_session.entry(sid).or_default().push(id.to_string());
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.held.remove(&id);
                        }
                    }
                }
                _ => {
                    resp.already_finished += 1;
                    continue;
                }
            }
            if let Some(job) = self.jobs.get_mut(&id) {
                job.session = None;
            }
            self.finish(id, JobState::Cancelled, Some("cancelled".into()));
            resp.cancelled += 1;
        }
        let mut messages = Vec::new();
        for (sid, job_ids) in per_session {
            if let Some(s) = self.sessions.get(&sid) {
                messages.push((
                    s.outbox.clone(),
                    pb::MasterMessage {
                        msg: Some(pb::master_message::Msg::Cancel(pb::CancelJobs { job_ids })),
                    },
                ));
            }
        }
        Ok((resp, self.outgoing(messages)))
    }

    /// The ids a request names: a batch's jobs in order, or the given ids.
    pub fn resolve(&self, job_ids: &[String], batch_id: &str) -> Result<Vec<Uuid>, Error> {
        if !batch_id.is_empty() {
            let id = parse_id("batch_id", batch_id)?;
            return match self.batches.get(&id) {
                Some(b) => Ok(b.jobs.clone()),
                None => Err(self.not_found("batch", id)),
            };
        }
        if job_ids.is_empty() {
            return Err(Error::invalid(
                "job_ids: name at least one job id, or a batch_id",
            ));
        }
        let mut out = Vec::with_capacity(job_ids.len());
        for (i, raw) in job_ids.iter().enumerate() {
            let id = parse_id(&format!("job_ids[{i}]"), raw)?;
            if !self.jobs.contains_key(&id) {
                // An id might name a batch: the CLI takes either.
                if let Some(b) = self.batches.get(&id) {
                    out.extend_from_slice(&b.jobs);
                    continue;
                }
                return Err(self.not_found("job", id));
            }
            out.push(id);
        }
        Ok(out)
    }

    /// The error for an id not held: expired if it was made while this
    /// store existed and long enough ago to have been purged, else unknown.
    pub(crate) fn not_found(&self, what: &str, id: Uuid) -> Error {
        let made_ms = id.get_timestamp().map(|t| {
            let (secs, nanos) = t.to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        });
        let now = (self.clock)();
        match made_ms {
            Some(ms) if ms >= self.created_at_ms && ms + self.retention_ms <= now => {
                Error::NotFound(format!(
                    "{what} {id} has expired: finished jobs are kept for {} s (master flag --retention)",
                    self.retention_ms / 1000
                ))
            }
            _ => Error::NotFound(format!("{what} {id} is not known")),
        }
    }

    /// Whether every named job is finished.
    pub fn all_finished(&self, ids: &[Uuid]) -> bool {
        ids.iter()
            .all(|id| self.jobs.get(id).is_none_or(|j| j.is_finished()))
    }

    /// A job, if known.
    pub(crate) fn job(&self, id: &Uuid) -> Option<&Job> {
        self.jobs.get(id)
    }

    /// Whether a job is finished.
    pub(crate) fn is_finished(&self, id: &Uuid) -> bool {
        self.jobs.get(id).is_some_and(|j| j.is_finished())
    }

    /// A receiver that changes whenever a job of `batch` finishes.
    pub fn subscribe(&self, batch: &Uuid) -> Option<watch::Receiver<u64>> {
        self.batches.get(batch).map(|b| b.notify.subscribe())
    }

    /// Figures for `Stats`.
    pub fn stats(&self) -> pb::StatsResponse {
        let now_s = self.started.elapsed().as_secs();
        // The current second is still filling: average the ten before it.
        let recent: u64 = self
            .counters
            .per_second
            .iter()
            .filter(|(s, _)| *s < now_s && *s + 10 >= now_s)
            .map(|(_, n)| n)
            .sum();
        let mut workers: Vec<pb::WorkerInfo> = self
            .sessions
            .iter()
            .map(|(id, s)| pb::WorkerInfo {
                worker_id: id.to_string(),
                name: s.name.to_string(),
                host: s.host.clone(),
                cpu_slots: s.cpu_slots,
                io_slots: s.io_slots,
                running: s.held.len() as u32,
                completed: s.completed,
                child_pids: s.child_pids.clone(),
                children_restarted: s.children_restarted,
                version: s.version.clone(),
                draining: s.draining,
                connected_s: s.connected_at.elapsed().as_secs(),
                pid: s.pid,
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        pb::StatsResponse {
            queued: self.count(JobState::Queued),
            running: self.count(JobState::Running),
            succeeded: self.count(JobState::Succeeded),
            failed: self.count(JobState::Failed),
            cancelled: self.count(JobState::Cancelled),
            workers,
            jobs_per_s: recent as f64 / 10.0,
            late_results_dropped: self.counters.late_results_dropped,
            retried: self.counters.retried,
            version: drover_common::VERSION.to_string(),
            uptime_s: now_s,
        }
    }

    /// Jobs in a state (or all), oldest first.
    pub fn list(&self, req: &pb::ListJobsRequest) -> Result<pb::ListJobsResponse, Error> {
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit as usize
        };
        let state = JobState::try_from(req.state)
            .map_err(|_| Error::invalid(format!("state: unknown state {}", req.state)))?;
        let batch = if req.batch_id.is_empty() {
            None
        } else {
            Some(parse_id("batch_id", &req.batch_id)?)
        };
        let mut matched: Vec<&Job> = self
            .jobs
            .values()
            .filter(|j| state == JobState::Unspecified || j.state == state)
            .filter(|j| batch.is_none_or(|b| j.batch == b))
            .collect();
        matched.sort_by_key(|j| j.seq);
        let truncated = matched.len() > limit;
        Ok(pb::ListJobsResponse {
            jobs: matched.into_iter().take(limit).map(Job::info).collect(),
            truncated,
        })
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryReport {
    /// Jobs queued again in their order.
    pub queued: u64,
    /// Jobs that were running, queued again with the attempt counted.
    pub requeued: u64,
    /// Finished jobs, with their results.
    pub finished: u64,
    /// Batches.
    pub batches: u64,
}

fn uuid_from(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

/// Parses a UUID, naming the field when it is malformed.
pub(crate) fn parse_id(field: &str, raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| {
        Error::invalid(format!(
            "{field}: {raw:?} is not a job or batch id (a UUID)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_attempts: u32) -> Settings {
        Settings {
            limits: Limits::default(),
            default_max_attempts: max_attempts,
            retry: RetryPolicy {
                base_ms: 0,
                max_ms: 0,
            },
            retention_ms: 3_600_000,
            durable: false,
        }
    }

    fn spec(kind: JobKind, arg: &str, priority: i32) -> pb::JobSpec {
        pb::JobSpec {
            kind: kind as i32,
            arg: arg.into(),
            priority,
            ..Default::default()
        }
    }

    fn hello(name: &str) -> pb::Hello {
        pb::Hello {
            name: name.into(),
            cpu_slots: 1,
            io_slots: 1,
            ..Default::default()
        }
    }

    fn assigned(
        rx: &mut mpsc::UnboundedReceiver<(Option<u64>, pb::MasterMessage)>,
    ) -> Vec<pb::Assignment> {
        let mut out = Vec::new();
        while let Ok((_, m)) = rx.try_recv() {
            if let Some(pb::master_message::Msg::Assign(a)) = m.msg {
                out.extend(a.jobs);
            }
        }
        out
    }

    fn ok(a: &pb::Assignment) -> pb::JobResult {
        pb::JobResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            outcome: Some(pb::job_result::Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::SleptMs(1)),
            })),
            run_us: 1,
        }
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut st = State::new(settings(3));
        st.submit(vec![spec(JobKind::Fib, "1", 0), spec(JobKind::Fib, "2", 0)])
            .unwrap();
        st.submit(vec![spec(JobKind::Fib, "3", 5)]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("w"), tx);
        st.add_credit(s, 3, 0).send(None);
        let args: Vec<String> = assigned(&mut rx).into_iter().map(|a| a.arg).collect();
        assert_eq!(args, ["3", "1", "2"]);
    }

    #[test]
    fn credit_bounds_what_a_worker_holds_and_work_is_shared() {
        let mut st = State::new(settings(3));
        st.submit(
            (0..10)
                .map(|i| spec(JobKind::Fib, &i.to_string(), 0))
                .collect(),
        )
        .unwrap();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let a = st.add_session(&hello("a"), tx1);
        let b = st.add_session(&hello("b"), tx2);
        st.add_credit(a, 3, 0).send(None);
        assert_eq!(assigned(&mut rx1).len(), 3);
        st.add_credit(b, 100, 0).send(None);
        assert_eq!(assigned(&mut rx2).len(), 7);
        assert_eq!(st.count(JobState::Running), 10);
    }

    #[test]
    fn lost_session_requeues_with_attempt_counted_and_late_result_is_dropped() {
        let mut st = State::new(settings(3));
        let (_, ids) = st.submit(vec![spec(JobKind::Sleep, "5", 0)]).unwrap();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let a = st.add_session(&hello("a"), tx1);
        st.add_credit(a, 0, 1).send(None);
        let first = assigned(&mut rx1).remove(0);
        let (ended, out) = st.end_session(a, "stream closed");
        assert!(ended);
        out.send(None);
        assert_eq!(st.count(JobState::Queued), 1);
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let b = st.add_session(&hello("b"), tx2);
        st.add_credit(b, 0, 1).send(None);
        let second = assigned(&mut rx2).remove(0);
        assert_eq!(second.attempt, 2);
        // The first worker's result arrives late: dropped and counted.
        st.record_results(a, 0, vec![ok(&first)]).send(None);
        assert_eq!(st.counters.late_results_dropped, 1);
        st.record_results(b, 0, vec![ok(&second)]).send(None);
        let job = st.job(&ids[0]).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.attempts, 2);
        // A duplicate of the winning result is dropped too.
        st.record_results(b, 0, vec![ok(&second)]).send(None);
        assert_eq!(st.counters.late_results_dropped, 2);
        assert_eq!(st.count(JobState::Succeeded), 1);
    }

    #[test]
    fn retryable_failures_end_failed_after_max_attempts() {
        let mut st = State::new(settings(2));
        let (_, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        for _ in 0..2 {
            st.add_credit(s, 1, 0).send(None);
            let a = assigned(&mut rx).remove(0);
            st.record_results(
                s,
                0,
                vec![pb::JobResult {
                    job_id: a.job_id,
                    attempt: a.attempt,
                    outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure {
                        reason: "timed out after 50 ms".into(),
                        retryable: true,
                    })),
                    run_us: 0,
                }],
            )
            .send(None);
        }
        let job = st.job(&ids[0]).unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 2);
        assert_eq!(job.x().attempt_errors.len(), 2);
        assert!(job.x().error.as_deref().unwrap().contains("timed out"));
    }

    #[test]
    fn cancel_queued_and_running() {
        let mut st = State::new(settings(3));
        let (_, ids) = st
            .submit(vec![spec(JobKind::Fib, "1", 0), spec(JobKind::Fib, "2", 0)])
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 1, 0).send(None);
        assert_eq!(assigned(&mut rx).len(), 1);
        let (resp, out) = st.cancel(&ids).unwrap();
        out.send(None);
        assert_eq!(resp.cancelled, 2);
        let msgs: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(matches!(
            msgs[0].1.msg,
            Some(pb::master_message::Msg::Cancel(_))
        ));
        assert_eq!(st.count(JobState::Cancelled), 2);
        assert_eq!(st.count(JobState::Queued), 0);
        assert!(st.sessions[&s].held.is_empty());
    }

    #[test]
    fn idempotency_key_returns_first_id() {
        let mut st = State::new(settings(3));
        let mut a = spec(JobKind::Fib, "1", 0);
        a.idempotency_key = "k".into();
        let (_, first) = st.submit(vec![a.clone()]).unwrap();
        let (_, second) = st.submit(vec![a]).unwrap();
        assert_eq!(first, second);
        assert_eq!(st.jobs.len(), 1);
    }

    #[test]
    fn invalid_batches_enqueue_nothing() {
        let mut st = State::new(Settings {
            limits: Limits {
                max_batch_jobs: 2,
                ..Limits::default()
            },
            ..settings(3)
        });
        let e = st.submit(vec![]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = st
            .submit(vec![spec(JobKind::Fib, "1", 0); 3])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit of 2"), "{e}");
        let e = st
            .submit(vec![
                spec(JobKind::Fib, "1", 0),
                spec(JobKind::Prime, "12a", 0),
            ])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("jobs[1].arg"), "{e}");
        assert_eq!(st.jobs.len(), 0);
    }

    /// What a store holding these commits would give back.
    fn recovered_from(commits: &[Changes]) -> Recovered {
        let mut r = Recovered {
            created_at_ms: 1,
            ..Recovered::default()
        };
        for c in commits {
            for (id, bytes) in &c.batches {
                let (ids, created) = crate::store::decode_batch(bytes).unwrap();
                r.batches.push((*id, ids, created));
            }
            for (_, bytes) in &c.jobs {
                r.jobs
                    .push(pb::JobRecord::decode(bytes.as_slice()).unwrap());
            }
            r.assignments.push(c.assignments.clone());
        }
        r
    }

    fn fake_clock(st: &mut State) -> Arc<std::sync::atomic::AtomicU64> {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
        let c = now.clone();
        st.set_clock(Box::new(move || {
            c.load(std::sync::atomic::Ordering::SeqCst)
        }));
        now
    }

    fn fail(a: &pb::Assignment) -> pb::JobResult {
        pb::JobResult {
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            outcome: Some(pb::job_result::Outcome::Failure(pb::JobFailure {
                reason: "child process 42 killed by signal 9 while running the job".into(),
                retryable: true,
            })),
            run_us: 0,
        }
    }

    #[test]
    fn retried_jobs_wait_out_an_exponential_backoff() {
        let mut st = State::new(Settings {
            retry: RetryPolicy {
                base_ms: 1000,
                max_ms: 60_000,
            },
            ..settings(5)
        });
        let now = fake_clock(&mut st);
        st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 10, 0).send(None);
        let mut a = assigned(&mut rx).remove(0);
        for (attempt, full_wait) in [(1u32, 1000u64), (2, 2000), (3, 4000)] {
            assert_eq!(a.attempt, attempt);
            st.record_results(s, 0, vec![fail(&a)]).send(None);
            // Jitter keeps the wait between half and all of it.
            now.fetch_add(full_wait / 2 - 1, std::sync::atomic::Ordering::SeqCst);
            st.promote_due().send(None);
            assert!(assigned(&mut rx).is_empty(), "retried before its backoff");
            assert_eq!(st.count(JobState::Queued), 1);
            now.fetch_add(full_wait / 2 + 1, std::sync::atomic::Ordering::SeqCst);
            st.promote_due().send(None);
            let mut again = assigned(&mut rx);
            assert_eq!(again.len(), 1, "not retried after its backoff");
            a = again.remove(0);
        }
        assert_eq!(a.attempt, 4);
    }

    #[test]
    fn finished_jobs_expire_after_retention_and_say_so() {
        let mut st = State::new(settings(3));
        let now = fake_clock(&mut st);
        now.store(crate::store::now_ms(), std::sync::atomic::Ordering::SeqCst);
        st.created_at_ms = 0;
        let (batch, ids) = st.submit(vec![spec(JobKind::Sleep, "1", 0)]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 0, 1).send(None);
        let a = assigned(&mut rx).remove(0);
        st.record_results(s, 0, vec![ok(&a)]).send(None);
        assert_eq!(st.purge_expired(), 0);
        let later = now.fetch_add(3_600_001, std::sync::atomic::Ordering::SeqCst) + 3_600_001;
        assert_eq!(st.purge_expired(), 1);
        assert!(!st.batches.contains_key(&batch));
        assert_eq!(st.count(JobState::Succeeded), 0);
        let e = st
            .resolve(&[ids[0].to_string()], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired") && e.contains("--retention"), "{e}");
        // An id made just now was never seen: it cannot have expired.
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, later / 1000, 0);
        let never = Uuid::new_v7(ts);
        let e = st
            .resolve(&[never.to_string()], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not known"), "{e}");
    }

    #[test]
    fn recovery_restores_queue_order_results_and_requeues_running_jobs() {
        let mut st = State::new(Settings {
            durable: true,
            ..settings(3)
        });
        let (_, first) = st
            .submit(vec![
                spec(JobKind::Fib, "10", 0),
                spec(JobKind::Fib, "11", 0),
            ])
            .unwrap();
        let (batch2, second) = st.submit(vec![spec(JobKind::Fib, "12", 7)]).unwrap();
        let mut keyed = spec(JobKind::Fib, "13", 0);
        keyed.idempotency_key = "once".into();
        st.submit(vec![keyed.clone()]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 2, 0).send(None);
        let running = assigned(&mut rx);
        // Priority 7 went first, then the oldest.
        assert_eq!(running[0].arg, "12");
        assert_eq!(running[1].arg, "10");
        st.record_results(s, 0, vec![ok(&running[0])]).send(None);
        let (number, changes) = st.take_changes().expect("changes to commit");
        assert_eq!(number, 1);

        let recovered = recovered_from(&[changes]);
        let mut back = State::new(settings(3));
        let report = back.recover(recovered).unwrap();
        assert_eq!(report.finished, 1);
        assert_eq!(report.requeued, 1);
        assert_eq!(report.queued, 2);
        assert_eq!(back.job(&second[0]).unwrap().state, JobState::Succeeded);
        assert_eq!(back.batches[&batch2].finished, vec![0]);
        let was_running = back.job(&first[0]).unwrap();
        assert_eq!(was_running.state, JobState::Queued);
        assert_eq!(was_running.attempts, 1);
        assert!(was_running.x().attempt_errors[0].contains("master restarted"));
        // Idempotency survives, and new jobs continue the sequence.
        let (_, again) = back.submit(vec![keyed]).unwrap();
        assert_eq!(back.jobs.len(), 4);
        assert!(back.job(&again[0]).is_some());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = back.add_session(&hello("b"), tx);
        back.add_credit(s, 10, 0).send(None);
        let order: Vec<String> = assigned(&mut rx).into_iter().map(|a| a.arg).collect();
        assert_eq!(order, ["10", "11", "13"]);
    }

    #[test]
    fn failed_jobs_can_be_retried() {
        let mut st = State::new(settings(1));
        let (batch, ids) = st.submit(vec![spec(JobKind::Fib, "5", 0)]).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 1, 0).send(None);
        let a = assigned(&mut rx).remove(0);
        st.record_results(s, 0, vec![fail(&a)]).send(None);
        assert_eq!(st.failed_ids(), ids);
        let (n, out) = st.retry_jobs(&ids);
        out.send(None);
        assert_eq!(n, 1);
        assert!(st.batches[&batch].finished.is_empty());
        st.add_credit(s, 1, 0).send(None);
        let a = assigned(&mut rx).remove(0);
        assert_eq!(a.attempt, 1);
        st.record_results(s, 0, vec![ok(&a)]).send(None);
        let job = st.job(&ids[0]).unwrap();
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.x().attempt_errors.len(), 1);
    }

    #[test]
    fn assignments_are_logged_once_per_commit_and_recovered() {
        let mut st = State::new(Settings {
            durable: true,
            ..settings(3)
        });
        let (_, ids) = st
            .submit(vec![
                spec(JobKind::Fib, "10", 0),
                spec(JobKind::Fib, "11", 0),
            ])
            .unwrap();
        let (_, first) = st.take_changes().unwrap();
        // A submit is one batch record holding its jobs, not a record each.
        assert!(first.jobs.is_empty());
        assert_eq!(first.batches.len(), 1);
        let (_, created) = crate::store::decode_batch(&first.batches[0].1).unwrap();
        assert_eq!(created.len(), 2);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 1, 0).send(None);
        assert_eq!(assigned(&mut rx).len(), 1);
        let (_, second) = st.take_changes().unwrap();
        // The assignment is one log entry, not a rewritten record.
        assert!(second.jobs.is_empty());
        assert_eq!(second.assignments, vec![(ids[0], 1)]);

        let mut back = State::new(settings(3));
        let report = back.recover(recovered_from(&[first, second])).unwrap();
        assert_eq!((report.queued, report.requeued), (1, 1));
        let was_running = back.job(&ids[0]).unwrap();
        assert_eq!(was_running.state, JobState::Queued);
        assert_eq!(was_running.attempts, 1);
        assert_eq!(back.job(&ids[1]).unwrap().attempts, 0);
        assert_eq!(back.count(JobState::Queued), 2);
    }

    #[test]
    fn a_jobs_own_record_overrides_its_batch_and_batches_expire_whole() {
        let mut st = State::new(Settings {
            durable: true,
            ..settings(3)
        });
        let (batch, ids) = st
            .submit(vec![
                spec(JobKind::Sleep, "1", 0),
                spec(JobKind::Sleep, "2", 0),
            ])
            .unwrap();
        let (_, first) = st.take_changes().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s = st.add_session(&hello("a"), tx);
        st.add_credit(s, 0, 1).send(None);
        let a = assigned(&mut rx).remove(0);
        st.record_results(s, 0, vec![ok(&a)]).send(None);
        let (_, second) = st.take_changes().unwrap();
        assert_eq!(second.jobs.len(), 1);
        let mut back = State::new(settings(3));
        back.recover(recovered_from(&[first, second])).unwrap();
        assert_eq!(back.job(&ids[0]).unwrap().state, JobState::Succeeded);
        assert_eq!(back.job(&ids[1]).unwrap().state, JobState::Queued);
        assert_eq!(back.batches[&batch].finished, vec![0]);
        // Half finished: the batch is kept, however old its finished job.
        let now = fake_clock(&mut back);
        now.store(u64::MAX / 2, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(back.purge_expired(), 0);
        assert!(back.job(&ids[0]).is_some());
    }
}
