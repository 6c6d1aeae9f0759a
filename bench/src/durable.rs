//! `durable_submit_jobs_per_s`: how fast a durable master takes jobs in.
//!
//! A master with `--store redb` in a fresh data directory and no workers
//! receives `jobs` tiny prime jobs in Submits of [`SUBMIT_JOBS`], from
//! `concurrency` clients, each on its own connection and sending its next
//! Submit as soon as its last one is answered. An answer means the jobs are
//! committed to disk; the master's committer puts the changes of all the
//! submits waiting at once in one transaction, so they share an fsync.
//! Timed from the first Submit to the last answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::{GetRequest, StatsRequest, SubmitResponse};
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::jobs::{FIRST_PRIME_ARG, check_distinct_ids, check_queued_jobs, prime_submits};

/// Jobs per Submit: a client's batch, far below the master's limit.
pub(crate) const SUBMIT_JOBS: usize = 1_000;

/// One Submit's answer: the argument of its first job, how many jobs it
/// carried, and what the master replied.
struct Reply {
    first: u64,
    sent: usize,
    response: SubmitResponse,
}

/// Runs the workload once against `cluster`'s master, which must be fresh
/// (an empty durable store, no workers), and returns jobs per second.
pub(crate) async fn run_once(cluster: &Cluster, jobs: usize, concurrency: usize) -> Result<f64> {
    // The requests are built, and every connection is up, before the timer.
    let requests: VecDeque<_> = prime_submits(FIRST_PRIME_ARG, jobs, SUBMIT_JOBS).into();
    let submits = requests.len();
    let requests = Arc::new(Mutex::new(requests));
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut client = cluster.client().await?;
        client.stats(StatsRequest {}).await.context("stats")?;
        clients.push(client);
    }

    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for mut client in clients {
        let requests = requests.clone();
        tasks.spawn(async move {
            let mut replies = Vec::new();
            loop {
                let next = requests.lock().expect("no task panics").pop_front();
                let Some((first, request)) = next else {
                    break;
                };
                let sent = request.jobs.len();
                let response = client
                    .submit(request)
                    .await
                    .with_context(|| format!("submit of jobs from prime {first}"))?
                    .into_inner();
                replies.push(Reply {
                    first,
                    sent,
                    response,
                });
            }
            Ok::<_, anyhow::Error>(replies)
        });
    }
    let mut replies = Vec::with_capacity(submits);
    while let Some(done) = tasks.join_next().await {
        replies.extend(done.map_err(|e| anyhow!("submit task: {e}"))??);
    }
    let elapsed = start.elapsed();

    verify(cluster, &replies, jobs).await?;
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Every job was answered once with its own id, and the master holds them
/// all, queued, with their arguments.
async fn verify(cluster: &Cluster, replies: &[Reply], jobs: usize) -> Result<()> {
    let distinct = check_distinct_ids(replies.iter().map(|r| (&r.response, r.sent)))?;
    if distinct != jobs {
        bail!("{jobs} jobs submitted, {distinct} job ids returned");
    }
    let mut client = cluster.client().await?;
    let stats = client
        .stats(StatsRequest {})
        .await
        .context("stats")?
        .into_inner();
    if stats.queued != jobs as u64 || stats.running + stats.succeeded + stats.failed != 0 {
        bail!(
            "after {jobs} jobs were submitted to a master with no workers, it reports \
             {} queued, {} running, {} succeeded, {} failed",
            stats.queued,
            stats.running,
            stats.succeeded,
            stats.failed
        );
    }
    // The first and last job of every Submit, read back by id.
    let sample: Vec<(String, u64)> = replies
        .iter()
        .flat_map(|r| {
            let ids = &r.response.job_ids;
            let last = ids.len().saturating_sub(1);
            let picks = if last == 0 { vec![0] } else { vec![0, last] };
            picks
                .into_iter()
                .map(move |i| (ids[i].clone(), r.first + i as u64))
        })
        .collect();
    let got = client
        .get(GetRequest {
            job_ids: sample.iter().map(|(id, _)| id.clone()).collect(),
            ..Default::default()
        })
        .await
        .context("get")?
        .into_inner();
    check_queued_jobs(&got.jobs, &sample)
}
