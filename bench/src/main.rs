//! `drover-bench`: drover's benchmark program.
//!
//! It measures the figures drover is built to hit (bench/README.md lists
//! them and their targets) against the real binaries, and the Python
//! baselines beside them, on this machine:
//!
//! ```text
//! cargo run --release -p drover-bench -- --json
//! ```
//!
//! # Layout
//!
//! - [`cluster`]: starts `drover-master` and its workers as separate
//!   processes on loopback and always stops them; later workloads (a durable
//!   store, recovery after a crash) start theirs through it.
//! - [`tiny`], [`apply`]: the queue workloads: throughput of tiny jobs, and
//!   the latency of one job.
//! - [`durable`], [`recovery`]: the durable store: how fast it takes jobs
//!   in, and a master with a million queued jobs, its memory and its restart
//!   after a crash. (The tiny workload also runs on a durable master.)
//! - [`pg`]: the PostgreSQL server the `pg` workload runs the durable
//!   submit and the tiny workload against.
//! - [`workers`]: a thousand simulated workers, each on its own stream,
//!   against the same jobs on two.
//! - [`fib`]: the fib kind's speed, in-process.
//! - [`baselines`]: runs the Python scripts drover is compared with.
//! - [`jobs`]: the jobs the workloads submit and the check of the answers.
//! - [`report`], [`stats`]: medians, percentiles, the JSON and the table.

mod apply;
mod baselines;
mod bigget;
mod cluster;
mod coord;
mod dashboard;
mod durable;
mod fib;
mod finished;
mod ha;
mod jobs;
mod pg;
mod recovery;
mod report;
mod stats;
mod tiny;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use drover_common::pb::queue_client::QueueClient;
use tonic::transport::Channel;

use cluster::{Binaries, Cluster, ClusterConfig, StoreKind};
use report::Report;

/// Measures drover against its targets and the Python baselines.
#[derive(Debug, Parser)]
#[command(name = "drover-bench", version)]
struct Args {
    /// Prints one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Measured runs of each workload; every figure is a median over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Jobs in the tiny-jobs workload and in its Python baseline (each run
    /// of tiny also runs TINY_SMALL_JOBS jobs, `tiny_20k_jobs_per_s`).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Sequential single-job round trips per run of the apply workload.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    round_trips: u32,
    /// Workloads to run, comma-separated. The default leaves out the long
    /// ones (queued, finished, bigget, limits, workers) and pg, which starts
    /// a PostgreSQL server of its own (Debian's postgresql packages).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tiny,apply,fib,python,pyclient,durable,recovery,coord,dashboard"
    )]
    only: Vec<Workload>,
    /// Jobs of the durable-submit workload, sent in Submits of 1,000.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    durable_jobs: u32,
    /// Concurrent clients of the durable-submit workload, each on its own
    /// connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    durable_concurrency: u32,
    /// Queued jobs of the recovery workload (the `_1m` of its figures).
    /// Above the master's --max-queued (1,000,000) it needs
    /// `--master-arg=--max-queued=N` too.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    recovery_jobs: u32,
    /// Queued jobs of the queued workload (the `_10m` of its figures); the
    /// master is given `--max-queued` of as many.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    queued_jobs: u32,
    /// Finished jobs of the finished workload (the `_5m` of its figures).
    #[arg(long, default_value_t = 5_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    finished_jobs: u32,
    /// Simulated workers of the workers workload (the `_1000` of its
    /// figures), each its own session on its own connection.
    #[arg(long, default_value_t = workers::DEFAULT_SIM_WORKERS, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sim_workers: u32,
    /// Failovers of the ha workload.
    #[arg(long, default_value_t = ha::DEFAULT_ROUNDS, value_parser = clap::value_parser!(u32).range(1..))]
    ha_rounds: u32,
    /// Worker daemons to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// `--processes` of each worker; the Python baseline gets workers x
    /// processes worker processes, so both use the same cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    processes: u32,
    /// An extra flag for every drover-master, e.g. `--master-arg=--lease=5s`;
    /// repeat it for more. It follows the `--store memory` of the tiny and
    /// apply master, so `--master-arg=--store=redb` measures those on the
    /// durable store; the durable and recovery masters keep their own
    /// `--store redb --data-dir`.
    #[arg(long = "master-arg", value_name = "ARG", allow_hyphen_values = true)]
    master_args: Vec<String>,
    /// An extra flag for every drover-worker; repeat it for more.
    #[arg(long = "worker-arg", value_name = "ARG", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// The directory holding drover-master and drover-worker [default: this
    /// executable's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Rebuilds the daemons with cargo first, even when they look fresh
    /// (ignored with --bin-dir, whose binaries are used as they are).
    #[arg(long)]
    build: bool,
    /// The Python interpreter that runs the baselines.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The directory holding the baseline scripts [default: bench/baselines
    /// in the source tree].
    #[arg(long)]
    baselines: Option<PathBuf>,
    /// The Python interpreter that runs the Python client's bench
    /// (python/bench/bench_pool.py): it needs grpcio and protobuf
    /// [default: target/python-venv/bin/python, made by the Python tests,
    /// if it exists, else --python].
    #[arg(long)]
    client_python: Option<String>,
}

/// The workloads `--only` selects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// tiny_jobs_per_s.
    Tiny,
    /// apply_p50_us and apply_p99_us.
    Apply,
    /// fib_1e6_ms, fib_1e7_ms and GMP's figures.
    Fib,
    /// python_manager_jobs_per_s.
    Python,
    /// The Python client: python_client_builtin_jobs_per_s,
    /// python_jobs_per_s and python_apply_p50_us.
    Pyclient,
    /// durable_submit_jobs_per_s, durable_tiny_jobs_per_s and (with tiny)
    /// durable_vs_memory_tiny.
    Durable,
    /// recovery_s_1m, master_rss_mb_1m and master_rss_mb_1m_recovered.
    Recovery,
    /// lock_acquire_release_p50_us (and on the memory store,
    /// lock_memory_acquire_release_p50_us), counter_adds_per_s,
    /// counter_unary_adds_per_s and kv_puts_per_s.
    Coord,
    /// master_rss_mb_5m_finished and recovery_s_5m_finished.
    Finished,
    /// queued_10m_submit_jobs_per_s, queued_10m_rss_mb,
    /// queued_10m_rss_mb_recovered and queued_10m_recovery_s: the recovery
    /// workload at --queued-jobs (10,000,000).
    Queued,
    /// get_big_batch_mb_per_s and loopback_copy_mb_per_s.
    Bigget,
    /// dashboard_overhead_pct.
    Dashboard,
    /// limit_overhead_pct.
    Limits,
    /// workers_1000_jobs_per_s, workers_2_jobs_per_s, workers_1000_vs_2
    /// and the master's CPU and memory with the thousand.
    Workers,
    /// pg_submit_jobs_per_s and pg_tiny_jobs_per_s: the durable submit and
    /// the tiny workload on masters with `--store postgres://...`, on a
    /// PostgreSQL server the bench starts; with durable, pg_vs_redb_tiny.
    /// Not in the default --only.
    Pg,
    /// ha_failover_p50_ms, ha_failover_p99_ms and ha_takeover_p50_ms:
    /// --ha-rounds kill -9s of the leader of two masters on PostgreSQL.
    /// Not in the default --only.
    Ha,
}

/// A run of a baseline script may take this long before it is killed.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(600);

/// Round trips and jobs of the unmeasured warm-up, which lets connections,
/// child processes and the master's allocations settle first.
const WARMUP_ROUND_TRIPS: u32 = 50;
const WARMUP_JOBS: u32 = 2_000;

/// Jobs of `tiny_20k_jobs_per_s`, run beside `tiny_jobs_per_s` in each run:
/// the figure before the default `--jobs` became 200,000 (20,000 jobs end
/// in about a tenth of a second, too short for a stable figure alone).
const TINY_SMALL_JOBS: usize = 20_000;

/// One measured run may take this long before the bench calls drover hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let args = Args::parse();
    let report = run(&args);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the selected workloads, the ones that need no cluster first so that
/// idle daemons do not share the machine with them.
fn run(args: &Args) -> Report {
    let mut report = Report {
        runs: args.runs,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        jobs: args.jobs as usize,
        workers: args.workers as usize,
        processes: args.processes as usize,
        durable_submit_jobs: args.durable_jobs as usize,
        durable_submit_concurrency: args.durable_concurrency as usize,
        durable_submit_batch: durable::SUBMIT_JOBS,
        recovery_jobs: args.recovery_jobs as usize,
        ..Default::default()
    };
    if cfg!(debug_assertions) {
        report
            .notes
            .push("debug build: the figures mean nothing; use --release".into());
    }
    let selected = |w| args.only.contains(&w);

    if selected(Workload::Fib) {
        run_fib(args, &mut report);
    }
    if selected(Workload::Python) {
        run_python_manager(args, &mut report);
    }
    if selected(Workload::Pyclient) {
        run_python_client(args, &mut report);
    }
    if selected(Workload::Ha) {
        run_ha(args, &mut report);
    }
    let clusters = [
        Workload::Tiny,
        Workload::Apply,
        Workload::Durable,
        Workload::Recovery,
        Workload::Queued,
        Workload::Coord,
        Workload::Finished,
        Workload::Bigget,
        Workload::Dashboard,
        Workload::Limits,
        Workload::Workers,
        Workload::Pg,
    ];
    if clusters.into_iter().any(selected) {
        // A current-thread client: one job's round trip has no thread
        // hand-off in the client, as in a script or the CLI.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(run_cluster_workloads(args, &mut report));
    }
    report
}

/// The workloads that start daemons, each group on its own clusters; a
/// failure of one group is reported and the next still runs.
async fn run_cluster_workloads(args: &Args, report: &mut Report) {
    let selected = |w| args.only.contains(&w);
    let Some(bins) = locate_binaries(args, report) else {
        return;
    };
    if [
        Workload::Durable,
        Workload::Recovery,
        Workload::Queued,
        Workload::Coord,
        Workload::Pg,
    ]
    .into_iter()
    .any(selected)
    {
        report.notes.push(format!(
            "durable stores in fresh directories under {}",
            cluster::store_location()
        ));
    }
    let mut outcomes = Vec::new();
    // One server for the pg workload's masters, each on a database of its
    // own; stopped once they are done.
    let mut postgres = None;
    if selected(Workload::Pg) {
        match pg::Server::start().and_then(|pg| {
            report.notes.push(format!("pg: {}", pg.describe()?));
            Ok(pg)
        }) {
            Ok(pg) => postgres = Some(pg),
            Err(e) => outcomes.push(Err(e.context("pg"))),
        }
    }
    if selected(Workload::Tiny)
        || selected(Workload::Apply)
        || selected(Workload::Durable)
        || postgres.is_some()
    {
        outcomes.push(run_queue_workloads(args, &bins, report, postgres.as_mut()).await);
    }
    if selected(Workload::Durable) {
        let samples = run_durable_submit(args, &bins, report, "durable submit", || {
            Ok(StoreKind::Redb)
        })
        .await
        .context("durable submit");
        outcomes.push(samples.map(|samples| {
            report.durable_submit_jobs_per_s = stats::median(&samples);
            report.samples.insert("durable_submit_jobs_per_s", samples);
        }));
    }
    if let Some(pg) = postgres.as_mut() {
        let samples = run_durable_submit(args, &bins, report, "pg submit", || pg.fresh_store())
            .await
            .context("pg submit");
        outcomes.push(samples.map(|samples| {
            report.pg_submit_jobs_per_s = stats::median(&samples);
            report.samples.insert("pg_submit_jobs_per_s", samples);
        }));
    }
    drop(postgres);
    if selected(Workload::Recovery) {
        outcomes.push(run_recovery(args, &bins, report).await.context("recovery"));
    }
    if selected(Workload::Queued) {
        outcomes.push(run_queued(args, &bins, report).await.context("queued"));
    }
    if selected(Workload::Coord) {
        outcomes.push(run_coord(args, &bins, report).await.context("coord"));
    }
    if selected(Workload::Finished) {
        outcomes.push(run_finished(args, &bins, report).await.context("finished"));
    }
    if selected(Workload::Limits) {
        outcomes.push(run_limits(args, &bins, report).await.context("limits"));
    }
    if selected(Workload::Workers) {
        outcomes.push(run_workers(args, &bins, report).await.context("workers"));
    }
    if selected(Workload::Bigget) {
        outcomes.push(run_bigget(args, &bins, report).await.context("big get"));
    }
    if selected(Workload::Dashboard) {
        outcomes.push(
            run_dashboard(args, &bins, report)
                .await
                .context("dashboard overhead"),
        );
    }
    for e in outcomes.into_iter().filter_map(Result::err) {
        report.failed = true;
        report.notes.push(format!("drover: {e:#}"));
    }
}

/// dashboard_overhead_pct: the master's CPU per tiny job with
/// [`dashboard::STREAMS`] open event streams against none, run by run side
/// by side on one memory-store cluster.
async fn run_dashboard(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dash = format!("127.0.0.1:{port}");
    let mut config = cluster_config(args, StoreKind::Memory, args.workers as usize);
    config
        .master_args
        .push(format!("--dashboard-listen={dash}"));
    let mut cluster = Cluster::start(bins, config)
        .await
        .context("starting the dashboard cluster")?;
    report.notes.push(format!(
        "dashboard: {}; per run, {} tiny jobs with no dashboard open, then with {} event \
         streams open; master CPU from /proc/PID/stat",
        describe(&cluster, args, args.workers as usize),
        args.jobs,
        dashboard::STREAMS
    ));
    let mut client = cluster.client().await?;
    let pid = cluster
        .master_pid()
        .ok_or_else(|| anyhow::anyhow!("no master"))?;
    let warmup = tiny::run_once(&mut client, WARMUP_JOBS.min(args.jobs) as usize);
    measure(&mut cluster, || "dashboard warm-up".into(), warmup).await?;
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let mut per_job = [0.0; 2];
        for (i, streams) in [0, dashboard::STREAMS].into_iter().enumerate() {
            let open = dashboard::open_streams(&dash, streams).await?;
            let before = dashboard::cpu_ticks(pid)?;
            measure(
                &mut cluster,
                || format!("dashboard, {streams} streams, run {run}"),
                tiny::run_once(&mut client, args.jobs as usize),
            )
            .await?;
            per_job[i] = (dashboard::cpu_ticks(pid)? - before) as f64 / f64::from(args.jobs);
            for s in open {
                s.abort();
            }
        }
        if per_job[0] > 0.0 {
            samples.push((per_job[1] - per_job[0]) / per_job[0] * 100.0);
        }
    }
    cluster.check_alive()?;
    report.dashboard_overhead_pct = stats::median(&samples);
    report.samples.insert("dashboard_overhead_pct", samples);
    Ok(())
}

/// limit_overhead_pct: tiny jobs holding a limit that never binds
/// (1,000,000 permits) against the same jobs without, run by run side by
/// side on one memory-store cluster; the median of the throughput lost,
/// in percent.
async fn run_limits(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let config = cluster_config(args, StoreKind::Memory, args.workers as usize);
    let mut cluster = Cluster::start(bins, config)
        .await
        .context("starting the limits cluster")?;
    report.notes.push(format!(
        "limits: {}; per run, {} tiny jobs without a limit, then holding bench=1000000",
        describe(&cluster, args, args.workers as usize),
        args.jobs
    ));
    let mut client = cluster.client().await?;
    let loose = [drover_common::pb::JobLimit {
        name: "bench".into(),
        permits: 1_000_000,
    }];
    let warmup = tiny::run_limited(&mut client, WARMUP_JOBS.min(args.jobs) as usize, &loose);
    measure(&mut cluster, || "limits warm-up".into(), warmup).await?;
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let mut rate = [0.0; 2];
        // Each pair in the other order than the last, so neither side is
        // always the one run on a master holding the other's jobs.
        let mut order = [0, 1];
        if run % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let limits = [&[][..], &loose[..]][i];
            rate[i] = measure(
                &mut cluster,
                || format!("limits, {} limit(s), run {run}", limits.len()),
                tiny::run_limited(&mut client, args.jobs as usize, limits),
            )
            .await?;
        }
        if rate[1] > 0.0 {
            samples.push((rate[0] / rate[1] - 1.0) * 100.0);
        }
    }
    cluster.check_alive()?;
    report.limit_overhead_pct = stats::median(&samples);
    report.samples.insert("limit_overhead_pct", samples);
    Ok(())
}

/// The workers figures: each run, `--sim-workers` simulated workers and
/// [`workers::FEW_SIM_WORKERS`] on fresh memory-store masters, one after
/// the other (in the other order each run), the same tiny jobs on each.
async fn run_workers(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let many = args.sim_workers as usize;
    workers::ensure_fds(many)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (mut rate, mut cpu, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rate_few, mut cpu_few, mut rss_few) = (Vec::new(), Vec::new(), Vec::new());
    let mut spreads = Vec::new();
    for run in 1..=args.runs {
        let mut order = [many, workers::FEW_SIM_WORKERS];
        if run % 2 == 0 {
            order.reverse();
        }
        for n in order {
            let mut cluster = Cluster::start(bins, cluster_config(args, StoreKind::Memory, 0))
                .await
                .with_context(|| format!("starting the master for {n} simulated workers"))?;
            if run == 1 && n == many {
                report.notes.push(format!(
                    "workers: {many} and {few} simulated workers (bench/src/workers.rs: each a \
                     Workers.Connect stream on its own connection with the worker's Hello, \
                     credit, 1 ms frames of jobs run in-process by the child's code, Results \
                     and heartbeats; on a {threads}-thread tokio runtime of their own) on \
                     {}, a fresh master per run and count, the two in the other order each \
                     run; each {} tiny jobs (as tiny, after a warm-up of {WARMUP_JOBS}); \
                     master CPU (utime + stime, /proc/PID/stat) over the measured jobs, VmRSS \
                     after them with the workers still connected",
                    describe(&cluster, args, 0),
                    args.jobs,
                    few = workers::FEW_SIM_WORKERS,
                ));
            }
            let what = || format!("{n} simulated workers, run {run}");
            let result = workers_once(args, &mut cluster, n, threads).await;
            let f = result
                .with_context(what)
                .map_err(|e| with_logs(e, &mut cluster))?;
            // The bench client's connection task runs on this thread: give
            // it a few turns to close the connection before the stop blocks
            // the thread, or the master's graceful stop waits for that
            // connection until the grace (10 s) runs out. Best effort: if
            // it is not closed yet, the stop only takes longer.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            cluster.shutdown();
            if n == many {
                rate.push(f.jobs_per_s);
                cpu.push(f.master_cpu_s);
                rss.push(f.master_rss_mib);
                spreads.push(f.spread);
            } else {
                rate_few.push(f.jobs_per_s);
                cpu_few.push(f.master_cpu_s);
                rss_few.push(f.master_rss_mib);
            }
        }
    }
    if let Some(s) = spreads.last() {
        report.notes.push(format!(
            "workers: with {many}, each simulated worker ran {} to {} of the {} jobs (last run)",
            s.min, s.max, s.jobs_run
        ));
    }
    report.sim_workers = Some(many);
    report.workers_1000_jobs_per_s = stats::median(&rate);
    report.workers_2_jobs_per_s = stats::median(&rate_few);
    report.workers_1000_master_cpu_s = stats::median(&cpu);
    report.workers_2_master_cpu_s = stats::median(&cpu_few);
    report.workers_1000_master_rss_mb = stats::median(&rss);
    report.workers_2_master_rss_mb = stats::median(&rss_few);
    report.samples.insert("workers_1000_jobs_per_s", rate);
    report.samples.insert("workers_2_jobs_per_s", rate_few);
    report.samples.insert("workers_1000_master_cpu_s", cpu);
    report.samples.insert("workers_2_master_cpu_s", cpu_few);
    report.samples.insert("workers_1000_master_rss_mb", rss);
    report.samples.insert("workers_2_master_rss_mb", rss_few);
    Ok(())
}

/// One measured run of the workers workload with `n` simulated workers.
struct WorkersRun {
    jobs_per_s: f64,
    master_cpu_s: f64,
    master_rss_mib: f64,
    spread: workers::Spread,
}

/// Connects `n` simulated workers to `cluster`'s master, waits until Stats
/// lists them all, runs the warm-up and then `--jobs` tiny jobs, and
/// closes the fleet (checking that it ran every job once).
async fn workers_once(
    args: &Args,
    cluster: &mut Cluster,
    n: usize,
    threads: usize,
) -> Result<WorkersRun> {
    let pid = cluster
        .master_pid()
        .ok_or_else(|| anyhow::anyhow!("no master"))?;
    let fleet = workers::Fleet::connect(cluster.url(), n, threads).await?;
    let mut client = cluster.client().await?;
    fleet
        .wait_listed(&mut client)
        .await
        .context("waiting for Stats to list the simulated workers")?;
    let warmup = WARMUP_JOBS.min(args.jobs) as usize;
    deadline(tiny::run_once(&mut client, warmup))
        .await
        .context("warm-up")?;
    let before = dashboard::cpu_ticks(pid)?;
    let jobs_per_s = deadline(tiny::run_once(&mut client, args.jobs as usize)).await?;
    let ticks = dashboard::cpu_ticks(pid)? - before;
    // Every worker still connected: none lost its session on the way.
    fleet.check()?;
    cluster.check_alive()?;
    let master_rss_mib = cluster::rss_mib(pid)?;
    let spread = fleet
        .close((warmup + args.jobs as usize) as u64)
        .await
        .context("closing the simulated workers")?;
    Ok(WorkersRun {
        jobs_per_s,
        master_cpu_s: ticks as f64 * workers::seconds_per_tick(),
        master_rss_mib,
        spread,
    })
}

/// fib_decimal in-process, then GMP through gmp_fib.py.
/// The ha workload ([`ha`]): its own PostgreSQL server and masters, on
/// the tests' harness, which finds (and builds) the daemons of this
/// executable's profile.
fn run_ha(args: &Args, report: &mut Report) {
    match ha::run(args.ha_rounds) {
        Ok(f) => {
            report.ha_takeover_p50_ms = stats::median(&f.takeover_ms);
            report.ha_failover_p50_ms = stats::median(&f.failover_ms);
            report.ha_failover_p99_ms = stats::percentile(&f.failover_ms, 99.0);
            report.samples.insert("ha_takeover_ms", f.takeover_ms);
            report.samples.insert("ha_failover_ms", f.failover_ms);
        }
        Err(e) => {
            report.failed = true;
            report.notes.push(format!("ha: {e:#}"));
        }
    }
}

fn run_fib(args: &Args, report: &mut Report) {
    for (n, field) in [(1_000_000, "fib_1e6_ms"), (10_000_000, "fib_1e7_ms")] {
        let samples: Result<Vec<f64>> = (0..args.runs).map(|_| fib::time_fib(n)).collect();
        match samples {
            Ok(samples) => {
                let median = stats::median(&samples);
                match field {
                    "fib_1e6_ms" => report.fib_1e6_ms = median,
                    _ => report.fib_1e7_ms = median,
                }
                report.samples.insert(field, samples);
            }
            Err(e) => {
                report.failed = true;
                report.notes.push(format!("fib: {e:#}"));
            }
        }
    }

    let script = baselines_dir(args).join("gmp_fib.py");
    let mut gmp_1e6 = Vec::new();
    let mut gmp_1e7 = Vec::new();
    for _ in 0..args.runs {
        let figures =
            baselines::run_script(&args.python, &script, &[], BASELINE_TIMEOUT).and_then(|v| {
                Ok((
                    baselines::number(&v, "gmp_fib_1e6_ms")?,
                    baselines::number(&v, "gmp_fib_1e7_ms")?,
                ))
            });
        match figures {
            Ok((a, b)) => {
                gmp_1e6.push(a);
                gmp_1e7.push(b);
            }
            Err(e) => {
                // GMP is only the yardstick: without it drover's own figures
                // still stand, so this is a note, not a failure.
                report.notes.push(format!(
                    "gmp baseline unavailable, fib_1e6_vs_gmp and fib_1e7_vs_gmp are null: {e:#}"
                ));
                return;
            }
        }
    }
    report.gmp_fib_1e6_ms = stats::median(&gmp_1e6);
    report.gmp_fib_1e7_ms = stats::median(&gmp_1e7);
    report.samples.insert("gmp_fib_1e6_ms", gmp_1e6);
    report.samples.insert("gmp_fib_1e7_ms", gmp_1e7);
}

/// The BaseManager pattern of the Python notes, on the same jobs and cores.
fn run_python_manager(args: &Args, report: &mut Report) {
    let script = baselines_dir(args).join("python_manager.py");
    let script_args = [
        "--jobs".to_string(),
        args.jobs.to_string(),
        "--workers".to_string(),
        (args.workers * args.processes).to_string(),
    ];
    let mut samples = Vec::new();
    for _ in 0..args.runs {
        match baselines::run_script(&args.python, &script, &script_args, BASELINE_TIMEOUT)
            .and_then(|v| baselines::number(&v, "jobs_per_s"))
        {
            Ok(v) => samples.push(v),
            Err(e) => {
                report
                    .notes
                    .push(format!("python_manager baseline failed: {e:#}"));
                return;
            }
        }
    }
    report.python_manager_jobs_per_s = stats::median(&samples);
    report.samples.insert("python_manager_jobs_per_s", samples);
}

/// The apply workload's Python baselines (baselines/python_apply.py), run
/// after each of drover's apply runs: every round trip of every run.
#[derive(Default)]
struct PythonApply {
    pool: Vec<f64>,
    executor: Vec<f64>,
    manager: Vec<f64>,
    /// Set once a run failed: the figures stay `null`, with a note.
    failed: bool,
}

impl PythonApply {
    fn run(&mut self, args: &Args, processes: usize, report: &mut Report) {
        if self.failed {
            return;
        }
        let script = baselines_dir(args).join("python_apply.py");
        let script_args = [
            "--round-trips".to_string(),
            args.round_trips.to_string(),
            "--processes".to_string(),
            processes.to_string(),
        ];
        let got = baselines::run_script(&args.python, &script, &script_args, BASELINE_TIMEOUT)
            .and_then(|v| {
                Ok((
                    baselines::numbers(&v, "pool_us")?,
                    baselines::numbers(&v, "executor_us")?,
                    baselines::numbers(&v, "manager_us")?,
                ))
            });
        match got {
            Ok((pool, executor, manager)) => {
                self.pool.extend(pool);
                self.executor.extend(executor);
                self.manager.extend(manager);
            }
            Err(e) => {
                self.failed = true;
                report
                    .notes
                    .push(format!("python_apply baseline failed: {e:#}"));
            }
        }
    }

    fn report(self, report: &mut Report) {
        if self.failed {
            return;
        }
        report.pool_apply_p50_us = stats::percentile(&self.pool, 50.0);
        report.pool_apply_p99_us = stats::percentile(&self.pool, 99.0);
        report.executor_apply_p50_us = stats::percentile(&self.executor, 50.0);
        report.manager_apply_p50_us = stats::percentile(&self.manager, 50.0);
        report.manager_apply_p99_us = stats::percentile(&self.manager, 99.0);
    }
}

/// The daemons to start, with the notes finding them made; `None`, and the
/// report failed, when they cannot be found or built.
fn locate_binaries(args: &Args, report: &mut Report) -> Option<Binaries> {
    match Binaries::locate(args.bin_dir.as_deref(), args.build) {
        Ok((bins, notes)) => {
            report.notes.extend(notes);
            Some(bins)
        }
        Err(e) => {
            report.failed = true;
            report.notes.push(format!("drover: {e:#}"));
            None
        }
    }
}

/// The Python client's bench (python/bench/bench_pool.py --python): the
/// built-in kind and a Python function through `Pool.map`, and `apply`
/// round trips, on its own master and workers of the same shape.
fn run_python_client(args: &Args, report: &mut Report) {
    let Some(bins) = locate_binaries(args, report) else {
        return;
    };
    let root = drover_tests::bins::workspace_root();
    let script = root.join("python/bench/bench_pool.py");
    let python = args.client_python.clone().unwrap_or_else(|| {
        let venv = root.join("target/python-venv/bin/python");
        if venv.is_file() {
            venv.display().to_string()
        } else {
            args.python.clone()
        }
    });
    let bin_dir = bins
        .master
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let script_args = [
        "--python".to_string(),
        "--json".to_string(),
        "--runs".to_string(),
        args.runs.to_string(),
        "--jobs".to_string(),
        args.jobs.to_string(),
        "--workers".to_string(),
        args.workers.to_string(),
        "--processes".to_string(),
        args.processes.to_string(),
        "--bin-dir".to_string(),
        bin_dir,
    ];
    let figures =
        baselines::run_script(&python, &script, &script_args, BASELINE_TIMEOUT).and_then(|v| {
            Ok((
                baselines::number(&v, "python_client_builtin_jobs_per_s")?,
                baselines::number(&v, "python_jobs_per_s")?,
                baselines::number(&v, "python_apply_p50_us")?,
            ))
        });
    match figures {
        Ok((builtin, python_jobs, apply)) => {
            report.python_client_builtin_jobs_per_s = Some(builtin);
            report.python_jobs_per_s = Some(python_jobs);
            report.python_apply_p50_us = Some(apply);
        }
        Err(e) => report
            .notes
            .push(format!("python client bench failed ({python}): {e:#}")),
    }
}

fn baselines_dir(args: &Args) -> PathBuf {
    args.baselines
        .clone()
        .unwrap_or_else(baselines::default_dir)
}

/// The cluster's shape for this bench: `workers` workers, and a master
/// with `store`.
fn cluster_config(args: &Args, store: StoreKind, workers: usize) -> ClusterConfig {
    ClusterConfig {
        workers,
        processes: args.processes as usize,
        store,
        master_args: args.master_args.clone(),
        worker_args: args.worker_args.clone(),
    }
}

/// Describes a cluster for the notes: its command lines and address.
fn describe(cluster: &Cluster, args: &Args, workers: usize) -> String {
    // The flags, each with a leading space, or nothing.
    let flags = |extra: &[String]| extra.iter().map(|a| format!(" {a}")).collect::<String>();
    let workers = match workers {
        0 => "no workers".to_string(),
        n => format!(
            "{n} x drover-worker --processes {}{}",
            args.processes,
            flags(&args.worker_args)
        ),
    };
    format!(
        "drover-master{} and {workers} on {}",
        flags(&cluster.master_args()),
        cluster.url()
    )
}

/// The tiny and apply workloads on a master with the memory store, and the
/// tiny one again on masters with a durable store: redb
/// (durable_tiny_jobs_per_s) and PostgreSQL on `postgres`
/// (pg_tiny_jobs_per_s).
///
/// When several stores are measured their clusters are up together and the
/// tiny runs alternate, memory, then redb, then PostgreSQL: their ratios
/// are figures, and the load of whatever else runs on the machine drifts
/// less between runs side by side than between blocks of runs. The
/// clusters not measured sit idle meanwhile; the durable ones are stopped
/// before apply.
async fn run_queue_workloads(
    args: &Args,
    bins: &Binaries,
    report: &mut Report,
    postgres: Option<&mut pg::Server>,
) -> Result<()> {
    let tiny = args.only.contains(&Workload::Tiny);
    let apply = args.only.contains(&Workload::Apply);
    let workers = args.workers as usize;

    let mut memory = None;
    if tiny || apply {
        let cluster = Cluster::start(bins, cluster_config(args, StoreKind::Memory, workers))
            .await
            .context("starting the memory-store cluster")?;
        report.notes.push(format!(
            "tiny and apply: {}, in a fresh temporary directory; a current-thread tokio \
             client; an unmeasured warm-up ({WARMUP_JOBS} tiny jobs, {WARMUP_ROUND_TRIPS} \
             round trips) first",
            describe(&cluster, args, workers)
        ));
        let client = cluster.client().await?;
        memory = Some((cluster, client));
    }

    // The durable stores' tiny runs, in the order they alternate.
    let redb = args.only.contains(&Workload::Durable);
    let mut durable = Vec::new();
    if redb {
        durable.push(DurableTiny {
            name: "durable tiny",
            key: "durable_tiny_jobs_per_s",
            figure: |r| &mut r.durable_tiny_jobs_per_s,
            store: StoreKind::Redb,
            unmatched: (!tiny).then_some("durable_vs_memory_tiny needs tiny in --only too"),
            cluster: None,
            samples: Vec::new(),
        });
    }
    if let Some(pg) = postgres {
        durable.push(DurableTiny {
            name: "pg tiny",
            key: "pg_tiny_jobs_per_s",
            figure: |r| &mut r.pg_tiny_jobs_per_s,
            store: pg.fresh_store()?,
            unmatched: (!redb).then_some("pg_vs_redb_tiny needs durable in --only too"),
            cluster: None,
            samples: Vec::new(),
        });
    }
    let names: Vec<&str> = std::iter::once("memory")
        .filter(|_| tiny)
        .chain(durable.iter().map(|d| d.name))
        .collect();
    for d in &mut durable {
        let cluster = Cluster::start(bins, cluster_config(args, d.store.clone(), workers))
            .await
            .with_context(|| format!("starting the {} cluster", d.name))?;
        let mut note = format!(
            "{}: {}; an unmeasured warm-up ({WARMUP_JOBS} tiny jobs) first",
            d.name,
            describe(&cluster, args, workers),
        );
        if names.len() > 1 {
            note += &format!(
                "; the tiny runs alternate ({}), the clusters up together",
                names.join(", ")
            );
        }
        if let Some(unmatched) = d.unmatched {
            note += &format!("; {unmatched}");
        }
        report.notes.push(note);
        let client = cluster.client().await?;
        d.cluster = Some((cluster, client));
    }

    if let Some((cluster, client)) = memory.as_mut() {
        let warmup = async {
            tiny::run_once(client, WARMUP_JOBS.min(args.jobs) as usize).await?;
            apply::run_once(client, WARMUP_ROUND_TRIPS as usize).await
        };
        measure(cluster, || "warm-up".into(), warmup).await?;
    }
    for d in &mut durable {
        let (cluster, client) = d.cluster.as_mut().expect("started above");
        let warmup = tiny::run_once(client, WARMUP_JOBS.min(args.jobs) as usize);
        measure(cluster, || format!("{} warm-up", d.name), warmup).await?;
    }

    let mut memory_samples = Vec::new();
    let mut small_samples = Vec::new();
    for run in 1..=args.runs {
        if let Some((cluster, client)) = memory.as_mut().filter(|_| tiny) {
            let v = measure(
                cluster,
                || format!("tiny jobs, run {run}"),
                tiny::run_once(client, args.jobs as usize),
            )
            .await?;
            memory_samples.push(v);
            let v = measure(
                cluster,
                || format!("tiny jobs ({TINY_SMALL_JOBS}), run {run}"),
                tiny::run_once(client, TINY_SMALL_JOBS),
            )
            .await?;
            small_samples.push(v);
        }
        for d in &mut durable {
            let (cluster, client) = d.cluster.as_mut().expect("started above");
            let v = measure(
                cluster,
                || format!("{} jobs, run {run}", d.name),
                tiny::run_once(client, args.jobs as usize),
            )
            .await?;
            d.samples.push(v);
        }
    }
    if tiny {
        report.tiny_jobs_per_s = stats::median(&memory_samples);
        report.samples.insert("tiny_jobs_per_s", memory_samples);
        report.tiny_20k_jobs_per_s = stats::median(&small_samples);
        report.samples.insert("tiny_20k_jobs_per_s", small_samples);
    }
    for d in durable {
        let (mut cluster, _) = d.cluster.expect("started above");
        cluster.check_alive()?;
        *(d.figure)(report) = stats::median(&d.samples);
        report.samples.insert(d.key, d.samples);
    }

    if let Some((cluster, client)) = memory.as_mut().filter(|_| apply) {
        let mut all = Vec::new();
        let mut p50s = Vec::new();
        let mut python = PythonApply::default();
        for run in 1..=args.runs {
            let samples = measure(
                cluster,
                || format!("apply, run {run}"),
                apply::run_once(client, args.round_trips as usize),
            )
            .await?;
            p50s.extend(stats::percentile(&samples, 50.0));
            all.extend(samples);
            // Python's own tools right after, on as many processes: side
            // by side, run by run.
            python.run(args, workers * args.processes as usize, report);
        }
        // Over every round trip of every run: a p99 of 2,000 samples per run
        // rests on 20 values; pooled, on 60.
        report.apply_p50_us = stats::percentile(&all, 50.0);
        report.apply_p99_us = stats::percentile(&all, 99.0);
        report.samples.insert("apply_p50_us", p50s);
        python.report(report);
    }

    if let Some((mut cluster, _)) = memory {
        cluster.check_alive()?;
    }
    Ok(())
}

/// The tiny workload on a cluster whose master has a durable store.
struct DurableTiny {
    /// What the notes and errors call it.
    name: &'static str,
    /// Its figure's key, and the figure in the report.
    key: &'static str,
    figure: fn(&mut Report) -> &mut Option<f64>,
    store: StoreKind,
    /// Why its ratio to another store will be missing, if it will.
    unmatched: Option<&'static str>,
    /// Its cluster and client, once started.
    cluster: Option<(Cluster, QueueClient<Channel>)>,
    samples: Vec<f64>,
}

/// The durable submit's runs (durable_submit_jobs_per_s on redb,
/// pg_submit_jobs_per_s on PostgreSQL), each on a fresh master with no
/// workers and the empty store `store` makes; the note describing them
/// names `workload`. Returns each run's jobs per second.
async fn run_durable_submit(
    args: &Args,
    bins: &Binaries,
    report: &mut Report,
    workload: &str,
    mut store: impl FnMut() -> Result<StoreKind>,
) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    for run in 1..=args.runs {
        let mut cluster = Cluster::start(bins, cluster_config(args, store()?, 0)).await?;
        if run == 1 {
            report.notes.push(format!(
                "{workload}: {} jobs in Submits of {} from {} clients (a connection each) \
                 to {}; a fresh master and store each run",
                args.durable_jobs,
                durable::SUBMIT_JOBS,
                args.durable_concurrency,
                describe(&cluster, args, 0)
            ));
        }
        let result = deadline(durable::run_once(
            &cluster,
            args.durable_jobs as usize,
            args.durable_concurrency as usize,
        ))
        .await;
        let v = result
            .with_context(|| format!("run {run}"))
            .map_err(|e| with_logs(e, &mut cluster))?;
        samples.push(v);
    }
    Ok(samples)
}

/// The Coord figures: each run on a fresh master with the redb store and
/// no workers, and the lock's round trips on a fresh memory-store master
/// too.
async fn run_coord(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let (mut lock, mut adds, mut unary, mut puts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lock_memory = Vec::new();
    for run in 1..=args.runs {
        // The same lock round trips without durability, side by side.
        let mut memory = Cluster::start(bins, cluster_config(args, StoreKind::Memory, 0)).await?;
        let result = deadline(coord::lock_round_trips(&memory)).await;
        lock_memory.push(
            result
                .with_context(|| format!("run {run}, memory store"))
                .map_err(|e| with_logs(e, &mut memory))?,
        );
        drop(memory);
        let mut cluster = Cluster::start(bins, cluster_config(args, StoreKind::Redb, 0)).await?;
        if run == 1 {
            report.notes.push(format!(
                "coord: {} uncontended lock round trips; {} counter adds from {} clients on one \
                 stream each with {} adds in flight; the same adds, then {} puts, as unary calls \
                 with {} in flight per client; on {}; a fresh master each run",
                coord::LOCK_ROUND_TRIPS,
                coord::ADDS,
                coord::CLIENTS,
                coord::WINDOW,
                coord::PUTS,
                coord::IN_FLIGHT,
                describe(&cluster, args, 0)
            ));
        }
        let result = deadline(coord::run_once(&cluster)).await;
        let f = result
            .with_context(|| format!("run {run}"))
            .map_err(|e| with_logs(e, &mut cluster))?;
        lock.push(f.lock_p50_us);
        adds.push(f.counter_adds_per_s);
        unary.push(f.counter_unary_adds_per_s);
        puts.push(f.kv_puts_per_s);
    }
    report.lock_acquire_release_p50_us = stats::median(&lock);
    report.counter_adds_per_s = stats::median(&adds);
    report.counter_unary_adds_per_s = stats::median(&unary);
    report.kv_puts_per_s = stats::median(&puts);
    report.samples.insert("lock_acquire_release_p50_us", lock);
    report.lock_memory_acquire_release_p50_us = stats::median(&lock_memory);
    report
        .samples
        .insert("lock_memory_acquire_release_p50_us", lock_memory);
    report.samples.insert("counter_adds_per_s", adds);
    report.samples.insert("counter_unary_adds_per_s", unary);
    report.samples.insert("kv_puts_per_s", puts);
    Ok(())
}

/// recovery_s_1m and the master's memory: each run on a fresh master with
/// the redb store and no workers, killed and started again.
async fn run_recovery(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let runs = recovery_runs(
        args,
        bins,
        report,
        "recovery",
        args.recovery_jobs,
        &[],
        RUN_TIMEOUT,
    )
    .await?;
    let pick = |f: fn(&recovery::Recovery) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let (times, rss, rss_recovered) = (
        pick(|r| r.recovery_s),
        pick(|r| r.rss_mib),
        pick(|r| r.rss_mib_recovered),
    );
    report.recovery_s_1m = stats::median(&times);
    report.master_rss_mb_1m = stats::median(&rss);
    report.master_rss_mb_1m_recovered = stats::median(&rss_recovered);
    report.samples.insert("recovery_s_1m", times);
    report.samples.insert("master_rss_mb_1m", rss);
    report
        .samples
        .insert("master_rss_mb_1m_recovered", rss_recovered);
    Ok(())
}

/// The queued_10m figures: the recovery workload at --queued-jobs, on a
/// master whose --max-queued lets them all in.
async fn run_queued(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let jobs = args.queued_jobs;
    let max_queued = format!("--max-queued={jobs}");
    // Submitting, checking and restarting 10 million jobs takes minutes.
    let timeout = RUN_TIMEOUT + Duration::from_micros(60 * u64::from(jobs));
    let runs = recovery_runs(args, bins, report, "queued", jobs, &[max_queued], timeout).await?;
    let pick = |f: fn(&recovery::Recovery) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    let submit: Vec<f64> = runs.iter().map(|r| f64::from(jobs) / r.submit_s).collect();
    let (times, rss, rss_recovered) = (
        pick(|r| r.recovery_s),
        pick(|r| r.rss_mib),
        pick(|r| r.rss_mib_recovered),
    );
    report.queued_10m_submit_jobs_per_s = stats::median(&submit);
    report.queued_10m_recovery_s = stats::median(&times);
    report.queued_10m_rss_mb = stats::median(&rss);
    report.queued_10m_rss_mb_recovered = stats::median(&rss_recovered);
    report.queued_jobs = Some(jobs as usize);
    report
        .samples
        .insert("queued_10m_submit_jobs_per_s", submit);
    report.samples.insert("queued_10m_recovery_s", times);
    report.samples.insert("queued_10m_rss_mb", rss);
    report
        .samples
        .insert("queued_10m_rss_mb_recovered", rss_recovered);
    Ok(())
}

/// Runs the recovery workload `--runs` times with `jobs` jobs, each on a
/// fresh master with the redb store, no workers and `extra` flags; the
/// note describing them names `workload`.
async fn recovery_runs(
    args: &Args,
    bins: &Binaries,
    report: &mut Report,
    workload: &str,
    jobs: u32,
    extra: &[String],
    timeout: Duration,
) -> Result<Vec<recovery::Recovery>> {
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let mut config = cluster_config(args, StoreKind::Redb, 0);
        config.master_args.extend(extra.iter().cloned());
        let mut cluster = Cluster::start(bins, config).await?;
        if run == 1 {
            report.notes.push(format!(
                "{workload}: {jobs} jobs queued in Submits of {} on {}, then SIGKILL and a restart \
                 on the same data directory and port; a fresh master each run; MiB of VmRSS",
                jobs::MAX_SUBMIT_JOBS,
                describe(&cluster, args, 0)
            ));
        }
        let result = tokio::time::timeout(timeout, recovery::run_once(&mut cluster, jobs as usize))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no result within {timeout:?}")));
        let r = result
            .with_context(|| format!("run {run}"))
            .map_err(|e| with_logs(e, &mut cluster))?;
        runs.push(r);
    }
    Ok(runs)
}

/// master_rss_mb_5m_finished and recovery_s_5m_finished: each run on a
/// fresh durable master with the bench's workers.
async fn run_finished(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for run in 1..=args.runs {
        let workers = args.workers as usize;
        let mut cluster =
            Cluster::start(bins, cluster_config(args, StoreKind::Redb, workers)).await?;
        cluster.wait_for_workers(workers).await?;
        if run == 1 {
            report.notes.push(format!(
                "finished: {} tiny prime jobs in Submits of {}, at most two ahead, on {}; \
                 VmRSS once all succeeded, then SIGKILL and a restart timed until Stats \
                 accounts for every job",
                args.finished_jobs,
                jobs::MAX_SUBMIT_JOBS,
                describe(&cluster, args, workers)
            ));
        }
        let result = tokio::time::timeout(
            Duration::from_secs(3600),
            finished::run_once(&mut cluster, args.finished_jobs as usize),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no result within an hour")));
        let r = result
            .with_context(|| format!("run {run}"))
            .map_err(|e| with_logs(e, &mut cluster))?;
        times.push(r.recovery_s);
        rss.push(r.rss_mib);
    }
    report.recovery_s_5m_finished = stats::median(&times);
    report.master_rss_mb_5m_finished = stats::median(&rss);
    report.samples.insert("recovery_s_5m_finished", times);
    report.samples.insert("master_rss_mb_5m_finished", rss);
    Ok(())
}

/// get_big_batch_mb_per_s and loopback_copy_mb_per_s: one durable master
/// computes the batch once; each run reads it whole through Get, then
/// copies as many bytes through loopback TCP.
async fn run_bigget(args: &Args, bins: &Binaries, report: &mut Report) -> Result<()> {
    let workers = args.workers as usize;
    let mut cluster = Cluster::start(bins, cluster_config(args, StoreKind::Redb, workers)).await?;
    cluster.wait_for_workers(workers).await?;
    report.notes.push(format!(
        "big get: {} jobs of fib {} ({} digits each) computed once on {}, then read \
         whole through Get (following page tokens, a closed batch read from the store) each \
         run; loopback copy: as many bytes through one loopback TCP connection in writes of \
         2 MiB, right after, on the same current-thread runtime",
        bigget::JOBS,
        bigget::N,
        drover_tests::reference::fib_digits(bigget::N),
        describe(&cluster, args, workers)
    ));
    let mut client = cluster.client().await?;
    let batch = tokio::time::timeout(Duration::from_secs(1800), bigget::prepare(&mut client))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("not computed within 30 minutes")))
        .map_err(|e| with_logs(e.context("computing the big batch"), &mut cluster))?;
    let (mut get, mut copy) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let (bytes, secs) = measure(
            &mut cluster,
            || format!("big get, run {run}"),
            bigget::read_once(&mut client, &batch),
        )
        .await?;
        get.push(bytes as f64 / 1e6 / secs);
        let secs = bigget::loopback_copy(bytes).await?;
        copy.push(bytes as f64 / 1e6 / secs);
    }
    cluster.check_alive()?;
    report.get_big_batch_mb_per_s = stats::median(&get);
    report.loopback_copy_mb_per_s = stats::median(&copy);
    report.samples.insert("get_big_batch_mb_per_s", get);
    report.samples.insert("loopback_copy_mb_per_s", copy);
    Ok(())
}

/// Runs one measured (or warm-up) run of a workload on `cluster` under the
/// deadline, adding the daemons' logs to its error.
async fn measure<T>(
    cluster: &mut Cluster,
    what: impl FnOnce() -> String,
    run: impl Future<Output = Result<T>>,
) -> Result<T> {
    let result = deadline(run).await;
    result.with_context(what).map_err(|e| with_logs(e, cluster))
}

/// Fails a run that outlives [`RUN_TIMEOUT`], so a hung cluster ends the
/// bench with its logs instead of hanging it.
async fn deadline<T>(run: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no result within {RUN_TIMEOUT:?}")))
}

/// Adds the daemons' state and last log lines to a workload's error, which
/// is where the cause of a timeout or a wrong answer usually shows.
fn with_logs(e: anyhow::Error, cluster: &mut Cluster) -> anyhow::Error {
    match cluster.check_alive() {
        Err(dead) => e.context(format!("{dead:#}")),
        Ok(()) => anyhow::anyhow!("{e:#}{}", cluster.log_tails()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn only_and_pass_through_flags_parse() {
        let args = Args::parse_from([
            "drover-bench",
            "--only",
            "tiny,fib",
            "--master-arg=--store=memory",
            "--master-arg",
            "--lease",
            "--master-arg",
            "5s",
        ]);
        assert_eq!(args.only, [Workload::Tiny, Workload::Fib]);
        assert_eq!(args.master_args, ["--store=memory", "--lease", "5s"]);

        let args = Args::parse_from(["drover-bench", "--only", "durable,recovery"]);
        assert_eq!(args.only, [Workload::Durable, Workload::Recovery]);
        assert_eq!(args.durable_concurrency, 8);
        let default = Args::parse_from(["drover-bench"]).only;
        assert_eq!(default.len(), 9);
        // pg starts a PostgreSQL server: only when asked for.
        assert!(!default.contains(&Workload::Pg));
        let args = Args::parse_from(["drover-bench", "--only", "durable,pg"]);
        assert_eq!(args.only, [Workload::Durable, Workload::Pg]);
    }
}
