//! `master_rss_mb_5m_finished`, `recovery_s_5m_finished`: a durable
//! master's memory after millions of finished tiny jobs, and how long it
//! takes to come back after a crash with that history in its store.
//!
//! A master with `--store redb` and the bench's workers is given `jobs`
//! tiny prime jobs in Submits of [`MAX_SUBMIT_JOBS`], at most two Submits
//! ahead of the workers, so what is unfinished stays small while the
//! history grows. Once every job succeeded its VmRSS is read; then it is
//! killed with SIGKILL and started again on the same data directory and
//! port, and recovery is timed from spawning the new process until a Stats
//! call answers with every job accounted for (succeeded, or queued again if
//! its result was not yet committed at the kill).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{StatsRequest, StatsResponse};
use tonic::transport::Channel;

use crate::cluster::{Cluster, rss_mib};
use crate::jobs::{FIRST_PRIME_ARG, MAX_SUBMIT_JOBS, prime_submits};

/// How long the restarted master may take before the run fails.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    /// The master's VmRSS once every job finished, in MiB.
    pub(crate) rss_mib: f64,
    /// Seconds from spawning the new master to it answering with every job.
    pub(crate) recovery_s: f64,
}

async fn stats(client: &mut QueueClient<Channel>) -> Result<StatsResponse> {
    Ok(client.stats(StatsRequest {}).await?.into_inner())
}

/// Runs the workload once on `cluster`, whose master must be fresh (an
/// empty durable store) with workers connected.
pub(crate) async fn run_once(cluster: &mut Cluster, jobs: usize) -> Result<Finished> {
    let mut client = cluster.client().await?;
    let requests = prime_submits(FIRST_PRIME_ARG, jobs, MAX_SUBMIT_JOBS);
    let mut submitted = 0u64;
    for (first, request) in requests {
        loop {
            let s = stats(&mut client).await?;
            let done = s.succeeded + s.failed + s.cancelled;
            if submitted - done < 2 * MAX_SUBMIT_JOBS as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = request.jobs.len() as u64;
        client
            .submit(request)
            .await
            .with_context(|| format!("submit of jobs from prime {first}"))?;
        submitted += n;
    }
    loop {
        let s = stats(&mut client).await?;
        if s.failed + s.cancelled > 0 {
            bail!(
                "{} failed, {} cancelled of tiny prime jobs",
                s.failed,
                s.cancelled
            );
        }
        if s.succeeded == jobs as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = cluster
        .master_pid()
        .ok_or_else(|| anyhow!("no master running"))?;
    let rss = rss_mib(pid)?;
    drop(client);

    cluster.stop_master(true);
    let addr = cluster.addr().to_string();
    let start = Instant::now();
    cluster.start_master_within(&addr, RECOVERY_TIMEOUT)?;
    loop {
        if start.elapsed() > RECOVERY_TIMEOUT {
            bail!("the restarted master did not account for every job within {RECOVERY_TIMEOUT:?}");
        }
        if let Ok(mut client) = cluster.client().await
            && let Ok(s) = stats(&mut client).await
            && s.succeeded + s.queued + s.running == jobs as u64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Finished {
        rss_mib: rss,
        recovery_s: start.elapsed().as_secs_f64(),
    })
}
