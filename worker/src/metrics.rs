//! The worker's Prometheus metrics, read off the messages of its session
//! with the master: assignments (kind, attempt), results (outcome, run
//! time), returned jobs, cancellations and pool reports. The engine is not
//! touched: the session task sees every message anyway.

use std::collections::HashMap;
use std::sync::Mutex;

use drover_common::metrics::{Exposition, Histogram, JOB_SECONDS, Kind, PerKind};
use drover_common::pb::{self, JobKind, job_result, master_message, worker_message};

/// Jobs held at most in the id-to-kind map; past it the map is cleared
/// (the figures of the jobs in it are lost, memory is not).
const MAX_TRACKED: usize = 1 << 20;

/// The worker's figures.
#[derive(Debug)]
pub struct WorkerMetrics {
    inner: Mutex<Inner>,
    /// The worker's name, a label on every sample.
    name: String,
    /// Whether figures are kept (false when no metrics are served, so the
    /// session pays nothing for them).
    enabled: bool,
}

#[derive(Debug)]
struct Inner {
    /// The kind of each job held, by its id, to label its result.
    kinds: HashMap<u128, JobKind>,
    assigned: PerKind<u64>,
    succeeded: PerKind<u64>,
    failed: PerKind<u64>,
    returned: u64,
    cancelled: u64,
    run: PerKind<Histogram>,
    pool_processes: u64,
    pool_restarted: u64,
    connected: bool,
    sessions: u64,
}

fn key(job_id: &str) -> Option<u128> {
    uuid::Uuid::parse_str(job_id).ok().map(|u| u.as_u128())
}

impl WorkerMetrics {
    /// Empty figures for the worker named `name`; with `enabled` false,
    /// nothing is recorded.
    pub fn new(name: &str, enabled: bool) -> WorkerMetrics {
        WorkerMetrics {
            enabled,
            name: name.to_string(),
            inner: Mutex::new(Inner {
                kinds: HashMap::new(),
                assigned: PerKind::default(),
                succeeded: PerKind::default(),
                failed: PerKind::default(),
                returned: 0,
                cancelled: 0,
                run: PerKind::histograms(JOB_SECONDS),
                pool_processes: 0,
                pool_restarted: 0,
                connected: false,
                sessions: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that a session opened or closed.
    pub fn connected(&self, up: bool) {
        if !self.enabled {
            return;
        }
        let mut m = self.lock();
        m.connected = up;
        if up {
            m.sessions += 1;
        }
    }

    /// Reads a message from the master.
    pub fn incoming(&self, msg: &master_message::Msg) {
        if !self.enabled {
            return;
        }
        let mut m = self.lock();
        match msg {
            master_message::Msg::Assign(a) => {
                if m.kinds.len() + a.jobs.len() > MAX_TRACKED {
                    m.kinds.clear();
                }
                for j in &a.jobs {
                    let kind = JobKind::try_from(j.kind).unwrap_or(JobKind::Unspecified);
                    m.assigned[kind] += 1;
                    if let Some(k) = key(&j.job_id) {
                        m.kinds.insert(k, kind);
                    }
                }
            }
            master_message::Msg::Cancel(c) => {
                for id in &c.job_ids {
                    if let Some(k) = key(id)
                        && m.kinds.remove(&k).is_some()
                    {
                        m.cancelled += 1;
                    }
                }
            }
            master_message::Msg::Welcome(_)
            | master_message::Msg::Drain(_)
            | master_message::Msg::Ack(_) => {}
        }
    }

    /// Reads a message to the master.
    pub fn outgoing(&self, msg: &pb::WorkerMessage) {
        let Some(msg) = msg.msg.as_ref().filter(|_| self.enabled) else {
            return;
        };
        let mut m = self.lock();
        match msg {
            worker_message::Msg::Results(r) => {
                for r in &r.results {
                    let kind = key(&r.job_id)
                        .and_then(|k| m.kinds.remove(&k))
                        .unwrap_or(JobKind::Unspecified);
                    match &r.outcome {
                        Some(job_result::Outcome::Output(_)) => {
                            m.succeeded[kind] += 1;
                            m.run[kind].observe(r.run_us as f64 / 1e6);
                        }
                        _ => m.failed[kind] += 1,
                    }
                }
            }
            worker_message::Msg::Returned(r) => {
                for id in &r.job_ids {
                    if let Some(k) = key(id) {
                        m.kinds.remove(&k);
                    }
                    m.returned += 1;
                }
            }
            worker_message::Msg::Pool(p) => {
                m.pool_processes = p.child_pids.iter().filter(|&&pid| pid != 0).count() as u64;
                m.pool_restarted = p.children_restarted;
            }
            _ => {}
        }
    }

    /// Renders the figures.
    pub fn render(&self) -> String {
        let m = self.lock();
        let worker = self.name.as_str();
        let mut e = Exposition::new();
        e.family(
            "drover_worker_info",
            Kind::Gauge,
            "The build of this worker.",
        );
        e.sample(
            "drover_worker_info",
            &[("worker", worker), ("version", drover_common::VERSION)],
            1.0,
        );
        e.family(
            "drover_worker_connected",
            Kind::Gauge,
            "1 while a session with the master is open.",
        );
        e.sample(
            "drover_worker_connected",
            &[("worker", worker)],
            f64::from(u8::from(m.connected)),
        );
        e.family(
            "drover_worker_sessions_total",
            Kind::Counter,
            "Sessions opened with the master.",
        );
        e.sample(
            "drover_worker_sessions_total",
            &[("worker", worker)],
            m.sessions as f64,
        );
        let labels = [("worker", worker)];
        e.counters_by_kind(
            "drover_worker_jobs_assigned_total",
            "Jobs the master assigned to this worker.",
            &labels,
            &m.assigned,
        );
        e.counters_by_kind(
            "drover_worker_jobs_completed_total",
            "Jobs this worker ran to a result.",
            &labels,
            &m.succeeded,
        );
        e.counters_by_kind(
            "drover_worker_jobs_failed_total",
            "Attempts this worker reported as failed (crash, timeout, bad input).",
            &labels,
            &m.failed,
        );
        e.histograms_by_kind(
            "drover_worker_job_run_seconds",
            "Run time of the jobs this worker completed.",
            &labels,
            &m.run,
        );
        e.family(
            "drover_worker_jobs_returned_total",
            Kind::Counter,
            "Jobs handed back unstarted (drain).",
        );
        e.sample(
            "drover_worker_jobs_returned_total",
            &[("worker", worker)],
            m.returned as f64,
        );
        e.family(
            "drover_worker_jobs_cancelled_total",
            Kind::Counter,
            "Jobs held here that the master cancelled.",
        );
        e.sample(
            "drover_worker_jobs_cancelled_total",
            &[("worker", worker)],
            m.cancelled as f64,
        );
        e.family(
            "drover_worker_jobs_held",
            Kind::Gauge,
            "Jobs assigned and not yet reported.",
        );
        e.sample(
            "drover_worker_jobs_held",
            &[("worker", worker)],
            m.kinds.len() as f64,
        );
        e.family(
            "drover_worker_pool_processes",
            Kind::Gauge,
            "Child processes alive in the pool.",
        );
        e.sample(
            "drover_worker_pool_processes",
            &[("worker", worker)],
            m.pool_processes as f64,
        );
        e.family(
            "drover_worker_pool_restarts_total",
            Kind::Counter,
            "Child processes replaced (died, timed out, cancelled, recycled).",
        );
        e.sample(
            "drover_worker_pool_restarts_total",
            &[("worker", worker)],
            m.pool_restarted as f64,
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_jobs_through_the_session() {
        let m = WorkerMetrics::new("w", true);
        let id = uuid::Uuid::now_v7().to_string();
        let other = uuid::Uuid::now_v7().to_string();
        m.incoming(&master_message::Msg::Assign(pb::Assign {
            jobs: vec![
                pb::Assignment {
                    job_id: id.clone(),
                    kind: JobKind::Fib as i32,
                    attempt: 1,
                    ..Default::default()
                },
                pb::Assignment {
                    job_id: other.clone(),
                    kind: JobKind::Prime as i32,
                    attempt: 1,
                    ..Default::default()
                },
            ],
        }));
        m.outgoing(&pb::WorkerMessage {
            msg: Some(worker_message::Msg::Results(pb::Results {
                results: vec![pb::JobResult {
                    job_id: id,
                    attempt: 1,
                    outcome: Some(job_result::Outcome::Output(pb::JobOutput::default())),
                    run_us: 2000,
                    slot: None,
                }],
                ..Default::default()
            })),
        });
        m.incoming(&master_message::Msg::Cancel(pb::CancelJobs {
            job_ids: vec![other],
        }));
        let text = m.render();
        assert!(
            text.contains("drover_worker_jobs_completed_total{worker=\"w\",kind=\"fib\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drover_worker_jobs_assigned_total{worker=\"w\",kind=\"prime\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drover_worker_jobs_cancelled_total{worker=\"w\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drover_worker_jobs_held{worker=\"w\"} 0\n"),
            "{text}"
        );
    }
}
