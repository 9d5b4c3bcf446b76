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
use crate::chain::{Chain, ChainStarts, Seal};
use crate::checkpoint::{Committed, IndexWatermarks, Intervals, Message, RecoverError, Totals};
use crate::date::{BusinessDate, Clock, now_ms};
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
use crate::settlement::MealHours;
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

/// Why the ledger cannot open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The store would not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// RocksDB failed while reading the ledger back.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A write at open (the dates it closes) failed.
    #[error("write failed: {0}")]
    Write(#[from] StorageError),
    /// A terminal's key does not open with the master key given.
    #[error(transparent)]
    Sealing(#[from] SealError),
    /// A stored record is not what this build writes.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A thread of the ledger (a shard's writer, the checkpointer) could not start.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl From<RecoverError> for LedgerError {
    fn from(error: RecoverError) -> Self {
        match error {
            RecoverError::Rocks(error) => Self::Storage(error),
            RecoverError::Write(error) => Self::Write(error),
            RecoverError::Corrupt { what, detail } => Self::Corrupt { what, detail },
        }
    }
}

/// Why a control operation was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No card has this number.
    #[error("no card {0}")]
    UnknownCard(u64),
    /// The card number is taken.
    #[error("card {0} already exists")]
    CardExists(u64),
    /// No merchant has this id.
    #[error("no merchant {0}")]
    UnknownMerchant(u32),
    /// No terminal has this id.
    #[error("no terminal {0}")]
    UnknownTerminal(u32),
    /// The card's state does not allow the action.
    #[error("card {card} is {state:?}; cannot {action}")]
    NotAllowed {
        /// The card.
        card: u64,
        /// Its state.
        state: CardState,
        /// What was asked.
        action: &'static str,
    },
    /// An amount is negative, zero where it must be positive, or too large.
    #[error("invalid amount {0} fen")]
    InvalidAmount(i64),
    /// A limit is negative.
    #[error("limits must not be negative")]
    InvalidLimits,
    /// A commission rate outside 0..1.
    #[error("commission rate {0} is outside 0 to 1")]
    InvalidRate(Decimal),
    /// A name or holder id that is empty or too long.
    #[error("{0} must be 1 to {NAME_BYTES_MAX} bytes")]
    InvalidName(&'static str),
    /// A date that is not a calendar date or not after the current one.
    #[error("invalid date {0}")]
    InvalidDate(u32),
    /// A number that must not be zero.
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// Settlement of a date that has not been closed by its cutover.
    #[error("business date {date} is not closed yet (closed through {closed_through})")]
    DateNotClosed {
        /// The date asked for.
        date: BusinessDate,
        /// The last closed date.
        closed_through: BusinessDate,
    },
    /// A stored record this build cannot read.
    #[error("corrupt {0}")]
    Corrupt(String),
    /// An account that does not exist (a channel or single account number out of
    /// range).
    #[error("no account {0}")]
    UnknownAccount(String),
    /// A transfer from an account to itself.
    #[error("{0} cannot be both debited and credited")]
    SameAccount(String),
    /// A cutover of a date after the open one, or of a day that has not begun.
    #[error(
        "business date {date} cannot close: the open date is {open}, and a day closes only once it has begun"
    )]
    DateNotOpen {
        /// The date asked for.
        date: BusinessDate,
        /// The open date.
        open: BusinessDate,
    },
    /// The store failed; nothing was changed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A durable write failed (or an earlier one did, and the control plane takes no
    /// writes until restart); nothing was changed in memory.
    #[error("write failed: {0}")]
    Write(#[from] StorageError),
    /// A failed write left this card account in doubt: it takes no change until a
    /// restart reads it back ([`crate::cards::CardAccount::in_doubt`]).
    #[error(
        "card account {0} is in doubt after a failed write; it takes no change until onecard restarts"
    )]
    InDoubt(u64),
    /// A batch has more rows than one control batch may carry.
    #[error("{rows} rows; a batch takes at most {max}")]
    BatchTooLarge {
        /// Rows given.
        rows: usize,
        /// The limit.
        max: usize,
    },
    /// The system has no randomness for a PIN salt or a key's sealing nonce.
    #[error("no randomness for a PIN salt or a sealing nonce")]
    Random,
}

/// A card as the card centre sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardView {
    /// The card number asked about.
    pub card_number: u64,
    /// Its account.
    pub account_number: u64,
    /// The cardholder's student or staff number.
    pub holder_id: String,
    /// The cardholder's name.
    pub holder_name: String,
    /// The card type.
    pub card_type: CardType,
    /// The card's state (`Replaced` for a retired number).
    pub state: CardState,
    /// The last business date the card works.
    pub expiry_date: u32,
    /// Main purse, available.
    pub balance_fen: i64,
    /// Restricted purse, available.
    pub restricted_fen: i64,
    /// Deposit held.
    pub deposit_fen: i64,
    /// Limits in force.
    pub limits: Limits,
    /// Spent on the current business date.
    pub spent_today_fen: i64,
    /// Whether a PIN is set.
    pub has_pin: bool,
}

/// What the card centre supplies to open a card.
#[derive(Debug, Clone)]
pub struct OpenCard {
    /// The number printed on the card; not zero, not used before.
    pub card_number: u64,
    /// Student or staff number.
    pub holder_id: String,
    /// Name.
    pub holder_name: String,
    /// Sets default limits.
    pub card_type: CardType,
    /// Last business date the card works.
    pub expiry_date: u32,
    /// Deposit taken in cash at the counter, in fen.
    pub deposit_fen: i64,
    /// Initial PIN, if any.
    pub pin: Option<Pin>,
    /// Limit overrides.
    pub overrides: LimitOverrides,
}

/// One page of a card statement, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The transfers.
    pub transfers: Vec<Transfer>,
    /// Pass back to get the next (older) page; `None` at the end.
    pub next: Option<StatementCursor>,
}

/// Where a statement page ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementCursor {
    /// Time of the last transfer on the page.
    pub timestamp_ms: u64,
    /// Its id.
    pub transfer_id: u64,
}

/// What a day cutover did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutover {
    /// The last closed date: it and every date before it take no more transfers.
    pub closed_through: BusinessDate,
    /// The open date.
    pub open: BusinessDate,
    /// Whether this call turned the day (false: it had turned already).
    pub changed: bool,
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

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt { what, detail: detail.to_string() }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    bytes.try_into().ok().map(u32::from_be_bytes)
}

impl Ledger {
    /// Opens (or creates) the ledger in `path` and rebuilds memory from disk: card
    /// balances and states, merchants, terminals, and each terminal's retry window.
    ///
    /// # Errors
    /// [`LedgerError`] if the store will not open or holds a record this build cannot
    /// read.
    pub fn open(path: &Path, config: LedgerConfig) -> Result<Self, LedgerError> {
        let store = Arc::new(Store::open(path, config.shards)?);
        let recovered = crate::checkpoint::recover(&store)?;
        let db = store.db();
        let meta = store.cf(CF_META);
        let today = config.clock_date();
        let stored = match db.get_cf(meta, KEY_BUSINESS_DATE)? {
            Some(bytes) => Some(
                be_u32(&bytes)
                    .and_then(BusinessDate::from_yyyymmdd)
                    .ok_or_else(|| corrupt("business date", hex::encode(&bytes)))?,
            ),
            None => None,
        };
        let date = stored.map_or(today, |stored| stored.max(today));
        let directory = Directory::default();
        let cards = CardTable::default();
        let mut control = ControlState {
            next_transfer_id: first_transfer_id(CONTROL_JOURNAL),
            next_batch: 1,
            next_account: 1,
            next_merchant: 1,
            next_terminal: 1,
            blacklist_version: 0,
            last_date: 0,
            last_seal: Seal::GENESIS,
        };
        Self::load_control(
            &store,
            &config.master_key,
            &directory,
            &cards,
            &recovered.cards,
            &mut control,
        )?;
        let chain =
            crate::chain::load_or_store(&store, &config.master_key, || chain_starts(&store))?;
        if let Some(last) = last_batch(&store, CONTROL_JOURNAL)? {
            control.next_transfer_id = last.next_transfer_id();
            control.next_batch = last.number + 1;
            control.last_date = last.business_date.to_yyyymmdd();
            control.last_seal = last.seal.unwrap_or(Seal::GENESIS);
        }
        let control_date = BusinessDate::from_yyyymmdd(control.last_date);
        let shards = store.shards();
        let blacklist_version = control.blacklist_version;
        let audit = AuditLog::open(&store, chain.key.clone())?;
        let settled = crate::settlement::load_settled_dates(&store)?;
        let indexed = Arc::new(crate::checkpoint::index_watermarks(shards, &recovered));
        let metrics = Arc::new(Metrics::new(shards));
        let (checkpoint, checkpoint_queue) = bounded(CHECKPOINT_QUEUE_BATCHES_MAX);
        let intervals = Intervals {
            checkpoint: std::time::Duration::from_millis(config.checkpoint_interval_ms),
            index: std::time::Duration::from_millis(config.index_interval_ms),
        };
        let checkpointer = crate::checkpoint::start(
            Arc::clone(&store),
            checkpoint_queue,
            intervals,
            Arc::clone(&indexed),
            Arc::clone(&metrics),
        )
        .map_err(|source| LedgerError::Thread { name: "onecard-checkpoint".to_owned(), source })?;
        let shared = Arc::new(Shared {
            store,
            cards,
            directory,
            chain,
            config,
            metrics,
            audit,
            business_date: AtomicU32::new(date.to_yyyymmdd()),
            closed_through: AtomicU32::new(date.previous().to_yyyymmdd()),
            cutover: Mutex::new(()),
            settled: Mutex::new(settled),
            blacklist_version: AtomicU64::new(blacklist_version),
            control: Mutex::new(control),
            totals: Mutex::new(recovered.totals),
            indexed,
            checkpoint,
        });
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        // Nothing is in flight yet, so every date before the latest one any journal
        // has committed, or the clock gives, is closed now.
        let mut open = date.max(control_date.unwrap_or(date));
        let mut recovered_shards = Vec::new();
        for shard in 0..shards {
            let recovered = recover_shard(&shared, shard)?;
            if let Some(last) = BusinessDate::from_yyyymmdd(recovered.last_date) {
                open = open.max(last);
            }
            recovered_shards.push(recovered);
        }
        shared.persist_dates(open)?;
        for (shard, recovered) in (0..shards).zip(recovered_shards) {
            let (sender, receiver) = bounded(SHARD_QUEUE_REQUESTS_MAX);
            let shard_stats = Arc::new(ShardStats::default());
            let writer = ShardWriter::new(
                shard,
                Arc::clone(&shared),
                receiver,
                Arc::clone(&shard_stats),
                recovered,
            );
            let name = format!("onecard-shard-{shard}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || writer.run())
                .map_err(|source| LedgerError::Thread { name, source })?;
            queues.push(sender);
            threads.push(thread);
            stats.push(shard_stats);
        }
        let ledger = Self { shared, queues, threads, checkpointer: Some(checkpointer), stats };
        ledger.activate_merchants(open).map_err(|error| corrupt("merchant", error))?;
        Ok(ledger)
    }

    fn load_control(
        store: &Store,
        master_key: &MasterKey,
        directory: &Directory,
        cards: &CardTable,
        money: &HashMap<u64, CardMoney>,
        control: &mut ControlState,
    ) -> Result<(), LedgerError> {
        let db = store.db();
        let cf = store.cf(CF_CONTROL);
        let mut merchants = HashMap::new();
        let mut accounts: HashMap<u64, Arc<CardAccount>> = HashMap::new();
        let mut unsealed = WriteBatch::default();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            match key.first().copied() {
                Some(control_key::MERCHANT) => {
                    let record: MerchantRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("merchant", e))?;
                    control.next_merchant = control.next_merchant.max(record.id + 1);
                    merchants.insert(record.id, record.clone());
                    directory.insert_merchant(record);
                }
                Some(control_key::TERMINAL) => {
                    let record: TerminalRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("terminal", e))?;
                    let merchant = merchants.get(&record.merchant_id).ok_or_else(|| {
                        corrupt("terminal", format!("merchant {}", record.merchant_id))
                    })?;
                    control.next_terminal = control.next_terminal.max(record.id + 1);
                    let terminal = terminal_from(&record, merchant, master_key, directory)?;
                    if record.clear_key.is_some() {
                        let sealed = TerminalRecord {
                            sealed_key: master_key.seal(record.id, &terminal.key())?,
                            clear_key: None,
                            ..record
                        };
                        unsealed.put_cf(cf, key.as_ref(), json(&sealed));
                    }
                    directory.insert_terminal(terminal);
                }
                Some(control_key::ACCOUNT) => {
                    let record: AccountRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt("account", e))?;
                    let money = money.get(&record.account_number).copied().unwrap_or_default();
                    control.next_account = control.next_account.max(record.account_number + 1);
                    let account = Arc::new(CardAccount::new(AccountState::new(record, money)));
                    accounts.insert(account.number, account);
                }
                Some(control_key::CARD) => {
                    let card_number =
                        be_u64(&key[1..]).ok_or_else(|| corrupt("card key", hex::encode(&key)))?;
                    let account_number = be_u64(&value[..8.min(value.len())])
                        .ok_or_else(|| corrupt("card", card_number))?;
                    let replaced_at_ms = value.get(8..16).and_then(be_u64).unwrap_or(0);
                    let account = accounts.get(&account_number).ok_or_else(|| {
                        corrupt("card", format!("{card_number} names no account"))
                    })?;
                    cards.insert_card(
                        card_number,
                        CardEntry { account: Arc::clone(account), replaced_at_ms },
                    );
                }
                Some(control_key::BLACKLIST) => {
                    let version = be_u64(&key[1..])
                        .ok_or_else(|| corrupt("blacklist key", hex::encode(&key)))?;
                    control.blacklist_version = control.blacklist_version.max(version);
                }
                _ => {}
            }
        }
        if !unsealed.is_empty() {
            // A store from before sealing: its keys are sealed now, in one synced write.
            let count = unsealed.len();
            store.write_synced(CONTROL_JOURNAL, unsealed)?;
            tracing::info!(terminals = count, "terminal keys sealed with the master key");
        }
        Ok(())
    }

    /// Hands a terminal request to its shard. The answer arrives on the returned
    /// channel once the batch holding it is durable, or at once if the request is
    /// refused before any shard sees it (unknown terminal, queue full).
    #[must_use]
    pub fn submit(&self, submission: Submission) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        let Some(terminal) = self.shared.directory.terminal(submission.terminal_id) else {
            let _ = reply.send(refusal(&submission.request, AnswerCode::UnknownTerminal));
            return answer;
        };
        match &submission.request {
            Request::SignOn(sign_on) => {
                terminal.blacklist_version.store(sign_on.blacklist_version, Ordering::Release);
                terminal.software_version.store(sign_on.software_version, Ordering::Relaxed);
                let last_sequence = terminal.last_sequence.load(Ordering::Acquire);
                let code = if !terminal.is_enabled() {
                    AnswerCode::TerminalDisabled
                } else if submission.sequence <= last_sequence {
                    // A terminal that lost its counter: the answer tells it where to
                    // resume, and it signs on again above that.
                    AnswerCode::StaleSequence
                } else if submission.sequence > last_sequence.saturating_add(SEQUENCE_JUMP_MAX) {
                    // Nor may it leap to the top of its sequence space.
                    AnswerCode::SequenceJump
                } else {
                    AnswerCode::Approved
                };
                let _ = reply.send(Answer::SignOn(SignOnAnswer {
                    code,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                    last_sequence,
                }));
                return answer;
            }
            Request::Heartbeat(heartbeat) => {
                terminal.blacklist_version.store(heartbeat.blacklist_version, Ordering::Release);
                let _ = reply.send(Answer::Heartbeat(HeartbeatAnswer {
                    code: AnswerCode::Approved,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                }));
                return answer;
            }
            Request::BlacklistDownload(download) => {
                let answer_now = match self
                    .blacklist_since(download.since_version, usize::from(download.entries_max))
                {
                    Ok((current_version, entries)) => {
                        BlacklistAnswer { code: AnswerCode::Approved, current_version, entries }
                    }
                    Err(_) => BlacklistAnswer {
                        code: AnswerCode::ServiceUnavailable,
                        current_version: 0,
                        entries: Vec::new(),
                    },
                };
                let _ = reply.send(Answer::BlacklistDownload(answer_now));
                return answer;
            }
            Request::SignOff => {
                let _ = reply.send(Answer::SignOff(SignOffAnswer { code: AnswerCode::Approved }));
                return answer;
            }
            _ => {}
        }
        let Some(queue) = self.queues.get(usize::from(terminal.shard)) else {
            let _ = reply.send(refusal(&submission.request, AnswerCode::ServiceUnavailable));
            return answer;
        };
        match queue.try_send(Command { submission, terminal, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(command) | TrySendError::Disconnected(command)) => {
                let code =
                    if queue.is_full() { AnswerCode::ServerBusy } else { AnswerCode::ShuttingDown };
                let _ = command.reply.send(refusal(&command.submission.request, code));
            }
        }
        answer
    }

    /// [`Ledger::submit`], waiting for the answer on this thread. Not for use inside
    /// an async runtime.
    #[must_use]
    pub fn submit_wait(&self, submission: Submission) -> Answer {
        let request_type = submission.request.message_type();
        self.submit(submission)
            .blocking_recv()
            .unwrap_or_else(|_| crate::shard::refusal_of(request_type, AnswerCode::ShuttingDown))
    }

    /// The business date transfers are stamped with now.
    #[must_use]
    pub fn business_date(&self) -> BusinessDate {
        self.shared.business_date()
    }

    /// The last closed business date: settlement may run for it and any before it.
    #[must_use]
    pub fn closed_through(&self) -> BusinessDate {
        self.shared.closed_through()
    }

    /// The day cutover (日切) for `date`: closes it and opens the next day, early if the
    /// clock has not reached the turn yet. Repeat-safe: closing a date already closed
    /// changes nothing and says so.
    ///
    /// # Errors
    /// [`ControlError::DateNotOpen`] for a date after the open one, or one the clock
    /// has not reached (a day can close early, but not before it has begun); a failed
    /// write.
    pub fn cutover(&self, date: BusinessDate) -> Result<Cutover, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let open = self.shared.open_date();
        if date < open {
            return Ok(Cutover { closed_through: self.closed_through(), open, changed: false });
        }
        if date > open || date > self.shared.config.clock_date() {
            return Err(ControlError::DateNotOpen { date, open });
        }
        self.turn(date.next())
    }

    /// The scheduled cutover: if the clock has passed the turn of the open date,
    /// closes every date before the clock's. `None` if the day has not turned.
    ///
    /// # Errors
    /// A failed write.
    pub fn cutover_due(&self) -> Result<Option<Cutover>, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let today = self.shared.config.clock_date();
        if today <= self.shared.open_date() {
            return Ok(None);
        }
        self.turn(today).map(Some)
    }

    /// Opens `date`, closing every date before it: a cutover over several days at
    /// once. For tests and for a campus brought back after days away.
    ///
    /// # Errors
    /// [`ControlError::InvalidDate`] for a date before the open one; a failed write.
    pub fn set_business_date(&self, date: BusinessDate) -> Result<Cutover, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let open = self.shared.open_date();
        match date.cmp(&open) {
            std::cmp::Ordering::Less => Err(ControlError::InvalidDate(date.to_yyyymmdd())),
            std::cmp::Ordering::Equal => {
                Ok(Cutover { closed_through: self.closed_through(), open, changed: false })
            }
            std::cmp::Ordering::Greater => self.turn(date),
        }
    }

    /// Moves the open date to `open` and closes the days before it. The caller holds
    /// the cutover lock. The open date is stored first; then every shard's writer and
    /// the control plane are waited for once, so no batch that read the old date is
    /// still being written; only then are the old days closed in memory, where
    /// settlement looks.
    fn turn(&self, open: BusinessDate) -> Result<Cutover, ControlError> {
        let shared = &self.shared;
        let meta = shared.store.cf(CF_META);
        let mut write = WriteBatch::default();
        write.put_cf(meta, KEY_BUSINESS_DATE, open.to_yyyymmdd().to_be_bytes());
        shared.store.write_synced(CONTROL_JOURNAL, write)?;
        shared.business_date.store(open.to_yyyymmdd(), Ordering::Release);
        for stats in &self.stats {
            drop(stats.batch_gate.lock().unwrap_or_else(PoisonError::into_inner));
        }
        drop(self.control());
        shared.persist_dates(open)?;
        self.activate_merchants(open)?;
        let cutover = Cutover { closed_through: open.previous(), open, changed: true };
        tracing::info!(closed_through = %cutover.closed_through, open = %open, "day cutover");
        shared.metrics.business_date.set(i64::from(open.to_yyyymmdd()));
        Ok(cutover)
    }

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

    /// Creates a merchant on the next shard in turn.
    ///
    /// # Errors
    /// [`ControlError`] for a bad name or rate, or a failed write.
    pub fn create_merchant(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
    ) -> Result<MerchantRecord, ControlError> {
        self.create_merchant_from(name, category, commission_rate, None)
    }

    /// Onboards a merchant (the onboarding workflow's effect): created now, disabled,
    /// and enabled by the cutover that opens the next business date. Returns the
    /// record and that date.
    ///
    /// # Errors
    /// As [`Ledger::create_merchant`].
    pub fn onboard_merchant(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
    ) -> Result<(MerchantRecord, BusinessDate), ControlError> {
        let from = self.business_date().next();
        let record = self.create_merchant_from(name, category, commission_rate, Some(from))?;
        Ok((record, from))
    }

    /// Enables every onboarded merchant whose first business date is `open` or before.
    fn activate_merchants(&self, open: BusinessDate) -> Result<(), ControlError> {
        for merchant in self.shared.directory.merchants() {
            if merchant.active_from.is_some_and(|from| from <= open.to_yyyymmdd()) {
                self.update_merchant(merchant.id, |record| {
                    record.enabled = true;
                    record.active_from = None;
                })?;
                tracing::info!(merchant = merchant.id, "onboarded merchant enabled");
            }
        }
        Ok(())
    }

    fn create_merchant_from(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
        active_from: Option<BusinessDate>,
    ) -> Result<MerchantRecord, ControlError> {
        check_name("merchant name", name)?;
        if commission_rate < Decimal::ZERO || commission_rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(commission_rate));
        }
        let mut control = self.control();
        let id = control.next_merchant;
        let shard = u8::try_from(id % u32::from(self.shards())).unwrap_or(0);
        let record = MerchantRecord {
            id,
            name: name.to_owned(),
            category,
            shard,
            commission_rate,
            enabled: active_from.is_none(),
            rate_changes: Vec::new(),
            active_from: active_from.map(BusinessDate::to_yyyymmdd),
        };
        let mut write = WriteBatch::default();
        write.put_cf(
            self.shared.store.cf(CF_CONTROL),
            prefixed_key(control_key::MERCHANT, &id.to_be_bytes()),
            json(&record),
        );
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        control.next_merchant += 1;
        self.shared.directory.insert_merchant(record.clone());
        Ok(record)
    }

    /// Creates a terminal for a merchant with its key.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed write.
    pub fn create_terminal(
        &self,
        merchant_id: u32,
        key: &TerminalKey,
    ) -> Result<TerminalRecord, ControlError> {
        let merchant = self
            .shared
            .directory
            .merchant(merchant_id)
            .ok_or(ControlError::UnknownMerchant(merchant_id))?;
        let mut control = self.control();
        let id = control.next_terminal;
        let record = TerminalRecord {
            id,
            merchant_id,
            sealed_key: self.config().master_key.seal(id, key).map_err(|_| ControlError::Random)?,
            clear_key: None,
            enabled: true,
        };
        self.write_terminal_record(&record)?;
        control.next_terminal += 1;
        let terminal = Terminal::new(
            id,
            &merchant,
            self.shared.directory.merchant_flag(merchant.id),
            key.clone(),
            true,
        );
        self.shared.directory.insert_terminal(terminal);
        Ok(record)
    }

    /// Enables or disables a terminal. Disabling ends its open sessions.
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed write.
    pub fn set_terminal_enabled(
        &self,
        terminal_id: u32,
        enabled: bool,
    ) -> Result<(), ControlError> {
        let terminal = self.known_terminal(terminal_id)?;
        let _control = self.control();
        self.write_terminal(&terminal, &terminal.key(), enabled)?;
        terminal.set_enabled(enabled);
        Ok(())
    }

    /// Installs a new key for a terminal (the card centre loads the same key into the
    /// device). Sessions signed on under the old key end; the terminal signs on again.
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed write.
    pub fn rotate_terminal_key(
        &self,
        terminal_id: u32,
        key: &TerminalKey,
    ) -> Result<(), ControlError> {
        let terminal = self.known_terminal(terminal_id)?;
        let _control = self.control();
        self.write_terminal(&terminal, key, terminal.enabled.load(Ordering::Acquire))?;
        terminal.set_key(key.clone());
        Ok(())
    }

    fn known_terminal(&self, terminal_id: u32) -> Result<Arc<Terminal>, ControlError> {
        self.shared
            .directory
            .terminal(terminal_id)
            .ok_or(ControlError::UnknownTerminal(terminal_id))
    }

    fn write_terminal(
        &self,
        terminal: &Terminal,
        key: &TerminalKey,
        enabled: bool,
    ) -> Result<(), ControlError> {
        let record = TerminalRecord {
            id: terminal.id,
            merchant_id: terminal.merchant_id,
            sealed_key: self
                .config()
                .master_key
                .seal(terminal.id, key)
                .map_err(|_| ControlError::Random)?,
            clear_key: None,
            enabled,
        };
        self.write_terminal_record(&record)
    }

    fn write_terminal_record(&self, record: &TerminalRecord) -> Result<(), ControlError> {
        let key = prefixed_key(control_key::TERMINAL, &record.id.to_be_bytes());
        let mut write = WriteBatch::default();
        write.put_cf(self.shared.store.cf(CF_CONTROL), key, json(record));
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        Ok(())
    }

    /// Sets a merchant's commission rate from today's business date on (dates already
    /// closed keep the rate they had); it replaces any change scheduled for later.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], a rate outside 0 to 1, or a failed write.
    pub fn set_commission_rate(
        &self,
        merchant_id: u32,
        commission_rate: Decimal,
    ) -> Result<MerchantRecord, ControlError> {
        if commission_rate < Decimal::ZERO || commission_rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(commission_rate));
        }
        let from = self.business_date().to_yyyymmdd();
        self.update_merchant(merchant_id, |record| {
            record.rate_changes.retain(|change| change.from < from);
            record.rate_changes.push(crate::directory::RateChange { from, rate: commission_rate });
        })
    }

    /// Schedules a merchant's new commission rate from the next business date on (an
    /// approved change takes effect the next day; settlement of today keeps today's
    /// rate). Scheduling the same rate from the same date again changes nothing.
    /// Returns the record and the date the rate applies from.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], a rate outside 0 to 1, or a failed write.
    pub fn schedule_commission_rate(
        &self,
        merchant_id: u32,
        rate: Decimal,
    ) -> Result<(MerchantRecord, BusinessDate), ControlError> {
        if rate < Decimal::ZERO || rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(rate));
        }
        let from = self.business_date().next();
        let record = self.update_merchant(merchant_id, |record| {
            let change = crate::directory::RateChange { from: from.to_yyyymmdd(), rate };
            // A later date replaces any change already scheduled on or after it.
            record.rate_changes.retain(|c| c.from < change.from);
            record.rate_changes.push(change);
        })?;
        Ok((record, from))
    }

    /// Enables or disables a merchant: a disabled merchant's terminals are all
    /// refused, and their sessions end.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed write.
    pub fn set_merchant_enabled(
        &self,
        merchant_id: u32,
        enabled: bool,
    ) -> Result<MerchantRecord, ControlError> {
        let record = self.update_merchant(merchant_id, |record| record.enabled = enabled)?;
        if !enabled {
            for terminal in self.shared.directory.terminals() {
                if terminal.merchant_id == merchant_id {
                    terminal.key_generation.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Ok(record)
    }

    fn update_merchant(
        &self,
        merchant_id: u32,
        change: impl FnOnce(&mut MerchantRecord),
    ) -> Result<MerchantRecord, ControlError> {
        let _control = self.control();
        let mut record = MerchantRecord::clone(
            &*self
                .shared
                .directory
                .merchant(merchant_id)
                .ok_or(ControlError::UnknownMerchant(merchant_id))?,
        );
        change(&mut record);
        let mut write = WriteBatch::default();
        write.put_cf(
            self.shared.store.cf(CF_CONTROL),
            prefixed_key(control_key::MERCHANT, &merchant_id.to_be_bytes()),
            json(&record),
        );
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        self.shared.directory.insert_merchant(record.clone());
        Ok(record)
    }

    /// The merchant `id`.
    #[must_use]
    pub fn merchant(&self, id: u32) -> Option<Arc<MerchantRecord>> {
        self.shared.directory.merchant(id)
    }

    /// The terminal `id`.
    #[must_use]
    pub fn terminal(&self, id: u32) -> Option<Arc<Terminal>> {
        self.shared.directory.terminal(id)
    }

    /// Every merchant.
    #[must_use]
    pub fn merchants(&self) -> Vec<Arc<MerchantRecord>> {
        self.shared.directory.merchants()
    }

    /// Every terminal.
    #[must_use]
    pub fn terminals(&self) -> Vec<Arc<Terminal>> {
        self.shared.directory.terminals()
    }

    // ----- cards -----

    pub(crate) fn control(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.shared.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a card: cardholder, account and first card, with its deposit taken in
    /// cash at the counter (counter clearing → deposit).
    ///
    /// # Errors
    /// [`ControlError`] for a taken or zero card number, a bad name, amount, date or
    /// limit, or a failed write.
    pub fn open_card(&self, open: OpenCard) -> Result<CardView, ControlError> {
        let card_number = open.card_number;
        self.open_cards(vec![open])?;
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Opens many cards in one synced control batch: all of them or, if any one is
    /// refused, none. The batch card opening workflow and the demo campus use it.
    ///
    /// # Errors
    /// The first [`ControlError`] any card would get from [`Ledger::open_card`], a
    /// card number given twice, or a failed write.
    pub fn open_cards(&self, opens: Vec<OpenCard>) -> Result<(), ControlError> {
        for open in &opens {
            if open.card_number == 0 {
                return Err(ControlError::Zero("card number"));
            }
            check_name("holder id", &open.holder_id)?;
            check_name("holder name", &open.holder_name)?;
            if open.deposit_fen < 0 || open.deposit_fen > i64::from(u32::MAX) {
                return Err(ControlError::InvalidAmount(open.deposit_fen));
            }
            if !open.overrides.is_valid() {
                return Err(ControlError::InvalidLimits);
            }
            if BusinessDate::from_yyyymmdd(open.expiry_date).is_none() {
                return Err(ControlError::InvalidDate(open.expiry_date));
            }
        }
        let mut control = self.control();
        let mut numbers = std::collections::HashSet::with_capacity(opens.len());
        for open in &opens {
            if self.shared.cards.card(open.card_number).is_some()
                || !numbers.insert(open.card_number)
            {
                return Err(ControlError::CardExists(open.card_number));
            }
        }
        let now = now_ms();
        let mut records = Vec::with_capacity(opens.len());
        let mut transfers = Vec::new();
        for (offset, open) in (0u64..).zip(opens) {
            let pin = open
                .pin
                .as_ref()
                .map(PinHash::new)
                .transpose()
                .map_err(|_| ControlError::Random)?;
            if open.deposit_fen > 0 {
                transfers.push(ControlTransfer {
                    debit: AccountId::channel(Channel::Counter),
                    credit: AccountId::single(AccountKind::Deposit),
                    amount_fen: open.deposit_fen,
                    kind: TransferKind::Deposit,
                    card_number: open.card_number,
                });
            }
            records.push(AccountRecord {
                account_number: control.next_account + offset,
                holder_id: open.holder_id,
                holder_name: open.holder_name,
                card_type: open.card_type,
                card_number: open.card_number,
                replaced_cards: Vec::new(),
                state: CardState::Active.to_wire(),
                state_changed_at_ms: now,
                expiry_date: open.expiry_date,
                overrides: open.overrides,
                pin,
                deposit_fen: open.deposit_fen,
            });
        }
        self.commit_control(&mut control, &[], &transfers, |write, cf| {
            for record in &records {
                put_account(write, cf, record);
                put_card(write, cf, record.card_number, record.account_number, 0);
            }
        })?;
        control.next_account += records.len() as u64;
        drop(control);
        for record in records {
            let card_number = record.card_number;
            let account =
                Arc::new(CardAccount::new(AccountState::new(record, CardMoney::default())));
            self.shared.cards.insert_card(card_number, CardEntry { account, replaced_at_ms: 0 });
        }
        Ok(())
    }

    /// Reports a card lost (挂失): every debit is refused at once.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not active, or the write fails.
    pub fn report_lost(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(
            card_number,
            "report lost",
            &[CardState::Active, CardState::Frozen],
            CardState::Lost,
        )
    }

    /// Unlocks a lost card (解挂).
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not lost, or the write fails.
    pub fn unlock(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "unlock", &[CardState::Lost], CardState::Active)
    }

    /// Freezes a card (the card centre's hold).
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not active, or the write fails.
    pub fn freeze(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "freeze", &[CardState::Active], CardState::Frozen)
    }

    /// Lifts a freeze.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not frozen, or the write fails.
    pub fn unfreeze(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "unfreeze", &[CardState::Frozen], CardState::Active)
    }

    fn current(
        &self,
        card_number: u64,
        action: &'static str,
    ) -> Result<Arc<CardAccount>, ControlError> {
        let card =
            self.shared.cards.card(card_number).ok_or(ControlError::UnknownCard(card_number))?;
        if card.replaced_at_ms != 0 {
            return Err(ControlError::NotAllowed {
                card: card_number,
                state: CardState::Replaced,
                action,
            });
        }
        if card.account.in_doubt() {
            return Err(ControlError::InDoubt(card.account.number));
        }
        Ok(card.account)
    }

    fn change_state(
        &self,
        card_number: u64,
        action: &'static str,
        from: &[CardState],
        to: CardState,
    ) -> Result<CardView, ControlError> {
        let account = self.current(card_number, action)?;
        let mut state = account.lock();
        if !from.contains(&state.state) {
            return Err(ControlError::NotAllowed { card: card_number, state: state.state, action });
        }
        let mut record = state.record.clone();
        record.state = to.to_wire();
        record.state_changed_at_ms = now_ms();
        let mut control = self.control();
        let listed = to != CardState::Active;
        let version = control.blacklist_version + 1;
        self.commit_control(&mut control, &[account.number], &[], |write, cf| {
            put_account(write, cf, &record);
            put_blacklist(write, cf, version, card_number, listed);
        })?;
        self.bump_blacklist(&mut control, version);
        state.record = record;
        state.state = to;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    fn bump_blacklist(&self, control: &mut ControlState, version: u64) {
        control.blacklist_version = version;
        self.shared.blacklist_version.store(version, Ordering::Release);
    }

    /// Reissues a card (补卡): a new card number for the same account; the old number
    /// is blocked forever and the balance follows. A replacement fee, if any, is paid
    /// in cash at the counter (counter clearing → card fee income).
    ///
    /// # Errors
    /// [`ControlError`] if the old card is unknown, replaced or closed, the new number
    /// is taken or zero, the fee is negative, or the write fails.
    pub fn reissue(
        &self,
        old_card: u64,
        new_card: u64,
        fee_fen: i64,
    ) -> Result<CardView, ControlError> {
        if new_card == 0 {
            return Err(ControlError::Zero("card number"));
        }
        if !(0..=i64::from(u32::MAX)).contains(&fee_fen) {
            return Err(ControlError::InvalidAmount(fee_fen));
        }
        let account = self.current(old_card, "reissue")?;
        let mut state = account.lock();
        not_closed(&state, old_card, "reissue")?;
        let mut control = self.control();
        if self.shared.cards.card(new_card).is_some() {
            return Err(ControlError::CardExists(new_card));
        }
        let now = now_ms();
        let mut record = state.record.clone();
        record.replaced_cards.push(old_card);
        record.card_number = new_card;
        record.state = CardState::Active.to_wire();
        record.state_changed_at_ms = now;
        let transfers: Vec<ControlTransfer> = (fee_fen > 0)
            .then_some(ControlTransfer {
                debit: AccountId::channel(Channel::Counter),
                credit: AccountId::single(AccountKind::CardFeeIncome),
                amount_fen: fee_fen,
                kind: TransferKind::CardFee,
                card_number: new_card,
            })
            .into_iter()
            .collect();
        let version = control.blacklist_version + 1;
        let account_number = record.account_number;
        self.commit_control(&mut control, &[account_number], &transfers, |write, cf| {
            put_account(write, cf, &record);
            put_card(write, cf, old_card, account_number, now);
            put_card(write, cf, new_card, account_number, 0);
            put_blacklist(write, cf, version, old_card, true);
        })?;
        self.bump_blacklist(&mut control, version);
        drop(control);
        state.record = record;
        state.state = CardState::Active;
        drop(state);
        self.shared.cards.insert_card(
            old_card,
            CardEntry { account: Arc::clone(&account), replaced_at_ms: now },
        );
        self.shared.cards.insert_card(new_card, CardEntry { account, replaced_at_ms: 0 });
        self.card(new_card).ok_or(ControlError::UnknownCard(new_card))
    }

    /// Extends a card's expiry (延期) to a later date.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, the date is not later, or
    /// the write fails.
    pub fn extend(&self, card_number: u64, expiry_date: u32) -> Result<CardView, ControlError> {
        if BusinessDate::from_yyyymmdd(expiry_date).is_none() {
            return Err(ControlError::InvalidDate(expiry_date));
        }
        self.update_record(card_number, "extend", |record| {
            if expiry_date <= record.expiry_date {
                return Err(ControlError::InvalidDate(expiry_date));
            }
            record.expiry_date = expiry_date;
            Ok(())
        })
    }

    /// Sets per-card limit overrides.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, a limit is negative, or the
    /// write fails.
    pub fn set_limits(
        &self,
        card_number: u64,
        overrides: LimitOverrides,
    ) -> Result<CardView, ControlError> {
        if !overrides.is_valid() {
            return Err(ControlError::InvalidLimits);
        }
        self.update_record(card_number, "set limits", |record| {
            record.overrides = overrides;
            Ok(())
        })
    }

    /// Sets (or resets) the card's PIN and clears its wrong-PIN count.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, or the write fails.
    pub fn set_pin(&self, card_number: u64, pin: &Pin) -> Result<CardView, ControlError> {
        let hash = PinHash::new(pin).map_err(|_| ControlError::Random)?;
        self.update_record(card_number, "set PIN", |record| {
            record.pin = Some(hash);
            Ok(())
        })
    }

    fn update_record(
        &self,
        card_number: u64,
        action: &'static str,
        change: impl FnOnce(&mut AccountRecord) -> Result<(), ControlError>,
    ) -> Result<CardView, ControlError> {
        let account = self.current(card_number, action)?;
        let mut state = account.lock();
        not_closed(&state, card_number, action)?;
        let mut record = state.record.clone();
        change(&mut record)?;
        let mut control = self.control();
        self.commit_control(&mut control, &[account.number], &[], |write, cf| {
            put_account(write, cf, &record);
        })?;
        drop(control);
        state.limits = record.overrides.apply(record.card_type);
        state.record = record;
        state.pin_failures = 0;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Closes a card's account (销户): the main purse and the deposit move to refund
    /// payable for finance to pay out, the restricted purse returns to subsidy funding,
    /// and the card never works again.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown, replaced or already closed, or the
    /// write fails.
    pub fn close_card(&self, card_number: u64) -> Result<CardView, ControlError> {
        let account = self.current(card_number, "close")?;
        let mut state = account.lock();
        not_closed(&state, card_number, "close")?;
        let account_number = account.number;
        let refund_payable = AccountId::single(AccountKind::RefundPayable);
        let mut transfers = Vec::new();
        let mut push = |debit, credit, amount_fen, kind| {
            if amount_fen > 0 {
                transfers.push(ControlTransfer { debit, credit, amount_fen, kind, card_number });
            }
        };
        push(
            AccountId::card(account_number),
            refund_payable,
            state.balance_fen,
            TransferKind::CloseBalance,
        );
        push(
            AccountId::card_restricted(account_number),
            AccountId::single(AccountKind::SubsidyFunding),
            state.restricted_fen,
            TransferKind::CloseBalance,
        );
        push(
            AccountId::single(AccountKind::Deposit),
            refund_payable,
            state.record.deposit_fen,
            TransferKind::CloseDeposit,
        );
        let mut record = state.record.clone();
        record.state = CardState::Closed.to_wire();
        record.state_changed_at_ms = now_ms();
        record.deposit_fen = 0;
        let mut control = self.control();
        let version = control.blacklist_version + 1;
        self.commit_control(&mut control, &[account_number], &transfers, |write, cf| {
            put_account(write, cf, &record);
            put_blacklist(write, cf, version, card_number, true);
        })?;
        self.bump_blacklist(&mut control, version);
        drop(control);
        state.balance_fen = 0;
        state.restricted_fen = 0;
        state.record = record;
        state.state = CardState::Closed;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Credits a subsidy (补助) from subsidy funding to one of a card's purses. The
    /// subsidy workflow posts its approved batches through this.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown, replaced or closed, the amount is not
    /// positive, or the write fails.
    pub fn post_subsidy(
        &self,
        card_number: u64,
        amount_fen: i64,
        purse: Purse,
    ) -> Result<CardView, ControlError> {
        if !(1..=i64::from(u32::MAX)).contains(&amount_fen) {
            return Err(ControlError::InvalidAmount(amount_fen));
        }
        let account = self.current(card_number, "post a subsidy")?;
        let mut state = account.lock();
        not_closed(&state, card_number, "post a subsidy")?;
        let credit = match purse {
            Purse::Main => AccountId::card(account.number),
            Purse::Restricted => AccountId::card_restricted(account.number),
        };
        let transfer = ControlTransfer {
            debit: AccountId::single(AccountKind::SubsidyFunding),
            credit,
            amount_fen,
            kind: TransferKind::Subsidy,
            card_number,
        };
        let mut control = self.control();
        self.commit_control(&mut control, &[], &[transfer], |_, _| {})?;
        drop(control);
        match purse {
            Purse::Main => state.balance_fen += amount_fen,
            Purse::Restricted => state.restricted_fen += amount_fen,
        }
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Posts a batch of subsidies (补助) from subsidy funding in one synced control
    /// batch. Every row that can post does; a row that cannot (bad amount; unknown,
    /// replaced or closed card) gets its error in the returned list, in row order, and
    /// the rest still post. The subsidy workflow and the demo campus use it.
    ///
    /// # Errors
    /// [`ControlError::BatchTooLarge`] above [`SUBSIDY_BATCH_ROWS_MAX`] rows, or a
    /// failed write (then nothing posted).
    pub fn post_subsidies(
        &self,
        rows: &[SubsidyRow],
    ) -> Result<Vec<Result<(), ControlError>>, ControlError> {
        self.post_subsidies_keyed(rows, None).map(|(outcomes, _)| outcomes)
    }

    /// [`Ledger::post_subsidies`] exactly once for `key`: the batch's outcome is stored
    /// under the key in the same write as its transfers, and a second call with the
    /// key posts nothing and returns the stored outcome (each row's error in words,
    /// `None` for a row that posted), with `true` for "posted before".
    ///
    /// # Errors
    /// As [`Ledger::post_subsidies`].
    pub fn post_subsidies_once(
        &self,
        key: u64,
        rows: &[SubsidyRow],
    ) -> Result<(Vec<Option<String>>, bool), ControlError> {
        let store = self.store();
        if let Some(stored) = store.db().get_cf(store.cf(CF_CONTROL), once_key(key))? {
            return decode_outcomes(&stored).map(|outcomes| (outcomes, true));
        }
        let (outcomes, before) = self.post_subsidies_keyed(rows, Some(key))?;
        if before {
            let stored = store
                .db()
                .get_cf(store.cf(CF_CONTROL), once_key(key))?
                .ok_or_else(|| ControlError::Corrupt(format!("batch {key} vanished")))?;
            return decode_outcomes(&stored).map(|outcomes| (outcomes, true));
        }
        Ok((outcomes.iter().map(|o| o.as_ref().err().map(ToString::to_string)).collect(), false))
    }

    fn post_subsidies_keyed(
        &self,
        rows: &[SubsidyRow],
        key: Option<u64>,
    ) -> Result<(Vec<Result<(), ControlError>>, bool), ControlError> {
        if rows.len() > SUBSIDY_BATCH_ROWS_MAX {
            return Err(ControlError::BatchTooLarge {
                rows: rows.len(),
                max: SUBSIDY_BATCH_ROWS_MAX,
            });
        }
        let mut outcomes: Vec<Result<(), ControlError>> = Vec::with_capacity(rows.len());
        let mut accounts: Vec<Arc<CardAccount>> = Vec::new();
        let mut row_accounts = Vec::with_capacity(rows.len());
        for row in rows {
            let account = if (1..=i64::from(u32::MAX)).contains(&row.amount_fen) {
                self.current(row.card_number, "post a subsidy")
            } else {
                Err(ControlError::InvalidAmount(row.amount_fen))
            };
            match account {
                Ok(account) => {
                    row_accounts.push(Some(Arc::clone(&account)));
                    accounts.push(account);
                    outcomes.push(Ok(()));
                }
                Err(error) => {
                    row_accounts.push(None);
                    outcomes.push(Err(error));
                }
            }
        }
        // Lock every account once, in account order (the order every multi-card
        // operation takes them in), then the control journal.
        accounts.sort_by_key(|account| account.number);
        accounts.dedup_by_key(|account| account.number);
        let mut guards: HashMap<u64, std::sync::MutexGuard<'_, AccountState>> =
            accounts.iter().map(|account| (account.number, account.lock())).collect();
        let mut transfers = Vec::new();
        let mut credits = Vec::new();
        for ((row, account), outcome) in rows.iter().zip(&row_accounts).zip(&mut outcomes) {
            let Some(account) = account else { continue };
            let Some(state) = guards.get(&account.number) else { continue };
            if let Err(error) = not_closed(state, row.card_number, "post a subsidy") {
                *outcome = Err(error);
                continue;
            }
            transfers.push(ControlTransfer {
                debit: AccountId::single(AccountKind::SubsidyFunding),
                credit: match row.purse {
                    Purse::Main => AccountId::card(account.number),
                    Purse::Restricted => AccountId::card_restricted(account.number),
                },
                amount_fen: row.amount_fen,
                kind: TransferKind::Subsidy,
                card_number: row.card_number,
            });
            credits.push((account.number, row.purse, row.amount_fen));
        }
        if transfers.is_empty() && key.is_none() {
            return Ok((outcomes, false));
        }
        let mut control = self.control();
        let marker = match key {
            Some(key) => {
                let store = self.store();
                if store.db().get_cf(store.cf(CF_CONTROL), once_key(key))?.is_some() {
                    return Ok((outcomes, true));
                }
                let words: Vec<Option<String>> =
                    outcomes.iter().map(|o| o.as_ref().err().map(ToString::to_string)).collect();
                Some((once_key(key), serde_json::to_vec(&words).unwrap_or_default()))
            }
            None => None,
        };
        self.commit_control(&mut control, &[], &transfers, |write, cf| {
            if let Some((marker_key, value)) = &marker {
                write.put_cf(cf, marker_key, value);
            }
        })?;
        drop(control);
        for (account_number, purse, amount_fen) in credits {
            if let Some(state) = guards.get_mut(&account_number) {
                match purse {
                    Purse::Main => state.balance_fen += amount_fen,
                    Purse::Restricted => state.restricted_fen += amount_fen,
                }
            }
        }
        Ok((outcomes, false))
    }

    /// Takes back what is left in a card account's restricted purse at term end
    /// (清零): one transfer from the purse to subsidy funding. Returns the fen moved
    /// (0: the purse was empty and nothing was written).
    ///
    /// # Errors
    /// [`ControlError::UnknownCard`] for an account that is not a card's, or a failed
    /// write (then nothing moved).
    pub fn expire_restricted(&self, account_number: u64) -> Result<i64, ControlError> {
        let account = self
            .shared
            .cards
            .account(account_number)
            .ok_or(ControlError::UnknownCard(account_number))?;
        if account.in_doubt() {
            return Err(ControlError::InDoubt(account_number));
        }
        let mut state = account.lock();
        let fen = state.restricted_fen;
        if fen <= 0 {
            return Ok(0);
        }
        let transfer = ControlTransfer {
            debit: AccountId::card_restricted(account_number),
            credit: AccountId::single(AccountKind::SubsidyFunding),
            amount_fen: fen,
            kind: TransferKind::SubsidyExpiry,
            card_number: 0,
        };
        let mut control = self.control();
        self.commit_control(&mut control, &[], &[transfer], |_, _| {})?;
        drop(control);
        state.restricted_fen = 0;
        Ok(fen)
    }

    /// The card accounts whose restricted purse holds money, in account order, with
    /// what each holds.
    #[must_use]
    pub fn restricted_purses(&self) -> Vec<(u64, i64)> {
        let mut out: Vec<(u64, i64)> = self
            .shared
            .cards
            .accounts()
            .iter()
            .map(|account| (account.number, account.lock().restricted_fen))
            .filter(|(_, fen)| *fen > 0)
            .collect();
        out.sort_unstable();
        out
    }

    /// Writes one control batch: the transfers (with their balance merges and index
    /// keys) and whatever records `records` adds, synced.
    ///
    /// If the write fails, every card account it touches (`accounts`, and the card
    /// purses its transfers move) is put in doubt until the restart: the write may
    /// have reached the disk although the caller leaves memory as it was, so the
    /// shards refuse the account's cards (`ServiceUnavailable`) rather than decide on
    /// a balance or a state that may no longer be the account's.
    pub(crate) fn commit_control(
        &self,
        control: &mut ControlState,
        accounts: &[u64],
        transfers: &[ControlTransfer],
        records: impl FnOnce(&mut WriteBatch, &ColumnFamily),
    ) -> Result<(), ControlError> {
        let written = self.write_control(control, transfers, records);
        // A journal already poisoned refused the write without trying it: nothing can
        // have reached the disk, and the accounts are as memory says.
        let attempted = !matches!(written, Err(ControlError::Write(StorageError::Poisoned)));
        if written.is_err() && attempted {
            let purses = transfers
                .iter()
                .flat_map(|transfer| [transfer.debit, transfer.credit])
                .filter(|account| account.kind().is_card())
                .map(AccountId::number);
            for account in accounts.iter().copied().chain(purses) {
                if self.shared.cards.put_in_doubt(account) {
                    tracing::error!(
                        account,
                        "a control write on this card account failed; its cards are refused \
                         until the restart"
                    );
                }
            }
        }
        written
    }

    fn write_control(
        &self,
        control: &mut ControlState,
        transfers: &[ControlTransfer],
        records: impl FnOnce(&mut WriteBatch, &ColumnFamily),
    ) -> Result<(), ControlError> {
        let store = &self.shared.store;
        let mut write = WriteBatch::default();
        records(&mut write, store.cf(CF_CONTROL));
        if transfers.is_empty() {
            store.write_synced(CONTROL_JOURNAL, write)?;
            return Ok(());
        }
        let now = self.shared.config.clock.now_ms();
        let date = self.shared.date_at(now).max(
            BusinessDate::from_yyyymmdd(control.last_date)
                .unwrap_or(BusinessDate::from_unix_days(0)),
        );
        let batch = Batch {
            number: control.next_batch,
            business_date: date,
            committed_at_ms: now,
            first_transfer_id: control.next_transfer_id,
            transfers: (0u64..)
                .zip(transfers)
                .map(|(offset, t)| Transfer {
                    id: control.next_transfer_id + offset,
                    debit: t.debit,
                    credit: t.credit,
                    amount_fen: t.amount_fen,
                    kind: t.kind,
                    business_date: date,
                    timestamp_ms: now,
                    terminal_id: 0,
                    sequence: 0,
                    corrects: 0,
                    card_number: t.card_number,
                    meal_period: MealPeriod::Unspecified,
                    continues: false,
                })
                .collect(),
            entries: Vec::<Entry>::new(),
            seal: None,
        };
        let postings = Postings::of(date, &batch.transfers, &batch.entries);
        let key = batch_key(batch.first_transfer_id, batch.number);
        let journal = store.cf(&journal_cf(CONTROL_JOURNAL));
        let (record, seal) =
            batch.view().encode_sealed(&self.shared.chain.key, CONTROL_JOURNAL, &control.last_seal);
        write.put_cf(journal, key, record);
        if control.last_date != date.to_yyyymmdd() {
            let day = prefixed_key(shard_key::DAY_START, &date.to_yyyymmdd().to_be_bytes());
            write.put_cf(journal, day, key);
        }
        store.write_synced(CONTROL_JOURNAL, write)?;
        control.next_transfer_id = batch.next_transfer_id();
        control.next_batch += 1;
        control.last_date = date.to_yyyymmdd();
        control.last_seal = seal;
        self.shared.totals().apply(&postings);
        // Sent under the control mutex, so the control journal's batches reach the
        // checkpointer in commit order.
        self.shared.checkpoint(Committed { journal: CONTROL_JOURNAL, key, postings });
        Ok(())
    }

    // ----- queries -----

    /// A card as the card centre sees it; `None` for an unknown number.
    #[must_use]
    pub fn card(&self, card_number: u64) -> Option<CardView> {
        let card = self.shared.cards.card(card_number)?;
        let state = card.account.lock();
        let date = self.shared.business_date();
        Some(CardView {
            card_number,
            account_number: card.account.number,
            holder_id: state.record.holder_id.clone(),
            holder_name: state.record.holder_name.clone(),
            card_type: state.record.card_type,
            state: if card.replaced_at_ms != 0 { CardState::Replaced } else { state.state },
            expiry_date: state.record.expiry_date,
            balance_fen: state.balance_fen,
            restricted_fen: state.restricted_fen,
            deposit_fen: state.record.deposit_fen,
            limits: state.limits,
            spent_today_fen: state.spent_on(date),
            has_pin: state.record.pin.is_some(),
        })
    }

    /// An account's balance as of every durable batch, from memory. For a card purse,
    /// the purse as the card table holds it (the authority: a debit being committed
    /// is already taken from it).
    ///
    /// # Errors
    /// None today; the signature keeps the store's reads possible.
    pub fn account_balance(&self, account: AccountId) -> Result<i64, rocksdb::Error> {
        let purse = |restricted: bool| {
            self.shared.cards.account(account.number()).map_or(0, |card| {
                let state = card.lock();
                if restricted { state.restricted_fen } else { state.balance_fen }
            })
        };
        Ok(match account.kind() {
            AccountKind::Card => purse(false),
            AccountKind::CardRestricted => purse(true),
            _ => self.shared.totals().balance(account),
        })
    }

    /// One transfer by id.
    #[must_use]
    pub fn transfer(&self, id: u64) -> Option<Transfer> {
        let journal = journal_of(id);
        if journal != CONTROL_JOURNAL && journal >= self.shards() {
            return None;
        }
        self.shared.transfer_pair(journal, id).map(|(transfer, _)| transfer)
    }

    /// A page of a card's statement, newest first, starting before `before`.
    ///
    /// The statement index reaches each journal's index watermark; the batches after
    /// it (at most an index interval's) are read from the journal and merged in, so a
    /// movement is listed from the moment its answer was sent.
    ///
    /// # Errors
    /// [`ControlError::UnknownCard`], or a failed read.
    pub fn statement(
        &self,
        card_number: u64,
        before: Option<StatementCursor>,
        limit: usize,
    ) -> Result<Statement, ControlError> {
        let card =
            self.shared.cards.card(card_number).ok_or(ControlError::UnknownCard(card_number))?;
        let account = card.account.number;
        let limit = limit.clamp(1, STATEMENT_PAGE_MAX);
        let upper = before.map_or_else(
            || index_key(account, u64::MAX, u64::MAX),
            |cursor| index_key(account, cursor.timestamp_ms, cursor.transfer_id),
        );
        // The watermarks first: whatever the index holds past them is found twice and
        // kept once; nothing after them can be missing from the journal.
        let store = &self.shared.store;
        let watermarks: Vec<(u8, [u8; 16])> =
            store.journals().map(|journal| (journal, self.shared.indexed.of(journal))).collect();
        let view = store.db().snapshot();
        let mut keys = Vec::new();
        let mut iter = view.raw_iterator_cf(store.cf(CF_INDEX));
        iter.seek_for_prev(upper);
        while iter.valid() && keys.len() < limit {
            let Some(key) = iter.key() else { break };
            let Ok(key) = <[u8; 24]>::try_from(key) else { break };
            if be_u64(&key[..8]) != Some(account) {
                break;
            }
            if key != upper {
                keys.push(key);
            }
            iter.prev();
        }
        iter.status()?;
        drop(iter);
        let mut tail = Vec::new();
        for (journal, watermark) in watermarks {
            crate::checkpoint::for_each_batch_after(
                store,
                &view,
                journal,
                watermark,
                |_, batch| {
                    for transfer in &batch.transfers {
                        let moves_card = [transfer.debit, transfer.credit]
                            .iter()
                            .any(|side| side.kind().is_card() && side.number() == account);
                        let key = index_key(account, transfer.timestamp_ms, transfer.id);
                        if moves_card && key < upper {
                            keys.push(key);
                            tail.push(*transfer);
                        }
                    }
                    Ok(())
                },
            )
            .map_err(|error| ControlError::Corrupt(error.to_string()))?;
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.dedup();
        keys.truncate(limit);
        let mut transfers = Vec::with_capacity(keys.len());
        for key in &keys {
            let id = be_u64(&key[16..]).unwrap_or(0);
            let found = tail.iter().find(|t| t.id == id).copied().or_else(|| self.transfer(id));
            if let Some(transfer) = found {
                transfers.push(transfer);
            }
        }
        let next = (transfers.len() == limit)
            .then(|| transfers.last())
            .flatten()
            .map(|last| StatementCursor { timestamp_ms: last.timestamp_ms, transfer_id: last.id });
        Ok(Statement { transfers, next })
    }

    /// A merchant's transfers for a business date, in commit order, read from its
    /// shard's journal alone.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed or corrupt read.
    pub fn merchant_transfers(
        &self,
        merchant_id: u32,
        date: BusinessDate,
    ) -> Result<Vec<Transfer>, ControlError> {
        let merchant = self
            .shared
            .directory
            .merchant(merchant_id)
            .ok_or(ControlError::UnknownMerchant(merchant_id))?;
        let account = AccountId::merchant(merchant_id);
        let store = &self.shared.store;
        let journal = store.cf(&journal_cf(merchant.shard));
        let day_key = prefixed_key(shard_key::DAY_START, &date.to_yyyymmdd().to_be_bytes());
        let Some(start) = store.db().get_cf(journal, day_key)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let iter = store.db().iterator_cf(journal, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if key.first() != Some(&merchant.shard) || key.len() != 16 {
                break;
            }
            let batch =
                Batch::decode(&value).map_err(|_| ControlError::UnknownMerchant(merchant_id))?;
            if batch.business_date > date {
                break;
            }
            out.extend(batch.transfers.into_iter().filter(|t| {
                t.business_date == date && (t.debit == account || t.credit == account)
            }));
        }
        Ok(out)
    }

    /// The answers a terminal's retries would be served from, oldest first, read from
    /// disk (what it was told, as committed).
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed read.
    pub fn terminal_answers(&self, terminal_id: u32) -> Result<Vec<Entry>, ControlError> {
        let terminal = self
            .shared
            .directory
            .terminal(terminal_id)
            .ok_or(ControlError::UnknownTerminal(terminal_id))?;
        let store = &self.shared.store;
        let journal = store.cf(&journal_cf(terminal.shard));
        let key = prefixed_key(shard_key::TERMINAL_STATE, &terminal_id.to_be_bytes());
        let Some(bytes) = store.db().get_cf(journal, key)? else {
            return Ok(Vec::new());
        };
        let state =
            TerminalState::decode(&bytes).ok_or(ControlError::UnknownTerminal(terminal_id))?;
        let mut keys = state.batches;
        keys.sort_unstable();
        let mut out = Vec::new();
        for key in keys {
            if let Some(value) = store.db().get_cf(journal, key)?
                && let Ok(batch) = Batch::decode(&value)
            {
                out.extend(batch.entries.into_iter().filter(|e| e.terminal_id == terminal_id));
            }
        }
        Ok(out)
    }

    /// Blacklist changes after `since`, at most `max` (and at most the protocol's
    /// limit), with the current version.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn blacklist_since(
        &self,
        since: u64,
        max: usize,
    ) -> Result<(u64, Vec<BlacklistEntry>), rocksdb::Error> {
        let current = self.blacklist_version();
        let max = max.min(onecard_protocol::limits::BLACKLIST_ENTRIES_MAX);
        let cf = self.shared.store.cf(CF_CONTROL);
        let start = prefixed_key(control_key::BLACKLIST, &since.saturating_add(1).to_be_bytes());
        let mut entries = Vec::new();
        for item in
            self.shared.store.db().iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            if key.first() != Some(&control_key::BLACKLIST) || entries.len() >= max {
                break;
            }
            let (Some(version), Some(card_number)) =
                (be_u64(&key[1..]), value.get(..8).and_then(be_u64))
            else {
                continue;
            };
            entries.push(BlacklistEntry { version, card_number, listed: value.get(8) == Some(&1) });
        }
        Ok((current, entries))
    }

    /// Proves the ledger's invariants from disk; see [`crate::verify`].
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn verify(&self) -> Result<crate::verify::VerifyReport, rocksdb::Error> {
        let in_memory: Vec<(u64, i64, i64)> = self
            .shared
            .cards
            .accounts()
            .iter()
            .map(|account| {
                let state = account.lock();
                (account.number, state.balance_fen, state.restricted_fen)
            })
            .collect();
        // Balances and the index written up to this moment, so that the checkpoint
        // compared is the latest.
        self.shared.flush_checkpoint();
        crate::verify::verify(&self.shared.store, Some(&self.shared.chain), Some(&in_memory))
    }

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

/// One row of a subsidy batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubsidyRow {
    /// The card credited.
    pub card_number: u64,
    /// Amount in fen, positive.
    pub amount_fen: i64,
    /// The purse credited.
    pub purse: Purse,
}

/// The control key of a batch posted exactly once under `key`.
fn once_key(key: u64) -> Vec<u8> {
    prefixed_key(control_key::ONCE, &key.to_be_bytes())
}

fn decode_outcomes(bytes: &[u8]) -> Result<Vec<Option<String>>, ControlError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ControlError::Corrupt(format!("batch outcome: {error}")))
}

/// A control-plane transfer before it has an id.
pub(crate) struct ControlTransfer {
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount_fen: i64,
    pub kind: TransferKind,
    pub card_number: u64,
}

/// Refuses an action on a closed card.
fn not_closed(state: &AccountState, card: u64, action: &'static str) -> Result<(), ControlError> {
    if state.state == CardState::Closed {
        return Err(ControlError::NotAllowed { card, state: state.state, action });
    }
    Ok(())
}

fn check_name(what: &'static str, name: &str) -> Result<(), ControlError> {
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(ControlError::InvalidName(what));
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

/// Writes a card account's record.
fn put_account(write: &mut WriteBatch, cf: &ColumnFamily, record: &AccountRecord) {
    let key = prefixed_key(control_key::ACCOUNT, &record.account_number.to_be_bytes());
    write.put_cf(cf, key, json(record));
}

/// Writes a card number's entry: its account, and when it was replaced (0 if current).
fn put_card(
    write: &mut WriteBatch,
    cf: &ColumnFamily,
    card_number: u64,
    account_number: u64,
    replaced_at_ms: u64,
) {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&account_number.to_be_bytes());
    value[8..].copy_from_slice(&replaced_at_ms.to_be_bytes());
    write.put_cf(cf, prefixed_key(control_key::CARD, &card_number.to_be_bytes()), value);
}

/// Writes blacklist entry `version`: the card, and whether it is now listed.
fn put_blacklist(
    write: &mut WriteBatch,
    cf: &ColumnFamily,
    version: u64,
    card_number: u64,
    listed: bool,
) {
    let mut value = [0u8; 9];
    value[..8].copy_from_slice(&card_number.to_be_bytes());
    value[8] = u8::from(listed);
    write.put_cf(cf, prefixed_key(control_key::BLACKLIST, &version.to_be_bytes()), value);
}

/// The terminal a stored record describes, its key opened with the master key (or,
/// from a store written before sealing, read in the clear).
fn terminal_from(
    record: &TerminalRecord,
    merchant: &MerchantRecord,
    master_key: &MasterKey,
    directory: &Directory,
) -> Result<Terminal, LedgerError> {
    let key = match &record.clear_key {
        Some(clear) => TerminalKey::from_hex(clear).map_err(|e| corrupt("terminal key", e))?,
        None => master_key.open(record.id, &record.sealed_key)?,
    };
    Ok(Terminal::new(
        record.id,
        merchant,
        directory.merchant_flag(merchant.id),
        key,
        record.enabled,
    ))
}

/// Where a store's chains begin, for a store that has no chain key yet: each journal's
/// next batch and the audit log's next record, or 1 for an empty one. A journal whose
/// last batch is already sealed (by a build that derived the key without storing it)
/// gets no start.
fn chain_starts(store: &Store) -> Result<ChainStarts, LedgerError> {
    let mut starts = ChainStarts::default();
    let journals = (0..store.shards()).chain(std::iter::once(CONTROL_JOURNAL));
    for journal in journals {
        match last_batch(store, journal)? {
            None => {
                starts.journals.insert(journal, 1);
            }
            Some(batch) if batch.seal.is_none() => {
                starts.journals.insert(journal, batch.number + 1);
            }
            Some(_) => {}
        }
    }
    let mut audit = store.db().raw_iterator_cf(store.cf(crate::store::CF_AUDIT));
    audit.seek_to_last();
    audit.status()?;
    starts.audit = match (audit.key(), audit.value()) {
        (None, _) => 1,
        (Some(key), Some(value)) => {
            let sequence = <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes);
            let sealed = serde_json::from_slice::<crate::audit::AuditRecord>(value)
                .is_ok_and(|record| record.seal.is_some());
            if sealed || sequence == 0 { 0 } else { sequence + 1 }
        }
        (Some(_), None) => 0,
    };
    Ok(starts)
}

/// The last batch a journal committed.
fn last_batch(store: &Store, journal: u8) -> Result<Option<Batch>, LedgerError> {
    let cf = store.cf(&journal_cf(journal));
    let mut iter = store.db().raw_iterator_cf(cf);
    iter.seek_for_prev(batch_key(((u64::from(journal) + 1) << 56).wrapping_sub(1), u64::MAX));
    iter.status()?;
    match (iter.key(), iter.value()) {
        (Some(key), Some(value)) if key.len() == 16 && key[0] == journal => {
            Batch::decode(value).map(Some).map_err(|e| corrupt("journal batch", e))
        }
        _ => Ok(None),
    }
}

/// Reads back a shard: its next ids, and every terminal's retry window.
fn recover_shard(shared: &Shared, shard: u8) -> Result<RecoveredShard, LedgerError> {
    let store = &shared.store;
    let last = last_batch(store, shard)?;
    let journal = store.cf(&journal_cf(shard));
    let mut states = Vec::new();
    for item in store.db().prefix_iterator_cf(journal, [shard_key::TERMINAL_STATE]) {
        let (key, value) = item?;
        if key.first() != Some(&shard_key::TERMINAL_STATE) {
            break;
        }
        let terminal =
            be_u32(&key[1..]).ok_or_else(|| corrupt("terminal state key", hex::encode(&key)))?;
        let state =
            TerminalState::decode(&value).ok_or_else(|| corrupt("terminal state", terminal))?;
        states.push((terminal, state));
    }
    let mut batches = HashMap::new();
    for (_, state) in &states {
        for key in &state.batches {
            if batches.contains_key(key) {
                continue;
            }
            let value = store.db().get_cf(journal, key)?.ok_or_else(|| {
                corrupt("terminal state", "names a batch that is not in the journal")
            })?;
            batches.insert(*key, Batch::decode(&value).map_err(|e| corrupt("journal batch", e))?);
        }
    }
    let mut windows = HashMap::new();
    for (terminal_id, state) in states {
        let window = rebuild_window(terminal_id, &state, &batches);
        if let Some(terminal) = shared.directory.terminal(terminal_id) {
            terminal.last_sequence.store(state.last_sequence, Ordering::Release);
            terminal.blacklist_version.store(state.blacklist_version, Ordering::Release);
        }
        windows.insert(terminal_id, window);
    }
    Ok(RecoveredShard {
        next_transfer_id: last.as_ref().map_or(first_transfer_id(shard), Batch::next_transfer_id),
        next_batch: last.as_ref().map_or(1, |batch| batch.number + 1),
        last_date: last.as_ref().map_or(0, |batch| batch.business_date.to_yyyymmdd()),
        last_seal: last.as_ref().and_then(|batch| batch.seal).unwrap_or(Seal::GENESIS),
        windows,
    })
}
