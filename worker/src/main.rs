//! `drover-worker`: parses flags, sets up logging and runs the worker.

use clap::Parser;

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
}

fn main() {
    // A child of the pool runs jobs and exits here; it never starts tokio.
    drover_worker::child::run_if_child();
    let cli = Cli::parse();
    drover_common::util::init_tracing(cli.log_format == "json", "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
}
