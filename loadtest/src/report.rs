//! The report: throughput, latency percentiles per kind, answers by code, errors and
//! the ledger check, as text and JSON, with each histogram as an `.hgrm` file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::Check;
use crate::recorder::Recorded;
use crate::scenario::{Mode, Scenario};
use crate::workload::Kind;

/// Latency percentiles of one kind, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Answers measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

fn ms(micros: u64) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "microseconds of a latency")]
    let micros = micros as f64;
    micros / 1_000.0
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Open or closed loop.
    pub mode: Mode,
    /// How long requests were sent, seconds.
    pub duration_secs: f64,
    /// Terminals signed on.
    pub terminals: usize,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests answered.
    pub answered: u64,
    /// Requests with no usable answer.
    pub failed: u64,
    /// Answers per second over the run.
    pub answers_per_sec: f64,
    /// Approved purchases, top-ups, refunds and reversals: transfers committed.
    pub approved_transfers: u64,
    /// Approved transfers per second over the run.
    pub approved_transfers_per_sec: f64,
    /// Latency by kind, and `all`.
    pub latency: BTreeMap<String, Percentiles>,
    /// Answers by kind and code.
    pub codes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Client errors by kind.
    pub errors: BTreeMap<String, BTreeMap<String, u64>>,
    /// The ledger check, if it ran.
    pub check: Option<Check>,
}

impl Report {
    /// Builds the report of a run.
    #[must_use]
    pub fn new(
        scenario: &Scenario,
        terminals: usize,
        recorded: &Recorded,
        check: Option<Check>,
    ) -> Self {
        let mut latency: BTreeMap<String, Percentiles> = recorded
            .latency
            .iter()
            .map(|(kind, h)| (kind.label().to_owned(), Percentiles::of(h)))
            .collect();
        latency.insert("all".to_owned(), Percentiles::of(&recorded.all));
        let mut codes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((kind, code), count) in &recorded.codes {
            codes.entry(kind.label().to_owned()).or_default().insert(code.clone(), *count);
        }
        let mut errors: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((kind, error), count) in &recorded.errors {
            errors.entry(kind.label().to_owned()).or_default().insert(error.clone(), *count);
        }
        let moves_money = [Kind::Purchase, Kind::TopUp, Kind::Refund, Kind::Reversal];
        let approved_transfers = recorded
            .codes
            .iter()
            .filter(|((kind, code), _)| code == "approved" && moves_money.contains(kind))
            .map(|(_, count)| count)
            .sum();
        #[allow(clippy::cast_precision_loss, reason = "request counts")]
        let per_sec = |count: u64| count as f64 / scenario.duration_secs;
        Self {
            scenario: scenario.name.clone(),
            mode: scenario.mode,
            duration_secs: scenario.duration_secs,
            terminals,
            scheduled: recorded.scheduled.values().sum(),
            answered: recorded.answered,
            failed: recorded.failed,
            answers_per_sec: per_sec(recorded.answered),
            approved_transfers,
            approved_transfers_per_sec: per_sec(approved_transfers),
            latency,
            codes,
            errors,
            check,
        }
    }

    /// Whether the run is sound: every request accounted for and the check (if run)
    /// passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.answered + self.failed == self.scheduled
            && self.check.as_ref().is_none_or(|c| c.passed)
    }

    /// The report as text.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} ({:?} loop): {:.0} s, {} terminals",
            self.scenario, self.mode, self.duration_secs, self.terminals
        );
        let _ = writeln!(
            out,
            "requests: {} scheduled, {} answered, {} without an answer; {:.0} answers/s, {:.0} approved transfers/s",
            self.scheduled,
            self.answered,
            self.failed,
            self.answers_per_sec,
            self.approved_transfers_per_sec
        );
        let _ = writeln!(
            out,
            "\nlatency, ms{}",
            match self.mode {
                Mode::Open => " (from the scheduled send time)",
                Mode::Closed => " (from the send)",
            }
        );
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "kind", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (kind, p) in &self.latency {
            let _ = writeln!(
                out,
                "{kind:<20} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
                p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
        let _ = writeln!(out, "\nanswers by code");
        for (kind, codes) in &self.codes {
            let list: Vec<String> = codes.iter().map(|(code, n)| format!("{code} {n}")).collect();
            let _ = writeln!(out, "{kind:<20} {}", list.join(", "));
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nno usable answer");
            for (kind, errors) in &self.errors {
                let list: Vec<String> = errors.iter().map(|(e, n)| format!("{e} {n}")).collect();
                let _ = writeln!(out, "{kind:<20} {}", list.join(", "));
            }
        }
        match &self.check {
            None => {
                let _ = writeln!(out, "\nledger check: not run");
            }
            Some(check) => {
                let _ = writeln!(
                    out,
                    "\nledger check: {}\n  {} merchants: told of {} fen net sales, the ledger moved {} fen{}\n  card pool: told of {} fen, moved {} fen; unanswered amounts {} fen\n  verify: {}",
                    if check.passed { "PASSED" } else { "FAILED" },
                    check.merchants_checked,
                    check.told_net_sales_fen,
                    check.ledger_net_sales_fen,
                    if check.mismatches.is_empty() {
                        String::new()
                    } else {
                        format!("; MISMATCHES {:?}", check.mismatches)
                    },
                    check.told_card_pool_move_fen,
                    check.ledger_card_pool_move_fen,
                    check.unknown_fen,
                    if check.verify_clean {
                        "clean".to_owned()
                    } else {
                        format!("PROBLEMS {:?}", check.verify_problems)
                    },
                );
            }
        }
        out
    }

    /// Writes `report.txt`, `report.json`, `latency.hgrm` and one `.hgrm` per kind.
    ///
    /// # Errors
    /// If a file cannot be written.
    pub fn write(&self, dir: &Path, recorded: &Recorded) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))
        };
        write("report.txt", &self.text())?;
        write("report.json", &serde_json::to_string_pretty(self).context("encoding the report")?)?;
        write("latency.hgrm", &hgrm(&recorded.all))?;
        for (kind, histogram) in &recorded.latency {
            write(&format!("latency-{}.hgrm", kind.label()), &hgrm(histogram))?;
        }
        Ok(())
    }
}

/// A histogram as HdrHistogram's percentile distribution text (`.hgrm`), values in
/// milliseconds, as plotted by HdrHistogram's own plotter.
#[must_use]
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            ms(step.value_iterated_to()),
            quantile,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]\n#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.mean() / 1_000.0,
        histogram.stdev() / 1_000.0,
        ms(histogram.max()),
        histogram.len(),
        histogram.buckets(),
        histogram.distinct_values(),
    );
    out
}
