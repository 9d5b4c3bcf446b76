//! The business day inside `serve`: the cutover at the turn, then settlement of each
//! newly closed date and its files; and the pieces the `cutover` and `settle`
//! commands and the API share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use onecard_engine::reconcile::Reconciliation;
use onecard_engine::settlement::Settled;
use onecard_engine::statement::ChannelReconciliation;
use onecard_engine::workflow::{Actor, Workflows};
use onecard_engine::{BusinessDate, Ledger};
use prometheus::{IntCounter, IntGauge};

use crate::api::money::{parse_business_date, yuan};
use crate::settlement_files;

/// How often `serve` looks at the clock for the turn of the day.
const TURN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Closed dates `serve` settles by itself when it finds them unsettled (after a
/// restart, or a turn over several days); older ones wait for `onecard settle`.
pub const SETTLE_CATCH_UP_DATES_MAX: usize = 31;

/// A date from the command line.
///
/// # Errors
/// If it is not a calendar date as YYYY-MM-DD.
pub fn parse_date_arg(text: &str) -> anyhow::Result<BusinessDate> {
    parse_business_date(text).map_err(anyhow::Error::msg)
}

/// Settles `date` (or finds it settled) and writes its files into `dir`.
///
/// # Errors
/// If the date is not closed, the ledger fails, or a file cannot be written.
pub fn settle_and_write(
    ledger: &Ledger,
    date: BusinessDate,
    dir: &Path,
) -> anyhow::Result<(Settled, Vec<PathBuf>)> {
    let settled = ledger.settle(date).with_context(|| format!("settling {date}"))?;
    let paths = settlement_files::write_all(&settled.settlement, dir)?;
    Ok((settled, paths))
}

/// One line about a settlement.
#[must_use]
pub fn summary(settled: &Settled) -> String {
    let totals = settled.settlement.totals();
    format!(
        "{} {}: {} merchants, {} purchases, gross {}, commission {}, net payable {}",
        settled.settlement.date().map_or_else(String::new, |d| d.to_string()),
        if settled.posted { "settled" } else { "was already settled" },
        totals.merchants,
        totals.purchases.count,
        yuan(totals.net_sales_fen),
        yuan(totals.commission_fen),
        yuan(totals.net_payable_fen),
    )
}

/// A reconciliation in lines: one per check, then its discrepancies.
#[must_use]
pub fn reconciliation_text(reconciliation: &Reconciliation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let flow = &reconciliation.card_flow;
    let date = BusinessDate::from_yyyymmdd(reconciliation.business_date)
        .map_or_else(String::new, |d| d.to_string());
    let _ = writeln!(
        out,
        "{date}: card pool opened {}, top-ups {}, subsidies {}, refunds {}, reversals {}, \
         adjustments {}, purchases {}, closures {}, expiries {}, closed {}",
        yuan(flow.opening_fen),
        yuan(flow.top_ups_fen),
        yuan(flow.subsidies_fen),
        yuan(flow.refunds_fen),
        yuan(flow.reversals_fen),
        yuan(flow.adjustments_fen),
        yuan(flow.purchases_fen),
        yuan(flow.closures_fen),
        yuan(flow.expiries_fen),
        yuan(flow.closing_fen),
    );
    for check in &reconciliation.checks {
        let verdict = if check.passed { "ok" } else { "FAILED" };
        let _ = writeln!(out, "{:<20} {verdict}", check.name);
        for found in &check.discrepancies {
            let _ = writeln!(
                out,
                "  {}: expected {}, found {} ({})",
                found.subject,
                yuan(found.expected_fen),
                yuan(found.found_fen),
                found.note
            );
        }
        let unlisted = check.discrepancy_count - check.discrepancies.len() as u64;
        if unlisted > 0 {
            let _ = writeln!(out, "  and {unlisted} more");
        }
    }
    out
}

/// Discrepancies a command prints; the report files hold every one.
const DISCREPANCIES_PRINTED_MAX: usize = 20;

/// A channel reconciliation in lines: the totals by class, then the discrepancies.
#[must_use]
pub fn channel_text(reconciliation: &ChannelReconciliation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "channel {}: {} statement lines, {} top-ups here{}{}",
        reconciliation.channel,
        reconciliation.statement_lines,
        reconciliation.our_top_ups,
        if reconciliation.empty_statement { "; the statement is EMPTY" } else { "" },
        if reconciliation.wrong_date_statement {
            "; the statement is for ANOTHER DATE"
        } else {
            ""
        },
    );
    for (class, totals) in &reconciliation.classes {
        let _ = writeln!(
            out,
            "{class:<15} {:>8}  channel {:>14}  ours {:>14}",
            totals.count,
            yuan(totals.channel_fen),
            yuan(totals.our_fen)
        );
    }
    for line in reconciliation.discrepancies.iter().take(DISCREPANCIES_PRINTED_MAX) {
        let at = line.line.map_or_else(|| "ours".to_owned(), |n| format!("line {n}"));
        let _ = writeln!(out, "  {at}: {} {:?} {}", line.class.name(), line.reference, line.note);
    }
    let unlisted =
        reconciliation.discrepancy_count.saturating_sub(DISCREPANCIES_PRINTED_MAX as u64);
    if unlisted > 0 {
        let _ = writeln!(out, "  and {unlisted} more: every line is in the report");
    }
    out
}

/// Writes a reconciliation as JSON into the date's folder of `dir`.
///
/// # Errors
/// If the folder or file cannot be written.
pub fn write_reconciliation(
    reconciliation: &Reconciliation,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let date = BusinessDate::from_yyyymmdd(reconciliation.business_date).context("a date")?;
    let folder = dir.join(date.to_string());
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let path = folder.join(format!("reconciliation-{}.json", reconciliation.business_date));
    let json = serde_json::to_vec_pretty(reconciliation).context("encoding the report")?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The day task's metrics.
struct DayMetrics {
    settled_through: IntGauge,
    reconciled_date: IntGauge,
    discrepancies: IntGauge,
    failures: IntCounter,
}

impl DayMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        let settled_through = IntGauge::new(
            "onecard_settled_through_date",
            "The latest settled business date, as yyyymmdd.",
        )
        .expect("valid metric");
        let failures = IntCounter::new(
            "onecard_day_failures_total",
            "Cutovers or settlements inside serve that failed (they are retried).",
        )
        .expect("valid metric");
        let reconciled_date = IntGauge::new(
            "onecard_reconciled_date",
            "The latest business date serve reconciled after settling it, as yyyymmdd.",
        )
        .expect("valid metric");
        let discrepancies = IntGauge::new(
            "onecard_reconciliation_discrepancies",
            "Discrepancies the latest reconciliation found (0: every check passed).",
        )
        .expect("valid metric");
        for metric in [&settled_through, &reconciled_date, &discrepancies] {
            registry.register(Box::new(metric.clone())).expect("unique metric");
        }
        registry.register(Box::new(failures.clone())).expect("unique metric");
        Self { settled_through, reconciled_date, discrepancies, failures }
    }
}

/// Closed dates not yet settled, oldest first, at most [`SETTLE_CATCH_UP_DATES_MAX`]:
/// every date after the last settled one up to the last closed one; with nothing
/// settled yet, the last closed date alone.
fn unsettled(ledger: &Ledger) -> anyhow::Result<Vec<BusinessDate>> {
    let closed = ledger.closed_through();
    let settled = ledger.settled_dates()?;
    let mut dates = Vec::new();
    let mut date = match settled.last() {
        Some(last) => last.next(),
        None => closed,
    };
    while date <= closed {
        if settled.binary_search(&date).is_err() {
            dates.push(date);
        }
        date = date.next();
    }
    if dates.len() > SETTLE_CATCH_UP_DATES_MAX {
        let skipped = dates.len() - SETTLE_CATCH_UP_DATES_MAX;
        tracing::warn!(skipped, "closed dates left unsettled; run `onecard settle` for them");
        dates.drain(..skipped);
    }
    Ok(dates)
}

/// One look at the clock: turn the day if it is due, then settle what is closed and
/// unsettled (when `settle` is on), and reconcile each date it settles, writing the
/// report beside the files. Blocking; runs on tokio's blocking pool.
fn tick(ledger: &Ledger, settle: bool, dir: &Path, metrics: &DayMetrics) -> anyhow::Result<()> {
    ledger.cutover_due()?;
    if settle {
        for date in unsettled(ledger)? {
            let (settled, _) = settle_and_write(ledger, date, dir)?;
            tracing::info!("{}", summary(&settled));
            let reconciliation = ledger.reconcile(date)?;
            write_reconciliation(&reconciliation, dir)?;
            let found: u64 = reconciliation.checks.iter().map(|c| c.discrepancy_count).sum();
            metrics.reconciled_date.set(i64::from(date.to_yyyymmdd()));
            metrics.discrepancies.set(i64::try_from(found).unwrap_or(i64::MAX));
            if reconciliation.passed {
                tracing::info!(date = %date, "reconciled: every check passed");
            } else {
                tracing::error!(date = %date, discrepancies = found, "reconciliation FAILED:\n{}", reconciliation_text(&reconciliation));
            }
        }
    }
    if let Some(last) = ledger.settled_dates()?.last() {
        metrics.settled_through.set(i64::from(last.to_yyyymmdd()));
        // Files a failed write left missing are written again from the record.
        let merchants = settlement_files::FileKind::Merchants.file_name(last.to_yyyymmdd());
        if settle
            && !dir.join(last.to_string()).join(merchants).exists()
            && let Some(settlement) = ledger.settlement(*last)?
        {
            settlement_files::write_all(&settlement, dir)?;
            tracing::info!(date = %last, "settlement files written again");
        }
    }
    Ok(())
}

/// What the day task works with.
pub struct DayTask {
    /// The ledger.
    pub ledger: Arc<Ledger>,
    /// The workflows: term-end applications are submitted here, and approved effects
    /// a failure left pending are retried.
    pub workflows: Workflows,
    /// Settle each closed date and write its files.
    pub settle: bool,
    /// Where the files go.
    pub dir: PathBuf,
    /// The term ends (学期末): on each, `serve` applies for the restricted purses'
    /// expiry (清零), which runs once approved.
    pub term_ends: Vec<BusinessDate>,
}

/// The application `serve` makes as itself.
fn system_actor() -> Actor {
    Actor { name: "onecard".to_owned(), roles: Vec::new(), from: "serve".to_owned() }
}

/// Applies for the term-end expiry of every term end now closed (within the catch-up
/// window) that has no application yet. Returns the applications made.
fn apply_for_term_ends(
    task: &DayTask,
    checked_through: &mut Option<BusinessDate>,
) -> anyhow::Result<Vec<u64>> {
    let closed = task.ledger.closed_through();
    // Only a cutover can make a term end due: look once per closed date.
    if *checked_through == Some(closed) {
        return Ok(Vec::new());
    }
    let due: Vec<BusinessDate> = task
        .term_ends
        .iter()
        .copied()
        .filter(|end| *end <= closed && closed.to_unix_days() - end.to_unix_days() <= 31)
        .collect();
    if due.is_empty() {
        *checked_through = Some(closed);
        return Ok(Vec::new());
    }
    let existing = task.workflows.list(|i| i.workflow == "subsidy_expiry")?;
    let mut made = Vec::new();
    for end in due {
        let term_end = end.to_string();
        if existing
            .iter()
            .any(|i| i.form.get("term_end").and_then(|v| v.as_str()) == Some(&term_end))
        {
            continue;
        }
        let form = serde_json::json!({
            "term_end": term_end,
            "reason": format!("学期末清零: the term ended on {end}"),
        });
        let instance = task.workflows.submit(&system_actor(), "subsidy_expiry", form)?;
        tracing::info!(term_end = %end, application = instance.id, "applied for the term-end expiry (清零)");
        made.push(instance.id);
    }
    *checked_through = Some(closed);
    Ok(made)
}

/// Ticks between retries of approved effects a failure left pending.
const RECOVERY_EVERY_TICKS: u64 = 60;

/// Runs the day until `shutdown` turns true: a look at the clock every second.
pub async fn run(task: DayTask, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let metrics = Arc::new(DayMetrics::new(task.ledger.metrics().registry()));
    let task = Arc::new(task);
    let mut interval = tokio::time::interval(TURN_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut term_ends_checked: Option<BusinessDate> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        ticks += 1;
        let (job, metrics) = (Arc::clone(&task), Arc::clone(&metrics));
        let mut checked = term_ends_checked;
        let outcome = tokio::task::spawn_blocking(move || {
            let turned = tick(&job.ledger, job.settle, &job.dir, &metrics);
            let applied = turned.and_then(|()| apply_for_term_ends(&job, &mut checked).map(drop));
            let recovered = applied.and_then(|()| {
                if ticks.is_multiple_of(RECOVERY_EVERY_TICKS) {
                    let ran = job.workflows.recover()?;
                    if !ran.is_empty() {
                        tracing::warn!(?ran, "ran approved effects a failure had left pending");
                    }
                }
                Ok(())
            });
            recovered.map(|()| checked).map_err(|e| (e, metrics))
        })
        .await;
        match outcome {
            Ok(Ok(checked)) => term_ends_checked = checked,
            Ok(Err((error, metrics))) => {
                metrics.failures.inc();
                tracing::error!(
                    error = format!("{error:#}"),
                    "the business day task failed; retrying"
                );
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(error) => tracing::error!(%error, "the business day task stopped"),
        }
    }
}
