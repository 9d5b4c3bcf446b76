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
//! - this file — the ledger's settings, what its threads share, health and metrics,
//!   closing.
//! - `open` — opening and recovery: the checkpoint, the control records, the shards.
//! - `submit` — the terminal entry point.
//! - `day` — the business date and the cutover.
//! - `directory` — merchants and terminals.
//! - `cards` — the card centre's operations on cards, subsidies, the term-end expiry.
//! - `control` — the control plane's one write.
//! - `queries` — reads, and verify.
//! - `error` — why the ledger does not open, and why a control operation is refused.

mod cards;
mod control;
mod day;
mod directory;
mod error;
mod open;
mod queries;
mod submit;

use cards::check_name;
pub use cards::{OpenCard, SubsidyRow};
pub(crate) use control::ControlTransfer;
pub use day::Cutover;
use error::corrupt;
pub use error::{ControlError, LedgerError};
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
use crate::chain::{Chain, ChainError, ChainStarts, Seal};
use crate::checkpoint::{Committed, IndexWatermarks, Intervals, Message, RecoverError, Totals};
use crate::date::{BusinessDate, Clock, MealHours, now_ms};
use crate::directory::{Directory, MerchantCategory, MerchantRecord, Terminal, TerminalRecord};
use crate::journal::{
    Batch, CHECKPOINT_JOURNAL, CONTROL_JOURNAL, Entry, Transfer, TransferKind, batch_key,
    first_transfer_id, journal_of, read_transfer, seek_key,
};
use crate::limits::{
    CHECKPOINT_INTERVAL_MS_DEFAULT, CHECKPOINT_QUEUE_BATCHES_MAX, INDEX_INTERVAL_MS_DEFAULT,
    NAME_BYTES_MAX, SHARD_QUEUE_REQUESTS_MAX, SHARDS_MAX, STATEMENT_PAGE_MAX,
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
    CF_CONTROL, CF_INDEX, CF_META, KEY_BUSINESS_DATE, KEY_CLOSED_THROUGH, OpenError, Store,
    control_key, journal_cf, prefixed_key, shard_key,
};

/// How a ledger runs.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Shards for a new store; an existing store keeps its own count.
    pub shards: usize,
    /// Sync every commit to disk before answering. Off only in benchmarks that say so.
    pub sync: bool,
    /// The card centre's time zone, minutes east of UTC (China: 480).
    pub utc_offset_minutes: i32,
    /// Minutes after local midnight at which the business day turns.
    pub cutover_minutes: u32,
    /// The clock commits and business dates are stamped with.
    pub clock: Clock,
    /// Where one meal period ends and the next begins, for settlement.
    pub meal_hours: MealHours,
    /// Seals terminal keys at rest (`sealing`); a store must be opened with the key
    /// it was sealed with.
    pub master_key: MasterKey,
    /// How often the checkpointer writes changed balances with the journal position
    /// they reflect: a restart after `kill -9` replays at most this much journal.
    pub checkpoint_interval_ms: u64,
    /// How often the checkpointer writes the statement index; a statement reads at
    /// most this much journal beside the index.
    pub index_interval_ms: u64,
}

impl LedgerConfig {
    /// The date the clock gives at `now_ms`, in the card centre's zone and turn.
    #[must_use]
    pub fn clock_date_at(&self, now_ms: u64) -> BusinessDate {
        BusinessDate::at(now_ms, self.utc_offset_minutes, self.cutover_minutes)
    }

    /// The date the clock gives now.
    #[must_use]
    pub fn clock_date(&self) -> BusinessDate {
        self.clock_date_at(self.clock.now_ms())
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            shards: cores.clamp(1, SHARDS_MAX),
            sync: true,
            utc_offset_minutes: 480,
            cutover_minutes: 0,
            clock: Clock::System,
            meal_hours: MealHours::default(),
            // A fresh key: a store made with the default is opened again only with
            // the same config (ops reads the key from its file or the environment).
            master_key: MasterKey::generate().expect("the system gives randomness"),
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
            index_interval_ms: INDEX_INTERVAL_MS_DEFAULT,
        }
    }
}

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
    pub next_transfer_id: u64,
    next_batch: u64,
    next_account: u64,
    next_merchant: u32,
    next_terminal: u32,
    blacklist_version: u64,
    /// The business date of the control journal's last batch, `yyyymmdd` (0: none).
    last_date: u32,
    /// The seal of the control journal's last batch, which the next one follows.
    last_seal: Seal,
}

/// What every thread of the ledger shares.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub cards: CardTable,
    pub directory: Directory,
    pub config: LedgerConfig,
    /// The key every journal's batches are sealed with, from the master key.
    pub chain: Chain,
    pub metrics: Arc<Metrics>,
    audit: AuditLog,
    /// The open business date, `yyyymmdd`: no commit counts for an earlier one.
    business_date: AtomicU32,
    /// The last closed business date, `yyyymmdd`: no commit can count for it or an
    /// earlier one any more.
    closed_through: AtomicU32,
    /// Held by whoever is turning the day.
    cutover: Mutex<()>,
    /// Every settled business date, read from the settlement records at open and
    /// kept as each date settles; held by whoever is settling a date.
    pub settled: Mutex<std::collections::BTreeSet<BusinessDate>>,
    blacklist_version: AtomicU64,
    control: Mutex<ControlState>,
    /// Non-card balances and the card pool as of every durable batch.
    totals: Mutex<Totals>,
    /// How far the statement index reaches in each journal.
    pub indexed: Arc<IndexWatermarks>,
    /// Where durable batches go to be checkpointed and indexed.
    checkpoint: Sender<Message>,
}

impl Shared {
    /// Non-card balances and the card pool, for a durable batch to be applied to or
    /// read.
    pub fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a durable batch to the checkpointer, waiting while its queue is full
    /// (bounded: a checkpointer that falls behind slows the journals, never memory).
    pub fn checkpoint(&self, committed: Committed) {
        if self.checkpoint.send(Message::Committed(committed)).is_err() {
            tracing::error!("the checkpointer has stopped; the next start replays the journal");
        }
    }

    /// Asks the checkpointer to write everything it holds, synced, and waits; whether
    /// it landed (false once a checkpoint write has failed).
    pub fn flush_checkpoint(&self) -> bool {
        let (done, landed) = bounded(1);
        self.checkpoint.send(Message::Flush(done)).is_ok() && landed.recv().unwrap_or(false)
    }

    /// The open business date.
    pub fn open_date(&self) -> BusinessDate {
        BusinessDate::from_yyyymmdd(self.business_date.load(Ordering::Acquire))
            .expect("the ledger holds a valid date")
    }

    /// The business date a commit at `now_ms` counts for: the open date, or the date
    /// the clock gives if the day has turned and the cutover has not run yet (so the
    /// millisecond after the turn is already the new day's).
    pub fn date_at(&self, now_ms: u64) -> BusinessDate {
        self.open_date().max(self.config.clock_date_at(now_ms))
    }

    /// The business date a commit now counts for.
    pub fn business_date(&self) -> BusinessDate {
        self.date_at(self.config.clock.now_ms())
    }

    /// Stores `open` as the open business date and the day before it as closed, in
    /// one synced write, and sets both in memory. Callers make sure no commit can
    /// still count for the closed days.
    fn persist_dates(&self, open: BusinessDate) -> Result<(), StorageError> {
        let closed = open.previous();
        let meta = self.store.cf(CF_META);
        let mut write = WriteBatch::default();
        write.put_cf(meta, KEY_BUSINESS_DATE, open.to_yyyymmdd().to_be_bytes());
        write.put_cf(meta, KEY_CLOSED_THROUGH, closed.to_yyyymmdd().to_be_bytes());
        self.store.write_synced(CONTROL_JOURNAL, write)?;
        self.business_date.store(open.to_yyyymmdd(), Ordering::Release);
        self.closed_through.store(closed.to_yyyymmdd(), Ordering::Release);
        Ok(())
    }

    /// The last closed business date.
    pub fn closed_through(&self) -> BusinessDate {
        BusinessDate::from_yyyymmdd(self.closed_through.load(Ordering::Acquire))
            .expect("the ledger holds a valid date")
    }

    /// Transfer `id` of `journal`, and the one after it if that continues it.
    pub fn transfer_pair(&self, journal: u8, id: u64) -> Option<(Transfer, Option<Transfer>)> {
        let cf = self.store.cf(&journal_cf(journal));
        let mut iter = self.store.db().raw_iterator_cf(cf);
        iter.seek_for_prev(seek_key(id));
        let (key, value) = (iter.key()?, iter.value()?);
        if key.len() != 16 || journal_of(u64::from_be_bytes(key[..8].try_into().ok()?)) != journal {
            return None;
        }
        match read_transfer(value, id) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(journal, id, %error, "unreadable journal record");
                None
            }
        }
    }
}

/// The ledger: shards, cards, merchants and terminals over one store.
pub struct Ledger {
    pub(crate) shared: Arc<Shared>,
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
