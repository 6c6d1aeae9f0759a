//! The CLI's JSON output as INTERFACES.md describes it, as typed values: a
//! missing or mistyped field fails the test with the line that broke the
//! contract.

use serde::Deserialize;
use serde_json::Value;

/// One job, as `map`, `apply`, `get`, `watch` and `jobs` print it with
/// `--output json`.
#[derive(Debug, Clone, Deserialize)]
pub struct JobLine {
    /// The job's UUID.
    pub job_id: String,
    /// Its batch's UUID.
    pub batch_id: String,
    /// Its position in its batch, from 0.
    pub index: u32,
    /// `fib`, `prime` or `sleep`.
    pub kind: String,
    /// Its argument, as submitted.
    pub arg: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Its priority.
    pub priority: i32,
    /// The worker that produced the result or runs it now.
    #[serde(default)]
    pub worker: Option<String>,
    /// The successful run's wall time.
    #[serde(default)]
    pub run_us: Option<u64>,
    /// The result: a string for fib, a bool for prime, the slept ms for
    /// sleep, null when there is none.
    pub result: Value,
    /// `proven` or `probable`, for prime.
    #[serde(default)]
    pub certainty: Option<String>,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub error: Option<String>,
    /// The reason of each failed attempt, oldest first.
    #[serde(default)]
    pub attempt_errors: Vec<String>,
}

impl JobLine {
    /// The worker's name, or "" when there is none.
    pub fn worker(&self) -> &str {
        self.worker.as_deref().unwrap_or("")
    }

    /// The error, or "" when there is none.
    pub fn error(&self) -> &str {
        self.error.as_deref().unwrap_or("")
    }
}

/// The output of `drover status --output json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// Jobs waiting for a worker.
    pub queued: u64,
    /// Jobs leased to a worker.
    pub running: u64,
    /// Jobs finished with a result.
    pub succeeded: u64,
    /// Jobs that failed for good.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Attempts retried.
    pub retried: u64,
    /// The connected workers.
    pub workers: Vec<WorkerStatus>,
}

impl Status {
    /// The worker named `name`, if connected.
    pub fn worker(&self, name: &str) -> Option<&WorkerStatus> {
        self.workers.iter().find(|w| w.name == name)
    }
}

/// One worker in the output of `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerStatus {
    /// The id the master gave its session.
    pub worker_id: String,
    /// Its `--name`.
    pub name: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its process pool's size.
    pub cpu_slots: u32,
    /// Its async slots for sleep jobs.
    pub io_slots: u32,
    /// Jobs it holds now.
    pub running: u32,
    /// Jobs it has finished.
    pub completed: u64,
    /// The pids of its pool's child processes.
    pub child_pids: Vec<u32>,
    /// Child processes replaced since it started.
    pub children_restarted: u64,
    /// Whether it is draining.
    pub draining: bool,
}

/// The output of `drover submit --output json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Submitted {
    /// The batch's UUID.
    pub batch_id: String,
    /// One UUID per job, in submission order.
    pub job_ids: Vec<String>,
}

/// The output of `drover cancel --output json`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Cancelled {
    /// Jobs that were queued or running and are now cancelled.
    pub cancelled: u32,
    /// Jobs that had already finished and were left as they were.
    pub already_finished: u32,
}
