//! The reference model: what the state should hold, changed by the same
//! events under the rules of ARCHITECTURE.md "Attempts". It decides what
//! the state decides (whether a result is taken, whether a job fails for
//! good, what its attempt history says) but not whom a job goes to: that
//! it learns from the assignments the state sends.

use std::collections::BTreeMap;

use drover_common::ids::{BatchId, JobId};
use drover_common::pb::JobState;

use super::Map;
use super::sut::{JobView, Outcome};

/// A job's result once finished: what must never change (except by retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Final {
    pub(super) state: JobState,
    pub(super) output: Option<u64>,
    pub(super) error: Option<String>,
    /// Its `attempt_errors`: each entry's attempt and whether it counted.
    pub(super) errors: Vec<(u32, bool)>,
}

impl Final {
    pub(super) fn of(v: &JobView) -> Option<Final> {
        is_finished(v.state).then(|| Final {
            state: v.state,
            output: v.output,
            error: v.error.clone(),
            errors: v.errors.clone(),
        })
    }
}

pub(super) fn is_finished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// How a result relates to the job it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Match {
    /// For the attempt the sending session holds.
    Held,
    /// A success for the attempt the master ended (lost session, restart)
    /// and has not handed out again.
    Orphaned,
    /// Anything else: dropped and counted.
    Dropped,
}

/// What the model knows of a job.
#[derive(Debug, Clone)]
pub(super) struct MJob {
    pub(super) id: JobId,
    pub(super) batch: BatchId,
    pub(super) max_attempts: u32,
    pub(super) io: bool,
    pub(super) key: Option<String>,
    pub(super) state: JobState,
    /// The session holding the current attempt, while RUNNING.
    pub(super) holder: Option<u64>,
    /// Attempts started: the number the last assignment carried.
    pub(super) attempts: u32,
    /// Attempts that count toward the allowance.
    pub(super) counted: u32,
    /// Counted attempts at which the job is FAILED.
    pub(super) allowance: u32,
    /// Each ended attempt: its number and whether it counted.
    pub(super) errors: Vec<(u32, bool)>,
    /// The nonce of the success taken, once SUCCEEDED.
    pub(super) output: Option<u64>,
    /// FAILED by a failure that is not retriable (else by its allowance).
    pub(super) fatal: bool,
    /// What the state showed when the job finished (cleared by a retry).
    pub(super) fin: Option<Final>,
    pub(super) finished_at: u64,
}

impl MJob {
    pub(super) fn new(
        id: JobId,
        batch: BatchId,
        max_attempts: u32,
        io: bool,
        key: Option<String>,
    ) -> MJob {
        MJob {
            id,
            batch,
            max_attempts,
            io,
            key,
            state: JobState::Queued,
            holder: None,
            attempts: 0,
            counted: 0,
            allowance: max_attempts,
            errors: Vec::new(),
            output: None,
            fatal: false,
            fin: None,
            finished_at: 0,
        }
    }

    /// An assignment to `sid`: the attempt it carries starts (the next
    /// one, which the caller checks).
    pub(super) fn assign(&mut self, sid: u64, attempt: u32) {
        self.attempts = attempt;
        self.state = JobState::Running;
        self.holder = Some(sid);
    }

    /// How a result from `sid` for `attempt` is matched: taken if `sid`
    /// holds that attempt; a success also if the job is QUEUED at it.
    pub(super) fn matches(&self, sid: u64, attempt: u32, success: bool) -> Match {
        if attempt == 0 || attempt != self.attempts {
            return Match::Dropped;
        }
        match self.state {
            JobState::Running if self.holder == Some(sid) => Match::Held,
            JobState::Queued if success => Match::Orphaned,
            _ => Match::Dropped,
        }
    }

    /// Applies a result already matched (not dropped).
    pub(super) fn take(&mut self, out: &Outcome) {
        match out {
            Outcome::Output(nonce) => {
                self.state = JobState::Succeeded;
                self.holder = None;
                self.output = Some(*nonce);
            }
            Outcome::Failure { retryable } => self.fail(*retryable),
            Outcome::Empty => self.fail(true),
        }
    }

    /// Ends the current attempt with a failure that counts: FAILED if it is
    /// not retriable or the allowance is reached, else QUEUED.
    pub(super) fn fail(&mut self, retryable: bool) {
        self.counted += 1;
        self.errors.push((self.attempts, true));
        self.holder = None;
        if retryable && self.counted < self.allowance {
            self.state = JobState::Queued;
        } else {
            self.state = JobState::Failed;
            self.fatal = !retryable;
        }
    }

    /// Ends the current attempt without counting it (a return on drain, a
    /// master restart): the job is QUEUED at once.
    pub(super) fn end_uncounted(&mut self) {
        self.errors.push((self.attempts, false));
        self.holder = None;
        self.state = JobState::Queued;
    }

    /// A client's cancel; returns whether it cancelled the job.
    pub(super) fn cancel(&mut self) -> bool {
        if is_finished(self.state) {
            return false;
        }
        self.state = JobState::Cancelled;
        self.holder = None;
        true
    }

    /// A client's retry of a FAILED job: its allowance is raised, nothing
    /// else is rewritten.
    pub(super) fn retry(&mut self) {
        self.allowance = self.counted + self.max_attempts;
        self.state = JobState::Queued;
        self.fatal = false;
        self.fin = None;
    }
}

/// A session as the model sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct MSession {
    pub(super) granted: [u64; 2],
    pub(super) assigned: [u64; 2],
}

/// The reference model: what the state should hold. Cloned at each commit
/// (what the store should hold); a crash rolls back to that clone.
#[derive(Debug, Clone, Default)]
pub(super) struct Model {
    /// Jobs by their number in the history (creation order).
    pub(super) jobs: BTreeMap<usize, MJob>,
    /// Batches by number: id and listed job ids.
    pub(super) batches: BTreeMap<usize, (BatchId, Vec<JobId>)>,
    /// Idempotency keys of jobs not purged.
    pub(super) keys: Map<String, JobId>,
    /// Live sessions.
    pub(super) sessions: BTreeMap<u64, MSession>,
}

impl Model {
    /// A session ends (stream closed, lease expired): every attempt it
    /// holds fails, counted, with a retriable reason.
    pub(super) fn end_session(&mut self, sid: u64) {
        self.sessions.remove(&sid);
        for m in self.jobs.values_mut() {
            if m.state == JobState::Running && m.holder == Some(sid) {
                m.fail(true);
            }
        }
    }

    /// The master restarted from what the store held (`durable`): no
    /// session survives, and every attempt in flight ends uncounted.
    pub(super) fn restarted(durable: &Model) -> Model {
        let mut model = durable.clone();
        model.sessions.clear();
        for m in model.jobs.values_mut() {
            if m.state == JobState::Running {
                m.end_uncounted();
            }
        }
        model
    }
}
