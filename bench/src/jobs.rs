//! The jobs the queue workloads submit, and the check of their answers.
//!
//! Every workload verifies what drover returned after its timer stops: a
//! fast wrong answer is not a result.

use anyhow::{Result, bail};
use drover_common::pb::job_output::Value;
use drover_common::pb::{JobInfo, JobKind, JobSpec, JobState};

/// The first number of the prime workloads, as in research/peers.md:
/// is_prime(1000003 + i).
pub(crate) const FIRST_PRIME_ARG: u64 = 1_000_003;

/// A prime job for `n`, with every option at the master's default.
pub(crate) fn prime_spec(n: u64) -> JobSpec {
    JobSpec {
        kind: JobKind::Prime as i32,
        arg: n.to_string(),
        ..Default::default()
    }
}

/// Trial division: slow, obviously right, and fast enough for numbers near
/// a million.
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks one finished prime job: it succeeded, and its answer is right for
/// the argument it carries.
pub(crate) fn check_prime_job(job: &JobInfo) -> Result<()> {
    let state = job.state();
    if state != JobState::Succeeded {
        bail!(
            "job {} (prime {}) ended {state:?}: {}",
            job.job_id,
            job.arg,
            job.error
        );
    }
    let n: u64 = job.arg.parse().map_err(|_| {
        anyhow::anyhow!(
            "job {} came back with argument {:?}, not a number",
            job.job_id,
            job.arg
        )
    })?;
    match job.output.as_ref().and_then(|o| o.value.as_ref()) {
        Some(Value::Prime(p)) if p.is_prime == is_prime(n) => Ok(()),
        Some(Value::Prime(p)) => bail!(
            "job {}: is_prime({n}) came back {}, expected {}",
            job.job_id,
            p.is_prime,
            !p.is_prime
        ),
        other => bail!(
            "job {} (prime {n}) has no prime output: {other:?}",
            job.job_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_division() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(FIRST_PRIME_ARG));
        assert!(!is_prime(1_000_001));
    }
}
