//! # onecard-loadtest
//!
//! An open-loop peak-meal terminal simulator: it signs on hundreds of terminals of a
//! running `onecard serve` (the demo campus), offers a scenario's load over real TCP,
//! measures latency from each request's scheduled time (coordinated omission
//! corrected), and then checks that the ledger holds exactly what the terminals were
//! told. docs/BENCHMARKS.md records what it measured.
//!
//! # Layout
//! - [`scenario`] — scenarios as TOML, and the four built in.
//! - [`campus`] — the demo campus's files: terminals, keys, cards, operators.
//! - [`workload`] — what each request is: kind, terminal, card, amount.
//! - [`driver`] — the terminals and the open and closed loops.
//! - [`recorder`] — latency histograms, answers, errors, money told.
//! - [`check`] — the ledger against what the terminals were told.
//! - [`report`] — text, JSON and `.hgrm` output.
//! - [`plot`] — SVG plots.

#![allow(clippy::float_arithmetic, reason = "rates, times and percentiles; never money")]

pub mod campus;
pub mod check;
pub mod driver;
pub mod plot;
pub mod recorder;
pub mod report;
pub mod scenario;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context as _;

use crate::campus::Campus;
use crate::check::Admin;
use crate::recorder::Recorder;
use crate::report::Report;
use crate::scenario::Scenario;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server's terminal port.
    pub terminal_addr: SocketAddr,
    /// The server's admin port.
    pub admin_addr: SocketAddr,
    /// The server's data directory, where the demo campus's files are.
    pub data_dir: PathBuf,
    /// What load to offer.
    pub scenario: Scenario,
    /// Where to write the report files; none when `None`.
    pub out_dir: Option<PathBuf>,
    /// Also draw SVG plots into `out_dir`.
    pub plot: bool,
    /// Check the ledger before and after.
    pub check: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Runs a scenario against a server and reports.
///
/// # Errors
/// If the campus files cannot be read, terminals cannot sign on, the admin API
/// refuses, or a report file cannot be written. A run whose ledger check fails is a
/// report with `passed() == false`, not an error.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    let campus = Arc::new(Campus::load(&config.data_dir)?);
    let specs = driver::choose_terminals(&campus, &config.scenario);
    let mut merchants: Vec<u32> =
        specs.iter().filter(|t| t.category != "card_centre").map(|t| t.merchant_id).collect();
    merchants.sort_unstable();
    merchants.dedup();
    let admin = if config.check {
        let (name, password) = campus.operator("auditor")?;
        let (addr, name, password) = (config.admin_addr, name.to_owned(), password.to_owned());
        Some(blocking(move || Admin::login(addr, &name, &password)).await?)
    } else {
        None
    };
    let admin = admin.map(Arc::new);
    let before = match &admin {
        Some(admin) => {
            let (admin, merchants) = (Arc::clone(admin), merchants.clone());
            Some(blocking(move || admin.snapshot(&merchants)).await?)
        }
        None => None,
    };
    let terminals = driver::connect(config.terminal_addr, specs).await?;
    let count = terminals.len();
    let recorder = Arc::new(Recorder::default());
    let shared = driver::Shared {
        terminals: Arc::new(terminals),
        recorder: Arc::clone(&recorder),
        outstanding: Arc::new(AtomicUsize::new(0)),
    };
    let progress = config.progress.then(|| progress_bar(&config.scenario, Arc::clone(&recorder)));
    driver::run(shared.clone(), &config.scenario, &campus, config.terminal_addr).await?;
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    drop(shared);
    let recorded = recorder.finish();
    let check = match (&admin, before) {
        (Some(admin), Some(before)) => {
            let admin = Arc::clone(admin);
            let (after, verify) =
                blocking(move || Ok((admin.snapshot(&merchants)?, admin.verify()?))).await?;
            Some(check::compare(&before, &after, &recorded.money, verify))
        }
        _ => None,
    };
    let report = Report::new(&config.scenario, count, &recorded, check);
    if let Some(dir) = &config.out_dir {
        report.write(dir, &recorded)?;
        if config.plot {
            plot::write(dir, &report.scenario, &recorded.timeline, &recorded.all)?;
        }
    }
    Ok(report)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await.context("a blocking task")?
}

/// A progress bar: elapsed, rate achieved, answers, p99 so far.
fn progress_bar(
    scenario: &Scenario,
    recorder: Arc<Recorder>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a bounded duration"
    )]
    let bar = indicatif::ProgressBar::new(scenario.duration_secs.ceil() as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} s  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker_bar = bar.clone();
    let started = std::time::Instant::now();
    let ticker = tokio::spawn(async move {
        let mut last = (started, 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = std::time::Instant::now();
            let p = recorder.progress();
            #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
            let rate = (p.answered - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, p.answered);
            ticker_bar.set_position(now.duration_since(started).as_secs());
            #[allow(clippy::cast_precision_loss, reason = "microseconds for display")]
            let p99_ms = p.p99_us as f64 / 1_000.0;
            ticker_bar.set_message(format!(
                "{rate:>7.0}/s  answered {}  approved {}  no answer {}  p99 {p99_ms:.2} ms",
                p.answered, p.approved, p.failed
            ));
        }
    });
    (bar, ticker)
}
