//! `drover-worker`: parses flags, sets up logging and runs the worker.

use clap::Parser;
use drover_common::util::MAX_RUNTIME_THREADS;

/// drover's worker: pulls jobs from a master and runs them in a pool of
/// child processes.
#[derive(Debug, Parser)]
#[command(name = "drover-worker", version, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    worker: drover_worker::WorkerArgs,
    /// Log format on stderr: text or json.
    #[arg(long, env = "DROVER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads of the worker's own runtime: its session with the master, the
    /// engine and the children's pipes (the jobs themselves run in the child
    /// processes). 1, the default: all on one thread, so no hop of a job
    /// between them wakes another thread (measured in bench/README.md).
    /// 0: one per core (or TOKIO_WORKER_THREADS); N: N threads.
    #[arg(long, env = "DROVER_RUNTIME_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_RUNTIME_THREADS)))]
    runtime_threads: u16,
}

fn main() {
    // A child of the pool runs jobs and exits here; it never starts tokio.
    drover_worker::child::run_if_child();
    let cli = Cli::parse();
    drover_common::util::init_tracing(cli.log_format == "json", "info");
    let runtime = match drover_common::util::runtime(cli.runtime_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-worker: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let config = cli.worker.config()?;
        let shutdown = drover_common::util::shutdown_on_signals();
        drover_worker::run(config, shutdown).await
    });
    if let Err(e) = result {
        eprintln!("drover-worker: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runtime_threads_past_the_limit_are_refused_naming_the_flag_and_the_limit() {
        let err = Cli::try_parse_from(["drover-worker", "--runtime-threads", "1025"])
            .expect_err("1025 threads accepted");
        let msg = err.to_string();
        assert!(
            msg.contains("--runtime-threads") && msg.contains("0..=1024"),
            "{msg}"
        );
        let ok = Cli::try_parse_from(["drover-worker", "--runtime-threads", "0"]).expect("0");
        assert_eq!(ok.runtime_threads, 0);
        let default = Cli::try_parse_from(["drover-worker"]).expect("no flags");
        assert_eq!(default.runtime_threads, 1);
    }
}
