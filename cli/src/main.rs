//! `drover`: the command-line client (submit, map, apply, get, watch,
//! cancel, status, jobs, health) and the demo, which runs a master and a
//! worker inside this one process.
//!
//! The job commands talk to the master through the `Queue` service; `kv`,
//! `counter`, `lock`, `event` and `barrier` through the `Coord` service.
//! Failures print one line on stderr and exit non-zero: 1 for an error,
//! 2 when jobs failed or were cancelled.

mod client;
mod coord;
mod demo;
mod masters;
mod output;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drover_common::job::parse_kind;
use drover_common::util::parse_duration;
use output::Format;
use serde_json::json;

use crate::client::{Client, JobOptions, ended_badly, expand};

/// drover: a distributed task queue. Submit jobs, wait for them, watch them
/// finish, cancel them.
#[derive(Debug, Parser)]
#[command(name = "drover", version, args_override_self = true)]
struct Cli {
    /// The master's URL; or, comma-separated, the URLs of several masters
    /// of one database (a leader and its standbys): a command talks to the
    /// first that accepts its call, and goes on to the next when one is
    /// unavailable, if the call is safe to send again.
    #[arg(long, global = true, env = "DROVER_MASTER", default_value = drover_common::DEFAULT_MASTER_URL)]
    master: String,
    /// Output: text for people, json for scripts (one document, or one
    /// line per job).
    #[arg(long, global = true, env = "DROVER_OUTPUT", default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// The client token, and the TLS files to reach an https:// master.
    #[command(flatten)]
    client: drover_common::net::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submits jobs as one batch and prints the batch id and the job ids.
    Submit(JobCommand),
    /// Submits jobs and prints their results in submission order.
    Map {
        #[command(flatten)]
        job: JobCommand,
        /// Never show a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Jobs per submit: a longer list goes to the master in several
        /// batches of this many. At most the master's --max-batch-jobs.
        #[arg(long, env = "DROVER_JOBS_PER_SUBMIT", default_value_t = 50_000,
              value_parser = clap::value_parser!(u32).range(1..))]
        jobs_per_submit: u32,
    },
    /// Runs one job and waits for its result.
    Apply(JobCommand),
    /// Prints a job, or every job of a batch.
    Get {
        /// A job id or a batch id.
        id: String,
        /// Wait until the jobs are finished.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (e.g. 30s).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Prints a batch's results as they finish.
    Watch {
        /// The batch id.
        batch: String,
        /// In submission order instead of completion order.
        #[arg(long)]
        ordered: bool,
    },
    /// Cancels a job or every unfinished job of a batch; running jobs have
    /// their process killed.
    Cancel {
        /// A job id or a batch id.
        id: String,
    },
    /// Queues failed jobs again (dead letters): each gets its max_attempts
    /// again on top of the attempts it made, which stay in its history.
    Retry {
        /// A job id or a batch id; omit with --failed.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<String>,
        /// Every failed job.
        #[arg(long)]
        failed: bool,
    },
    /// Shows workers, queue depth by state, and throughput.
    Status,
    /// Lists jobs in a state, oldest first.
    Jobs {
        /// queued, running, succeeded, failed, cancelled or all.
        #[arg(long, default_value = "all")]
        state: String,
        /// Only jobs of this batch.
        #[arg(long)]
        batch: Option<String>,
        /// At most this many (0: 1000), read from the master in pages.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Shows the jobs' concurrency limits (--limit): each one's holders
    /// (job and worker) and how many jobs wait for it.
    Limits {
        /// Only this limit.
        name: Option<String>,
    },
    /// Exits 0 when the master's health service says it is serving.
    Health {
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Shared key-value entries with versions.
    Kv {
        #[command(subcommand)]
        command: coord::KvCommand,
    },
    /// Shared counters.
    Counter {
        #[command(subcommand)]
        command: coord::CounterCommand,
    },
    /// Runs a command while holding a lock (or a permit of a semaphore),
    /// and exits with its status. The fencing token is in
    /// DROVER_FENCING_TOKEN.
    Lock(coord::LockCommand),
    /// Shared events: set, clear, wait.
    Event {
        #[command(subcommand)]
        command: coord::EventCommand,
    },
    /// Waits at a barrier until all parties arrive; prints this party's
    /// index.
    Barrier(coord::BarrierCommand),
    /// Shows what the master holds under a name: a lock's holders (their
    /// fencing tokens) and waiters, a barrier's arrivals, an event's state.
    Inspect {
        /// The lock, barrier or event.
        name: String,
    },
    /// Runs the lessons of the Python notes on an embedded master and worker.
    Demo {
        /// Child processes of the embedded worker; default: the cores.
        #[arg(long, env = "DROVER_PROCESSES")]
        processes: Option<usize>,
    },
}

/// What to run, and how.
#[derive(Debug, Args)]
struct JobCommand {
    /// fib, prime or sleep.
    kind: String,
    /// Arguments: values, or ranges A..B (end excluded) and A..=B.
    #[arg(required = true)]
    args: Vec<String>,
    /// Higher runs first.
    #[arg(
        long,
        env = "DROVER_PRIORITY",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    priority: i32,
    /// Kill a job's process when it runs longer than this (e.g. 500ms, 2s).
    #[arg(long, env = "DROVER_TIMEOUT", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Attempts before a job is FAILED; default: the master's (3).
    #[arg(long, env = "DROVER_MAX_ATTEMPTS", default_value_t = 0)]
    max_attempts: u32,
    /// A second submit with the same key returns the first job's id.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// A concurrency limit NAME=N: each job runs only while fewer than N
    /// jobs holding NAME run, across all workers. Repeatable.
    #[arg(long = "limit", value_name = "NAME=N", value_parser = parse_limit)]
    limits: Vec<drover_common::pb::JobLimit>,
}

/// Parses `--limit NAME=N`.
fn parse_limit(s: &str) -> Result<drover_common::pb::JobLimit, String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=N, e.g. db=4"))?;
    let permits = n
        .parse::<u32>()
        .map_err(|e| format!("{s:?}: the permits {n:?} are not a number: {e}"))?;
    Ok(drover_common::pb::JobLimit {
        name: name.to_string(),
        permits,
    })
}

impl JobCommand {
    fn options(&self) -> JobOptions {
        JobOptions {
            priority: self.priority,
            timeout: self.timeout,
            max_attempts: self.max_attempts,
            idempotency_key: self.idempotency_key.clone(),
            limits: self.limits.clone(),
        }
    }
}

fn main() {
    // The demo's worker starts children of this binary.
    drover_worker::child::run_if_child();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Demo { .. }) {
        // `drover map ... | head` closes our stdout early: end quietly, as
        // every Unix filter does, instead of panicking in println!. (Rust
        // ignores SIGPIPE; sockets are written with MSG_NOSIGNAL, so only a
        // closed pipe or terminal raises it. The demo keeps it ignored: its
        // worker writes to children's pipes.)
        // SAFETY: called before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The CLI speaks through its output; logs only for what went wrong.
    drover_common::util::init_tracing(false, "warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drover: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let format = if cli.output == "json" {
        Format::Json
    } else {
        Format::Text
    };
    if let Command::Demo { processes } = cli.command {
        return demo::run(processes).await;
    }
    let masters = drover_common::net::master_urls(&cli.master).map_err(anyhow::Error::msg)?;
    let options = cli.client.options().map_err(anyhow::Error::msg)?;
    if let Command::Health { timeout } = cli.command {
        return health(&masters, &options, timeout).await;
    }
    let connect = || masters::Masters::connect(&masters, &options);
    match cli.command {
        Command::Kv { command } => return coord::kv(&connect().await?, format, command).await,
        Command::Counter { command } => {
            return coord::counter(&connect().await?, format, command).await;
        }
        Command::Lock(command) => return coord::lock(&connect().await?, command).await,
        Command::Event { command } => return coord::event(&connect().await?, command).await,
        Command::Barrier(command) => return coord::barrier(&connect().await?, command).await,
        Command::Inspect { name } => return coord::inspect(&connect().await?, name).await,
        _ => {}
    }
    let client = Client::connect(&masters, &options).await?;
    match cli.command {
        Command::Submit(job) => {
            let kind = parse_kind(&job.kind).map_err(anyhow::Error::msg)?;
            let resp = client
                .submit(kind, expand(&job.args)?, 0, &job.options())
                .await?;
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"batch_id": resp.batch_id, "job_ids": resp.job_ids})
                ),
                Format::Text => {
                    println!("batch {}", resp.batch_id);
                    for id in &resp.job_ids {
                        println!("{id}");
                    }
                }
            }
            Ok(0)
        }
        Command::Map {
            job,
            no_progress,
            jobs_per_submit,
        } => map(&client, format, &job, no_progress, jobs_per_submit as usize).await,
        Command::Apply(job) => {
            let kind = parse_kind(&job.kind).map_err(anyhow::Error::msg)?;
            let args = expand(&job.args)?;
            anyhow::ensure!(
                args.len() == 1,
                "apply runs one job; got {} arguments (use map for many)",
                args.len()
            );
            let resp = client.submit(kind, args, 0, &job.options()).await?;
            let got = client.get(vec![], Some(resp.batch_id), true, None).await?;
            print_all(format, &got.jobs)
        }
        Command::Get { id, wait, timeout } => {
            let got = client.get(vec![id], None, wait, timeout).await?;
            let code = print_all(format, &got.jobs)?;
            if wait && !got.complete {
                anyhow::bail!("timed out waiting: some jobs are not finished");
            }
            Ok(code)
        }
        Command::Watch { batch, ordered } => {
            let mut failed = 0usize;
            client
                .watch(&batch, ordered, |jobs, _, _| {
                    for j in jobs {
                        failed += usize::from(ended_badly(j));
                        output::print_job(format, j);
                    }
                })
                .await?;
            Ok(if failed > 0 { 2 } else { 0 })
        }
        Command::Cancel { id } => {
            let resp = client.cancel(&id).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"cancelled": resp.cancelled, "already_finished": resp.already_finished})
                ),
                Format::Text => println!(
                    "cancelled {} job(s); {} had already finished",
                    resp.cancelled, resp.already_finished
                ),
            }
            Ok(0)
        }
        Command::Retry { id, failed } => {
            let retried = client.retry(id, failed).await?;
            match format {
                Format::Json => println!("{}", json!({ "retried": retried })),
                Format::Text => println!("queued {retried} failed job(s) again"),
            }
            Ok(0)
        }
        Command::Status => {
            let stats = client.stats().await?;
            match format {
                Format::Json => println!("{}", output::stats_json(&stats)),
                Format::Text => print!("{}", output::stats_text(&stats)),
            }
            Ok(0)
        }
        Command::Jobs {
            state,
            batch,
            limit,
        } => {
            let state = output::parse_state(&state).map_err(anyhow::Error::msg)?;
            let mut shown = 0u64;
            let truncated = client
                .list(state, batch, limit, |j| {
                    shown += 1;
                    match format {
                        Format::Json => println!("{}", output::job_json(&j)),
                        Format::Text => println!(
                            "{}\t{}\t{} {}\t{}\t{}",
                            j.job_id,
                            output::state_name(j.state),
                            drover_common::job::kind_name(j.kind),
                            j.arg,
                            j.attempts,
                            if j.error.is_empty() { "-" } else { &j.error }
                        ),
                    }
                })
                .await?;
            if truncated {
                eprintln!("drover: more jobs matched; showing the first {shown}");
            }
            Ok(0)
        }
        Command::Limits { name } => {
            let resp = client.limits(name.unwrap_or_default()).await?;
            match format {
                Format::Json => println!("{}", output::limits_json(&resp)),
                Format::Text => print!("{}", output::limits_text(&resp)),
            }
            Ok(0)
        }
        Command::Demo { .. }
        | Command::Health { .. }
        | Command::Kv { .. }
        | Command::Counter { .. }
        | Command::Lock(_)
        | Command::Event { .. }
        | Command::Barrier(_)
        | Command::Inspect { .. } => unreachable!("handled above"),
    }
}

/// Prints jobs; 2 if any failed or was cancelled.
fn print_all(format: Format, jobs: &[drover_common::pb::JobInfo]) -> anyhow::Result<i32> {
    for j in jobs {
        output::print_job(format, j);
    }
    let bad = jobs.iter().filter(|j| ended_badly(j)).count();
    if bad > 0 {
        eprintln!(
            "drover: {bad} of {} job(s) failed or were cancelled",
            jobs.len()
        );
        return Ok(2);
    }
    Ok(0)
}

async fn map(
    client: &Client,
    format: Format,
    job: &JobCommand,
    no_progress: bool,
    jobs_per_submit: usize,
) -> anyhow::Result<i32> {
    let kind = parse_kind(&job.kind).map_err(anyhow::Error::msg)?;
    let args = expand(&job.args)?;
    let total = args.len();
    let opts = job.options();
    // Submit every chunk first so the workers stay busy while we read. Each
    // chunk says where it starts, so that a job's idempotency key is its
    // position in the whole map, not in its chunk.
    let mut batches = Vec::new();
    for (n, chunk) in args.chunks(jobs_per_submit).enumerate() {
        let first = n * jobs_per_submit;
        let resp = client
            .submit(kind, chunk.to_vec(), first, &opts)
            .await
            .with_context(|| {
                format!(
                    "submitting jobs {first}..{} of {total} (--jobs-per-submit {jobs_per_submit})",
                    first + chunk.len()
                )
            })?;
        // Said at once, so a user whose map is cut off for good can still
        // read the results.
        eprintln!(
            "drover: batch {} holds jobs {first}..{} of {total}; `drover watch {} --ordered` reads them",
            resp.batch_id,
            first + chunk.len(),
            resp.batch_id
        );
        batches.push((resp.batch_id, first));
    }
    let bar = if !no_progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut failed = 0usize;
    for (batch, first) in &batches {
        client
            .watch(batch, true, |jobs, _, _| {
                for j in jobs {
                    failed += usize::from(ended_badly(j));
                    // Numbered by its place in the whole map.
                    let mut j = j.clone();
                    j.index += *first as u32;
                    match &bar {
                        Some(bar) => bar.suspend(|| output::print_job(format, &j)),
                        None => output::print_job(format, &j),
                    }
                }
                if let Some(bar) = &bar {
                    bar.inc(jobs.len() as u64);
                }
            })
            .await?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if failed > 0 {
        eprintln!("drover: {failed} of {total} job(s) failed or were cancelled");
        return Ok(2);
    }
    Ok(0)
}

/// `drover health`: exits 0 when a master's health service says it is
/// serving; of several, the first that does (named).
async fn health(
    urls: &[String],
    options: &drover_common::net::ClientOptions,
    timeout: Duration,
) -> anyhow::Result<i32> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut not_serving = Vec::new();
    for url in urls {
        let why = match tokio::time::timeout_at(deadline, check_health(url, options)).await {
            Ok(Ok(ServingStatus::Serving)) if urls.len() == 1 => {
                println!("serving");
                return Ok(0);
            }
            Ok(Ok(ServingStatus::Serving)) => {
                println!("serving: {url}");
                return Ok(0);
            }
            Ok(Ok(status)) => anyhow::anyhow!("the master at {url} is {}", status.as_str_name()),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("no answer from {url} within {timeout:?}"),
        };
        not_serving.push(why);
    }
    match not_serving.as_slice() {
        [one] => anyhow::bail!("{one:#}"),
        all => anyhow::bail!(
            "no master is serving: {}",
            all.iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The overall health status of the master at `url`.
async fn check_health(
    url: &str,
    options: &drover_common::net::ClientOptions,
) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = drover_common::net::connect_with(url, options)
        .await
        .map_err(anyhow::Error::msg)?;
    let resp = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(client::status_error)?;
    let status = resp.into_inner().status();
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
        // A standby names the leader it stands by for in its answer to any
        // call (before any token is checked).
        let mut queue = drover_common::pb::queue_client::QueueClient::new(channel);
        if let Err(s) = queue
            .stats(drover_common::pb::StatsRequest::default())
            .await
            && drover_common::net::from_standby(&s)
        {
            anyhow::bail!(
                "the master at {url} is {}: {}",
                status.as_str_name(),
                s.message()
            );
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }
}
