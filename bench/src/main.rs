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
//! - [`fib`]: the fib kind's speed, in-process.
//! - [`baselines`]: runs the Python scripts drover is compared with.
//! - [`jobs`]: the jobs the workloads submit and the check of the answers.
//! - [`report`], [`stats`]: medians, percentiles, the JSON and the table.

mod apply;
mod baselines;
mod cluster;
mod fib;
mod jobs;
mod report;
mod stats;
mod tiny;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use cluster::{Binaries, Cluster, ClusterConfig};
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
    /// Jobs in the tiny-jobs workload and in its Python baseline.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: u32,
    /// Sequential single-job round trips per run of the apply workload.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    round_trips: u32,
    /// Workloads to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "tiny,apply,fib,python")]
    only: Vec<Workload>,
    /// Worker daemons to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,
    /// `--processes` of each worker; the Python baseline gets workers x
    /// processes worker processes, so both use the same cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    processes: u32,
    /// An extra flag for drover-master, e.g. `--master-arg=--store=memory`;
    /// repeat it for more. The master otherwise runs with its defaults, its
    /// store in a temporary directory.
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
}

/// A run of a baseline script may take this long before it is killed.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(600);

/// Round trips and jobs of the unmeasured warm-up, which lets connections,
/// child processes and the master's allocations settle first.
const WARMUP_ROUND_TRIPS: u32 = 50;
const WARMUP_JOBS: u32 = 2_000;

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
    if selected(Workload::Tiny) || selected(Workload::Apply) {
        // A current-thread client: one job's round trip has no thread
        // hand-off in the client, as in a script or the CLI.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        if let Err(e) = runtime.block_on(run_queue_workloads(args, &mut report)) {
            report.failed = true;
            report.notes.push(format!("drover: {e:#}"));
        }
    }
    report
}

/// fib_decimal in-process, then GMP through gmp_fib.py.
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
                    "gmp baseline unavailable, fib_1e7_vs_gmp is null: {e:#}"
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

fn baselines_dir(args: &Args) -> PathBuf {
    args.baselines
        .clone()
        .unwrap_or_else(baselines::default_dir)
}

/// Starts one cluster and runs the tiny and apply workloads on it.
async fn run_queue_workloads(args: &Args, report: &mut Report) -> Result<()> {
    let (bins, notes) = Binaries::locate(args.bin_dir.as_deref(), args.build)?;
    report.notes.extend(notes);
    let config = ClusterConfig {
        workers: args.workers as usize,
        processes: args.processes as usize,
        master_args: args.master_args.clone(),
        worker_args: args.worker_args.clone(),
    };
    let mut cluster = Cluster::start(&bins, config).await?;
    // The extra flags, each with a leading space, or nothing.
    let flags = |extra: &[String]| extra.iter().map(|a| format!(" {a}")).collect::<String>();
    report.notes.push(format!(
        "cluster: drover-master{} and {} x drover-worker --processes {}{} on {}, \
         in a fresh temporary directory; a current-thread tokio client; an unmeasured \
         warm-up ({WARMUP_JOBS} tiny jobs, {WARMUP_ROUND_TRIPS} round trips) first",
        flags(&args.master_args),
        args.workers,
        args.processes,
        flags(&args.worker_args),
        cluster.url()
    ));
    let mut client = cluster.client().await?;

    let tiny = args.only.contains(&Workload::Tiny);
    let apply = args.only.contains(&Workload::Apply);
    let warmup = async {
        tiny::run_once(&mut client, WARMUP_JOBS.min(args.jobs) as usize).await?;
        apply::run_once(&mut client, WARMUP_ROUND_TRIPS as usize).await
    };
    deadline(warmup)
        .await
        .context("warm-up")
        .map_err(|e| with_logs(e, &mut cluster))?;

    if tiny {
        let mut samples = Vec::new();
        for run in 1..=args.runs {
            let v = deadline(tiny::run_once(&mut client, args.jobs as usize))
                .await
                .with_context(|| format!("tiny jobs, run {run}"))
                .map_err(|e| with_logs(e, &mut cluster))?;
            samples.push(v);
        }
        report.tiny_jobs_per_s = stats::median(&samples);
        report.samples.insert("tiny_jobs_per_s", samples);
    }

    if apply {
        let mut all = Vec::new();
        let mut p50s = Vec::new();
        for run in 1..=args.runs {
            let samples = deadline(apply::run_once(&mut client, args.round_trips as usize))
                .await
                .with_context(|| format!("apply, run {run}"))
                .map_err(|e| with_logs(e, &mut cluster))?;
            p50s.extend(stats::percentile(&samples, 50.0));
            all.extend(samples);
        }
        // Over every round trip of every run: a p99 of 2,000 samples per run
        // rests on 20 values; pooled, on 60.
        report.apply_p50_us = stats::percentile(&all, 50.0);
        report.apply_p99_us = stats::percentile(&all, 99.0);
        report.samples.insert("apply_p50_us", p50s);
    }

    cluster.check_alive()?;
    Ok(())
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
    }
}
