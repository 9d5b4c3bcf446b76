//! `onecard`: the binary that wires the engine to its store, its ports and its
//! operators: the command line and the `serve`, `verify`, `cutover`, `settle`,
//! `reconcile` and `backup` commands. What it wires is in the `onecard_ops` library
//! (`lib.rs`).

mod cell;

use onecard_ops::{api, backup, channels, config, day, demo, master_key, operators};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use onecard_engine::Ledger;
use onecard_engine::store::Store;
use onecard_engine::workflow::Workflows;

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
    Serve(Box<SettingsArgs>),
    /// Prove the ledger's invariants from disk (the server must be stopped); exits
    /// non-zero if any fails.
    Verify(Box<SettingsArgs>),
    /// Close a business date (日切) now, early if its day has not ended (the server
    /// must be stopped; a running server does it at the turn, or through the API).
    /// Repeat-safe: a date already closed is left as it is.
    Cutover(Box<DayArgs>),
    /// Settle a closed business date and write its files (the server must be
    /// stopped; a running server settles at the turn, or through the API).
    /// Repeat-safe: a settled date is not posted again and its files come out the
    /// same, byte for byte.
    Settle(Box<DayArgs>),
    /// Reconcile a closed business date against itself: trial balance, card pool,
    /// the day's card flow, merchants' unsettled sales, terminal sequences; or, with
    /// --channel and --statement, a top-up channel's statement against our top-ups
    /// (the server must be stopped; the API does both live). Writes the report beside
    /// the date's settlement files; exits non-zero if anything disagrees.
    Reconcile(Box<ReconcileArgs>),
    /// Back up the store, list, verify or restore backups. The backup directory, the
    /// offsite copy and how many are kept come from the same settings as `serve`.
    #[command(subcommand)]
    Backup(Box<BackupCommand>),
    /// Manage the master key that seals terminal keys and the journal chain key.
    #[command(subcommand)]
    MasterKey(Box<MasterKeyCommand>),
    /// A cell of nodes holding one replicated ledger (docs/OPERATIONS.md).
    #[command(subcommand)]
    Cell(Box<CellCommand>),
}

#[derive(Debug, Subcommand)]
enum CellCommand {
    /// Write the files for a demo cell on this machine: one master key and a config
    /// per node (`nodeN.toml`), ports counting up from --base-port. Start each node
    /// with `onecard serve --config DIR/nodeN.toml`.
    Init {
        /// The directory for the cell's files and its nodes' data.
        #[arg(long, default_value = "./cell")]
        dir: PathBuf,
        /// Nodes in the cell.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Node N's terminal port is base+N, its admin port base+80+N, its cluster
        /// link base+200+N.
        #[arg(long, default_value_t = 7700)]
        base_port: u16,
        /// Cards in the demo campus the first leader builds.
        #[arg(long, default_value_t = 2_000)]
        demo_cards: u64,
    },
    /// Print the log index a stopped node's replica was applied through and the hash
    /// of its whole state: two replicas at the same index must have the same hash.
    Hash(Box<SettingsArgs>),
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Seal every terminal key and the journal chain key under a new master key, in
    /// one write (the server must be stopped). The old key is kept beside its file as
    /// `.retired-<unix seconds>`: backups taken before now need it. Safe to run again
    /// after an interruption: it finishes or starts over.
    Rotate {
        /// Where to write the new key (default: the master key file in force; required
        /// when the key comes from ONECARD_MASTER_KEY).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Take a backup now (the server must be stopped; a running server takes its
    /// daily backup by itself, and one on demand with POST /api/backups).
    Create {
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// List the backups, oldest first, and whether the offsite copy holds each.
    List {
        /// List the offsite copy's backups instead.
        #[arg(long)]
        offsite: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Check a backup's files, restore it into a scratch directory and prove the
    /// ledger's invariants on it; exits non-zero if anything fails.
    Verify(BackupChoice),
    /// Restore a backup into a new directory, then verify it there. Serve the
    /// restored store with `onecard serve --data-dir DIR`.
    Restore {
        /// The directory to restore into; it must not exist or be empty.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        choice: BackupChoice,
    },
}

/// Which backup `verify` and `restore` take, and from where.
#[derive(Debug, clap::Args)]
struct BackupChoice {
    /// The backup (default: the newest).
    #[arg(long)]
    id: Option<u32>,
    /// Take it from the offsite copy.
    #[arg(long)]
    offsite: bool,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// `cutover` and `settle`: a date, and the same settings as `serve` (the time zone,
/// the turn, the meal hours and the settlement directory matter here).
#[derive(Debug, clap::Args)]
struct DayArgs {
    /// The business date, YYYY-MM-DD.
    #[arg(long)]
    date: String,

    #[command(flatten)]
    settings: SettingsArgs,
}

#[derive(Debug, clap::Args)]
struct ReconcileArgs {
    #[command(flatten)]
    day: DayArgs,

    /// A top-up channel (app, e_code, cash_machine, counter, bank_load) whose
    /// statement to reconcile.
    #[arg(long, requires = "statement")]
    channel: Option<String>,

    /// The channel's statement file (CSV).
    #[arg(long, requires = "channel")]
    statement: Option<PathBuf>,

    /// The adapter that reads the statement: `onecard`, or a file
    /// `<channel_adapters_dir>/<name>.toml`.
    #[arg(long, default_value = channels::BUILT_IN_ADAPTER)]
    adapter: String,
}

impl DayArgs {
    fn resolve(self) -> anyhow::Result<(onecard_engine::BusinessDate, Config)> {
        let date = day::parse_date_arg(&self.date)?;
        Ok((date, self.settings.resolve()?))
    }
}

/// The settings every command that opens the store takes: the time zone and the turn
/// of the day matter even to `verify`, since opening the ledger closes the days the
/// clock has passed.
#[derive(Debug, Clone, clap::Args)]
struct SettingsArgs {
    /// A TOML file of settings (keys as the flags below, with underscores).
    #[arg(long, env = "ONECARD_CONFIG")]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

impl SettingsArgs {
    fn resolve(self) -> anyhow::Result<Config> {
        let settings = match &self.config {
            Some(path) => Settings::from_file(path)?.overlaid_with(self.settings),
            None => self.settings,
        };
        Config::resolve(settings)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            init_logging(config.log_json);
            serve(config)
        }
        Command::Verify(args) => {
            init_logging(false);
            verify(&args.resolve()?)
        }
        Command::Cutover(args) => {
            init_logging(false);
            let (date, config) = args.resolve()?;
            let ledger = open_offline(&config)?;
            let outcome = ledger.cutover(date);
            ledger.close();
            let cutover = outcome.context("cutover")?;
            println!(
                "{}: closed through {}, open {}",
                if cutover.changed { "turned" } else { "already closed" },
                cutover.closed_through,
                cutover.open
            );
            Ok(())
        }
        Command::Reconcile(args) => {
            init_logging(false);
            reconcile(args)
        }
        Command::Backup(args) => {
            init_logging(false);
            backup_command(*args)
        }
        Command::MasterKey(args) => {
            init_logging(false);
            let MasterKeyCommand::Rotate { new_key_file, settings } = *args;
            let config = settings.resolve()?;
            let rotated = master_key::rotate(
                &config.data_dir,
                config.ledger.shards,
                &config.ledger.master_key,
                &config.master_key_source,
                new_key_file.as_deref(),
            )?;
            match rotated.terminal_keys {
                Some(count) => println!(
                    "master key rotated: {count} terminal keys and the journal chain key sealed \
                     under the new key"
                ),
                None => println!("an interrupted rotation was found written; finished it"),
            }
            println!("the new master key is in {}", rotated.new_key_file.display());
            if let Some(retired) = rotated.retired_key_file {
                println!(
                    "the old master key is in {}: backups taken before now need it; keep it \
                     with them, apart from the data directory",
                    retired.display()
                );
            }
            Ok(())
        }
        Command::Cell(command) => {
            init_logging(false);
            cell_command(*command)
        }
        Command::Settle(args) => {
            init_logging(false);
            let (date, config) = args.resolve()?;
            let ledger = open_offline(&config)?;
            let outcome = day::settle_and_write(&ledger, date, &config.settlement_dir);
            ledger.close();
            let (settled, paths) = outcome?;
            println!("{}", day::summary(&settled));
            for path in paths {
                println!("  {}", path.display());
            }
            Ok(())
        }
    }
}

fn cell_command(command: CellCommand) -> anyhow::Result<()> {
    match command {
        CellCommand::Init { dir, nodes, base_port, demo_cards } => {
            let configs = cell::init(&dir, nodes, base_port, demo_cards)?;
            println!("a cell of {nodes} nodes in {}; start each node:", dir.display());
            for config in configs {
                println!("  onecard serve --config {}", config.display());
            }
            Ok(())
        }
        CellCommand::Hash(args) => {
            let config = args.resolve()?;
            let path = config.store_dir();
            let store = Store::open(&path, config.ledger.shards).with_context(|| {
                format!("opening the replica in {} (is the node running?)", path.display())
            })?;
            let index = onecard_cluster::applied_index(&store)
                .map_err(|error| anyhow::anyhow!("reading the applied position: {error}"))?;
            let hash = store.state_hash().context("hashing the replica")?;
            println!(
                "applied through {} state {}",
                index.map_or_else(|| "nothing".to_owned(), |index| index.to_string()),
                hex::encode(hash)
            );
            Ok(())
        }
    }
}

fn backup_command(command: BackupCommand) -> anyhow::Result<()> {
    let settings = match &command {
        BackupCommand::Create { settings }
        | BackupCommand::List { settings, .. }
        | BackupCommand::Verify(BackupChoice { settings, .. })
        | BackupCommand::Restore { choice: BackupChoice { settings, .. }, .. } => settings,
    };
    let config = settings.clone().resolve()?;
    let backups = &config.backup;
    let source = |offsite: bool| -> anyhow::Result<&Path> {
        if offsite {
            backups.offsite_dir.as_deref().context("no backup_offsite_dir is configured")
        } else {
            Ok(&backups.dir)
        }
    };
    match command {
        BackupCommand::Create { .. } => {
            let ledger = open_ledger(&config).with_context(|| {
                format!(
                    "opening the ledger in {} (is `onecard serve` running on it? it backs up \
                     daily by itself, and at once on POST /api/backups)",
                    config.data_dir.display()
                )
            })?;
            let taken = backup::create(ledger.store().db(), backups);
            ledger.close();
            let info = taken?;
            println!(
                "backup {} taken in {}: {} bytes, {} files{}",
                info.id,
                backups.dir.display(),
                info.size_bytes,
                info.files,
                if info.offsite { ", copied offsite" } else { "" }
            );
        }
        BackupCommand::List { offsite, .. } => {
            let other = if offsite { None } else { backups.offsite_dir.as_deref() };
            for info in backup::list(source(offsite)?, other)? {
                println!(
                    "{}\t{}\t{} bytes\t{} files{}",
                    info.id,
                    backup::time_text(info.timestamp_s, config.ledger.utc_offset_minutes),
                    info.size_bytes,
                    info.files,
                    if info.offsite { "\toffsite" } else { "" }
                );
            }
        }
        BackupCommand::Verify(BackupChoice { id, offsite, .. }) => {
            let (id, report) = backup::verify(source(offsite)?, id, &config.ledger)?;
            println!("backup {id}:\n{report}");
            anyhow::ensure!(report.is_clean(), "backup {id} failed verification");
        }
        BackupCommand::Restore { to, choice: BackupChoice { id, offsite, .. } } => {
            let id = backup::restore(source(offsite)?, id, &to)?;
            let report = backup::verify_restored(&to, &config.ledger)?;
            println!("backup {id} restored into {}:\n{report}", to.display());
            anyhow::ensure!(report.is_clean(), "the restored ledger failed verification");
        }
    }
    Ok(())
}

fn reconcile(args: Box<ReconcileArgs>) -> anyhow::Result<()> {
    let ReconcileArgs { day, channel, statement, adapter } = *args;
    let (date, config) = day.resolve()?;
    if let (Some(channel), Some(statement)) = (channel, statement) {
        let channel = channels::channel_named(&channel).with_context(|| {
            format!("no channel {channel:?}: app, e_code, cash_machine, counter, bank_load")
        })?;
        let adapter = channels::Adapter::load(&config.channel_adapters_dir, &adapter)?;
        let ledger = open_offline(&config)?;
        let outcome = channels::reconcile_statement(
            &ledger,
            date,
            channel,
            &adapter,
            &statement,
            &config.settlement_dir,
        );
        ledger.close();
        let (reconciliation, _) =
            outcome.with_context(|| format!("reconciling {}", statement.display()))?;
        print!("{}", day::channel_text(&reconciliation));
        println!(
            "report: {}",
            channels::report_path(&config.settlement_dir, date, channel, "csv").display()
        );
        anyhow::ensure!(reconciliation.passed, "the statement does not reconcile");
        return Ok(());
    }
    let ledger = open_offline(&config)?;
    let outcome = ledger.reconcile(date);
    ledger.close();
    let reconciliation = outcome.with_context(|| format!("reconciling {date}"))?;
    print!("{}", day::reconciliation_text(&reconciliation));
    let path = day::write_reconciliation(&reconciliation, &config.settlement_dir)?;
    println!("report: {}", path.display());
    anyhow::ensure!(reconciliation.passed, "{date} does not reconcile");
    Ok(())
}

/// Opens the ledger for a one-off command; a running server holds the store's lock,
/// and then the command says so.
/// Opens the ledger with the configured master key, writing the key's file first if it
/// is new (and removing it again if the ledger refuses it: a store sealed with another
/// key must not leave a wrong key file behind).
fn open_ledger(config: &Config) -> anyhow::Result<Ledger> {
    if let Some(cluster) = &config.cluster {
        anyhow::bail!(
            "this is node {} of cell {}: its ledger changes only through the cell's log; use \
             the leader's API (a running node refuses its writes, naming the leader)",
            cluster.node_id,
            cluster.cell
        );
    }
    let created = master_key::create_if_new(&config.ledger.master_key, &config.master_key_source)?;
    Ledger::open(&config.data_dir, config.ledger.clone()).map_err(|error| {
        if let Some(path) = created {
            let _ = std::fs::remove_file(path);
        }
        anyhow::Error::from(error)
    })
}

fn open_offline(config: &Config) -> anyhow::Result<Ledger> {
    open_ledger(config).with_context(|| {
        format!(
            "opening the ledger in {} (is `onecard serve` running on it? stop it, or use the API)",
            config.data_dir.display()
        )
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every election and vote at info.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Verifies the store from disk alone: it opens RocksDB and none of the ledger's
/// loading, so a corrupt block is reported by name rather than failing the start.
fn verify(config: &Config) -> anyhow::Result<()> {
    let path = &config.store_dir();
    anyhow::ensure!(path.join("CURRENT").is_file(), "there is no ledger in {}", path.display());
    let store = Store::open(path, config.ledger.shards).with_context(|| {
        format!(
            "opening the ledger in {} (is `onecard serve` running on it? stop it, or use the API)",
            path.display()
        )
    })?;
    // The journal chain is checked with the store's master key; a key that would be
    // new (no file, no environment variable) cannot be the one it was sealed with.
    let chain = match config.master_key_source {
        master_key::Source::New(_) => None,
        master_key::Source::File(_) | master_key::Source::Environment => Some(
            onecard_engine::chain::load(&store, &config.ledger.master_key)
                .context("opening the journal chain key")?,
        ),
    };
    if chain.is_some() && onecard_engine::chain::stored(&store)?.is_none() {
        println!(
            "no journal chain key is stored: this store has not been opened by a build with \
             the chain, or the key was removed from it (if this store was created since, \
             treat that as tampering)"
        );
    }
    let report = onecard_engine::verify::verify(&store, chain.as_ref(), None)
        .context("reading the ledger")?;
    println!("{report}");
    anyhow::ensure!(report.is_clean(), "the ledger failed verification");
    Ok(())
}

/// The TOML texts of `dir/*.toml`, by file name; none if the directory is missing.
fn workflow_definitions(dir: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            onecard_engine::workflow::parse_definition(&text)
                .with_context(|| format!("workflow definition {}", path.display()))?;
            Ok(text)
        })
        .collect()
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
    if config.cluster.is_some() {
        return cell::serve(config);
    }
    let config = Arc::new(config);
    let ledger = Arc::new(
        open_ledger(&config)
            .with_context(|| format!("opening the ledger in {}", config.data_dir.display()))?,
    );
    tracing::info!(
        data_dir = %ledger.store().path().display(),
        shards = ledger.shards(),
        business_date = %ledger.business_date(),
        "ledger open"
    );
    let state = prepare(&config, &ledger)?;
    // A test hook: fail one write the way a disk would (engine/src/storage.rs).
    if let Some(plan) = storage_fault()? {
        ledger.inject_fault(plan);
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

/// The storage fault `ONECARD_STORAGE_FAULT` asks for, if any (a test hook).
fn storage_fault() -> anyhow::Result<Option<onecard_engine::storage::FaultPlan>> {
    std::env::var_os("ONECARD_STORAGE_FAULT")
        .map(|plan| plan.to_string_lossy().parse().context("ONECARD_STORAGE_FAULT"))
        .transpose()
}

/// What serves beside a ledger just opened: its workflows (with the effects of
/// applications approved before a stop run now), its operators (an `admin`
/// bootstrapped on a new store), the demo campus if asked for, and the test hooks.
fn prepare(config: &Arc<Config>, ledger: &Arc<Ledger>) -> anyhow::Result<api::AppState> {
    let mut workflows =
        Workflows::new(Arc::clone(ledger), &workflow_definitions(&config.workflows_dir)?)
            .context("loading the workflow definitions")?;
    let roles: Vec<&str> = operators::ROLES.iter().map(|role| role.as_str()).collect();
    workflows.check_roles(&roles).context("checking the workflow definitions")?;
    let recovered = workflows.recover().context("finishing approved workflow effects")?;
    if !recovered.is_empty() {
        tracing::warn!(?recovered, "ran the effects of applications approved before a stop");
    }
    if std::env::var_os("ONECARD_CRASH_BEFORE_WORKFLOW_EFFECT").is_some() {
        workflows.crash_before_effects();
    }
    let backups = Arc::new(backup::Backups::new(Arc::clone(ledger), config.backup.clone()));
    let state = api::AppState::new(Arc::clone(ledger), Arc::clone(config), workflows, backups);
    bootstrap_admin(&state.operators, &config.data_dir)?;
    if config.demo {
        if demo::is_empty(ledger) {
            demo::build(ledger, &state.operators, &config.data_dir, config.demo_cards)?;
        } else {
            tracing::info!("the store already holds a campus; serving it as it is");
        }
    }
    // A test hook: abort inside the checkpointer (engine/src/checkpoint.rs).
    if let Some(plan) = std::env::var_os("ONECARD_CHECKPOINT_CRASH") {
        let plan = plan.to_string_lossy().parse().context("ONECARD_CHECKPOINT_CRASH")?;
        ledger.arm_checkpoint_crash(plan);
    }
    Ok(state)
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

    let services = tokio::spawn(run_ledger(
        Arc::clone(&config),
        ledger,
        state.clone(),
        Arc::new(terminals),
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
    services.await.context("ledger services")??;
    // An admin client that holds its connection open does not hold up the exit.
    match tokio::time::timeout(onecard_engine::limits::SHUTDOWN_DRAIN_TIMEOUT, http).await {
        Ok(served) => served.context("admin API task")?.context("admin API")?,
        Err(_) => tracing::warn!("admin API connections still open at shutdown; closing them"),
    }
    Ok(())
}

/// What runs on an open ledger until `shutdown`: the terminal front door on
/// `terminals`, the business day (its turn, settlement, term ends) and the daily
/// backup. Returns once the front door has answered everything it took.
async fn run_ledger(
    config: Arc<Config>,
    ledger: Arc<Ledger>,
    state: api::AppState,
    terminals: Arc<tokio::net::TcpListener>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let front_door = tokio::spawn({
        let (ledger, front_door, shutdown) =
            (Arc::clone(&ledger), config.front_door.clone(), shutdown.clone());
        async move { onecard_engine::frontdoor::serve(&terminals, ledger, front_door, shutdown).await }
    });
    let day = tokio::spawn(day::run(
        day::DayTask {
            ledger,
            workflows: state.workflows.clone(),
            settle: config.auto_settle,
            dir: config.settlement_dir.clone(),
            term_ends: config.term_ends.clone(),
        },
        shutdown.clone(),
    ));
    let notices = config.notice_webhook.clone().map(|url| {
        tokio::spawn(onecard_ops::notices::run(state.workflows.clone(), url, shutdown.clone()))
    });
    let backup = tokio::spawn(backup::run(Arc::clone(&state.backups), shutdown));
    front_door.await.context("front door task")?.context("front door")?;
    if let Some(notices) = notices {
        notices.await.context("notice outbox task")?;
    }
    day.await.context("business day task")?;
    backup.await.context("backup task")?;
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
