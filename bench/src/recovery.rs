//! `recovery_s_1m`, `master_rss_mb_1m`, `master_rss_mb_1m_recovered`: a
//! durable master holding a million queued jobs, its memory, and how long it
//! takes to come back after a crash.
//!
//! A master with `--store redb` and no workers is given `jobs` tiny prime
//! jobs in Submits of [`MAX_SUBMIT_JOBS`] (its default `--max-batch-jobs`).
//! Once all are queued its resident memory is read from /proc; then it is
//! killed with SIGKILL and started again on the same data directory and
//! port. Recovery is timed from spawning the new process until a Stats call
//! succeeds and reports every job queued, polled without fixed sleeps.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{
    GetRequest, JobState, ListJobsRequest, StatsRequest, StatsResponse, SubmitResponse,
};
use tonic::transport::Channel;

use crate::cluster::{Cluster, rss_mib};
use crate::jobs::{
    FIRST_PRIME_ARG, MAX_SUBMIT_JOBS, check_distinct_ids, check_queued_jobs, prime_submits,
};

/// How long the restarted master may take to hold every job again before
/// the run fails (the target is 5 s).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait between two failed polls of the restarted master.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// The oldest queued jobs compared before and after the restart.
const LISTED: u32 = 1_000;

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovery {
    /// Seconds from the first Submit to the answer of the last: every job
    /// committed.
    pub(crate) submit_s: f64,
    /// Seconds from spawning the new master to it holding every job.
    pub(crate) recovery_s: f64,
    /// The first master's VmRSS with every job queued, in MiB.
    pub(crate) rss_mib: f64,
    /// The restarted master's VmRSS once it holds every job, in MiB.
    pub(crate) rss_mib_recovered: f64,
}

/// Runs the workload once on `cluster`, whose master must be fresh (an
/// empty durable store, no workers).
pub(crate) async fn run_once(cluster: &mut Cluster, jobs: usize) -> Result<Recovery> {
    let mut client = cluster.client().await?;
    let requests = prime_submits(FIRST_PRIME_ARG, jobs, MAX_SUBMIT_JOBS);
    let mut replies = Vec::with_capacity(requests.len());
    let submitting = Instant::now();
    for (first, request) in requests {
        let sent = request.jobs.len();
        let response = client
            .submit(request)
            .await
            .with_context(|| format!("submit of jobs from prime {first}"))?
            .into_inner();
        replies.push((first, sent, response));
    }
    let submit_s = submitting.elapsed().as_secs_f64();
    let stats = read_stats(&mut client).await?;
    if stats.queued != jobs as u64 {
        bail!(
            "{jobs} jobs submitted, the master reports {} queued",
            stats.queued
        );
    }
    let pid = cluster
        .master_pid()
        .ok_or_else(|| anyhow!("no master running"))?;
    let rss = rss_mib(pid)?;

    let distinct = check_distinct_ids(replies.iter().map(|(_, sent, r)| (r, *sent)))?;
    if distinct != jobs {
        bail!("{jobs} jobs submitted, {distinct} job ids returned");
    }
    // A new connection: checking ten million ids keeps this current-thread
    // client from answering the master's keepalive pings, and the master
    // closes a connection that does not answer them.
    let mut client = cluster.client().await?;
    // The oldest queued jobs, as the master lists them: the first submitted,
    // in order.
    let listed = oldest_queued(&mut client).await?;
    let first_submitted: Vec<&str> = replies
        .iter()
        .flat_map(|(_, _, r)| r.job_ids.iter().map(String::as_str))
        .take(listed.len())
        .collect();
    if listed.len() != jobs.min(LISTED as usize) || listed != first_submitted {
        bail!("the master does not list the first submitted jobs first among the queued");
    }
    drop(client);

    cluster.stop_master(true);
    let addr = cluster.addr().to_string();
    let start = Instant::now();
    cluster.start_master_within(&addr, RECOVERY_TIMEOUT)?;
    let mut client = wait_for_queued(cluster, jobs as u64, start).await?;
    let recovery_s = start.elapsed().as_secs_f64();
    let pid = cluster
        .master_pid()
        .ok_or_else(|| anyhow!("no master running"))?;
    let rss_recovered = rss_mib(pid)?;

    // Nothing ran, nothing was lost or invented, the order held, and the
    // jobs are the ones submitted.
    let stats = read_stats(&mut client).await?;
    if stats.running + stats.succeeded + stats.failed + stats.cancelled != 0 {
        bail!(
            "after the restart the master reports {} running, {} succeeded, {} failed, \
             {} cancelled: no job was ever given to a worker",
            stats.running,
            stats.succeeded,
            stats.failed,
            stats.cancelled
        );
    }
    if oldest_queued(&mut client).await? != listed {
        bail!("after the restart the oldest queued jobs are not the same, in the same order");
    }
    let sample = sample(&replies);
    let got = client
        .get(GetRequest {
            job_ids: sample.iter().map(|(id, _)| id.clone()).collect(),
            ..Default::default()
        })
        .await
        .context("get after the restart")?
        .into_inner();
    check_queued_jobs(&got.jobs, &sample).context("after the restart")?;

    Ok(Recovery {
        submit_s,
        recovery_s,
        rss_mib: rss,
        rss_mib_recovered: rss_recovered,
    })
}

/// Polls the restarted master until Stats answers with `want` jobs queued,
/// failing if it exits or [`RECOVERY_TIMEOUT`] passes since `start`.
async fn wait_for_queued(
    cluster: &mut Cluster,
    want: u64,
    start: Instant,
) -> Result<QueueClient<Channel>> {
    let deadline = start + RECOVERY_TIMEOUT;
    let mut client = None;
    let mut last = String::from("no answer yet");
    loop {
        cluster.check_alive()?;
        if client.is_none() {
            match cluster.client().await {
                Ok(c) => client = Some(c),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if let Some(c) = client.as_mut() {
            // The master answers once it has read its store; a Stats call
            // sent earlier waits for that, up to the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.stats(StatsRequest {})).await {
                Ok(Ok(resp)) if resp.get_ref().queued == want => {
                    return Ok(client.take().expect("a client"));
                }
                Ok(Ok(resp)) => last = format!("{} queued", resp.get_ref().queued),
                Ok(Err(e)) => {
                    last = format!("stats: {}", e.message());
                    client = None;
                }
                Err(_) => last = "stats: no answer".into(),
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the restarted master did not report {want} queued jobs within \
                 {RECOVERY_TIMEOUT:?} (last: {last}){}",
                cluster.log_tails()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn read_stats(client: &mut QueueClient<Channel>) -> Result<StatsResponse> {
    Ok(client
        .stats(StatsRequest {})
        .await
        .context("stats")?
        .into_inner())
}

/// The ids of the oldest queued jobs the master lists (up to `LISTED`,
/// through as many pages as it takes).
async fn oldest_queued(client: &mut QueueClient<Channel>) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(ListJobsRequest {
                state: JobState::Queued as i32,
                limit: LISTED - ids.len() as u32,
                page_token,
                ..Default::default()
            })
            .await
            .context("list jobs")?
            .into_inner();
        ids.extend(page.jobs.into_iter().map(|j| j.job_id));
        if ids.len() >= LISTED as usize || page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// Jobs to read back by id: the first, middle and last of every Submit.
fn sample(replies: &[(u64, usize, SubmitResponse)]) -> Vec<(String, u64)> {
    let mut picks = Vec::new();
    for (first, _, response) in replies {
        let ids = &response.job_ids;
        let mut at = vec![0, ids.len() / 2, ids.len().saturating_sub(1)];
        at.dedup();
        picks.extend(at.into_iter().map(|i| (ids[i].clone(), first + i as u64)));
    }
    picks
}
