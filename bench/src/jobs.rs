//! The jobs the queue workloads submit, and the check of their answers.
//!
//! Every workload verifies what drover returned after its timer stops: a
//! fast wrong answer is not a result.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};
use drover_common::pb::job_output::Value;
use drover_common::pb::{JobInfo, JobKind, JobSpec, JobState, SubmitRequest, SubmitResponse};

/// The first number of the prime workloads, as in research/peers.md:
/// is_prime(1000003 + i).
pub(crate) const FIRST_PRIME_ARG: u64 = 1_000_003;

/// The most jobs one Submit carries: the master's default
/// `--max-batch-jobs`. Up to this many jobs go in one batch, as the tiny
/// workload asks; more are split into batches of this size.
pub(crate) const MAX_SUBMIT_JOBS: usize = 100_000;

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

/// `count` prime jobs, `first`, `first + 1`, ..., in Submits of `per_submit`
/// jobs. Returns each request with the argument of its first job.
pub(crate) fn prime_submits(
    first: u64,
    count: usize,
    per_submit: usize,
) -> Vec<(u64, SubmitRequest)> {
    (0..count)
        .step_by(per_submit)
        .map(|start| {
            let end = (start + per_submit).min(count);
            let from = first + start as u64;
            let specs = (from..first + end as u64).map(prime_spec).collect();
            (
                from,
                SubmitRequest {
                    jobs: specs,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Checks that the job ids of every Submit reply are distinct, across all
/// of them, and that each reply named as many jobs as it was sent.
pub(crate) fn check_distinct_ids<'a>(
    replies: impl IntoIterator<Item = (&'a SubmitResponse, usize)>,
) -> Result<usize> {
    let mut ids = HashSet::new();
    let mut batches = HashSet::new();
    for (reply, sent) in replies {
        if reply.job_ids.len() != sent {
            bail!(
                "batch {}: {sent} jobs submitted, {} job ids returned",
                reply.batch_id,
                reply.job_ids.len()
            );
        }
        if !batches.insert(reply.batch_id.as_str()) {
            bail!("batch id {} was returned twice", reply.batch_id);
        }
        for id in &reply.job_ids {
            if !ids.insert(id.as_str()) {
                bail!("job id {id} was returned twice");
            }
        }
    }
    Ok(ids.len())
}

/// Checks jobs read back with Get by id: each of `want` (job id, argument)
/// came back once, QUEUED, never attempted, with its argument.
pub(crate) fn check_queued_jobs(got: &[JobInfo], want: &[(String, u64)]) -> Result<()> {
    if got.len() != want.len() {
        bail!("asked for {} jobs by id, got {}", want.len(), got.len());
    }
    let by_id: HashMap<&str, &JobInfo> = got.iter().map(|j| (j.job_id.as_str(), j)).collect();
    for (id, arg) in want {
        let job = by_id
            .get(id.as_str())
            .ok_or_else(|| anyhow::anyhow!("job {id} is missing"))?;
        if job.state() != JobState::Queued || job.attempts != 0 {
            bail!(
                "job {id} is {:?} after {} attempts, expected QUEUED and never run",
                job.state(),
                job.attempts
            );
        }
        if job.arg != arg.to_string() {
            bail!("job {id} has argument {}, submitted {arg}", job.arg);
        }
    }
    Ok(())
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
