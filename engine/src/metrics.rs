//! The engine's Prometheus metrics, defined in one place.
//!
//! Every series follows Prometheus naming (base units, `_total` for counters,
//! `_seconds` for durations) and every label is bounded: message kinds, answer codes,
//! transfer kinds, shard numbers and fixed reason names, never a card, terminal or
//! merchant id. The hot paths touch pre-resolved counters (an array index, one atomic
//! add); gauges that mirror state (queue depths, the card pool, RocksDB properties) are
//! read when `/metrics` is scraped, by [`crate::Ledger::refresh_metrics`].

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use onecard_protocol::{AnswerCode, MessageType};

use crate::journal::TransferKind;

/// Latency buckets in seconds: 50 µs to 5 s, dense where the lunch peak lives.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Batch size buckets, in requests.
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// The request kinds a terminal can send, as metric labels, in [`MessageType`] order;
/// the last is for frames refused before their type was known.
const REQUEST_KINDS: [&str; 11] = [
    "sign_on",
    "heartbeat",
    "purchase",
    "top_up",
    "balance_inquiry",
    "refund",
    "reversal",
    "offline_upload",
    "blacklist_download",
    "sign_off",
    "unknown",
];

/// Why the front door closed a terminal connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The terminal closed it, or signed off.
    Client,
    /// Nothing arrived within the idle timeout.
    Idle,
    /// A started frame did not finish within the read timeout.
    SlowFrame,
    /// The framing was lost (oversize length, wrong version, truncated frame).
    Framing,
    /// Repeated frames from unknown terminals.
    UnknownTerminal,
    /// Answers could not be written within the write timeout (a client that does not
    /// read).
    SlowReader,
    /// A socket error.
    Io,
    /// The terminal's key was rotated or the terminal disabled under the session.
    Revoked,
    /// The server is shutting down.
    Shutdown,
    /// This node can no longer be sure it leads its cell: it answered a redirect.
    NotLeader,
}

impl CloseReason {
    const ALL: [Self; 10] = [
        Self::Client,
        Self::Idle,
        Self::SlowFrame,
        Self::Framing,
        Self::UnknownTerminal,
        Self::SlowReader,
        Self::Io,
        Self::Revoked,
        Self::Shutdown,
        Self::NotLeader,
    ];

    /// The label value.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Idle => "idle",
            Self::SlowFrame => "slow_frame",
            Self::Framing => "framing",
            Self::UnknownTerminal => "unknown_terminal",
            Self::SlowReader => "slow_reader",
            Self::Io => "io",
            Self::Revoked => "revoked",
            Self::Shutdown => "shutdown",
            Self::NotLeader => "not_leader",
        }
    }
}

pub use onecard_protocol::snake_case;

/// The label of an answer code.
#[must_use]
pub fn code_label(code: AnswerCode) -> String {
    snake_case(code)
}

/// The index of a request kind in [`REQUEST_KINDS`]; `unknown` for anything else.
fn kind_index(message_type: Option<MessageType>) -> usize {
    match message_type {
        Some(t) if (0x0001..=0x000A).contains(&t.to_wire()) => usize::from(t.to_wire() - 1),
        _ => REQUEST_KINDS.len() - 1,
    }
}

/// Every metric the engine keeps, and the registry they are gathered from.
pub struct Metrics {
    registry: Registry,
    /// Answers sent to terminals, by request kind and answer code.
    requests: Vec<IntCounter>,
    /// Time from a frame's arrival to its answer being handed to the socket.
    request_seconds: Vec<Histogram>,
    /// Committed transfers by kind.
    transfers: Vec<IntCounter>,
    /// Time one shard batch spends in its synced RocksDB write.
    pub commit_seconds: Histogram,
    /// Time one checkpoint write (balances, or an index run) takes.
    pub checkpoint_seconds: Histogram,
    /// Checkpoint writes (balances and index runs) that landed.
    pub checkpoints_total: IntCounter,
    /// Requests per committed batch.
    pub batch_requests: Histogram,
    /// Requests waiting in each shard's queue (refreshed at scrape).
    pub shard_queue_depth: IntGaugeVec,
    /// 1 for a shard that refuses work after a failed write (refreshed at scrape).
    pub shard_poisoned: IntGaugeVec,
    /// Terminal connections open now.
    pub connections_open: IntGauge,
    /// Terminal connections accepted since start.
    pub connections_accepted: IntCounter,
    /// The cap on terminal connections served at once.
    pub connections_max: IntGauge,
    /// Times every connection slot was taken, so new connections waited in the
    /// kernel's backlog.
    pub connections_at_cap: IntCounter,
    /// Terminal connections closed, by reason.
    connections_closed: Vec<IntCounter>,
    /// Frames refused with a `Reject`, by answer code.
    frames_refused: Vec<IntCounter>,
    /// The card pool: the sum of every card balance, in fen (refreshed at scrape).
    pub card_pool_fen: IntGauge,
    /// Cards known (refreshed at scrape).
    pub cards: IntGauge,
    /// Card accounts a failed write left in doubt (refreshed at scrape).
    pub cards_in_doubt: IntGauge,
    /// Terminals with a signed-on session now.
    pub terminals_signed_on: IntGauge,
    /// Terminals enabled to post (their merchant too), read at each scrape.
    pub terminals_enabled: IntGauge,
    /// Signed-on terminals holding a blacklist older than the newest, read at each
    /// scrape.
    pub terminals_blacklist_behind: IntGauge,
    /// The business date as `yyyymmdd` (refreshed at scrape).
    pub business_date: IntGauge,
    /// The newest blacklist version (refreshed at scrape).
    pub blacklist_version: IntGauge,
    /// RocksDB: 1 while writes are stopped by compaction debt.
    pub rocksdb_write_stopped: IntGauge,
    /// RocksDB: the rate writes are delayed to, bytes per second (0 when not delayed).
    pub rocksdb_delayed_write_rate_bytes: IntGauge,
    /// RocksDB: bytes compaction estimates it still has to rewrite, all families.
    pub rocksdb_pending_compaction_bytes: IntGauge,
    /// RocksDB: live SST file bytes, all families.
    pub rocksdb_sst_bytes: IntGauge,
    /// RocksDB: memtable bytes, all families.
    pub rocksdb_memtable_bytes: IntGauge,
    /// RocksDB: background errors since open.
    pub rocksdb_background_errors: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Builds and registers one metric; registration only fails on a duplicate name, a
/// bug caught by the first test that opens a ledger.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl Metrics {
    /// Creates every metric in a fresh registry, with the process collector (CPU,
    /// memory, file descriptors) beside them.
    ///
    /// # Panics
    /// If a metric definition is invalid (a bug, caught by any test).
    #[must_use]
    pub fn new(shards: u8) -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("the process collector registers once");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect(name))
        };
        let gauge =
            |name: &str, help: &str| register(&registry, IntGauge::new(name, help).expect(name));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect(name))
        };

        let requests_vec = counter_vec(
            "onecard_terminal_requests_total",
            "Answers sent to terminals, by request kind and answer code.",
            &["kind", "code"],
        );
        let codes = AnswerCode::ALL;
        let mut requests = Vec::with_capacity(REQUEST_KINDS.len() * codes.len());
        for kind in REQUEST_KINDS {
            for code in codes {
                requests.push(requests_vec.with_label_values(&[kind, &code_label(*code)]));
            }
        }
        let latency = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "onecard_terminal_request_duration_seconds",
                    "Time from a request frame's arrival to its answer being written, by kind.",
                )
                .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
                &["kind"],
            )
            .expect("latency histogram"),
        );
        let request_seconds =
            REQUEST_KINDS.iter().map(|kind| latency.with_label_values(&[kind])).collect();
        let transfers_vec = counter_vec(
            "onecard_transfers_total",
            "Transfers committed to the journal, by kind.",
            &["kind"],
        );
        let transfers = TransferKind::ALL
            .iter()
            .map(|k| transfers_vec.with_label_values(&[k.label()]))
            .collect();
        let commit_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "onecard_commit_duration_seconds",
                    "Time one shard batch spends in its synced RocksDB write.",
                )
                .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            )
            .expect("commit histogram"),
        );
        let checkpoint_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "onecard_checkpoint_duration_seconds",
                    "Time one checkpoint write (changed balances, or an index run) takes.",
                )
                .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            )
            .expect("checkpoint histogram"),
        );
        let batch_requests = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "onecard_batch_requests",
                    "Requests decided in one shard batch.",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )
            .expect("batch histogram"),
        );
        let shard_queue_depth = gauge_vec(
            "onecard_shard_queue_depth",
            "Requests waiting in a shard's queue.",
            &["shard"],
        );
        let shard_poisoned = gauge_vec(
            "onecard_shard_poisoned",
            "1 when a shard (or the control plane, shard=\"control\") refuses work after \
             a failed write; it needs a restart.",
            &["shard"],
        );
        for shard in 0..shards {
            let label = shard.to_string();
            shard_queue_depth.with_label_values(&[&label]).set(0);
            shard_poisoned.with_label_values(&[&label]).set(0);
        }
        shard_poisoned.with_label_values(&["control"]).set(0);
        let closed_vec = counter_vec(
            "onecard_terminal_connections_closed_total",
            "Terminal connections closed, by reason.",
            &["reason"],
        );
        let connections_closed =
            CloseReason::ALL.iter().map(|r| closed_vec.with_label_values(&[r.label()])).collect();
        let refused_vec = counter_vec(
            "onecard_terminal_frames_refused_total",
            "Frames answered with a Reject, by reason.",
            &["reason"],
        );
        let frames_refused =
            codes.iter().map(|code| refused_vec.with_label_values(&[&code_label(*code)])).collect();
        Self {
            requests,
            request_seconds,
            transfers,
            commit_seconds,
            checkpoint_seconds,
            checkpoints_total: register(
                &registry,
                IntCounter::new(
                    "onecard_checkpoints_total",
                    "Checkpoint writes (changed balances and index runs) that landed.",
                )
                .expect("checkpoints counter"),
            ),
            batch_requests,
            shard_queue_depth,
            shard_poisoned,
            connections_open: gauge(
                "onecard_terminal_connections_open",
                "Terminal connections open now.",
            ),
            connections_accepted: register(
                &registry,
                IntCounter::new(
                    "onecard_terminal_connections_accepted_total",
                    "Terminal connections accepted.",
                )
                .expect("accepted counter"),
            ),
            connections_max: gauge(
                "onecard_terminal_connections_max",
                "The cap on terminal connections served at once (terminal_connections_max).",
            ),
            connections_at_cap: register(
                &registry,
                IntCounter::new(
                    "onecard_terminal_connections_at_cap_total",
                    "Times every terminal connection slot was taken, so new connections \
                     waited in the kernel's backlog.",
                )
                .expect("at-cap counter"),
            ),
            connections_closed,
            frames_refused,
            card_pool_fen: gauge(
                "onecard_card_pool_fen",
                "The card pool: the sum of every card balance, in fen.",
            ),
            cards: gauge("onecard_cards", "Cards known to the ledger, current and retired."),
            cards_in_doubt: gauge(
                "onecard_cards_in_doubt",
                "Card accounts a failed write left in doubt: refused until a restart.",
            ),
            terminals_signed_on: gauge(
                "onecard_terminals_signed_on",
                "Terminals with a signed-on session now.",
            ),
            terminals_enabled: gauge(
                "onecard_terminals_enabled",
                "Terminals enabled to post, with their merchant enabled.",
            ),
            terminals_blacklist_behind: gauge(
                "onecard_terminals_blacklist_behind",
                "Signed-on terminals whose blacklist is older than the newest version.",
            ),
            business_date: gauge("onecard_business_date", "The business date, as yyyymmdd."),
            blacklist_version: gauge(
                "onecard_blacklist_version",
                "The newest blacklist version terminals should hold.",
            ),
            rocksdb_write_stopped: gauge(
                "onecard_rocksdb_write_stopped",
                "1 while RocksDB stops writes for compaction debt.",
            ),
            rocksdb_delayed_write_rate_bytes: gauge(
                "onecard_rocksdb_delayed_write_rate_bytes",
                "The rate RocksDB delays writes to, bytes per second; 0 when not delayed.",
            ),
            rocksdb_pending_compaction_bytes: gauge(
                "onecard_rocksdb_pending_compaction_bytes",
                "Bytes RocksDB estimates compaction still has to rewrite.",
            ),
            rocksdb_sst_bytes: gauge("onecard_rocksdb_sst_bytes", "Live SST file bytes."),
            rocksdb_memtable_bytes: gauge(
                "onecard_rocksdb_memtable_bytes",
                "Bytes held in RocksDB memtables.",
            ),
            rocksdb_background_errors: gauge(
                "onecard_rocksdb_background_errors",
                "RocksDB background errors since the store was opened.",
            ),
            registry,
        }
    }

    /// The registry, for `/metrics` and for metrics defined outside the engine.
    #[must_use]
    pub const fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts an answer sent to a terminal and the time it took.
    pub fn answered(&self, kind: Option<MessageType>, code: AnswerCode, seconds: f64) {
        let kind = kind_index(kind);
        let code_index = AnswerCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        if let Some(counter) = self.requests.get(kind * AnswerCode::ALL.len() + code_index) {
            counter.inc();
        }
        if let Some(histogram) = self.request_seconds.get(kind) {
            histogram.observe(seconds);
        }
    }

    /// Counts a frame refused with a `Reject` carrying `code`.
    pub fn refused(&self, code: AnswerCode) {
        if let Some(counter) = AnswerCode::ALL
            .iter()
            .position(|c| *c == code)
            .and_then(|index| self.frames_refused.get(index))
        {
            counter.inc();
        }
    }

    /// Counts a closed connection.
    pub fn closed(&self, reason: CloseReason) {
        if let Some(counter) = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|index| self.connections_closed.get(index))
        {
            counter.inc();
        }
    }

    /// Counts committed transfers of `kind`.
    pub fn committed(&self, kind: TransferKind, count: u64) {
        if let Some(counter) =
            TransferKind::ALL.iter().position(|k| *k == kind).and_then(|i| self.transfers.get(i))
        {
            counter.inc_by(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(code_label(AnswerCode::Approved), "approved");
        assert_eq!(code_label(AnswerCode::InsufficientFunds), "insufficient_funds");
        assert_eq!(code_label(AnswerCode::BadMac), "bad_mac");
    }

    #[test]
    fn request_kinds_follow_the_wire_numbers() {
        assert_eq!(REQUEST_KINDS[kind_index(Some(MessageType::SignOn))], "sign_on");
        assert_eq!(REQUEST_KINDS[kind_index(Some(MessageType::Purchase))], "purchase");
        assert_eq!(REQUEST_KINDS[kind_index(Some(MessageType::SignOff))], "sign_off");
        assert_eq!(REQUEST_KINDS[kind_index(Some(MessageType::Reject))], "unknown");
        assert_eq!(REQUEST_KINDS[kind_index(None)], "unknown");
    }

    #[test]
    fn every_series_is_exported() {
        let metrics = Metrics::new(2);
        metrics.answered(Some(MessageType::Purchase), AnswerCode::Approved, 0.001);
        metrics.refused(AnswerCode::BadMac);
        metrics.closed(CloseReason::Idle);
        metrics.committed(TransferKind::Purchase, 3);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&metrics.registry().gather())
            .expect("encodes");
        assert!(
            text.contains(r#"onecard_terminal_requests_total{code="approved",kind="purchase"} 1"#)
        );
        assert!(text.contains(r#"onecard_terminal_frames_refused_total{reason="bad_mac"} 1"#));
        assert!(text.contains(r#"onecard_terminal_connections_closed_total{reason="idle"} 1"#));
        assert!(text.contains(r#"onecard_transfers_total{kind="purchase"} 3"#));
        assert!(text.contains(r#"onecard_shard_poisoned{shard="1"} 0"#));
    }
}
