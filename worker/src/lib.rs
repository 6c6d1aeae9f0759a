//! drover's worker: keeps a session with the master, runs CPU jobs in a
//! fixed pool of long-lived child processes and IO jobs on async slots, and
//! streams the results back.
//!
//! # Layout
//!
//! - [`session`]: the `Workers.Connect` stream, reopened with backoff.
//! - [`engine`]: the one task that owns the jobs held, the pool and the
//!   credit granted to the master.
//! - [`results`]: the results the master has not acknowledged, numbered and
//!   sent again on a new session.
//! - [`drain`]: the worker's phase, from running through the steps of a
//!   drain to done.
//! - [`pool`]: the child processes, their pipes, and their replacement.
//! - [`child`]: the hidden child mode of the binary, and the frame format.
//! - [`kinds`]: the CPU job kinds (fib, prime).
//! - [`python`]: Python functions as jobs: the runner script the pool's
//!   interpreter processes run, and the module allow-list.
//! - [`coord_proxy`]: the `Coord` service for the worker's Python jobs,
//!   forwarded to the master; a job's sessions end with its attempt.
//! - [`sleep`]: the IO job kind (sleep), on tokio timers in the worker.
//! - [`metrics`]: the worker's Prometheus metrics, read off its session.
//!
//! One job's path: the master assigns it within our credit; the engine
//! queues it and hands it to an idle child in a frame with others; the
//! child runs it and answers; the engine sends the result in the next
//! `Results` message and grants the credit back.

pub mod child;
pub mod coord_proxy;
pub(crate) mod drain;
pub(crate) mod engine;
pub mod kinds;
pub mod metrics;
pub mod pool;
pub mod python;
pub(crate) mod results;
pub mod session;
pub(crate) mod sleep;

use std::sync::Arc;
use std::time::Duration;

use drover_common::metrics::MetricsListen;
use drover_common::net::{ClientArgs, ClientOptions};
use drover_common::{PROTOCOL_VERSION, VERSION, pb};
use tokio_util::sync::CancellationToken;

/// Where a worker serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9465";

/// The most CPU jobs a worker holds beyond its running ones, by default.
/// Only tiny jobs reach it (the worker aims at about 20 ms of queued work a
/// process); a deep queue of those hides the round trip to the master and,
/// with a durable store, the commit each assignment waits for.
pub const DEFAULT_PREFETCH: u64 = 4096;

/// A child is given at most about this much work per frame, so a timeout
/// or a cancel wastes little, and results flow back steadily.
const BATCH_TARGET_US: f64 = 1_000.0;
/// And at most this many jobs.
const BATCH_MAX: usize = 512;
/// Prefetch aims to keep this much work queued per process.
const PREFETCH_TARGET_US: f64 = 20_000.0;

/// How many jobs of a kind whose mean run time is `mean_us` go to a child
/// in one frame: about BATCH_TARGET_US of work, at most BATCH_MAX, one at a
/// time while the kind's cost is unknown.
pub fn frame_jobs(mean_us: Option<f64>) -> usize {
    match mean_us {
        Some(us) => ((BATCH_TARGET_US / us.max(0.1)) as usize).clamp(1, BATCH_MAX),
        None => 1,
    }
}

/// The credit a slot class asks for beyond its `procs` live processes:
/// about PREFETCH_TARGET_US of queued work per process by the slowest of
/// its kinds' mean run times `means_us` (`procs` while none is known), at
/// least 1 and at most `cap` (`--prefetch`).
pub fn adaptive_prefetch(procs: u64, means_us: impl Iterator<Item = f64>, cap: u64) -> u64 {
    let slowest = means_us.fold(None, |acc: Option<f64>, v| {
        Some(acc.map_or(v, |a| a.max(v)))
    });
    let adaptive = match slowest {
        Some(us) => (procs as f64 * PREFETCH_TARGET_US / us.max(0.1)) as u64,
        None => procs,
    };
    adaptive.max(1).min(cap)
}

/// The largest result a job may have, by default: F(10^7), the largest
/// Fibonacci number the master allows by default, is 2.1 MB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;

/// The highest `--max-result-bytes` allowed: half the default message
/// limit, so a result travels in one `Results` message, and in a client's
/// page of results beside others, under the master's `--max-message-bytes`.
pub const MAX_RESULT_BYTES_LIMIT: usize = drover_common::net::MAX_MESSAGE_BYTES / 2;

/// The worker's flags; every one has a DROVER_* environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The master's URL; or, comma-separated, the URLs of several masters
    /// of one database (a leader and its standbys): the worker works for
    /// whichever accepts its session, and when that session ends it tries
    /// the next one at once, backing off after each full round.
    #[arg(long, env = "DROVER_MASTER", default_value = drover_common::DEFAULT_MASTER_URL)]
    pub master: String,
    /// Child processes for CPU jobs; default: the cores available.
    #[arg(long, env = "DROVER_PROCESSES")]
    pub processes: Option<usize>,
    /// Concurrent IO (sleep) jobs.
    #[arg(long, env = "DROVER_IO_SLOTS", default_value_t = 1024)]
    pub io_slots: u32,
    /// This worker's name in `drover status`; default: host name and pid.
    #[arg(long, env = "DROVER_NAME")]
    pub name: Option<String>,
    /// The host name shown in `drover status`; default: this machine's. In
    /// a container, set it to the machine's name.
    #[arg(long, env = "DROVER_HOST")]
    pub host: Option<String>,
    /// The most CPU jobs held beyond the running ones. The worker holds fewer
    /// when jobs are long, so that it never hoards the queue.
    #[arg(long, env = "DROVER_PREFETCH", default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: u64,
    /// Run Python jobs with this interpreter (e.g. python3, or a
    /// virtualenv's bin/python), in a pool of its own processes. Without
    /// it the worker runs no Python jobs.
    #[arg(long, env = "DROVER_PYTHON")]
    pub python: Option<String>,
    /// The Python modules whose functions this worker may run: module
    /// prefixes, comma-separated (`app` allows `app` and `app.tasks`).
    /// Nothing is allowed by default; a job outside them is refused and
    /// never imported. Needs --python.
    #[arg(long, env = "DROVER_PYTHON_MODULES", value_delimiter = ',')]
    pub python_modules: Vec<String>,
    /// Interpreter processes for Python jobs, besides the --processes
    /// children; default: the cores available.
    #[arg(long, env = "DROVER_PYTHON_PROCESSES")]
    pub python_processes: Option<usize>,
    /// Replace a child after it has run this many jobs; 0 never. Applies
    /// to the Python processes too.
    #[arg(long, env = "DROVER_MAX_JOBS_PER_CHILD", default_value_t = 0)]
    pub max_jobs_per_child: u64,
    /// The largest result a job may have, in bytes; a job whose result is
    /// larger fails, and is not retried. Keep it well under the master's
    /// --max-message-bytes.
    #[arg(long, env = "DROVER_MAX_RESULT_BYTES", default_value_t = DEFAULT_MAX_RESULT_BYTES)]
    pub max_result_bytes: usize,
    /// On SIGTERM or SIGINT, how long running jobs may take to finish.
    #[arg(long, env = "DROVER_GRACE", default_value = "30s", value_parser = drover_common::util::parse_duration)]
    pub grace: Duration,
    /// The worker token, and the TLS files to reach an https:// master.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Where to serve Prometheus metrics (GET /metrics), default
    /// 127.0.0.1:9465; `off` serves none. Port 0 picks a free port
    /// (logged), for several workers on one host.
    #[arg(long, env = "DROVER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl WorkerArgs {
    /// Checks the flags and makes the config.
    pub fn config(&self) -> anyhow::Result<Config> {
        let processes = match self.processes {
            Some(0) => anyhow::bail!("--processes must be at least 1"),
            Some(n) if n > 1024 => anyhow::bail!("--processes {n} is over the limit of 1024"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        anyhow::ensure!(
            self.io_slots <= 1_000_000,
            "--io-slots {} is over the limit of 1000000",
            self.io_slots
        );
        anyhow::ensure!(
            self.prefetch <= 100_000,
            "--prefetch {} is over the limit of 100000",
            self.prefetch
        );
        anyhow::ensure!(
            (1024..=MAX_RESULT_BYTES_LIMIT).contains(&self.max_result_bytes),
            "--max-result-bytes {} is outside 1024..={MAX_RESULT_BYTES_LIMIT}",
            self.max_result_bytes
        );
        let python = self.python_config()?;
        let host = self.host.clone().unwrap_or_else(host_name);
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{host}-{}", std::process::id()));
        let client = self.client.options().map_err(anyhow::Error::msg)?;
        let masters = drover_common::net::master_urls(&self.master).map_err(anyhow::Error::msg)?;
        // A URL that cannot work with these TLS flags is refused now, not
        // retried forever.
        for url in &masters {
            drover_common::net::endpoint_with(url, &client).map_err(anyhow::Error::msg)?;
        }
        Ok(Config {
            client,
            metrics: MetricsListen::from_flag(self.metrics_listen.as_deref(), DEFAULT_METRICS_ADDR),
            coord: None,
            masters,
            processes,
            io_slots: self.io_slots,
            name,
            host,
            prefetch: self.prefetch,
            max_jobs_per_child: self.max_jobs_per_child,
            max_result_bytes: self.max_result_bytes,
            grace: self.grace,
            python,
        })
    }

    fn python_config(&self) -> anyhow::Result<Option<PythonConfig>> {
        let modules: Vec<String> = self
            .python_modules
            .iter()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect();
        let Some(interpreter) = &self.python else {
            anyhow::ensure!(
                modules.is_empty() && self.python_processes.is_none(),
                "--python-modules and --python-processes need --python INTERPRETER"
            );
            return Ok(None);
        };
        anyhow::ensure!(!interpreter.is_empty(), "--python is empty");
        anyhow::ensure!(
            !modules.is_empty(),
            "--python needs --python-modules: no module is allowed by default"
        );
        for m in &modules {
            drover_common::job::check_module_name(m)
                .map_err(|e| anyhow::anyhow!("--python-modules: {e}"))?;
        }
        let processes = match self.python_processes {
            Some(0) => anyhow::bail!("--python-processes must be at least 1"),
            Some(n) if n > 1024 => {
                anyhow::bail!("--python-processes {n} is over the limit of 1024")
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Some(PythonConfig {
            interpreter: interpreter.clone(),
            modules,
            processes,
        }))
    }
}

/// How the worker runs Python jobs.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// The interpreter to start (a name on PATH or a path).
    pub interpreter: String,
    /// The module prefixes allowed.
    pub modules: Vec<String>,
    /// Interpreter processes, besides the CPU children.
    pub processes: usize,
}

/// The worker's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The masters' URLs, in the order they are tried (at least one).
    pub masters: Vec<String>,
    /// Child processes for CPU jobs.
    pub processes: usize,
    /// Concurrent IO jobs.
    pub io_slots: u32,
    /// Name shown by `drover status`.
    pub name: String,
    /// Host name shown by `drover status`.
    pub host: String,
    /// The most CPU jobs held beyond the running ones.
    pub prefetch: u64,
    /// Recycle a child after this many jobs; 0 never.
    pub max_jobs_per_child: u64,
    /// The largest result a job may have, in bytes (encoded).
    pub max_result_bytes: usize,
    /// How long a drain waits for running jobs.
    pub grace: Duration,
    /// Python jobs, if the worker runs them (`--python`).
    pub python: Option<PythonConfig>,
    /// The token and TLS material to reach the master with.
    pub client: ClientOptions,
    /// Where the metrics are served.
    pub metrics: MetricsListen,
    /// The sessions the Python jobs open through the worker's Coord
    /// proxy; set by [`run`] when the worker runs Python jobs.
    pub coord: Option<coord_proxy::JobSessions>,
}

/// The machine's host name, or "unknown".
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the worker until `shutdown` is cancelled and it has drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut kinds = vec![
        pb::JobKind::Fib as i32,
        pb::JobKind::Prime as i32,
        pb::JobKind::Sleep as i32,
    ];
    if config.python.is_some() {
        kinds.push(pb::JobKind::Python as i32);
    }
    let hello = pb::Hello {
        protocol: PROTOCOL_VERSION,
        name: config.name.clone(),
        host: config.host.clone(),
        cpu_slots: config.processes as u32,
        io_slots: config.io_slots,
        version: VERSION.to_string(),
        pid: std::process::id(),
        kinds,
        python_modules: config
            .python
            .as_ref()
            .map(|p| p.modules.clone())
            .unwrap_or_default(),
        python_slots: config.python.as_ref().map_or(0, |p| p.processes as u32),
    };
    let listener = config.metrics.bind().await.map_err(anyhow::Error::msg)?;
    // Without a listener nobody reads the figures: none are kept.
    let metrics = Arc::new(metrics::WorkerMetrics::new(
        &config.name,
        listener.is_some(),
    ));
    // Served through the drain too; stopped when the worker is done.
    let stop_metrics = CancellationToken::new();
    if let Some(l) = listener {
        let m = metrics.clone();
        let render: drover_common::metrics::Render = Arc::new(move || m.render());
        tokio::spawn(drover_common::metrics::serve(
            l,
            render,
            stop_metrics.clone(),
        ));
    }
    let (session_tx, session_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop_session = CancellationToken::new();
    let closing = CancellationToken::new();
    let masters = session::Masters::new(config.masters.clone());
    let dial = session::Dial {
        masters: masters.clone(),
        options: config.client.clone(),
    };
    let session = tokio::spawn(session::maintain(
        dial,
        hello,
        session_tx,
        stop_session.clone(),
        closing.clone(),
        metrics,
    ));
    tracing::info!(
        name = %config.name, masters = %config.masters.join(","), processes = config.processes,
        io_slots = config.io_slots,
        python_processes = config.python.as_ref().map_or(0, |p| p.processes),
        python_modules = ?config.python.as_ref().map(|p| &p.modules),
        "worker starting"
    );
    // Served through the drain too: running jobs may still need it.
    let stop_proxy = CancellationToken::new();
    let mut config = config;
    let mut coord_env = None;
    if config.python.is_some() {
        let proxy =
            coord_proxy::start(masters, &config.client, &config.name, stop_proxy.clone()).await?;
        config.coord = Some(proxy.jobs.clone());
        coord_env = Some((proxy.url, proxy.token, proxy.jobs));
    }
    let launcher = pool::Processes {
        max_result_bytes: config.max_result_bytes,
        cpu_slots: config.processes,
        python: config.python.clone(),
        coord: coord_env
            .as_ref()
            .map(|(url, token, _)| (url.clone(), token.clone())),
    };
    let result =
        engine::Engine::run(config, Box::new(launcher), session_rx, closing, shutdown).await;
    if let Some((_, _, jobs)) = &coord_env {
        // The last jobs' sessions, closed rather than left to their leases.
        jobs.flush(Duration::from_secs(2)).await;
    }
    stop_session.cancel();
    let _ = session.await;
    stop_metrics.cancel();
    stop_proxy.cancel();
    result
}
