//! `apply_p50_us`, `apply_p99_us`: the latency of one job, like Python's
//! `Pool.apply`.
//!
//! research/peers.md's W3: sequential round trips, each a Submit of one
//! prime job that waits for its result on the same call (`wait`), as
//! `Pool.apply` does. Nothing overlaps, so every hop's wake-up and message
//! latency shows.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use drover_common::pb::SubmitRequest;
use drover_common::pb::queue_client::QueueClient;
use tonic::transport::Channel;

use crate::jobs::{FIRST_PRIME_ARG, check_prime_job, prime_spec};

/// How long one Submit may wait for its job before the run fails.
const WAIT_MS: u64 = 30_000;

/// Runs `round_trips` sequential jobs and returns each round trip in
/// microseconds.
pub(crate) async fn run_once(
    client: &mut QueueClient<Channel>,
    round_trips: usize,
) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips as u64 {
        let request = SubmitRequest {
            jobs: vec![prime_spec(FIRST_PRIME_ARG + i)],
            wait: true,
            timeout_ms: WAIT_MS,
            ..Default::default()
        };
        let start = Instant::now();
        let reply = client.submit(request).await.context("submit")?.into_inner();
        samples.push(start.elapsed().as_secs_f64() * 1e6);

        let got = reply
            .result
            .with_context(|| format!("round trip {i}: a Submit with wait answered no result"))?;

        if !got.complete {
            bail!("round trip {i}: the job did not finish within {WAIT_MS} ms");
        }
        match got.jobs.as_slice() {
            [job] => check_prime_job(job)?,
            other => bail!("round trip {i}: Get returned {} jobs, not 1", other.len()),
        }
    }
    Ok(samples)
}
