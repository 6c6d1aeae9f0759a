//! Sleep jobs: IO work that waits on a tokio timer in the worker itself,
//! not in a child process, under its own slot limit (`--io-slots`). A sleep
//! cannot overrun: one longer than its timeout waits out the timeout and
//! fails, so no process needs killing.

use std::time::Duration;

use drover_common::pb::{self, job_result};
use tokio::time::Instant;

/// Sleeps `ms` milliseconds, or `timeout_ms` if that is shorter (0: no
/// timeout); returns the outcome and the run time in microseconds.
pub(crate) async fn run(ms: u64, timeout_ms: u64) -> (job_result::Outcome, u64) {
    let started = Instant::now();
    let timeout = (timeout_ms > 0).then_some(timeout_ms);
    let outcome = match timeout {
        Some(t) if t < ms => {
            tokio::time::sleep(Duration::from_millis(t)).await;
            job_result::Outcome::Failure(pb::JobFailure {
                reason: format!("timed out after {t} ms"),
                retryable: true,
            })
        }
        _ => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            job_result::Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::SleptMs(ms)),
            })
        }
    };
    (outcome, started.elapsed().as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_its_time_or_fails_at_its_timeout() {
        let (outcome, run_us) = run(250, 0).await;
        assert_eq!(
            outcome,
            job_result::Outcome::Output(pb::JobOutput {
                value: Some(pb::job_output::Value::SleptMs(250)),
            })
        );
        assert_eq!(run_us, 250_000);
        assert_eq!(run(250, 1000).await.1, 250_000, "within its timeout");
        let (outcome, run_us) = run(5000, 40).await;
        assert_eq!(
            outcome,
            job_result::Outcome::Failure(pb::JobFailure {
                reason: "timed out after 40 ms".into(),
                retryable: true,
            })
        );
        assert_eq!(run_us, 40_000, "it stops waiting at the timeout");
    }
}
