//! What the run saw: latencies per kind (HdrHistogram, microseconds), answers by code,
//! client errors, a per-second timeline, and the money the terminals were told moved.
//!
//! Latency is measured from the moment a request was *scheduled*, not sent: when the
//! server stalls, requests queue behind it in the generator and the wait counts. That
//! is the coordinated-omission correction; a closed-loop run measures from the send.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::workload::Kind;

/// Slowest latency a histogram holds, µs; slower answers are recorded at it.
const LATENCY_US_MAX: u64 = 120_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[must_use]
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// How one request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// An answer with this code (`duplicate` for a retry's copy).
    Answered(String),
    /// No usable answer: the client's error.
    Failed(String),
}

/// What the terminals were told moved, in fen, per merchant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Money {
    /// Approved purchases, by merchant.
    pub purchases: HashMap<u32, i64>,
    /// Approved refunds, by merchant.
    pub refunds: HashMap<u32, i64>,
    /// Approved reversals of purchases, by merchant.
    pub reversals: HashMap<u32, i64>,
    /// Approved top-ups.
    pub top_ups_fen: i64,
    /// Purchases, refunds and reversals whose outcome is unknown (no answer), by
    /// merchant: the ledger may or may not hold them.
    pub unknown: HashMap<u32, i64>,
    /// Top-ups whose outcome is unknown.
    pub unknown_top_ups_fen: i64,
}

/// A money effect of one answered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A purchase approved at a merchant.
    Purchase(u32, i64),
    /// A refund approved at a merchant.
    Refund(u32, i64),
    /// A purchase at a merchant reversed.
    Reversal(u32, i64),
    /// A top-up approved.
    TopUp(i64),
    /// A request at a merchant with no answer (amount it may have moved).
    Unknown(u32, i64),
    /// A top-up with no answer.
    UnknownTopUp(i64),
}

#[derive(Debug)]
struct Inner {
    latency: BTreeMap<Kind, Histogram<u64>>,
    all: Histogram<u64>,
    timeline: Vec<Histogram<u64>>,
    codes: BTreeMap<(Kind, String), u64>,
    errors: BTreeMap<(Kind, String), u64>,
    scheduled: BTreeMap<Kind, u64>,
    answered: u64,
    failed: u64,
    approved: u64,
    money: Money,
}

/// Collects results from every request task.
#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

impl Inner {
    fn new() -> Self {
        Self {
            latency: BTreeMap::new(),
            all: histogram(),
            timeline: Vec::new(),
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            answered: 0,
            failed: 0,
            approved: 0,
            money: Money::default(),
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner::new()) }
    }
}

/// Counts so far, for the progress line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests answered.
    pub answered: u64,
    /// Answers that approved.
    pub approved: u64,
    /// Requests with no usable answer.
    pub failed: u64,
    /// p99 latency so far, µs.
    pub p99_us: u64,
}

/// Everything recorded, at the end.
#[derive(Debug)]
pub struct Recorded {
    /// Latency per kind, µs.
    pub latency: BTreeMap<Kind, Histogram<u64>>,
    /// Latency of every request, µs.
    pub all: Histogram<u64>,
    /// Latency of the requests scheduled in each second of the run.
    pub timeline: Vec<Histogram<u64>>,
    /// Answers by kind and code.
    pub codes: BTreeMap<(Kind, String), u64>,
    /// Client errors by kind and message.
    pub errors: BTreeMap<(Kind, String), u64>,
    /// Requests scheduled, by kind.
    pub scheduled: BTreeMap<Kind, u64>,
    /// Answers.
    pub answered: u64,
    /// Requests with no usable answer.
    pub failed: u64,
    /// Answers that approved.
    pub approved: u64,
    /// The money the terminals were told moved.
    pub money: Money,
}

impl Recorder {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request as scheduled.
    pub fn scheduled(&self, kind: Kind) {
        *self.inner().scheduled.entry(kind).or_default() += 1;
    }

    /// Records how a request ended, `latency` after it was scheduled at
    /// `at_secs` into the run.
    pub fn record(&self, kind: Kind, at_secs: f64, latency: Duration, outcome: Outcome) {
        let micros =
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_US_MAX);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "seconds into a bounded run"
        )]
        let second = at_secs.max(0.0) as usize;
        let mut inner = self.inner();
        match outcome {
            Outcome::Answered(code) => {
                inner.answered += 1;
                if code == "approved" {
                    inner.approved += 1;
                }
                inner.latency.entry(kind).or_insert_with(histogram).saturating_record(micros);
                inner.all.saturating_record(micros);
                if inner.timeline.len() <= second {
                    inner.timeline.resize_with(second + 1, histogram);
                }
                inner.timeline[second].saturating_record(micros);
                *inner.codes.entry((kind, code)).or_default() += 1;
            }
            Outcome::Failed(error) => {
                inner.failed += 1;
                *inner.errors.entry((kind, error)).or_default() += 1;
            }
        }
    }

    /// Adds a money effect.
    pub fn money(&self, effect: Effect) {
        let mut inner = self.inner();
        let money = &mut inner.money;
        match effect {
            Effect::Purchase(m, fen) => *money.purchases.entry(m).or_default() += fen,
            Effect::Refund(m, fen) => *money.refunds.entry(m).or_default() += fen,
            Effect::Reversal(m, fen) => *money.reversals.entry(m).or_default() += fen,
            Effect::TopUp(fen) => money.top_ups_fen += fen,
            Effect::Unknown(m, fen) => *money.unknown.entry(m).or_default() += fen,
            Effect::UnknownTopUp(fen) => money.unknown_top_ups_fen += fen,
        }
    }

    /// Counts so far.
    #[must_use]
    pub fn progress(&self) -> Progress {
        let inner = self.inner();
        Progress {
            scheduled: inner.scheduled.values().sum(),
            answered: inner.answered,
            approved: inner.approved,
            failed: inner.failed,
            p99_us: inner.all.value_at_quantile(0.99),
        }
    }

    /// Everything recorded so far; the recorder starts afresh (a late answer after
    /// the run is not counted).
    #[must_use]
    pub fn finish(&self) -> Recorded {
        let inner = std::mem::replace(&mut *self.inner(), Inner::new());
        Recorded {
            latency: inner.latency,
            all: inner.all,
            timeline: inner.timeline,
            codes: inner.codes,
            errors: inner.errors,
            scheduled: inner.scheduled,
            answered: inner.answered,
            failed: inner.failed,
            approved: inner.approved,
            money: inner.money,
        }
    }
}
