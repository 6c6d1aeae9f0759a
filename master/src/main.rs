//! `drover-master`: parses flags, sets up logging, binds and serves.

use clap::Parser;
use drover_common::util::MAX_RUNTIME_THREADS;

/// drover's master: the task queue and result store behind gRPC.
#[derive(Debug, Parser)]
#[command(name = "drover-master", version, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    master: drover_master::MasterArgs,
    /// Log format on stderr: text or json.
    #[arg(long, env = "DROVER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads of the master's runtime (its gRPC services and timers; the
    /// committer and the store's writer have threads of their own). 0, the
    /// default: one per core (or TOKIO_WORKER_THREADS); N: N threads. 1
    /// saves a cross-thread wake-up at each hand-off between tasks, but a
    /// read of the store, a large reply's encoding or a TLS handshake then
    /// holds up every other call meanwhile.
    #[arg(long, env = "DROVER_RUNTIME_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_RUNTIME_THREADS)))]
    runtime_threads: u16,
}

fn main() {
    let cli = Cli::parse();
    drover_common::util::init_tracing(cli.log_format == "json", "info");
    let runtime = match drover_common::util::runtime(cli.runtime_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-master: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(cli)) {
        eprintln!("drover-master: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let config = cli.master.config()?;
    if let drover_master::StoreConfig::Postgres(url) = &config.store {
        let url = url.clone();
        let (listener, addr) = drover_master::bind(&cli.master.listen).await?;
        config.check_exposure(addr)?;
        let shutdown = drover_common::util::shutdown_on_signals();
        // A standby prints its own line first; scripts wait for the
        // listening line, printed once it leads with the queue recovered.
        return drover_master::run_ha(
            config,
            &url,
            listener,
            shutdown,
            |addr, leader| {
                println!("drover-master standby on {addr}");
                tracing::info!(%addr, %leader, "standby");
            },
            |addr, epoch| {
                println!("drover-master listening on {addr}");
                tracing::info!(%addr, epoch, "listening as the leader");
            },
        )
        .await;
    }
    // The store first: a locked or corrupt data directory is refused before
    // anything listens.
    let store = drover_master::open_store(&config.store)?;
    let (listener, addr) = drover_master::bind(&cli.master.listen).await?;
    // An open master on the network is refused before it says it listens.
    config.check_exposure(addr)?;
    let shutdown = drover_common::util::shutdown_on_signals();
    // Recovery before the listening line: once it is printed, the queue is
    // whole and requests are served. Scripts and tests read the bound port
    // from that one stdout line.
    drover_master::run_notify(config, store, listener, shutdown, |addr| {
        println!("drover-master listening on {addr}");
        tracing::info!(%addr, "listening");
    })
    .await
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
        let err = Cli::try_parse_from(["drover-master", "--runtime-threads", "1025"])
            .expect_err("1025 threads accepted");
        let msg = err.to_string();
        assert!(
            msg.contains("--runtime-threads") && msg.contains("0..=1024"),
            "{msg}"
        );
        let one = Cli::try_parse_from(["drover-master", "--runtime-threads", "1"]).expect("1");
        assert_eq!(one.runtime_threads, 1);
        let default = Cli::try_parse_from(["drover-master"]).expect("no flags");
        assert_eq!(default.runtime_threads, 0);
    }
}
