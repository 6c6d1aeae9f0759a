//! drover's master: the task queue, worker leases and the result store,
//! behind the `Queue` and `Workers` gRPC services.
//!
//! # Layout
//!
//! - [`state`]: the queue state machine (jobs, batches, priority queues,
//!   retries, worker sessions and their credit). Pure: no I/O, unit-tested.
//! - [`store`]: where job records survive a restart (redb, or nothing).
//! - [`committer`]: the thread that group-commits changes to the store.
//! - [`service`]: the gRPC handlers over the state, and the timers (leases,
//!   retry backoff, retention).
//! - [`MasterArgs`] and [`Config`]: flags, and the validated config they make.
//! - [`run`]: serves the services, health and reflection on a listener
//!   until a shutdown token is cancelled.
//!
//! The master never runs job code: it checks arguments at submit time and
//! hands jobs to workers within the credit they granted.

pub mod committer;
pub mod service;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_common::pb::queue_server::QueueServer;
use drover_common::pb::workers_server::WorkersServer;
use drover_common::{Limits, net, pb};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use service::Master;

/// The master's flags; every one has a DROVER_* environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "DROVER_LISTEN", default_value = drover_common::DEFAULT_MASTER_ADDR)]
    pub listen: String,
    /// A worker not heard from for this long loses its jobs to the queue.
    #[arg(long, env = "DROVER_LEASE", default_value = "10s", value_parser = drover_common::util::parse_duration)]
    pub lease: Duration,
    /// The largest n of a fib job.
    #[arg(long, env = "DROVER_MAX_FIB_N", default_value_t = Limits::default().max_fib_n)]
    pub max_fib_n: u64,
    /// The most decimal digits of a prime job's n.
    #[arg(long, env = "DROVER_MAX_PRIME_DIGITS", default_value_t = Limits::default().max_prime_digits)]
    pub max_prime_digits: usize,
    /// The longest sleep job, in milliseconds.
    #[arg(long, env = "DROVER_MAX_SLEEP_MS", default_value_t = Limits::default().max_sleep_ms)]
    pub max_sleep_ms: u64,
    /// The most jobs in one submit.
    #[arg(long, env = "DROVER_MAX_BATCH_JOBS", default_value_t = Limits::default().max_batch_jobs)]
    pub max_batch_jobs: usize,
    /// Attempts for a job that does not say.
    #[arg(long, env = "DROVER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Where jobs are kept: redb (in --data-dir, survives restarts) or
    /// memory (lost when the master stops).
    #[arg(long, env = "DROVER_STORE", default_value = "redb", value_parser = ["redb", "memory"])]
    pub store: String,
    /// The directory of the redb store.
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
    pub data_dir: PathBuf,
    /// Finished jobs and their results are purged this long after they finish.
    #[arg(long, env = "DROVER_RETENTION", default_value = "24h", value_parser = drover_common::util::parse_duration)]
    pub retention: Duration,
    /// A retried job waits this long after its first failure, doubling
    /// with each further one (with jitter).
    #[arg(long, env = "DROVER_RETRY_BASE", default_value = "200ms", value_parser = drover_common::util::parse_duration)]
    pub retry_base: Duration,
    /// The longest wait before a retry.
    #[arg(long, env = "DROVER_RETRY_MAX", default_value = "30s", value_parser = drover_common::util::parse_duration)]
    pub retry_max: Duration,
}

impl MasterArgs {
    /// Checks the flags and makes the config.
    pub fn config(&self) -> anyhow::Result<Config> {
        anyhow::ensure!(
            self.lease >= Duration::from_millis(100),
            "--lease {:?} is under the minimum of 100ms",
            self.lease
        );
        anyhow::ensure!(
            (1..=100).contains(&self.max_attempts),
            "--max-attempts {} is outside 1..=100",
            self.max_attempts
        );
        anyhow::ensure!(
            self.max_batch_jobs >= 1,
            "--max-batch-jobs must be at least 1"
        );
        Ok(Config {
            limits: Limits {
                max_fib_n: self.max_fib_n,
                max_prime_digits: self.max_prime_digits,
                max_sleep_ms: self.max_sleep_ms,
                max_batch_jobs: self.max_batch_jobs,
            },
            lease: self.lease,
            default_max_attempts: self.max_attempts,
            store: match self.store.as_str() {
                "memory" => StoreConfig::Memory,
                _ => StoreConfig::Redb(self.data_dir.clone()),
            },
            retention: self.retention,
            retry: state::RetryPolicy {
                base_ms: self.retry_base.as_millis() as u64,
                max_ms: self.retry_max.as_millis().max(self.retry_base.as_millis()) as u64,
            },
        })
    }
}

/// Which store the master keeps its jobs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Nothing survives a restart.
    Memory,
    /// A redb database in this directory.
    Redb(PathBuf),
}

/// Opens the configured store.
pub fn open_store(config: &StoreConfig) -> anyhow::Result<Arc<dyn store::Store>> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(store::MemoryStore),
        StoreConfig::Redb(dir) => Arc::new(store::RedbStore::open(dir)?),
    })
}

/// The master's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What a job may ask for.
    pub limits: Limits,
    /// How long a silent worker keeps its jobs.
    pub lease: Duration,
    /// Attempts for a job that does not say.
    pub default_max_attempts: u32,
    /// Where jobs are kept.
    pub store: StoreConfig,
    /// How long finished jobs are kept.
    pub retention: Duration,
    /// Backoff between attempts.
    pub retry: state::RetryPolicy,
}

impl Default for Config {
    /// One machine, nothing kept on disk: what `drover demo` runs.
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            lease: Duration::from_secs(10),
            default_max_attempts: 3,
            store: StoreConfig::Memory,
            retention: Duration::from_secs(24 * 3600),
            retry: state::RetryPolicy {
                base_ms: 200,
                max_ms: 30_000,
            },
        }
    }
}

/// Binds the listen address, naming it in the error.
pub async fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Opens the configured store and serves the master on `listener` until
/// `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = open_store(&config.store)?;
    run_with_store(config, store, listener, shutdown).await
}

/// Serves the master over an opened store until `shutdown` is cancelled;
/// then the committer writes what is left before this returns.
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn store::Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let master = Master::open(config, store, shutdown.clone())?;
    tokio::spawn(master.clone().run_timers());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QueueServer<Master>>().await;
    health.set_serving::<WorkersServer<Master>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let queue = QueueServer::new(master.clone())
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);
    let workers = WorkersServer::new(master.clone())
        .max_decoding_message_size(net::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(net::MAX_MESSAGE_BYTES);

    net::server()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(queue)
        .add_service(workers)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled())
        .await?;
    let committer = master.clone();
    tokio::task::spawn_blocking(move || committer.join_committer()).await?;
    Ok(())
}
