//! `get_big_batch_mb_per_s`: reading a batch of big results whole through
//! Get, page by page, beside `loopback_copy_mb_per_s`, the rate at which
//! the same bytes cross a loopback TCP connection in one copy, measured in
//! the same run.
//!
//! A master with `--store redb` and the bench's workers computes
//! [`JOBS`] jobs of `fib 10000000` (2,089,877 digits each, about 209 MB in
//! all) once; each run then reads the batch through Get, following its
//! page tokens, and checks every job succeeded with a result of the right
//! length. The batch is closed, so every page is read from the store.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use drover_common::pb::queue_client::QueueClient;
use drover_common::pb::{GetRequest, JobKind, JobSpec, JobState, SubmitRequest, job_output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Jobs in the batch.
pub(crate) const JOBS: usize = 100;
/// Their argument.
pub(crate) const N: u64 = 10_000_000;

/// Submits the batch and waits until every job finished; returns its id.
pub(crate) async fn prepare(client: &mut QueueClient<Channel>) -> Result<String> {
    let jobs = (0..JOBS)
        .map(|_| JobSpec {
            kind: JobKind::Fib as i32,
            arg: N.to_string(),
            ..Default::default()
        })
        .collect();
    let batch = client
        .submit(SubmitRequest {
            jobs,
            ..Default::default()
        })
        .await?
        .into_inner()
        .batch_id;
    // Waiting Gets, until one says every job is finished (its pages are
    // read and dropped: the measured reads come after).
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if Instant::now() > deadline {
            bail!("{JOBS} jobs of fib {N} did not finish within 30 minutes");
        }
        let page = client
            .get(GetRequest {
                batch_id: batch.clone(),
                wait: true,
                timeout_ms: 10_000,
                ..Default::default()
            })
            .await?
            .into_inner();
        if page.complete {
            return Ok(batch);
        }
    }
}

/// Reads the batch whole through Get, checking every result; returns the
/// bytes of the results read and the seconds it took.
pub(crate) async fn read_once(
    client: &mut QueueClient<Channel>,
    batch: &str,
) -> Result<(usize, f64)> {
    let want = drover_tests::reference::fib_digits(N) as usize;
    let start = Instant::now();
    let (mut jobs, mut bytes, mut token) = (0usize, 0usize, String::new());
    loop {
        let page = client
            .get(GetRequest {
                batch_id: batch.to_string(),
                page_token: std::mem::take(&mut token),
                ..Default::default()
            })
            .await?
            .into_inner();
        for job in &page.jobs {
            let digits = match job.output.as_ref().and_then(|o| o.value.as_ref()) {
                Some(job_output::Value::Fib(v)) => v.len(),
                _ => 0,
            };
            if job.state != JobState::Succeeded as i32 || digits != want {
                bail!(
                    "job {} of the big batch: state {}, {digits} digits, want {want}",
                    job.job_id,
                    job.state
                );
            }
            bytes += digits;
        }
        jobs += page.jobs.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let secs = start.elapsed().as_secs_f64();
    if jobs != JOBS {
        bail!("Get returned {jobs} jobs of the big batch, want {JOBS}");
    }
    Ok((bytes, secs))
}

/// Copies `bytes` through a loopback TCP connection in writes of 2 MiB;
/// returns the seconds from the first write to the last byte read.
pub(crate) async fn loopback_copy(bytes: usize) -> Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = vec![0u8; 2 << 20];
        let mut got = 0usize;
        while got < bytes {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        anyhow::Ok(got)
    });
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let chunk = vec![b'7'; 2 << 20];
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        conn.write_all(&chunk[..n]).await?;
        sent += n;
    }
    conn.flush().await?;
    let got = reader.await??;
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("the loopback copy read {got} of {bytes} bytes");
    }
    Ok(secs)
}
