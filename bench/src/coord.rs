//! The `Coord` service's figures, on a master with the durable (redb)
//! store and no workers:
//!
//! - `lock_acquire_release_p50_us`: one client, one session, an
//!   uncontended lock acquired and released in turn; the median of
//!   [`LOCK_ROUND_TRIPS`] round trips (acquire and release, each answered
//!   once durable).
//! - `counter_adds_per_s`: 8 clients, each on its own connection with one
//!   `CounterAddStream` and [`WINDOW`] adds in flight on it, add 1 to one
//!   counter [`ADDS`] times in all; every add is answered once durable.
//!   Each stream's answers must rise, and the counter must end at exactly
//!   [`ADDS`].
//! - `counter_unary_adds_per_s`: the same adds as unary `CounterAdd`
//!   calls, [`IN_FLIGHT`] per client: the master's CPU per call sets the
//!   pace.
//! - `kv_puts_per_s`: the unary shape, [`PUTS`] puts of distinct keys with
//!   16-byte values; the last version must be the number of puts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use drover_common::pb::{self, coord_client::CoordClient};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::stats;

/// Round trips of the lock figure, after as many unmeasured.
pub(crate) const LOCK_ROUND_TRIPS: usize = 2_000;
/// Clients of the counter and put figures.
pub(crate) const CLIENTS: usize = 8;
/// Calls each client keeps in flight.
pub(crate) const IN_FLIGHT: usize = 64;
/// Adds each client keeps in flight on its stream.
pub(crate) const WINDOW: usize = 256;
/// Adds of the counter figure.
pub(crate) const ADDS: u64 = 200_000;
/// Puts of the key-value figure.
pub(crate) const PUTS: u64 = 100_000;

/// The figures of one run.
pub(crate) struct Figures {
    pub(crate) lock_p50_us: f64,
    pub(crate) counter_adds_per_s: f64,
    pub(crate) counter_unary_adds_per_s: f64,
    pub(crate) kv_puts_per_s: f64,
}

async fn client(cluster: &Cluster) -> Result<CoordClient<Channel>> {
    let channel = drover_common::net::connect(cluster.url())
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(CoordClient::new(channel))
}

/// Runs the workloads once on `cluster`'s fresh durable master.
pub(crate) async fn run_once(cluster: &Cluster) -> Result<Figures> {
    Ok(Figures {
        lock_p50_us: lock_round_trips(cluster).await?,
        counter_adds_per_s: streamed_adds(cluster).await?,
        counter_unary_adds_per_s: many(cluster, ADDS, |mut c, i| {
            Box::pin(async move {
                c.counter_add(pb::CounterAddRequest {
                    name: "bench-unary".into(),
                    delta: 1,
                })
                .await
                .map(|r| r.into_inner().value as u64)
                .map_err(|s| anyhow!("add {i}: {}", s.message()))
            })
        })
        .await?,
        kv_puts_per_s: many(cluster, PUTS, |mut c, i| {
            Box::pin(async move {
                c.kv_put(pb::KvPutRequest {
                    key: format!("bench/{i}"),
                    value: vec![b'x'; 16],
                    expected_version: None,
                })
                .await
                .map(|r| r.into_inner().version)
                .map_err(|s| anyhow!("put {i}: {}", s.message()))
            })
        })
        .await?,
    })
}

pub(crate) async fn lock_round_trips(cluster: &Cluster) -> Result<f64> {
    let mut c = client(cluster).await?;
    let session = c
        .open_session(pb::OpenSessionRequest {
            lease_ms: 60_000,
            owner: "bench".into(),
        })
        .await?
        .into_inner()
        .session;
    let mut samples = Vec::with_capacity(LOCK_ROUND_TRIPS);
    let mut last = 0;
    for i in 0..2 * LOCK_ROUND_TRIPS {
        let started = Instant::now();
        let token = c
            .acquire(pb::AcquireRequest {
                name: "bench".into(),
                permits: 1,
                session,
                timeout_ms: Some(10_000),
            })
            .await?
            .into_inner()
            .fencing_token;
        c.release(pb::ReleaseRequest {
            name: "bench".into(),
            fencing_token: token,
            session,
        })
        .await?;
        if token <= last {
            bail!("fencing token {token} after {last}");
        }
        last = token;
        if i >= LOCK_ROUND_TRIPS {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    stats::median(&samples).ok_or_else(|| anyhow!("no samples"))
}

/// Adds 1 to counter `bench` [`ADDS`] times from [`CLIENTS`] streams,
/// each with [`WINDOW`] adds in flight; checks that each stream's answers
/// rise and that the counter ends at [`ADDS`]; returns adds per second.
async fn streamed_adds(cluster: &Cluster) -> Result<f64> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(client(cluster).await?);
    }
    let per_client = ADDS / CLIENTS as u64;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (n, c) in clients.into_iter().enumerate() {
        let adds = per_client + u64::from((n as u64) < ADDS % CLIENTS as u64);
        tasks.spawn(add_stream(c, adds));
    }
    let mut most = 0;
    while let Some(r) = tasks.join_next().await {
        most = most.max(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if most != ADDS as i64 {
        bail!("the largest answer is {most} after {ADDS} streamed adds");
    }
    let value = client(cluster)
        .await?
        .counter_get(pb::CounterGetRequest {
            name: "bench".into(),
        })
        .await?
        .into_inner()
        .value;
    if value != ADDS as i64 {
        bail!("the counter is {value} after {ADDS} streamed adds");
    }
    Ok(ADDS as f64 / elapsed)
}

/// Sends `adds` adds of 1 on one stream of `c`, at most [`WINDOW`]
/// unanswered; checks every answer and returns the last.
async fn add_stream(mut c: CoordClient<Channel>, adds: u64) -> Result<i64> {
    let window = Arc::new(Semaphore::new(WINDOW));
    let sent = window.clone();
    let requests = futures::stream::unfold(0, move |i| {
        let window = sent.clone();
        async move {
            if i == adds {
                return None;
            }
            window.acquire().await.ok()?.forget();
            let req = pb::CounterAddRequest {
                name: "bench".into(),
                delta: 1,
            };
            Some((req, i + 1))
        }
    });
    let mut answers = c.counter_add_stream(requests).await?.into_inner();
    let (mut answered, mut last) = (0u64, 0i64);
    while let Some(a) = answers
        .message()
        .await
        .with_context(|| format!("the stream ended after {answered} answers"))?
    {
        if a.value <= last {
            bail!("answer {answered} is {} after {last}", a.value);
        }
        (answered, last) = (answered + 1, a.value);
        window.add_permits(1);
    }
    if answered != adds {
        bail!("{answered} answers to {adds} adds");
    }
    Ok(last)
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64>> + Send>>;

/// Makes `total` calls from [`CLIENTS`] clients with [`IN_FLIGHT`] each;
/// checks that the largest answer is `total` (the counter's value, or the
/// last version) and returns calls per second.
async fn many(
    cluster: &Cluster,
    total: u64,
    call: fn(CoordClient<Channel>, u64) -> Call,
) -> Result<f64> {
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(client(cluster).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in clients {
        for _ in 0..IN_FLIGHT {
            let (c, next) = (c.clone(), next.clone());
            tasks.spawn(async move {
                let mut most = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<u64, anyhow::Error>(most);
                    }
                    most = most.max(call(c.clone(), i).await?);
                }
            });
        }
    }
    let mut most = 0;
    while let Some(r) = tasks.join_next().await {
        most = most.max(r??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if most != total {
        bail!("the largest answer is {most} after {total} calls");
    }
    Ok(total as f64 / elapsed)
}
