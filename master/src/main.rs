//! `drover-master`: parses flags, sets up logging, binds and serves.

use clap::Parser;

/// drover's master: the task queue and result store behind gRPC.
#[derive(Debug, Parser)]
#[command(name = "drover-master", version, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    master: drover_master::MasterArgs,
    /// Log format on stderr: text or json.
    #[arg(long, env = "DROVER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    drover_common::util::init_tracing(cli.log_format == "json", "info");
    if let Err(e) = serve(cli).await {
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
}
