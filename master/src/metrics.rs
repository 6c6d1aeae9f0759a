//! The master's Prometheus metrics.
//!
//! Job figures ([`JobMetrics`]) are plain counters and histograms kept in
//! the state, under the lock it is already held with when a job changes, so
//! counting costs a few nanoseconds and no atomic. Everything else (queue
//! depth, workers, late results) is read from the state when scraped. The
//! store's commit latency is timed by [`MeteredStore`], a wrapper around
//! the store the committer writes to.

use std::sync::Arc;
use std::time::Instant;

use drover_common::metrics::{COMMIT_SECONDS, Exposition, Histogram, JOB_SECONDS, Kind};
use drover_common::pb::{JobKind, JobState};
use parking_lot::Mutex;
use uuid::Uuid;

use crate::service::Master;
use crate::store::{Changes, Loaded, Store};

/// The kinds metrics are kept for, as their wire values index them.
const KINDS: [JobKind; 3] = [JobKind::Fib, JobKind::Prime, JobKind::Sleep];

/// Per kind: index by the kind's wire value (0 is unused).
type PerKind<T> = [T; 4];

/// Jobs by kind: how many were submitted and how each ended, and how long
/// they ran and waited.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    submitted: PerKind<u64>,
    succeeded: PerKind<u64>,
    failed: PerKind<u64>,
    cancelled: PerKind<u64>,
    retried: PerKind<u64>,
    /// Run time reported by the worker, of jobs that succeeded.
    run: PerKind<Histogram>,
    /// From submit to the first assignment.
    wait: PerKind<Histogram>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            submitted: [0; 4],
            succeeded: [0; 4],
            failed: [0; 4],
            cancelled: [0; 4],
            retried: [0; 4],
            run: std::array::from_fn(|_| Histogram::new(JOB_SECONDS)),
            wait: std::array::from_fn(|_| Histogram::new(JOB_SECONDS)),
        }
    }
}

fn slot(kind: JobKind) -> usize {
    (kind as usize).min(3)
}

impl JobMetrics {
    /// Counts a job accepted by a submit.
    pub fn submitted(&mut self, kind: JobKind) {
        self.submitted[slot(kind)] += 1;
    }

    /// Counts a job that reached a final state.
    pub fn finished(&mut self, kind: JobKind, state: JobState) {
        let k = slot(kind);
        match state {
            JobState::Succeeded => self.succeeded[k] += 1,
            JobState::Failed => self.failed[k] += 1,
            JobState::Cancelled => self.cancelled[k] += 1,
            _ => {}
        }
    }

    /// Counts an attempt that failed and was queued again.
    pub fn retried(&mut self, kind: JobKind) {
        self.retried[slot(kind)] += 1;
    }

    /// Records the run time a worker reported for a job that succeeded.
    pub fn ran(&mut self, kind: JobKind, run_us: u64) {
        self.run[slot(kind)].observe(run_us as f64 / 1e6);
    }

    /// Records how long job `id` waited from its submit (the time in its
    /// UUID v7) until its first assignment at `now_ms`.
    pub fn waited(&mut self, kind: JobKind, id: &Uuid, now_ms: u64) {
        if let Some(ts) = id.get_timestamp() {
            let (secs, nanos) = ts.to_unix();
            let made_ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            self.wait[slot(kind)].observe(now_ms.saturating_sub(made_ms) as f64 / 1e3);
        }
    }
}

/// A store that times every write: the committer's one transaction, with
/// its fsync, per group commit.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    commits: Arc<Mutex<Histogram>>,
}

impl MeteredStore {
    /// Wraps `inner`; returns the store and the histogram of its commits.
    pub fn wrap(inner: Arc<dyn Store>) -> (Arc<dyn Store>, Arc<Mutex<Histogram>>) {
        let commits = Arc::new(Mutex::new(Histogram::new(COMMIT_SECONDS)));
        let store = MeteredStore {
            inner,
            commits: commits.clone(),
        };
        (Arc::new(store), commits)
    }
}

impl Store for MeteredStore {
    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }

    fn load(&self, sink: &mut dyn FnMut(Loaded) -> anyhow::Result<()>) -> anyhow::Result<u64> {
        self.inner.load(sink)
    }

    fn write(&self, changes: Changes) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = self.inner.write(changes);
        self.commits.lock().observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Renders every metric of the master.
pub fn render(master: &Master, commits: &Mutex<Histogram>) -> String {
    // Copy what is needed under the lock, render after it.
    let (counts, jobs, workers, slots, restarted, late, retried, uptime) = {
        let st = master.state().lock();
        let counts = [
            ("queued", st.count(JobState::Queued)),
            ("running", st.count(JobState::Running)),
            ("succeeded", st.count(JobState::Succeeded)),
            ("failed", st.count(JobState::Failed)),
            ("cancelled", st.count(JobState::Cancelled)),
        ];
        let (mut cpu, mut io, mut restarted) = (0u64, 0u64, 0u64);
        for s in st.sessions.values() {
            cpu += u64::from(s.cpu_slots);
            io += u64::from(s.io_slots);
            restarted += s.children_restarted;
        }
        (
            counts,
            st.counters.jobs.clone(),
            st.sessions.len(),
            (cpu, io),
            restarted,
            st.counters.late_results_dropped,
            st.counters.retried,
            master.guards().started.elapsed().as_secs_f64(),
        )
    };
    let commits = commits.lock().clone();
    let guards = master.guards();

    let mut e = Exposition::new();
    e.family("drover_info", Kind::Gauge, "The build of this master.");
    e.sample("drover_info", &[("version", drover_common::VERSION)], 1.0);
    e.single(
        "drover_uptime_seconds",
        Kind::Gauge,
        "Seconds since the master started.",
        uptime,
    );
    e.family(
        "drover_queue_jobs",
        Kind::Gauge,
        "Jobs held by the master, by state (queued includes retries waiting out their backoff).",
    );
    for (state, n) in counts {
        e.sample("drover_queue_jobs", &[("state", state)], n as f64);
    }
    let per_kind: [(&str, &str, &PerKind<u64>); 5] = [
        (
            "drover_jobs_submitted_total",
            "Jobs accepted by submits.",
            &jobs.submitted,
        ),
        (
            "drover_jobs_completed_total",
            "Jobs that succeeded.",
            &jobs.succeeded,
        ),
        (
            "drover_jobs_failed_total",
            "Jobs that failed for good (bad input, or attempts exhausted).",
            &jobs.failed,
        ),
        (
            "drover_jobs_retried_total",
            "Failed attempts queued again.",
            &jobs.retried,
        ),
        (
            "drover_jobs_cancelled_total",
            "Jobs cancelled.",
            &jobs.cancelled,
        ),
    ];
    for (name, help, values) in per_kind {
        e.family(name, Kind::Counter, help);
        for kind in KINDS {
            let label = drover_common::job::kind_name(kind as i32);
            e.sample(name, &[("kind", label)], values[slot(kind)] as f64);
        }
    }
    e.family(
        "drover_job_run_seconds",
        Kind::Histogram,
        "Run time of jobs that succeeded, as their workers measured it.",
    );
    for kind in KINDS {
        let label = drover_common::job::kind_name(kind as i32);
        e.histogram(
            "drover_job_run_seconds",
            &[("kind", label)],
            &jobs.run[slot(kind)],
        );
    }
    e.family(
        "drover_job_queue_wait_seconds",
        Kind::Histogram,
        "Time from a job's submit to its first assignment to a worker.",
    );
    for kind in KINDS {
        let label = drover_common::job::kind_name(kind as i32);
        e.histogram(
            "drover_job_queue_wait_seconds",
            &[("kind", label)],
            &jobs.wait[slot(kind)],
        );
    }
    e.single(
        "drover_retries_total",
        Kind::Counter,
        "Failed attempts queued again, all kinds.",
        retried as f64,
    );
    e.single(
        "drover_workers_connected",
        Kind::Gauge,
        "Worker sessions open.",
        workers as f64,
    );
    e.family(
        "drover_worker_slots",
        Kind::Gauge,
        "Slots of the connected workers: cpu (child processes) and io.",
    );
    e.sample("drover_worker_slots", &[("class", "cpu")], slots.0 as f64);
    e.sample("drover_worker_slots", &[("class", "io")], slots.1 as f64);
    e.single(
        "drover_pool_processes_restarted",
        Kind::Gauge,
        "Child processes replaced (died, timed out, cancelled, recycled), summed over the connected workers.",
        restarted as f64,
    );
    e.single(
        "drover_late_results_dropped_total",
        Kind::Counter,
        "Results of attempts that were no longer current, dropped.",
        late as f64,
    );
    e.family(
        "drover_store_commit_seconds",
        Kind::Histogram,
        "Time to write one group commit to the store, fsync included.",
    );
    e.histogram("drover_store_commit_seconds", &[], &commits);
    guards.render(&mut e);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let mut m = JobMetrics::default();
        m.submitted(JobKind::Fib);
        m.submitted(JobKind::Fib);
        m.finished(JobKind::Fib, JobState::Succeeded);
        m.finished(JobKind::Prime, JobState::Failed);
        m.finished(JobKind::Sleep, JobState::Cancelled);
        m.retried(JobKind::Prime);
        m.ran(JobKind::Fib, 1500);
        let id = Uuid::now_v7();
        m.waited(JobKind::Fib, &id, crate::store::now_ms() + 2000);
        assert_eq!(m.submitted[JobKind::Fib as usize], 2);
        assert_eq!(m.succeeded[JobKind::Fib as usize], 1);
        assert_eq!(m.failed[JobKind::Prime as usize], 1);
        assert_eq!(m.cancelled[JobKind::Sleep as usize], 1);
        assert_eq!(m.retried[JobKind::Prime as usize], 1);
        assert_eq!(m.run[JobKind::Fib as usize].count(), 1);
        let waited = m.wait[JobKind::Fib as usize].sum();
        assert!((1.9..2.1).contains(&waited), "{waited}");
    }
}
