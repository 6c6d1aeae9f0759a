//! `tiny_jobs_per_s`: many tiny jobs through the whole system.
//!
//! research/peers.md's W1: `jobs` prime jobs (1000003 + i), submitted as
//! one batch, their results read with Watch in completion order, timed from
//! the submit to the last result in the client's hand. The work per job is
//! negligible, so this measures drover's per-job overhead on every hop:
//! client, master, worker, child process and back.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{JobInfo, JobLimit, WatchRequest};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::jobs::{FIRST_PRIME_ARG, MAX_SUBMIT_JOBS, check_prime_job, prime_submits};

/// Runs the workload once and returns jobs per second.
pub(crate) async fn run_once(client: &mut QueueClient<Channel>, jobs: usize) -> Result<f64> {
    run_limited(client, jobs, &[]).await
}

/// Runs the workload once with every job holding `limits`, and returns
/// jobs per second.
pub(crate) async fn run_limited(
    client: &mut QueueClient<Channel>,
    jobs: usize,
    limits: &[JobLimit],
) -> Result<f64> {
    // Building the requests is the client's business, not drover's: it stays
    // outside the timer.
    let mut requests = prime_submits(FIRST_PRIME_ARG, jobs, MAX_SUBMIT_JOBS);
    if !limits.is_empty() {
        for spec in requests.iter_mut().flat_map(|(_, r)| r.jobs.iter_mut()) {
            spec.limits = limits.to_vec();
        }
    }

    let start = Instant::now();
    let mut watches = JoinSet::new();
    for (first, request) in requests {
        let want = request.jobs.len();
        let batch = client.submit(request).await.context("submit")?.into_inner();
        // One task per batch reads its watch, so results of the first batch
        // flow while the next is submitted.
        let mut client = client.clone();
        watches.spawn(async move {
            let results = watch_batch(&mut client, &batch.batch_id, want).await?;
            Ok::<_, anyhow::Error>((first, results))
        });
    }
    let mut batches = Vec::new();
    while let Some(done) = watches.join_next().await {
        batches.push(done.map_err(|e| anyhow!("watch task: {e}"))??);
    }
    let elapsed = start.elapsed();

    for (first, results) in &batches {
        verify(results, *first)?;
    }
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Reads a batch's results in completion order until all `want` are in.
async fn watch_batch(
    client: &mut QueueClient<Channel>,
    batch_id: &str,
    want: usize,
) -> Result<Vec<JobInfo>> {
    let mut stream = client
        .watch(WatchRequest {
            batch_id: batch_id.to_string(),
            ordered: false,
            ..Default::default()
        })
        .await
        .context("watch")?
        .into_inner();
    let mut results: Vec<JobInfo> = Vec::with_capacity(want);
    while results.len() < want {
        match stream.message().await.context("watch stream")? {
            Some(msg) => results.extend(msg.jobs),
            None => bail!(
                "the watch of batch {batch_id} ended after {} of {want} results",
                results.len()
            ),
        }
    }
    if results.len() != want {
        bail!(
            "the watch of batch {batch_id} sent {} results for {want} jobs",
            results.len()
        );
    }
    Ok(results)
}

/// Every job of a batch exactly once, each with the right answer for its
/// position; the batch's first argument is `first`.
fn verify(results: &[JobInfo], first: u64) -> Result<()> {
    let mut seen = HashSet::with_capacity(results.len());
    for job in results {
        if !seen.insert(job.index) {
            bail!("job index {} came back twice", job.index);
        }
        let want = (first + u64::from(job.index)).to_string();
        if job.arg != want {
            bail!(
                "job {} at index {} has argument {}, submitted {want}",
                job.job_id,
                job.index,
                job.arg
            );
        }
        check_prime_job(job)?;
    }
    Ok(())
}
