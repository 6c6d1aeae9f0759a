//! drover's master: the task queue, worker leases and the result store,
//! behind the `Queue` and `Workers` gRPC services.
//!
//! # Layout
//!
//! - [`state`]: the queue state machine (jobs, batches, priority queues,
//!   retries, worker sessions and their credit). Pure: no I/O, unit-tested.
//! - [`store`]: where job records survive a restart (redb, or nothing).
//! - [`committer`]: the thread that group-commits changes to the store.
//! - [`coord`]: the `Coord` service: key-value entries, counters, locks
//!   and semaphores with leases and fencing tokens, events and barriers,
//!   kept in the same store.
//! - [`service`]: the gRPC handlers over the state, and the timers (leases,
//!   retry backoff, retention).
//! - [`accept`]: accepting connections, and a clear refusal for a
//!   plain-text client of a TLS master.
//! - [`auth`]: the token check in front of each service (client and worker
//!   roles), and mutual TLS for workers.
//! - [`limits`]: the limits on queue size, watch streams and message size,
//!   each refusing with RESOURCE_EXHAUSTED naming its flag.
//! - [`metrics`]: the Prometheus metrics served on `--metrics-listen`.
//! - [`dashboard`]: the web dashboard served on `--dashboard-listen`.
//! - [`trace`]: the master's side of each job's span in the logs.
//! - [`MasterArgs`] and [`Config`]: flags, and the validated config they make.
//! - [`run`]: the one way a master starts: recovers the queue from a store
//!   and serves the services, health and reflection on a listener until a
//!   shutdown token is cancelled, then waits for every task it spawned.
//!
//! The master never runs job code: it checks arguments at submit time and
//! hands jobs to workers within the credit they granted.

pub mod accept;
pub mod auth;
pub mod committer;
pub mod coord;
pub mod dashboard;
pub mod ha;
pub mod limits;
pub mod metrics;
#[cfg(test)]
mod model_test;
pub mod pg;
pub mod service;
pub mod state;
pub mod store;
pub mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_common::auth::Token;
use drover_common::metrics::MetricsListen;
use drover_common::pb::coord_server::CoordServer;
use drover_common::pb::queue_server::QueueServer;
use drover_common::pb::workers_server::WorkersServer;
use drover_common::{Limits, net, pb};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

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
    /// The longest argument of a Python job (its name and JSON arguments),
    /// in bytes.
    #[arg(long, env = "DROVER_MAX_PYTHON_ARG_BYTES", default_value_t = Limits::default().max_python_arg_bytes)]
    pub max_python_arg_bytes: usize,
    /// Attempts for a job that does not say.
    #[arg(long, env = "DROVER_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Where jobs are kept: redb (in --data-dir, survives restarts),
    /// memory (lost when the master stops), or a PostgreSQL URL
    /// (postgres://user@host/db): several masters on one database, one
    /// the leader and the others standbys that take over (high
    /// availability). TLS as libpq's sslmode and sslrootcert parameters
    /// say (?sslmode=verify-full&sslrootcert=ca.pem); the default, prefer,
    /// uses TLS when the server offers it.
    #[arg(long, env = "DROVER_STORE", default_value = "redb")]
    pub store: String,
    /// With a PostgreSQL store: a leader's lease not renewed for this long
    /// expires, and a standby takes over.
    #[arg(long, env = "DROVER_LEADER_LEASE", default_value = "2s", value_parser = drover_common::util::parse_duration)]
    pub leader_lease: Duration,
    /// With a PostgreSQL store: how often the leader renews its lease and
    /// standbys look at it.
    #[arg(long, env = "DROVER_LEADER_RENEW", default_value = "500ms", value_parser = drover_common::util::parse_duration)]
    pub leader_renew: Duration,
    /// With a PostgreSQL store: the address (HOST:PORT) standbys name to
    /// clients when this master leads; by default the one it listens on.
    #[arg(long, env = "DROVER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The directory of the redb store.
    #[arg(long, env = "DROVER_DATA_DIR", default_value = "./drover-data")]
    pub data_dir: PathBuf,
    /// Finished jobs and their results are purged this long after they
    /// finish, a batch at a time: once every job of the batch is that old.
    #[arg(long, env = "DROVER_RETENTION", default_value = "24h", value_parser = drover_common::util::parse_duration)]
    pub retention: Duration,
    /// With the memory store: the most finished jobs kept; past it the
    /// batches that finished first are evicted (asking for one then says
    /// "evicted"). The redb store keeps every finished job on disk until
    /// --retention, and only unfinished work in memory.
    #[arg(long, env = "DROVER_KEEP_FINISHED", default_value_t = Config::default().keep_finished)]
    pub keep_finished: u64,
    /// A byte budget for finished work beside --retention (e.g. 20GB,
    /// 512MiB): past it, the oldest finished batches are purged first
    /// (asking for one then says "purged"). With the memory store they are
    /// evicted, as past --keep-finished. Unset: no budget.
    #[arg(long, env = "DROVER_RETENTION_BYTES", value_parser = drover_common::util::parse_bytes)]
    pub retention_bytes: Option<u64>,
    /// A retried job waits this long after its first failure, doubling
    /// with each further one (with jitter).
    #[arg(long, env = "DROVER_RETRY_BASE", default_value = "200ms", value_parser = drover_common::util::parse_duration)]
    pub retry_base: Duration,
    /// The longest wait before a retry.
    #[arg(long, env = "DROVER_RETRY_MAX", default_value = "30s", value_parser = drover_common::util::parse_duration)]
    pub retry_max: Duration,
    /// The master's certificate chain (PEM). With --tls-key, every
    /// connection is TLS, and workers and clients dial https:// with --ca.
    #[arg(long, env = "DROVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "DROVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// A CA certificate (PEM): workers must then connect with a client
    /// certificate it signed (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "DROVER_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The token clients (the CLI) must present to use the Queue service.
    /// Prefer --client-token-file or the variable: a flag shows in the
    /// process list.
    #[arg(long, env = "DROVER_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
    /// A file holding the client token.
    #[arg(long, env = "DROVER_CLIENT_TOKEN_FILE")]
    pub client_token_file: Option<PathBuf>,
    /// The token workers must present to connect.
    #[arg(long, env = "DROVER_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// A file holding the worker token.
    #[arg(long, env = "DROVER_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without tokens. Without it such a
    /// master refuses to start.
    #[arg(long, env = "DROVER_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure: bool,
    /// The largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "DROVER_MAX_MESSAGE_BYTES", default_value_t = net::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// The most jobs queued at once; a submit past it is refused
    /// (back-pressure) until workers catch up.
    #[arg(long, env = "DROVER_MAX_QUEUED", default_value_t = Config::default().max_queued)]
    pub max_queued: u64,
    /// The most concurrent gRPC streams on one connection.
    #[arg(long, env = "DROVER_MAX_CONCURRENT_STREAMS", default_value_t = Config::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// The most watch streams one client (an IP address) may have open.
    #[arg(long, env = "DROVER_MAX_WATCHES_PER_CLIENT", default_value_t = Config::default().max_watches_per_client)]
    pub max_watches_per_client: u32,
    /// Where to serve Prometheus metrics (GET /metrics), default
    /// 127.0.0.1:9464; `off` serves none. Port 0 picks a free port (logged).
    #[arg(long, env = "DROVER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Where to serve the web dashboard (http://ADDR/, https:// when the
    /// master has --tls-cert), default 127.0.0.1:9466; `off` serves none.
    /// It needs the client token when the master has one; off loopback
    /// without one, the master refuses to start unless --insecure.
    #[arg(long, env = "DROVER_DASHBOARD_LISTEN")]
    pub dashboard_listen: Option<String>,
}

impl MasterArgs {
    /// Checks the flags and makes the config.
    pub fn config(&self) -> anyhow::Result<Config> {
        // Checked here, not by clap, whose message would show the value
        // and so the password of a URL.
        parse_store(&self.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
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
        anyhow::ensure!(
            (1024..=u32::MAX as usize).contains(&self.max_message_bytes),
            "--max-message-bytes {} is outside 1024..={}",
            self.max_message_bytes,
            u32::MAX
        );
        anyhow::ensure!(self.max_queued >= 1, "--max-queued must be at least 1");
        anyhow::ensure!(
            self.max_concurrent_streams >= 1,
            "--max-concurrent-streams must be at least 1"
        );
        anyhow::ensure!(
            self.max_watches_per_client >= 1,
            "--max-watches-per-client must be at least 1"
        );
        let tokens = auth::Tokens {
            client: Token::from_sources(
                self.client_token.as_deref(),
                self.client_token_file.as_deref(),
                "--client-token",
            )
            .map_err(anyhow::Error::msg)?,
            worker: Token::from_sources(
                self.worker_token.as_deref(),
                self.worker_token_file.as_deref(),
                "--worker-token",
            )
            .map_err(anyhow::Error::msg)?,
        };
        if let (Some(c), Some(w)) = (&tokens.client, &tokens.worker) {
            anyhow::ensure!(
                !c.matches(w.expose().as_bytes()),
                "--client-token and --worker-token are the same: a worker could then submit \
                 and cancel jobs; give each role its own token"
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(net::ServerTls {
                cert: net::read_pem(cert, "--tls-cert").map_err(anyhow::Error::msg)?,
                key: net::read_pem(key, "--tls-key").map_err(anyhow::Error::msg)?,
                client_ca: self
                    .client_ca
                    .as_deref()
                    .map(|p| net::read_pem(p, "--client-ca"))
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
            }),
            (None, None) => {
                anyhow::ensure!(
                    self.client_ca.is_none(),
                    "--client-ca needs TLS: give --tls-cert and --tls-key too"
                );
                None
            }
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
        };
        // Parse the certificate and key now, so that a file with a BEGIN
        // line and nothing usable after it stops the master before it
        // listens, naming the files.
        if let (Some(t), Some(cert), Some(key)) = (&tls, &self.tls_cert, &self.tls_key) {
            let pair = net::ServerTls {
                client_ca: None,
                ..t.clone()
            };
            net::server_with(Some(&pair), 1).map_err(|e| {
                anyhow::anyhow!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            if let Some(ca) = &self.client_ca {
                net::server_with(Some(t), 1)
                    .map_err(|e| anyhow::anyhow!("--client-ca {}: {e}", ca.display()))?;
            }
        }
        anyhow::ensure!(
            self.leader_renew >= Duration::from_millis(10),
            "--leader-renew {:?} is under the minimum of 10ms",
            self.leader_renew
        );
        anyhow::ensure!(
            self.leader_lease >= self.leader_renew * 2,
            "--leader-lease {:?} must be at least twice --leader-renew ({:?}), or a leader \
             loses its lease between two renewals",
            self.leader_lease,
            self.leader_renew
        );
        Ok(Config {
            max_queued: self.max_queued,
            max_watches_per_client: self.max_watches_per_client,
            max_message_bytes: self.max_message_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            tokens,
            tls,
            insecure: self.insecure,
            metrics: MetricsListen::from_flag(self.metrics_listen.as_deref(), DEFAULT_METRICS_ADDR),
            dashboard: MetricsListen::from_flag(
                self.dashboard_listen.as_deref(),
                dashboard::DEFAULT_DASHBOARD_ADDR,
            ),
            limits: Limits {
                max_fib_n: self.max_fib_n,
                max_prime_digits: self.max_prime_digits,
                max_sleep_ms: self.max_sleep_ms,
                max_batch_jobs: self.max_batch_jobs,
                max_python_arg_bytes: self.max_python_arg_bytes,
            },
            lease: self.lease,
            default_max_attempts: self.max_attempts,
            store: match self.store.as_str() {
                "memory" => StoreConfig::Memory,
                "redb" => StoreConfig::Redb(self.data_dir.clone()),
                url => StoreConfig::Postgres(url.to_string()),
            },
            ha: ha::HaConfig {
                lease: self.leader_lease,
                renew: self.leader_renew,
                advertise: self.advertise.clone(),
                epoch: 0,
            },
            retention: self.retention,
            keep_finished: self.keep_finished,
            retention_bytes: self.retention_bytes,
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
    /// A PostgreSQL database at this URL, shared by a leader and standbys
    /// ([`run_ha`]).
    Postgres(String),
}

/// The `--store` flag: redb, memory, or a PostgreSQL URL.
fn parse_store(value: &str) -> Result<String, String> {
    match value {
        "redb" | "memory" => Ok(value.to_string()),
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            pg::tls::parse(url)
                .map_err(|e| format!("not a PostgreSQL URL ({}): {e}", pg::redact(url)))?;
            Ok(url.to_string())
        }
        _ => Err("expected redb, memory or a postgres:// URL".into()),
    }
}

/// Opens the configured store.
pub fn open_store(config: &StoreConfig) -> anyhow::Result<Arc<dyn store::Store>> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(store::MemoryStore),
        StoreConfig::Redb(dir) => Arc::new(store::RedbStore::open(dir)?),
        StoreConfig::Postgres(_) => {
            anyhow::bail!("a PostgreSQL store is opened by its master once elected leader (run_ha)")
        }
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
    /// With a PostgreSQL store: the leader's lease.
    pub ha: ha::HaConfig,
    /// How long finished jobs are kept.
    pub retention: Duration,
    /// With the memory store: the most finished jobs kept in memory.
    pub keep_finished: u64,
    /// The most bytes of finished work kept, if bounded.
    pub retention_bytes: Option<u64>,
    /// Backoff between attempts.
    pub retry: state::RetryPolicy,
    /// The most jobs queued at once.
    pub max_queued: u64,
    /// The most watch streams open per client address.
    pub max_watches_per_client: u32,
    /// The largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// The most concurrent streams on one connection.
    pub max_concurrent_streams: u32,
    /// The tokens of the client and worker roles.
    pub tokens: auth::Tokens,
    /// The master's certificate and key, and the CA of worker certificates.
    pub tls: Option<net::ServerTls>,
    /// Listen on a non-loopback address without tokens.
    pub insecure: bool,
    /// Where the metrics are served.
    pub metrics: MetricsListen,
    /// Where the dashboard is served.
    pub dashboard: MetricsListen,
}

/// Where the master serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

impl Config {
    /// Refuses a master that anyone on the network could use: one that
    /// listens on `addr`, not a loopback address, with a service that has no
    /// token (for workers, no token and no `--client-ca`), unless
    /// `--insecure` says so. What is allowed but unwise comes back as a
    /// warning to log.
    pub fn check_exposure(&self, addr: SocketAddr) -> anyhow::Result<Option<String>> {
        if addr.ip().is_loopback() {
            return Ok(None);
        }
        let mut missing = Vec::new();
        if self.tokens.client.is_none() {
            missing.push("a client token (--client-token or --client-token-file)");
        }
        let mtls = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if self.tokens.worker.is_none() && !mtls {
            missing.push("a worker token (--worker-token or --worker-token-file, or --client-ca)");
        }
        if missing.is_empty() {
            return Ok(self.tls.is_none().then(|| {
                format!(
                    "tokens travel in clear text on {addr}, not a loopback address; \
                     give the master --tls-cert and --tls-key"
                )
            }));
        }
        if self.insecure {
            return Ok(Some(format!(
                "listening on {addr} with no authentication (--insecure): anyone who can \
                 reach it can submit, cancel, or take jobs as a worker"
            )));
        }
        anyhow::bail!(
            "refusing to listen on {addr} without authentication: it is not a loopback \
             address, so anyone who can reach it could submit, cancel, or take jobs as a \
             worker. Set {}, or pass --insecure (DROVER_INSECURE=true) to run open anyway",
            missing.join(" and ")
        )
    }
}

impl Config {
    /// Refuses a dashboard anyone on the network could use: on `addr`, not
    /// a loopback address, with no client token, unless `--insecure`.
    pub fn check_dashboard_exposure(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if addr.ip().is_loopback() || self.tokens.client.is_some() {
            return Ok(());
        }
        if self.insecure {
            tracing::warn!(
                %addr,
                "serving the dashboard with no authentication (--insecure): anyone who can \
                 reach it can see and cancel jobs"
            );
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve the dashboard on {addr} without a client token: it is not a \
             loopback address. Set --client-token (or --client-token-file), serve it on \
             loopback (--dashboard-listen 127.0.0.1:9466), or pass --insecure"
        )
    }
}

impl Default for Config {
    /// One machine, nothing kept on disk: what `drover demo` runs.
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            lease: Duration::from_secs(10),
            default_max_attempts: 3,
            store: StoreConfig::Memory,
            ha: ha::HaConfig::default(),
            retention: Duration::from_secs(24 * 3600),
            keep_finished: 1_000_000,
            retention_bytes: None,
            retry: state::RetryPolicy {
                base_ms: 200,
                max_ms: 30_000,
            },
            max_queued: 1_000_000,
            max_watches_per_client: 256,
            max_message_bytes: net::MAX_MESSAGE_BYTES,
            max_concurrent_streams: 1024,
            tokens: auth::Tokens::default(),
            tls: None,
            insecure: false,
            metrics: MetricsListen::Off,
            dashboard: MetricsListen::Off,
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

/// Serves a master over `store` on `listener` until `shutdown` is
/// cancelled: the one way a master starts (the binary, `drover demo` and
/// the in-process tests). See [`run_notify`].
pub async fn run(
    config: Config,
    store: Arc<dyn store::Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_notify(config, store, listener, shutdown, |_| {}).await
}

/// Like [`run`], calling `ready` with the bound address once the queue is
/// recovered and before the first request is served (the binary prints its
/// listening line there: once scripts see it, the queue is whole). A master
/// listening off loopback without protection is refused first. On shutdown
/// it stops accepting, ends every stream, waits for every task it spawned,
/// and lets the committer write what is left before it returns.
pub async fn run_notify(
    config: Config,
    store: Arc<dyn store::Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let side = SideListeners::bind(&config).await?;
    serve_master(config, store, listener, side, shutdown, ready).await
}

/// The listeners beside the gRPC one, bound when a master starts (a
/// standby too: one that cannot have them fails then, not when elected).
pub(crate) struct SideListeners {
    /// `--metrics-listen`.
    pub(crate) metrics: Option<TcpListener>,
    /// `--dashboard-listen`.
    pub(crate) dashboard: Option<TcpListener>,
}

impl SideListeners {
    async fn bind(config: &Config) -> anyhow::Result<SideListeners> {
        let metrics = config.metrics.bind().await.map_err(anyhow::Error::msg)?;
        let dashboard = config
            .dashboard
            .bind_as("--dashboard-listen", "the dashboard")
            .await
            .map_err(anyhow::Error::msg)?;
        if let Some(l) = &dashboard {
            config.check_dashboard_exposure(l.local_addr()?)?;
        }
        Ok(SideListeners { metrics, dashboard })
    }

    /// A second handle on each socket, for a standby to serve on until it
    /// is elected (see [`twin`]).
    fn twin(&mut self) -> std::io::Result<SideListeners> {
        fn one(slot: &mut Option<TcpListener>) -> std::io::Result<Option<TcpListener>> {
            let Some(listener) = slot.take() else {
                return Ok(None);
            };
            let (kept, other) = twin(listener)?;
            *slot = Some(kept);
            Ok(Some(other))
        }
        Ok(SideListeners {
            metrics: one(&mut self.metrics)?,
            dashboard: one(&mut self.dashboard)?,
        })
    }
}

/// Two handles on one listening socket: a connection the first has not
/// accepted when it stops waits for the second.
fn twin(listener: TcpListener) -> std::io::Result<(TcpListener, TcpListener)> {
    let listener = listener.into_std()?;
    let other = TcpListener::from_std(listener.try_clone()?)?;
    Ok((TcpListener::from_std(listener)?, other))
}

/// [`run_notify`] on listeners already bound.
async fn serve_master(
    config: Config,
    store: Arc<dyn store::Store>,
    listener: TcpListener,
    side: SideListeners,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if let Some(warning) = config.check_exposure(addr)? {
        tracing::warn!("{warning}");
    }
    let coord_store = store.clone();
    let (store, commits) = metrics::MeteredStore::wrap(store);
    let master = Master::open(config.clone(), store, shutdown.clone())?;
    let coord = coord::CoordService::open(
        coord_store,
        coord::CoordLimits::default(),
        master.guards().clone(),
        shutdown.clone(),
    )?;
    let tasks = master.tasks().clone();
    let SideListeners {
        metrics: metrics_listener,
        dashboard: dashboard_listener,
    } = side;
    ready(addr);
    tasks.spawn(master.clone().run_timers());
    tasks.spawn(coord.clone().run_timers());
    if let Some(l) = dashboard_listener {
        let (m, c, cfg, stop) = (
            master.clone(),
            commits.clone(),
            config.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = dashboard::serve(l, m, c, &cfg, stop).await {
                tracing::error!(error = %e, "the dashboard stopped");
            }
        });
    }
    if let Some(l) = metrics_listener {
        let (m, c) = (master.clone(), commits);
        let render: drover_common::metrics::Render = Arc::new(move || metrics::render(&m, &c));
        tasks.spawn(drover_common::metrics::serve(l, render, shutdown.clone()));
    }
    tracing::info!(
        tls = config.tls.is_some(),
        worker_certs = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        client_token = config.tokens.client.is_some(),
        worker_token = config.tokens.worker.is_some(),
        "security"
    );
    let served = serve(&config, &master, &coord, listener, shutdown.clone()).await;
    // `serve` may also end with an error, with nothing else stopping: the
    // timers and the dashboard must stop too, or the wait below never ends.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    let (committer, coord_committer) = (master.clone(), coord.clone());
    tokio::task::spawn_blocking(move || {
        committer.join_committer();
        coord_committer.join_committer();
    })
    .await?;
    served?;
    if let Some(failure) = master.store_failure().or_else(|| coord.store_failure()) {
        anyhow::bail!("stopped because the store failed: {failure}");
    }
    Ok(())
}

/// Runs a master on a PostgreSQL store, one of several on one database
/// ([`ha`]): it stands by, answering UNAVAILABLE and naming the leader,
/// until it is elected (`standing_by` is called when it starts doing so);
/// then it recovers the queue from the database and serves as [`run_notify`]
/// does (`ready` gets the address and the epoch), renewing its lease. It
/// returns an error if it loses the lease (it stepped down), and resigns
/// the lease when stopped, so a standby takes over at once.
pub async fn run_ha(
    config: Config,
    url: &str,
    listener: TcpListener,
    shutdown: CancellationToken,
    standing_by: impl FnOnce(SocketAddr, &ha::Leader),
    ready: impl FnOnce(SocketAddr, u64),
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if let Some(warning) = config.check_exposure(addr)? {
        tracing::warn!("{warning}");
    }
    // The lease lives on a runtime of its own (see LeaseRuntime), kept
    // until this returns.
    let lease = ha::LeaseRuntime::new()?;
    let lease_runtime = lease.handle();
    let advertise = config
        .ha
        .advertise
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let elector = Arc::new(
        ha::Elector::connect(
            url,
            config.ha.lease,
            advertise.clone(),
            lease_runtime.clone(),
        )
        .await?,
    );
    // The standby serves on clones of the listening sockets: connections
    // not yet accepted when it stops wait there for the leader's servers.
    let mut side = SideListeners::bind(&config).await?;
    let standby_side = side.twin()?;
    let (listener, standby_listener) = twin(listener)?;
    let Some(epoch) = ha::stand_by(
        &elector,
        &config,
        standby_listener,
        standby_side,
        &shutdown,
        standing_by,
    )
    .await?
    else {
        return Ok(());
    };
    tracing::info!(epoch, "elected leader; recovering from the database");
    let mut config = config;
    config.ha.epoch = epoch;
    config.ha.advertise = Some(advertise);
    let (owned, patience) = (url.to_string(), config.ha.lease);
    let store =
        tokio::task::spawn_blocking(move || pg::PgStore::open(&owned, epoch, patience)).await??;
    let stepped_down = ha::SteppedDown::default();
    let renewals = lease_runtime.spawn(ha::keep_lease(
        elector.clone(),
        epoch,
        config.ha.clone(),
        shutdown.clone(),
        stepped_down.clone(),
    ));
    let lease = config.ha.lease;
    let notify = serve_master(
        config,
        Arc::new(store),
        listener,
        side,
        shutdown.clone(),
        |addr| ready(addr, epoch),
    );
    tokio::pin!(notify);
    let mut renewals = renewals;
    let mut renewing = true;
    let served = tokio::select! {
        served = &mut notify => served,
        _ = &mut renewals => {
            renewing = false;
            match stepped_down.reason() {
                // Stepped down: the master stops; but a commit or read that
                // hangs on the database would hold it up forever, and a
                // master no longer the leader must go, so it is given a
                // lease.
                Some(reason) => match tokio::time::timeout(lease, &mut notify).await {
                    Ok(_) => anyhow::bail!("stepped down as leader: {reason}"),
                    Err(_) => anyhow::bail!(
                        "stepped down as leader: {reason}; exiting without waiting any \
                         longer for calls to the database"
                    ),
                },
                None => notify.await,
            }
        }
    };
    shutdown.cancel();
    if renewing {
        let _ = renewals.await;
    }
    if let Some(reason) = stepped_down.reason() {
        anyhow::bail!("stepped down as leader: {reason}");
    }
    served?;
    match elector.resign(epoch).await {
        Ok(()) => tracing::info!(epoch, "resigned the lease"),
        Err(e) => tracing::warn!(error = %e, "resigning the lease failed; it expires by itself"),
    }
    Ok(())
}

/// Serves the gRPC services until `shutdown`.
async fn serve(
    config: &Config,
    master: &Master,
    coord: &coord::CoordService,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QueueServer<Master>>().await;
    health.set_serving::<WorkersServer<Master>>().await;
    health
        .set_serving::<CoordServer<coord::CoordService>>()
        .await;
    // Reflection in both versions: grpcurl speaks v1, grpcio's own
    // reflection client and older tools only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limit = config.max_message_bytes;
    let guards = master.guards().clone();
    let tokens = Arc::new(config.tokens.clone());
    let worker_certs = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let gate = |role| auth::Gate::new(role, tokens.clone(), worker_certs, guards.clone());
    let queue = InterceptedService::new(
        QueueServer::new(master.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        gate(auth::Role::Client),
    );
    let coord = InterceptedService::new(
        CoordServer::new(coord.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        gate(auth::Role::Coord),
    );
    let workers = InterceptedService::new(
        WorkersServer::new(master.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        gate(auth::Role::Worker),
    );

    net::server_with(config.tls.as_ref(), config.max_concurrent_streams)
        .map_err(anyhow::Error::msg)?
        .layer(limits::MessageSizeLayer::new(limit, guards.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(queue)
        .add_service(coord)
        .add_service(workers)
        .serve_with_incoming_shutdown(
            accept::incoming(listener, config.tls.is_some(), shutdown.clone()),
            shutdown.cancelled(),
        )
        .await?;
    Ok(())
}
