//! `onecard`: the binary that wires the engine to its store, its ports and its operators.
//!
//! # Layout
//! - `main.rs` — command line, logging, and the `serve` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use onecard_engine::{Ledger, LedgerConfig};

/// onecard: the campus one-card transaction and settlement engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "ONECARD_LOG_JSON")]
    log_json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the store and serve terminals until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory of the RocksDB store; created if missing.
    #[arg(long, env = "ONECARD_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Address the terminal front door listens on. Port 0 picks a free port, printed
    /// on the `ready` line.
    #[arg(long, env = "ONECARD_TERMINAL_LISTEN", default_value = "127.0.0.1:7700")]
    terminal_listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Serve(args) => serve(&args),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let ledger = Ledger::open(&args.data_dir, LedgerConfig::default())
        .with_context(|| format!("opening the ledger in {}", args.data_dir.display()))?;
    tracing::info!(
        data_dir = %ledger.store().path().display(),
        shards = ledger.shards(),
        business_date = %ledger.business_date(),
        "ledger open"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("onecard-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.terminal_listen)
            .await
            .with_context(|| format!("binding the terminal port {}", args.terminal_listen))?;
        let terminal_addr = listener.local_addr().context("reading the terminal address")?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let shutdown = shutdown_signal().context("registering for SIGTERM and SIGINT")?;
        tracing::info!(%terminal_addr, "terminal front door listening");
        // The line end-to-end tests and scripts wait for.
        println!("onecard ready: terminals on {terminal_addr}");
        let front_door = tokio::spawn(onecard_engine::frontdoor::serve(listener, shutdown_rx));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
        front_door.await.context("front door task")?.context("front door")?;
        anyhow::Ok(())
    })?;
    ledger.close();
    tracing::info!("ledger closed");
    Ok(())
}

/// Registers for SIGTERM and SIGINT (Ctrl-C) at once, so a signal that arrives right
/// after the ready line is never lost to the default action; the returned future
/// resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
