//! The ledger: opening it (rebuilding memory from disk), the terminal entry point, the
//! card centre's control operations, and the queries.
//!
//! Terminal requests go to the shard of the terminal's merchant through a bounded
//! queue ([`Ledger::submit`]); see [`crate::shard`] for how a batch is decided and
//! committed. Control operations (card lifecycle, merchants, terminals) are rare and
//! run on the caller's thread: each takes the card account's mutex (so no shard
//! decides against a half-changed card), then the control journal's mutex, writes
//! one synced batch to the control journal and the control column family, and only
//! then changes memory.
//!
//! # Layout
//! - this file — what the control plane adds to the state its threads share
//!   ([`crate::shared`] holds that state and the settings), health and metrics,
//!   closing.
//! - `open` — opening and recovery: the checkpoint, the control records, the shards.
//! - `submit` — the terminal entry point.
//! - `day` — the business date and the cutover.
//! - `directory` — merchants and terminals.
//! - `cards` — the card centre's operations on cards, subsidies, the term-end expiry.
//! - `control` — the control plane's one write.
//! - `hall` — the service hall's credentials, one per card.
//! - `queries` — reads, and verify.
//! - `error` — why the ledger does not open, and why a control operation is refused.

mod cards;
mod control;
mod day;
mod directory;
mod error;
mod hall;
mod open;
mod queries;
mod submit;

pub use crate::shared::LedgerConfig;
use crate::shared::Shared;
use cards::check_name;
pub use cards::{OpenCard, SubsidyRow};
pub(crate) use control::ControlTransfer;
pub use day::Cutover;
use error::corrupt;
pub use error::{ControlError, LedgerError};
pub use hall::HallCredential;
pub use queries::{CardView, Statement, StatementCursor};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam::channel::{Sender, TrySendError, bounded};
use onecard_protocol::limits::SEQUENCE_JUMP_MAX;
use onecard_protocol::message::{
    BlacklistAnswer, BlacklistEntry, HeartbeatAnswer, SignOffAnswer, SignOnAnswer,
};
use onecard_protocol::{
    Answer, AnswerCode, Body, CardState, Channel, MealPeriod, Pin, Request, TerminalKey,
};
use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

use crate::account::{AccountId, AccountKind};
use crate::audit::{AuditEntry, AuditLog, AuditRecord};
use crate::cards::Purse;
use crate::cards::{
    AccountRecord, AccountState, CardAccount, CardEntry, CardMoney, CardTable, CardType,
    LimitOverrides, Limits, PinHash,
};
use crate::chain::{ChainError, ChainStarts};
use crate::checkpoint::{Committed, Intervals, Message, RecoverError};
use crate::date::{BusinessDate, now_ms};
use crate::directory::{Directory, MerchantCategory, MerchantRecord, Terminal, TerminalRecord};
use crate::journal::{
    Batch, CHECKPOINT_JOURNAL, CONTROL_JOURNAL, Entry, Tail, Transfer, TransferKind, journal_of,
};
use crate::limits::{
    CHECKPOINT_QUEUE_BATCHES_MAX, NAME_BYTES_MAX, SHARD_QUEUE_REQUESTS_MAX, STATEMENT_PAGE_MAX,
    SUBSIDY_BATCH_ROWS_MAX,
};
use crate::metrics::Metrics;
use crate::postings::{Postings, index_key};
use crate::sealing::{MasterKey, SealError};
use crate::shard::{
    Command, RecoveredShard, ShardStats, ShardWriter, Submission, TerminalState, rebuild_window,
    refusal,
};
use crate::storage::{FaultPlan, StorageError};
use crate::store::{
    CF_CONTROL, CF_INDEX, CF_META, KEY_BUSINESS_DATE, OpenError, Store, control_key, journal_cf,
    prefixed_key, shard_key,
};

/// A shard's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHealth {
    /// The shard.
    pub shard: u8,
    /// A write failed; the shard refuses work until the store is reopened.
    pub poisoned: bool,
    /// Requests waiting.
    pub queue_depth: usize,
    /// Batches committed since open.
    pub batches: u64,
    /// Requests answered since open.
    pub requests: u64,
    /// Transfers committed since open.
    pub transfers: u64,
    /// Time in RocksDB writes since open, µs.
    pub commit_us_total: u64,
}

/// Counters the control journal hands out.
#[derive(Debug)]
pub(crate) struct ControlState {
    /// Where the control journal stands after its last durable batch.
    pub tail: Tail,
    next_account: u64,
    next_merchant: u32,
    next_terminal: u32,
    blacklist_version: u64,
}

/// What the control plane keeps beside the state every thread shares: the audit log,
/// the control journal's counters, the cutover's lock, the settled dates and the
/// blacklist version. Dereferences to that [`Shared`] state.
pub(crate) struct LedgerShared {
    /// What the shards share with the control plane.
    pub base: Arc<Shared>,
    audit: AuditLog,
    /// Held by whoever is turning the day.
    cutover: Mutex<()>,
    /// Every settled business date, read from the settlement records at open and
    /// kept as each date settles; held by whoever is settling a date.
    pub settled: Mutex<std::collections::BTreeSet<BusinessDate>>,
    blacklist_version: AtomicU64,
    control: Mutex<ControlState>,
}

impl std::ops::Deref for LedgerShared {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.base
    }
}

/// The ledger: shards, cards, merchants and terminals over one store.
pub struct Ledger {
    pub(crate) shared: Arc<LedgerShared>,
    queues: Vec<Sender<Command>>,
    threads: Vec<JoinHandle<()>>,
    /// The checkpointer's thread, stopped after the shards' at close.
    checkpointer: Option<JoinHandle<()>>,
    stats: Vec<Arc<ShardStats>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("store", &self.shared.store).finish_non_exhaustive()
    }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    bytes.try_into().ok().map(u32::from_be_bytes)
}

impl Ledger {
    /// The current blacklist version.
    #[must_use]
    pub fn blacklist_version(&self) -> u64 {
        self.shared.blacklist_version.load(Ordering::Acquire)
    }

    /// Number of shards.
    #[must_use]
    pub fn shards(&self) -> u8 {
        self.shared.store.shards()
    }

    /// How the ledger runs.
    #[must_use]
    pub fn config(&self) -> &LedgerConfig {
        &self.shared.config
    }

    /// The store, for verification and backups.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Arms a crash point inside the checkpointer: the process aborts there (tests,
    /// and `serve` under `ONECARD_CHECKPOINT_CRASH`).
    pub fn arm_checkpoint_crash(&self, plan: crate::checkpoint::CrashPlan) {
        tracing::warn!(?plan, "checkpoint crash armed");
        let _ = self.shared.checkpoint.send(Message::ArmCrash(plan));
    }

    /// Arms a storage fault (`storage.rs`): the write it picks fails as a disk's
    /// would, so tests can watch the journal poison itself and the restart recover.
    pub fn inject_fault(&self, plan: FaultPlan) {
        self.shared.store.arm_fault(plan);
    }

    /// Whether a failed write has poisoned the control plane (it refuses control
    /// writes until restart; the shards go on).
    #[must_use]
    pub fn control_poisoned(&self) -> bool {
        self.shared.store.is_poisoned(CONTROL_JOURNAL)
    }

    /// Each shard's health.
    #[must_use]
    pub fn health(&self) -> Vec<ShardHealth> {
        self.stats
            .iter()
            .zip(&self.queues)
            .zip(0u8..)
            .map(|((stats, queue), shard)| ShardHealth {
                shard,
                poisoned: self.shared.store.is_poisoned(shard),
                queue_depth: queue.len(),
                batches: stats.batches.load(Ordering::Relaxed),
                requests: stats.requests.load(Ordering::Relaxed),
                transfers: stats.transfers.load(Ordering::Relaxed),
                commit_us_total: stats.commit_us_total.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The engine's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Brings the gauges that mirror state up to date: shard queues and health, the
    /// card pool, the business date, and RocksDB's health. Called when `/metrics` is
    /// scraped.
    pub fn refresh_metrics(&self) {
        let metrics = &self.shared.metrics;
        for health in self.health() {
            let shard = health.shard.to_string();
            let depth = i64::try_from(health.queue_depth).unwrap_or(i64::MAX);
            metrics.shard_queue_depth.with_label_values(&[&shard]).set(depth);
            metrics.shard_poisoned.with_label_values(&[&shard]).set(i64::from(health.poisoned));
        }
        metrics
            .shard_poisoned
            .with_label_values(&["control"])
            .set(i64::from(self.control_poisoned()));
        let checkpoint_poisoned = self.shared.store.is_poisoned(CHECKPOINT_JOURNAL);
        metrics
            .shard_poisoned
            .with_label_values(&["checkpoint"])
            .set(i64::from(checkpoint_poisoned));
        let in_doubt = self.shared.cards.in_doubt_count();
        metrics.cards_in_doubt.set(i64::try_from(in_doubt).unwrap_or(i64::MAX));
        match self.card_pool_fen() {
            Ok(total) => metrics.card_pool_fen.set(total),
            Err(error) => tracing::warn!(%error, "reading the card pool for metrics"),
        }
        metrics.cards.set(i64::try_from(self.shared.cards.len()).unwrap_or(i64::MAX));
        metrics.business_date.set(i64::from(self.business_date().to_yyyymmdd()));
        let newest = self.blacklist_version();
        metrics.blacklist_version.set(i64::try_from(newest).unwrap_or(0));
        let (mut enabled, mut behind) = (0i64, 0i64);
        for terminal in self.shared.directory.terminals() {
            enabled += i64::from(terminal.is_enabled());
            let signed_on = terminal.sessions.load(Ordering::Relaxed) > 0;
            behind +=
                i64::from(signed_on && terminal.blacklist_version.load(Ordering::Relaxed) < newest);
        }
        metrics.terminals_enabled.set(enabled);
        metrics.terminals_blacklist_behind.set(behind);
        let db = self.shared.store.db();
        let sum = |property: &str| -> i64 {
            self.shared
                .store
                .family_names()
                .iter()
                .filter_map(|name| {
                    db.property_int_value_cf(self.shared.store.cf(name), property).ok().flatten()
                })
                .map(|value| i64::try_from(value).unwrap_or(i64::MAX))
                .fold(0i64, i64::saturating_add)
        };
        let db_int = |property: &str| -> i64 {
            db.property_int_value(property)
                .ok()
                .flatten()
                .map_or(0, |value| i64::try_from(value).unwrap_or(i64::MAX))
        };
        metrics.rocksdb_write_stopped.set(db_int("rocksdb.is-write-stopped"));
        metrics.rocksdb_delayed_write_rate_bytes.set(db_int("rocksdb.actual-delayed-write-rate"));
        metrics.rocksdb_background_errors.set(db_int("rocksdb.background-errors"));
        metrics
            .rocksdb_pending_compaction_bytes
            .set(sum("rocksdb.estimate-pending-compaction-bytes"));
        metrics.rocksdb_sst_bytes.set(sum("rocksdb.live-sst-files-size"));
        metrics.rocksdb_memtable_bytes.set(sum("rocksdb.cur-size-all-mem-tables"));
    }

    /// Appends a record to the audit log (synced for a change; see [`crate::audit`]).
    ///
    /// # Errors
    /// If the write fails.
    pub fn audit(&self, entry: &AuditEntry<'_>) -> Result<AuditRecord, StorageError> {
        self.shared.audit.append(&self.shared.store, entry)
    }

    /// Audit records newest first, below sequence `before`.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, rocksdb::Error> {
        AuditLog::page(&self.shared.store, before, limit)
    }

    /// The card pool: the control total of every card movement committed, in fen. It
    /// equals the sum of all card balances (`verify` proves it).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn card_pool_fen(&self) -> Result<i64, rocksdb::Error> {
        Ok(self.shared.totals().card_pool_fen())
    }

    // ----- merchants and terminals -----

    // ----- cards -----

    pub(crate) fn control(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.shared.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ----- queries -----

    /// Stops taking requests, lets every shard finish and commit what is queued, and
    /// closes the store.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.queues.is_empty() && self.threads.is_empty() {
            return;
        }
        self.queues.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
        // Every batch is in; the last checkpoint and index run reflect the journals
        // to their ends, so the next open replays nothing.
        let _ = self.shared.checkpoint.send(Message::Stop);
        if let Some(thread) = self.checkpointer.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpointer panicked");
        }
        // Everything is already durable in the log; flushing the memtables now means
        // the next open does not replay it.
        let store = &self.shared.store;
        let families: Vec<&str> = store.family_names().iter().map(String::as_str).collect();
        for name in families {
            if let Err(error) = store.db().flush_cf(store.cf(name)) {
                tracing::warn!(%error, family = name, "flush at close failed; the next open replays the log");
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}
