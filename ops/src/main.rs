//! `onecard`: the binary that wires the engine to its store, its ports and its operators.
//!
//! # Layout
//! - `main.rs` — the command line and the `serve` and `verify` commands.
//! - `config.rs` — the configuration: file, flags, environment.
//! - `api/` — the admin and finance HTTP API, /metrics and health.
//! - `operators.rs` — operators of the API and their passwords.
//! - `demo.rs` — the demo campus.

mod api;
mod config;
mod demo;
mod operators;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use onecard_engine::{Ledger, LedgerConfig};

use crate::config::{Config, Settings};
use crate::operators::{OperatorRecord, Operators, Role, hash_password, random_password};

/// onecard: the campus one-card transaction and settlement engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open the store and serve terminals and the admin API until SIGTERM or Ctrl-C.
    ///
    /// Every setting can come from the config file, a flag, or an environment
    /// variable; a flag beats the environment, which beats the file.
    Serve(Box<ServeArgs>),
    /// Prove the ledger's invariants from disk (the server must be stopped); exits
    /// non-zero if any fails.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file of settings (keys as the flags below, with underscores).
    #[arg(long, env = "ONECARD_CONFIG")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Directory of the RocksDB store.
    #[arg(long, env = "ONECARD_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let settings = match &args.config {
                Some(path) => Settings::from_file(path)?.overlaid_with(args.settings),
                None => args.settings,
            };
            let config = Config::resolve(settings)?;
            init_logging(config.log_json);
            serve(config)
        }
        Command::Verify(args) => {
            init_logging(false);
            verify(&args.data_dir)
        }
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

fn verify(data_dir: &Path) -> anyhow::Result<()> {
    let ledger = Ledger::open(data_dir, LedgerConfig::default())
        .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
    let report = ledger.verify().context("reading the ledger")?;
    println!("{report}");
    ledger.close();
    anyhow::ensure!(report.is_clean(), "the ledger failed verification");
    Ok(())
}

/// On a store with no operators, creates `admin` with a random password that must be
/// changed at first login, and writes it to `<data>/initial-admin-password` (0600).
fn bootstrap_admin(operators: &Operators, data_dir: &Path) -> anyhow::Result<()> {
    if !operators.list()?.is_empty() {
        return Ok(());
    }
    let password = random_password()?;
    operators.create(&OperatorRecord::new(
        "admin".to_owned(),
        Role::Admin,
        hash_password(&password)?,
        true,
        "bootstrap".to_owned(),
    ))?;
    let path = data_dir.join("initial-admin-password");
    demo::write_private(&path, format!("{password}\n").as_bytes())?;
    tracing::warn!(
        file = %path.display(),
        "created operator `admin`; its first password is in the file, and must be changed at first login"
    );
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let ledger = Arc::new(
        Ledger::open(&config.data_dir, config.ledger.clone())
            .with_context(|| format!("opening the ledger in {}", config.data_dir.display()))?,
    );
    tracing::info!(
        data_dir = %ledger.store().path().display(),
        shards = ledger.shards(),
        business_date = %ledger.business_date(),
        "ledger open"
    );
    let state = api::AppState::new(Arc::clone(&ledger), Arc::clone(&config));
    bootstrap_admin(&state.operators, &config.data_dir)?;
    if config.demo {
        if demo::is_empty(&ledger) {
            demo::build(&ledger, &state.operators, &config.data_dir, config.demo_cards)?;
        } else {
            tracing::info!("the store already holds a campus; serving it as it is");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("onecard-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(Arc::clone(&config), Arc::clone(&ledger), state))?;
    drop(runtime);
    match Arc::try_unwrap(ledger) {
        Ok(ledger) => ledger.close(),
        Err(_) => {
            tracing::warn!("the ledger is still shared at exit; it closes as the process ends")
        }
    }
    tracing::info!("ledger closed");
    Ok(())
}

async fn run(config: Arc<Config>, ledger: Arc<Ledger>, state: api::AppState) -> anyhow::Result<()> {
    let terminals = tokio::net::TcpListener::bind(config.terminal_listen)
        .await
        .with_context(|| format!("binding the terminal port {}", config.terminal_listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", config.admin_listen))?;
    let terminal_addr = terminals.local_addr().context("reading the terminal address")?;
    let admin_addr = admin.local_addr().context("reading the admin address")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut signals = Signals::register().context("registering for SIGTERM and SIGINT")?;
    tracing::info!(%terminal_addr, %admin_addr, "listening");
    // The line end-to-end tests and scripts wait for.
    println!("onecard ready: terminals on {terminal_addr} admin on {admin_addr}");

    let front_door = tokio::spawn(onecard_engine::frontdoor::serve(
        terminals,
        Arc::clone(&ledger),
        config.front_door.clone(),
        shutdown_rx.clone(),
    ));
    let mut http_shutdown = shutdown_rx;
    let http = tokio::spawn(async move {
        let service = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(admin, service)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            })
            .await
    });
    signals.next().await;
    tracing::info!("shutting down: no new connections; answering what is in flight");
    let _ = shutdown_tx.send(true);
    // A second signal exits at once. Nothing acknowledged is lost: an answer goes out
    // only after its batch is synced to disk.
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    front_door.await.context("front door task")?.context("front door")?;
    // An admin client that holds its connection open does not hold up the exit.
    match tokio::time::timeout(onecard_engine::limits::SHUTDOWN_DRAIN_TIMEOUT, http).await {
        Ok(served) => served.context("admin API task")?.context("admin API")?,
        Err(_) => tracing::warn!("admin API connections still open at shutdown; closing them"),
    }
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), registered together before the ready line so a
/// signal that arrives right after it is never lost to the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
