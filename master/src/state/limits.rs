//! Concurrency limits on jobs (`drover submit --limit db=4`): a job that
//! carries limit `db` with 4 permits runs only while fewer than 4 jobs
//! holding `db` run, across all workers.
//!
//! A limited job takes its permits when it would enter its ready queue
//! (at submit, when its backoff ends, when it is queued again). If every
//! limit it carries has room it holds a permit of each and goes into the
//! queue like any job; if not it waits here, in the limit's own queue
//! (priority, then age), and not in the ready queue, so it never stands in
//! front of jobs that could run. Its permits are given back when its
//! attempt ends, however it ends (a finish, a failure, a cancel, a lost
//! worker, a return on drain, a master restart), and the waiters that now
//! fit go into the ready queue. Dispatch does not look at limits at all: a
//! job without limits costs one check of its record on each of these
//! steps, and nothing while no limited job is queued or running.
//!
//! A waiter waits in the queue of one limit only: the first of its limits
//! with no room (its blocker). When that limit frees, its waiters are
//! admitted in order and the first that does not fit it stops the walk
//! (jobs that disagree on a limit's permits are served as a semaphore
//! would); a waiter that fits it but is held back by another of its limits
//! moves to that limit's queue. So a release looks only at waiters it can
//! help, however many wait behind other limits.
//!
//! A permit is taken when the job enters its ready queue, not when a
//! worker starts it: a queued job that no worker can take yet (no free
//! slot of its class, no worker allowing its Python module) holds its
//! permits meanwhile, and a later job of higher priority waits behind it.
//!
//! The permits are not stored: they follow from the jobs, stored with
//! their limits, when recovery queues them again.

use super::queues::QueueKey;
use super::*;

/// The most limits one job carries.
pub(crate) const MAX_LIMITS_PER_JOB: usize = 8;
/// The longest limit name, in bytes.
pub(crate) const MAX_LIMIT_NAME_BYTES: usize = 128;
/// The most permits a limit may have.
pub(crate) const MAX_LIMIT_PERMITS: u32 = 1_000_000;

/// A job's limits, as it keeps them: name and permits.
pub(crate) type JobLimits = Vec<(Arc<str>, u32)>;

/// The limits held or waited for now.
#[derive(Debug, Default)]
pub(crate) struct Concurrency {
    /// Only limits with a holder or a waiter.
    limits: HashMap<Arc<str>, Limit>,
    /// Set when waiters were moved to the ready queue: the caller
    /// dispatches.
    admitted: bool,
}

#[derive(Debug, Default)]
struct Limit {
    holders: IdSet<JobId>,
    waiters: BTreeMap<QueueKey, JobId>,
}

impl Concurrency {
    /// Whether waiters were admitted since the last call.
    pub(crate) fn take_admitted(&mut self) -> bool {
        std::mem::take(&mut self.admitted)
    }

    fn held(&self, name: &str) -> usize {
        self.limits.get(name).map_or(0, |l| l.holders.len())
    }

    /// The first of `limits` with no room, if any.
    fn blocker<'a>(&self, limits: &'a [(Arc<str>, u32)]) -> Option<&'a Arc<str>> {
        limits
            .iter()
            .find(|(n, p)| self.held(n) >= *p as usize)
            .map(|(n, _)| n)
    }

    /// Drops a limit's entry once nothing holds or waits for it.
    fn tidy(&mut self, name: &str) {
        if self
            .limits
            .get(name)
            .is_some_and(|l| l.holders.is_empty() && l.waiters.is_empty())
        {
            self.limits.remove(name);
        }
    }
}

/// Checks the limits of `jobs[i]`.
pub(super) fn check(i: usize, limits: &[pb::JobLimit]) -> Result<(), Error> {
    if limits.len() > MAX_LIMITS_PER_JOB {
        return Err(Error::invalid(format!(
            "jobs[{i}].limits: {} limits is over the limit of {MAX_LIMITS_PER_JOB} per job",
            limits.len()
        )));
    }
    for (k, l) in limits.iter().enumerate() {
        let field = format!("jobs[{i}].limits[{k}]");
        if l.name.is_empty() || l.name.len() > MAX_LIMIT_NAME_BYTES {
            return Err(Error::invalid(format!(
                "{field}.name: {} bytes; a limit name has 1 to {MAX_LIMIT_NAME_BYTES}",
                l.name.len()
            )));
        }
        if l.name.contains(['=', ',']) || l.name.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "{field}.name: {:?} holds '=', ',' or a control character",
                l.name
            )));
        }
        if l.name.trim() != l.name {
            return Err(Error::invalid(format!(
                "{field}.name: {:?} starts or ends with white space",
                l.name
            )));
        }
        if l.permits == 0 || l.permits > MAX_LIMIT_PERMITS {
            return Err(Error::invalid(format!(
                "{field}.permits: {} is out of range 1 to {MAX_LIMIT_PERMITS}",
                l.permits
            )));
        }
        if limits[..k].iter().any(|o| o.name == l.name) {
            return Err(Error::invalid(format!(
                "{field}.name: {:?} is named twice",
                l.name
            )));
        }
    }
    Ok(())
}

/// A job's limits from the wire.
pub(super) fn from_pb(limits: Vec<pb::JobLimit>) -> JobLimits {
    limits
        .into_iter()
        .map(|l| (Arc::from(l.name), l.permits))
        .collect()
}

/// A job's limits for the wire.
pub(super) fn to_pb(limits: &[(Arc<str>, u32)]) -> Vec<pb::JobLimit> {
    limits
        .iter()
        .map(|(n, p)| pb::JobLimit {
            name: n.to_string(),
            permits: *p,
        })
        .collect()
}

impl State {
    /// Puts a job that became ready in its queue (`key` is its queue key):
    /// at once if it has no limits or they all have room (it then holds a
    /// permit of each), else among the waiters of its limits. The job is
    /// found at the slot `hint` if that still holds it, else by its id.
    pub(super) fn queue_ready_hinted(&mut self, id: JobId, hint: Option<&u32>, key: QueueKey) {
        let Some(slot) = self.jobs.hinted_slot(&id, hint) else {
            return;
        };
        let job = self.jobs.get_hinted(&id, Some(&slot)).expect("found");
        let limits = &job.x().limits;
        if !limits.is_empty() {
            let c = &mut self.concurrency;
            if let Some(blocker) = c.blocker(limits) {
                let blocker = blocker.clone();
                c.limits.entry(blocker).or_default().waiters.insert(key, id);
                return;
            }
            for (name, _) in limits.iter() {
                c.limits.entry(name.clone()).or_default().holders.insert(id);
            }
        }
        self.queues.insert(job.class(), &job.arg, key, (id, slot));
    }

    /// Gives back what a job holds or waits for, when its attempt ends or
    /// it leaves the queue, and moves the waiters that now fit to the ready
    /// queue (then `concurrency.take_admitted` says so). Nothing for a job
    /// without limits, or one that holds none.
    pub(super) fn release_limits(&mut self, id: JobId) {
        if self.concurrency.limits.is_empty() {
            return;
        }
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if job.x().limits.is_empty() {
            return;
        }
        let key = (Reverse(job.priority), job.seq);
        let names: Vec<Arc<str>> = job.x().limits.iter().map(|(n, _)| n.clone()).collect();
        let mut freed = Vec::new();
        for name in names {
            if let Some(l) = self.concurrency.limits.get_mut(&name) {
                if l.holders.remove(&id) {
                    freed.push(name.clone());
                }
                l.waiters.remove(&key);
            }
            self.concurrency.tidy(&name);
        }
        for name in freed {
            self.admit_waiters(&name);
        }
    }

    /// Moves the waiters of limit `name` that fit to the ready queue, in
    /// order, until one does not fit this limit; one held back by another
    /// of its limits moves to that limit's queue.
    fn admit_waiters(&mut self, name: &str) {
        loop {
            let Some(l) = self.concurrency.limits.get(name) else {
                return;
            };
            let Some((&key, &id)) = l.waiters.first_key_value() else {
                self.concurrency.tidy(name);
                return;
            };
            let Some(slot) = self.jobs.slot_of(&id) else {
                // Cannot happen: a job leaves the table finished, and a
                // finish releases it. Dropped rather than spun on.
                if let Some(l) = self.concurrency.limits.get_mut(name) {
                    l.waiters.remove(&key);
                }
                continue;
            };
            let job = self.jobs.get_hinted(&id, Some(&slot)).expect("found");
            let limits = &job.x().limits;
            let own = limits.iter().find(|(n, _)| &**n == name).map_or(0, |l| l.1);
            if l.holders.len() >= own as usize {
                return;
            }
            let c = &mut self.concurrency;
            if let Some(l) = c.limits.get_mut(name) {
                l.waiters.remove(&key);
            }
            if let Some(other) = c.blocker(limits) {
                c.limits
                    .entry(other.clone())
                    .or_default()
                    .waiters
                    .insert(key, id);
                continue;
            }
            for (n, _) in limits.iter() {
                c.limits.entry(n.clone()).or_default().holders.insert(id);
            }
            self.queues.insert(job.class(), &job.arg, key, (id, slot));
            c.admitted = true;
        }
    }

    /// Each limit held or waited for (or only `name`), with its holders
    /// and the worker running each, and how many jobs wait.
    pub fn limits_report(&self, name: &str) -> pb::LimitsResponse {
        let mut limits: Vec<pb::LimitInfo> = self
            .concurrency
            .limits
            .iter()
            .filter(|(n, _)| name.is_empty() || &***n == name)
            .map(|(n, l)| {
                let mut holders: Vec<pb::LimitHolder> = l
                    .holders
                    .iter()
                    .map(|id| pb::LimitHolder {
                        job_id: id.to_string(),
                        worker: self
                            .jobs
                            .get(id)
                            .filter(|j| j.state == JobState::Running)
                            .and_then(|j| j.x().worker.as_deref())
                            .unwrap_or_default()
                            .to_string(),
                    })
                    .collect();
                holders.sort_by(|a, b| a.job_id.cmp(&b.job_id));
                pb::LimitInfo {
                    name: n.to_string(),
                    holders,
                    waiters: l.waiters.len() as u32,
                }
            })
            .collect();
        limits.sort_by(|a, b| a.name.cmp(&b.name));
        pb::LimitsResponse { limits }
    }
}
