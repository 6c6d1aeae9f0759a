//! The queue state machine: jobs, batches, the priority queues, worker
//! sessions and their credit. No I/O happens here: the services lock it,
//! change it, and send what it hands back once the lock is released. It
//! imports neither the committer, the services nor the metrics: the
//! committer takes its changes through [`State::take_changes`], and the
//! services deliver the [`Outgoing`] it returns.
//!
//! ```text
//! QUEUED -> RUNNING -> SUCCEEDED
//!    ^         |  \--> FAILED      (bad input, or counted attempts reach the allowance)
//!    +------ retry (child crashed, timed out, worker lost, lease expired:
//!    |              counted; returned on drain, master restarted: not counted)
//!    +------ retry of a FAILED job (raises its allowance)
//! QUEUED/RUNNING -> CANCELLED
//! ```
//!
//! # Attempts
//!
//! An attempt is a fact recorded once: `attempts` counts the attempts
//! started, is the number each assignment carries, and never goes down.
//! `counted` is how many of them count toward the job's `allowance`
//! (its `max_attempts`, raised by each retry of a dead letter). An attempt
//! counts when it ends in a failure that is the job's: a failed run, a
//! crashed child, a timeout, a lost worker or an expired lease. A return by
//! a draining worker and a master restart with the job in flight end the
//! attempt without counting it. A result is matched to (job, attempt): a
//! success is taken for the current attempt while nobody runs a newer one,
//! a failure only from the session that holds the attempt, so each attempt
//! is accounted for once.
//!
//! # Layout
//!
//! - `job`: the job table, compact records, store records and client views.
//! - `sessions`: worker sessions, their credit, dispatch, session ends.
//! - `queues`: the ready queues, Python jobs by module.
//! - `lifecycle`: submit, results, failures, retries, returns, cancels.
//! - `limits`: concurrency limits on jobs (`--limit db=4`): permits taken
//!   on entering the ready queue, given back when the attempt ends.
//! - `journal`: what changed since the last commit, and commit tickets.
//! - `recovery`: the queue rebuilt from what the store committed.
//! - `retention`: finished batches purged, expired ids told apart.
//! - `closing`: batches whose jobs are all finished leave memory (closed
//!   in the store once committed, or evicted over the memory store's
//!   bound), and come back for a retry.
//! - `queries`: what clients read.
//! - `dashboard_queries`: what the web dashboard reads besides (pages of
//!   jobs and batches, heartbeats, the finished total).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_common::pb::{self, JobKind, JobState};
use drover_common::{Error, JobArgs, Limits};
use tokio::sync::{mpsc, watch};

use drover_common::JobClass;
use drover_common::ids::{BatchId, JobId, SessionId};

use crate::store::{Changes, JobWrite, Loaded, Recovered, Store};

/// A map keyed by ids the master made itself (job, batch and session ids,
/// never a client's strings, so nobody can choose colliding keys):
/// foldhash instead of SipHash, whose hashing was part of the cost of the
/// job lookups on every dispatch, result and commit (bench/README.md). The
/// seed is still random per process.
pub(crate) type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A set of ids the master made; see [`IdMap`].
pub(crate) type IdSet<K> = HashSet<K, foldhash::fast::RandomState>;

mod closing;
mod dashboard_queries;
mod encode;
mod job;
mod journal;
mod lifecycle;
mod limits;
#[cfg(test)]
use lifecycle::MAX_KEY_BYTES;
mod queries;
mod queues;
mod recovery;
mod retention;
mod sessions;

pub use dashboard_queries::{BatchSummary, JobFilter, JobPage, MAX_PAGE};
pub(crate) use job::{Batch, Job, JobExtra, JobTable, stored_info, stored_job};
use queues::{Queued, Queues};
pub use recovery::RecoveryReport;

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

/// A connected worker.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) name: Arc<str>,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) version: String,
    pub(crate) cpu_slots: u32,
    pub(crate) io_slots: u32,
    /// Interpreter processes for Python jobs.
    pub(crate) python_slots: u32,
    /// The kinds it runs (wire values), as its hello said.
    pub(crate) kinds: Vec<i32>,
    /// The module prefixes of the Python jobs it runs: the master hands it
    /// no Python job outside them.
    pub(crate) python_modules: Vec<Box<str>>,
    /// Jobs it may still be sent, per class.
    pub(crate) credit: [u64; JobClass::COUNT],
    /// Jobs assigned to it and not yet reported.
    pub(crate) held: IdSet<JobId>,
    pub(crate) outbox: Outbox,
    /// When it was last heard from (the state's clock, unix ms).
    pub(crate) last_seen_ms: u64,
    /// When it connected (unix ms).
    pub(crate) connected_at_ms: u64,
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
    pub(crate) jobs: drover_common::metrics::JobMetrics,
}

/// The whole queue.
pub struct State {
    limits: Limits,
    default_max_attempts: u32,
    pub(crate) jobs: JobTable,
    pub(crate) batches: IdMap<BatchId, Batch>,
    /// Queued jobs per class (Python jobs per module), highest priority
    /// first, then oldest first.
    queues: Queues,
    /// Concurrency limits held and waited for.
    concurrency: limits::Concurrency,
    idempotency: HashMap<Box<str>, JobId>,
    /// Batches by their submit's request id.
    requests: HashMap<Box<str>, BatchId>,
    /// Jobs that later batches list too (named again by their idempotency
    /// key), with those batches and positions: when the job finishes, those
    /// batches hear of it like of their own jobs, and a retry takes it off
    /// their finished lists as off its own batch's. Kept while the job
    /// and those batches are.
    adopted: IdMap<JobId, Vec<(BatchId, u32)>>,
    /// Retried jobs waiting out their backoff, by due time (unix ms).
    delayed: BTreeMap<(u64, u64), JobId>,
    pub(crate) sessions: IdMap<SessionId, Session>,
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
    /// Jobs changed since the last commit, with their slot: the commit
    /// reads them by slot, not by a hash of each id into a table of
    /// hundreds of thousands (a cache miss or two a job, under the lock).
    dirty_jobs: Vec<(JobId, u32)>,
    /// Assignments since the last commit, with their attempt.
    assign_log: Vec<(JobId, u32)>,
    dirty_batches: Vec<BatchId>,
    deleted_jobs: Vec<JobId>,
    deleted_batches: Vec<BatchId>,
    /// The number of the commit that will hold the changes made now.
    pending_commit: u64,
    /// Wakes the committer when the first change after a commit is made.
    kick: Option<std::sync::mpsc::Sender<()>>,
    kicked: bool,
    /// Batches with newly finished jobs, to wake once the change is safe.
    notify_pending: Vec<BatchId>,
    /// The durable store, read for what left memory (closed batches, keys
    /// and request ids of finished work). `None` with the memory store.
    archive: Option<Arc<dyn Store>>,
    /// Finished jobs no longer in memory, by state (wire value): closed in
    /// the store (as of the last commit), or evicted from the memory store.
    archived: [u64; 6],
    /// Batches whose every job finished, in the order they did: to close
    /// at the next commit, or to evict over the memory store's bound.
    closing: VecDeque<BatchId>,
    /// Batches written closed, with the commit that holds that: they
    /// leave memory once it is written.
    closed_in: Vec<(u64, BatchId, [u64; 3])>,
    /// Batches in memory that the store counts closed as of the last
    /// commit written (closed in a commit and opened again by a retry
    /// before or after it was written), with the (succeeded, failed,
    /// cancelled) it counts for them: memory counts their jobs, so the
    /// counts of what left memory leave them out.
    closed_kept: HashMap<BatchId, [u64; 3]>,
    /// Batches opened again or purged, with the commit that writes it:
    /// the store stops counting them closed once it is written.
    unclosed_in: Vec<(u64, BatchId)>,
    /// Batches to count open again in the store (a retry).
    reopened: Vec<BatchId>,
    /// Jobs failed and retried since the last commit (the store's state
    /// index).
    unfailed: Vec<JobId>,
    /// Batches the commit being written purges (retention).
    purging: HashSet<BatchId>,
    /// The memory store's bound on finished jobs kept.
    keep_finished: u64,
    /// The newest creation time (unix ms) of a batch evicted from the
    /// memory store: tells an evicted id from one never seen.
    evicted_upto_ms: u64,
    /// The byte budget of finished work (`--retention-bytes`); `u64::MAX`
    /// for none.
    retention_bytes: u64,
    /// The newest creation time (unix ms) of a batch purged from the store
    /// over the byte budget (as of the purges asked for).
    budget_purged_upto_ms: u64,
    /// The same, for the pending commit to save.
    pending_budget_upto_ms: u64,
    /// Memory store: the bytes of each finished batch in `closing`, and
    /// their sum, against the byte budget.
    closing_bytes: HashMap<BatchId, u64>,
    finished_bytes: u64,
    /// How many entries of `closing`, from the front, are counted in
    /// `closing_bytes`.
    closing_counted: usize,
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
    /// The commit holding the change (and every change visible when it was
    /// made); `None` with no store.
    pub ticket: Option<u64>,
    /// Messages for workers' streams.
    pub messages: Vec<(Outbox, pb::MasterMessage)>,
    /// Batches whose waiters to wake once the ticket's commit is done.
    pub notify: Vec<watch::Sender<u64>>,
}

/// What left memory once a commit was written ([`State::committed`]):
/// dropped by the caller after it lets go of the state's lock.
#[derive(Debug, Default)]
pub struct Evicted {
    /// The batches taken out.
    batches: Vec<Batch>,
    /// Their own jobs.
    jobs: Vec<Job>,
}

impl Outgoing {
    pub(super) fn merge(&mut self, other: Outgoing) {
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
            batches: IdMap::default(),
            queues: Queues::default(),
            concurrency: limits::Concurrency::default(),
            idempotency: HashMap::new(),
            requests: HashMap::new(),
            adopted: IdMap::default(),
            delayed: BTreeMap::new(),
            sessions: IdMap::default(),
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
            archive: None,
            archived: [0; 6],
            closing: VecDeque::new(),
            closed_in: Vec::new(),
            closed_kept: HashMap::new(),
            unclosed_in: Vec::new(),
            reopened: Vec::new(),
            unfailed: Vec::new(),
            purging: HashSet::new(),
            keep_finished: u64::MAX,
            evicted_upto_ms: 0,
            retention_bytes: u64::MAX,
            budget_purged_upto_ms: 0,
            pending_budget_upto_ms: 0,
            closing_bytes: HashMap::new(),
            finished_bytes: 0,
            closing_counted: 0,
        }
    }

    /// Gives the state the durable store to read what leaves memory: with
    /// it, batches whose jobs are all finished leave memory once that is
    /// committed ([`State::committed`]).
    pub fn set_archive(&mut self, store: Arc<dyn Store>) {
        self.archive = Some(store);
    }

    /// Bounds the finished jobs the memory store keeps: past it, the
    /// batches that finished first are evicted ([`State::evict_over_bound`]).
    pub fn set_keep_finished(&mut self, keep: u64) {
        self.keep_finished = keep;
    }

    /// Bounds the bytes of finished work kept (`--retention-bytes`): the
    /// durable store's closed batches are purged oldest first past it
    /// ([`State::purge_closed`]), the memory store's finished batches
    /// evicted ([`State::evict_over_bound`]). `newest_purged_ms` is the
    /// store's record of what was purged so before.
    pub fn set_retention_bytes(&mut self, bytes: u64, newest_purged_ms: u64) {
        self.retention_bytes = bytes;
        self.budget_purged_upto_ms = newest_purged_ms;
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
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The state's clock: unix milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The limits jobs are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(super) fn set_state(&mut self, id: JobId, to: JobState) {
        if let Some(job) = self.jobs.get_mut(&id) {
            self.counts[job.state as usize] -= 1;
            self.counts[to as usize] += 1;
            job.state = to;
        }
    }

    /// Jobs in a state, those no longer in memory included.
    pub fn count(&self, state: JobState) -> u64 {
        self.counts[state as usize] + self.archived[state as usize]
    }

    /// Jobs in a state held in memory.
    pub fn count_in_memory(&self, state: JobState) -> u64 {
        self.counts[state as usize]
    }
}

#[cfg(test)]
mod tests;
