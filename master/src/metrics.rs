//! The master's Prometheus metrics.
//!
//! Job figures (`JobMetrics`, defined in `drover_common::metrics` so that
//! the state holds them without importing this module) are plain counters
//! and histograms kept in the state, under the lock it is already held with
//! when a job changes, so counting costs a few nanoseconds and no atomic.
//! Everything else (queue depth, workers, late results) is read from the
//! state when scraped. The store's commit latency is timed by
//! [`MeteredStore`], a wrapper around the store the committer writes to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use drover_common::metrics::{COMMIT_SECONDS, Exposition, Histogram, Kind};
use drover_common::pb::JobState;
use parking_lot::Mutex;

use crate::service::Master;
use crate::store::{Changes, ClosedCounts, Loaded, Store, StoredBatch};
use drover_common::ids::{BatchId, JobId};
use drover_common::pb;

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

    fn read_job(&self, id: &JobId) -> anyhow::Result<Option<pb::JobRecord>> {
        self.inner.read_job(id)
    }

    fn read_jobs(&self, ids: &[JobId]) -> anyhow::Result<Vec<Option<pb::JobRecord>>> {
        self.inner.read_jobs(ids)
    }

    fn has_job(&self, id: &JobId) -> anyhow::Result<bool> {
        self.inner.has_job(id)
    }

    fn read_batch(&self, id: &BatchId) -> anyhow::Result<Option<StoredBatch>> {
        self.inner.read_batch(id)
    }

    fn job_by_key(&self, key: &str) -> anyhow::Result<Option<JobId>> {
        self.inner.job_by_key(key)
    }

    fn jobs_by_keys(&self, keys: &[&str]) -> anyhow::Result<HashMap<String, JobId>> {
        self.inner.jobs_by_keys(keys)
    }

    fn batch_by_request(&self, request_id: &str) -> anyhow::Result<Option<BatchId>> {
        self.inner.batch_by_request(request_id)
    }

    fn closed_counts(&self) -> anyhow::Result<ClosedCounts> {
        self.inner.closed_counts()
    }

    fn next_seq(&self) -> anyhow::Result<u64> {
        self.inner.next_seq()
    }

    fn closed_before(&self, cutoff_ms: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        self.inner.closed_before(cutoff_ms, limit)
    }

    fn closed_bytes(&self) -> anyhow::Result<u64> {
        self.inner.closed_bytes()
    }

    fn oldest_closed(&self, bytes: u64, limit: usize) -> anyhow::Result<Vec<BatchId>> {
        self.inner.oldest_closed(bytes, limit)
    }

    fn budget_purged_upto_ms(&self) -> anyhow::Result<u64> {
        self.inner.budget_purged_upto_ms()
    }

    fn scan_jobs(
        &self,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        self.inner.scan_jobs(after, visit)
    }

    fn scan_jobs_in_state(
        &self,
        state: pb::JobState,
        after: Option<JobId>,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        self.inner.scan_jobs_in_state(state, after, visit)
    }

    fn scan_closed_jobs_newest(
        &self,
        visit: &mut dyn FnMut(pb::JobRecord) -> bool,
    ) -> anyhow::Result<()> {
        self.inner.scan_closed_jobs_newest(visit)
    }

    fn closed_batches_newest(
        &self,
        offset: usize,
        limit: usize,
    ) -> anyhow::Result<(Vec<(BatchId, pb::ClosedInfo)>, usize)> {
        self.inner.closed_batches_newest(offset, limit)
    }

    fn coord(&self) -> Option<&dyn crate::coord::CoordStore> {
        self.inner.coord()
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
    jobs.write(&mut e);
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
    let epoch = master.config().ha.epoch;
    if epoch > 0 {
        leadership(&mut e, false, epoch);
    }
    e.finish()
}

/// The role of a master on a PostgreSQL store shared with standbys: the
/// leader and its standbys both say the epoch of the last election, so a
/// change of leader shows on every one.
pub(crate) fn leadership(e: &mut Exposition, standby: bool, epoch: u64) {
    e.single(
        "drover_standby",
        Kind::Gauge,
        "1 while this master stands by for another (PostgreSQL store), 0 while it leads.",
        if standby { 1.0 } else { 0.0 },
    );
    e.single(
        "drover_leader_epoch",
        Kind::Gauge,
        "The epoch of the last leader election on the PostgreSQL store.",
        epoch as f64,
    );
}
