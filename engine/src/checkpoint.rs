//! The checkpointer: balances and the statement index, derived from committed batches
//! off the commit path, each written with the journal position it reflects.
//!
//! A shard's commit writes its batch record and nothing per card or per movement.
//! Once the record is durable, the shard hands the checkpointer the batch's
//! [`Postings`], the one deterministic apply of the record (and then answers). The
//! checkpointer, one thread for the whole ledger, folds them:
//!
//! - **Balances.** Deltas fold per account (a card bought from forty times in a
//!   checkpoint interval is one merge operand, not forty), and every
//!   `checkpoint_interval_ms` one `WriteBatch` carries the merges and, per journal,
//!   the key of the last batch they include ([`watermark_key`] in `balances` itself).
//! - **The statement index.** Index keys gather into a run, sorted before it is
//!   written (sorted inserts are what a memtable takes fastest), with its own
//!   watermark in `index`, every `index_interval_ms` or once the run holds
//!   [`INDEX_RUN_KEYS_MAX`] keys. A statement merges the index with the journal after
//!   the in-memory index watermark ([`IndexWatermarks`]), so a movement shows the
//!   moment its answer is sent.
//!
//! Both are written outside the write-ahead log: a checkpoint in the log would be
//! synced by whichever shard's commit shares its write group, and a lunch-peak
//! commit would wait for it (0.4 MB a second of merges at 10,000 requests a second).
//! Each family holds its own watermark, written in the same batch as what it covers,
//! so however a crash finds a family's memtable it and its watermark agree; the
//! checkpointer flushes the two families every [`CHECKPOINTS_PER_PERSIST`]
//! checkpoints, and a clean stop flushes everything. Opening the ledger ([`recover`])
//! loads the checkpoint and replays each journal after each watermark through the
//! same apply, so a restart after `kill -9` replays at most those intervals' batches.
//! A failed checkpoint write loses nothing either: it poisons the checkpointer alone
//! (the journals go on taking batches) and the next start replays from the last
//! checkpoint that reached the disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use rocksdb::{ColumnFamily, Direction, IteratorMode, WriteBatch};

use crate::account::{AccountId, AccountKind};
use crate::cards::CardMoney;
use crate::journal::{Batch, CHECKPOINT_JOURNAL};
use crate::limits::{CHECKPOINTS_PER_PERSIST, INDEX_RUN_KEYS_MAX};
use crate::metrics::Metrics;
use crate::postings::Postings;
use crate::store::{
    CF_BALANCES, CF_INDEX, KEY_CARD_POOL, Store, WATERMARK_PREFIX, journal_cf, watermark_key,
};

/// A durable batch, on its way to the checkpointer.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The journal that wrote it.
    pub journal: u8,
    /// Its batch key.
    pub key: [u8; 16],
    /// What its record derives.
    pub postings: Postings,
}

/// What the checkpointer is asked to do.
pub(crate) enum Message {
    /// Fold a durable batch in. Each journal sends its batches in commit order.
    Committed(Committed),
    /// Write everything folded so far, synced, and say whether it landed.
    Flush(Sender<bool>),
    /// Write everything folded so far and stop.
    Stop,
    /// A test hook: abort the process at a crash point.
    ArmCrash(CrashPlan),
}

/// A place inside the checkpointer where a test kills the process, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Balance deltas folded, about to be written: the index may be ahead of them.
    BeforeBalances,
    /// A balance checkpoint just landed: the index may be behind it.
    AfterBalances,
    /// An index run just landed.
    AfterIndexRun,
    /// The derived families were just flushed to disk.
    AfterPersist,
}

/// Where, and after how many writes of that kind, the checkpointer aborts the
/// process. Written `point[+writes]`: `before_balances`, `after_balances+3`,
/// `after_index_run+10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPlan {
    /// The point.
    pub point: CrashPoint,
    /// Writes of that kind to let through first.
    pub after_writes: u64,
}

/// A crash plan that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "checkpoint crash `{0}`: expected before_balances|after_balances|after_index_run|\
     after_persist, then \
     optionally +<writes to let through>"
)]
pub struct CrashPlanError(String);

impl std::str::FromStr for CrashPlan {
    type Err = CrashPlanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CrashPlanError(text.to_owned());
        let (point, after_writes) = match text.split_once('+') {
            Some((point, after)) => (point, after.parse().map_err(|_| error())?),
            None => (text, 0),
        };
        let point = match point {
            "before_balances" => CrashPoint::BeforeBalances,
            "after_balances" => CrashPoint::AfterBalances,
            "after_index_run" => CrashPoint::AfterIndexRun,
            "after_persist" => CrashPoint::AfterPersist,
            _ => return Err(error()),
        };
        Ok(Self { point, after_writes })
    }
}

/// How often the checkpointer writes, from the ledger's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Balances: what a restart after `kill -9` replays at most.
    pub checkpoint: Duration,
    /// The statement index: how much journal a statement reads beside it at most.
    pub index: Duration,
}

/// A journal's slot in per-journal tables: shards by number, then the control plane.
fn slot(shards: u8, journal: u8) -> usize {
    if journal < shards { usize::from(journal) } else { usize::from(shards) }
}

/// The last batch of each journal the statement index holds, as memory knows it:
/// advanced only after the index run that holds it is written.
#[derive(Debug)]
pub struct IndexWatermarks {
    shards: u8,
    keys: Mutex<Vec<[u8; 16]>>,
}

impl IndexWatermarks {
    fn new(shards: u8, keys: Vec<[u8; 16]>) -> Self {
        Self { shards, keys: Mutex::new(keys) }
    }

    /// The watermark of `journal`: batches after it may not be indexed yet.
    pub fn of(&self, journal: u8) -> [u8; 16] {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)[slot(self.shards, journal)]
    }

    fn advance(&self, journal: u8, key: [u8; 16]) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let held = &mut keys[slot(self.shards, journal)];
        *held = (*held).max(key);
    }
}

/// The balances of every account that is not a card, and the card pool, as of every
/// durable batch: what [`crate::Ledger::account_balance`] and the card-pool gauge
/// read. (Card purses are in the card table, the authority.)
#[derive(Debug, Default)]
pub struct Totals {
    accounts: HashMap<AccountId, i64>,
    card_pool_fen: i64,
}

impl Totals {
    /// Adds a durable batch's postings.
    pub fn apply(&mut self, postings: &Postings) {
        for (account, fen) in &postings.accounts {
            *self.accounts.entry(*account).or_default() += fen;
        }
        self.card_pool_fen += postings.card_pool_fen;
    }

    /// The balance of an account that is not a card purse.
    #[must_use]
    pub fn balance(&self, account: AccountId) -> i64 {
        self.accounts.get(&account).copied().unwrap_or(0)
    }

    /// Every account that is not a card purse, with its balance.
    pub fn accounts(&self) -> impl Iterator<Item = (AccountId, i64)> + '_ {
        self.accounts.iter().map(|(account, fen)| (*account, *fen))
    }

    /// The card pool: every card movement ever committed.
    #[must_use]
    pub const fn card_pool_fen(&self) -> i64 {
        self.card_pool_fen
    }
}

/// What opening the ledger derived: the checkpoint with the journal after it replayed.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Every card account's money.
    pub cards: HashMap<u64, CardMoney>,
    /// Every other account, and the card pool.
    pub totals: Totals,
    /// The index watermarks, each journal's last batch.
    pub indexed: Vec<[u8; 16]>,
}

/// Why a checkpoint or a journal tail cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    /// A failed read.
    #[error(transparent)]
    Rocks(#[from] rocksdb::Error),
    /// A failed write of the catch-up checkpoint.
    #[error(transparent)]
    Write(#[from] crate::storage::StorageError),
    /// A stored value is not what this build writes.
    #[error("{what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> RecoverError {
    RecoverError::Corrupt { what, detail: detail.to_string() }
}

/// `journal`'s watermark in the derived family `family` (`balances` or `index`).
///
/// # Errors
/// If it is absent (a store of this layout always has one per journal) or not 16
/// bytes.
pub(crate) fn stored_watermark(
    store: &Store,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    family: &str,
    journal: u8,
) -> Result<[u8; 16], RecoverError> {
    let value = view.get_cf(store.cf(family), watermark_key(journal))?;
    value
        .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| corrupt("watermark", format!("{family} of journal {journal}")))
}

/// The stored balances as of the checkpoint, read from `view`: card accounts' money
/// and every other account's balance, and the card pool.
fn stored_balances(
    store: &Store,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
) -> Result<(HashMap<u64, CardMoney>, Totals), RecoverError> {
    let mut cards = HashMap::new();
    let mut totals = Totals::default();
    for item in view.iterator_cf(store.cf(CF_BALANCES), IteratorMode::Start) {
        let (key, value) = item?;
        if key.first() == Some(&WATERMARK_PREFIX) {
            continue;
        }
        if key.as_ref() == KEY_CARD_POOL {
            let bytes =
                <[u8; 8]>::try_from(value.as_ref()).map_err(|_| corrupt("card pool", ""))?;
            totals.card_pool_fen = i64::from_le_bytes(bytes);
            continue;
        }
        let raw = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("balance key", hex::encode(&key)))?;
        let account = AccountId::from_u64(raw).map_err(|raw| corrupt("balance key", raw))?;
        if account.kind() == AccountKind::Card {
            let money = CardMoney::decode(&value).ok_or_else(|| corrupt("card balance", raw))?;
            cards.insert(account.number(), money);
        } else {
            let bytes =
                <[u8; 8]>::try_from(value.as_ref()).map_err(|_| corrupt("balance", account))?;
            totals.accounts.insert(account, i64::from_le_bytes(bytes));
        }
    }
    Ok((cards, totals))
}

/// Calls `each` with every batch of `journal` after `after`, in commit order.
///
/// # Errors
/// A failed read, a batch that does not decode, or what `each` returns.
pub(crate) fn for_each_batch_after(
    store: &Store,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    journal: u8,
    after: [u8; 16],
    mut each: impl FnMut([u8; 16], Batch) -> Result<(), RecoverError>,
) -> Result<(), RecoverError> {
    let cf = store.cf(&journal_cf(journal));
    for item in view.iterator_cf(cf, IteratorMode::From(&after, Direction::Forward)) {
        let (key, value) = item?;
        let Ok(key) = <[u8; 16]>::try_from(key.as_ref()) else { break };
        if key[0] != journal {
            break;
        }
        if key <= after {
            continue;
        }
        let batch = Batch::decode(&value).map_err(|error| {
            corrupt("journal batch", format!("journal {journal} {}: {error}", hex::encode(key)))
        })?;
        each(key, batch)?;
    }
    Ok(())
}

/// Balances as of every batch in `view`: the checkpoint, plus the postings of every
/// batch after each journal's checkpoint watermark. What reconciliation reads, so
/// that it sees the balances of the very journal it reconciles.
///
/// # Errors
/// As [`recover`]'s reads.
pub(crate) fn balances_in(
    store: &Store,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
) -> Result<(HashMap<u64, CardMoney>, Totals), RecoverError> {
    let (mut cards, mut totals) = stored_balances(store, view)?;
    for journal in store.journals() {
        let from = stored_watermark(store, view, CF_BALANCES, journal)?;
        for_each_batch_after(store, view, journal, from, |_, batch| {
            let postings = Postings::of(batch.business_date, &batch.transfers, &batch.entries);
            fold_cards(&mut cards, &postings);
            totals.apply(&postings);
            Ok(())
        })?;
    }
    Ok((cards, totals))
}

fn fold_cards(cards: &mut HashMap<u64, CardMoney>, postings: &Postings) {
    for (account, money) in &postings.cards {
        let held = cards.entry(*account).or_default();
        *held = held.merge(*money);
    }
}

/// Opens the derived state: loads the checkpoint, replays each journal's tail after
/// its watermarks through [`Postings::of`], and writes what the tail derived (balance
/// merges, index keys, the new watermarks) in one synced write, so that the next open
/// starts from here.
///
/// # Errors
/// A failed read or write, or a stored value this build does not write.
pub(crate) fn recover(store: &Store) -> Result<Recovered, RecoverError> {
    let view = store.db().snapshot();
    let (mut cards, mut totals) = stored_balances(store, &view)?;
    let mut tail = Postings::default();
    let mut index = Vec::new();
    let mut write = WriteBatch::default();
    let (balances, index_cf) = (store.cf(CF_BALANCES), store.cf(CF_INDEX));
    let mut indexed = vec![[0u8; 16]; usize::from(store.shards()) + 1];
    let mut replayed_batches = 0;
    for journal in store.journals() {
        let balances_from = stored_watermark(store, &view, CF_BALANCES, journal)?;
        let index_from = stored_watermark(store, &view, CF_INDEX, journal)?;
        let mut last = balances_from.max(index_from);
        for_each_batch_after(
            store,
            &view,
            journal,
            balances_from.min(index_from),
            |key, batch| {
                let mut postings =
                    Postings::of(batch.business_date, &batch.transfers, &batch.entries);
                if key > index_from {
                    index.append(&mut postings.index);
                }
                postings.index.clear();
                if key > balances_from {
                    replayed_batches += 1;
                    tail.fold(postings);
                }
                last = last.max(key);
                Ok(())
            },
        )?;
        write.put_cf(balances, watermark_key(journal), last);
        write.put_cf(index_cf, watermark_key(journal), last);
        indexed[slot(store.shards(), journal)] = last;
    }
    drop(view);
    fold_cards(&mut cards, &tail);
    totals.apply(&tail);
    tail.write_balances(balances, &mut write);
    index.sort_unstable();
    for key in &index {
        write.put_cf(index_cf, key, []);
    }
    store.write_unlogged(CHECKPOINT_JOURNAL, write)?;
    if replayed_batches > 0 {
        tracing::info!(batches = replayed_batches, "journal tail replayed after the checkpoint");
    }
    Ok(Recovered { cards, totals, indexed })
}

/// The checkpointer's thread state.
pub(crate) struct Checkpointer {
    store: Arc<Store>,
    queue: Receiver<Message>,
    intervals: Intervals,
    indexed: Arc<IndexWatermarks>,
    metrics: Arc<Metrics>,
    shards: u8,
    /// Balance deltas folded since the last checkpoint (their index keys taken out).
    balances: Postings,
    /// Per journal slot, the last batch folded into `balances`.
    balance_marks: Vec<Option<(u8, [u8; 16])>>,
    balances_due: Option<Instant>,
    /// Index keys gathered since the last run was written.
    run: Vec<[u8; 24]>,
    run_marks: Vec<Option<(u8, [u8; 16])>>,
    run_due: Option<Instant>,
    /// Balance checkpoints written since the derived families were last flushed.
    checkpoints_unpersisted: u32,
    /// An armed crash point and the writes of its kind seen since.
    crash: Option<(CrashPlan, u64)>,
}

/// Starts the checkpointer's thread; it runs until [`Message::Stop`].
///
/// # Errors
/// If the thread cannot be spawned.
pub(crate) fn start(
    store: Arc<Store>,
    queue: Receiver<Message>,
    intervals: Intervals,
    indexed: Arc<IndexWatermarks>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let shards = store.shards();
    let slots = usize::from(shards) + 1;
    let checkpointer = Checkpointer {
        store,
        queue,
        intervals,
        indexed,
        metrics,
        shards,
        balances: Postings::default(),
        balance_marks: vec![None; slots],
        balances_due: None,
        run: Vec::new(),
        run_marks: vec![None; slots],
        run_due: None,
        checkpoints_unpersisted: 0,
        crash: None,
    };
    std::thread::Builder::new().name("onecard-checkpoint".to_owned()).spawn(move || {
        checkpointer.run();
    })
}

/// The watermarks folded since the last write of their kind, taken out.
fn take_marks(marks: &mut [Option<(u8, [u8; 16])>]) -> Vec<(u8, [u8; 16])> {
    marks.iter_mut().filter_map(Option::take).collect()
}

/// Puts each journal's watermark into `write`, in the family it describes.
fn put_watermarks(write: &mut WriteBatch, family: &ColumnFamily, marks: &[(u8, [u8; 16])]) {
    for (journal, key) in marks {
        write.put_cf(family, watermark_key(*journal), key);
    }
}

/// Index watermarks as recovery left them.
pub(crate) fn index_watermarks(shards: u8, recovered: &Recovered) -> IndexWatermarks {
    IndexWatermarks::new(shards, recovered.indexed.clone())
}

impl Checkpointer {
    fn run(mut self) {
        loop {
            let due = [self.balances_due, self.run_due].into_iter().flatten().min();
            let message = match due {
                None => self.queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => self.queue.recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match message {
                Ok(Message::Committed(committed)) => self.fold(committed),
                Ok(Message::Flush(done)) => {
                    let landed = self.write_run() & self.write_balances() & self.persist();
                    let _ = done.send(landed);
                }
                Ok(Message::ArmCrash(plan)) => self.crash = Some((plan, 0)),
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.write_run();
                    self.write_balances();
                    self.persist();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if self.run_due.is_some_and(|due| due <= now) || self.run.len() >= INDEX_RUN_KEYS_MAX {
                self.write_run();
            }
            if self.balances_due.is_some_and(|due| due <= now) {
                self.write_balances();
                self.checkpoints_unpersisted += 1;
                if self.checkpoints_unpersisted >= CHECKPOINTS_PER_PERSIST {
                    self.persist();
                }
            }
        }
    }

    fn fold(&mut self, mut committed: Committed) {
        let now = Instant::now();
        let slot = slot(self.shards, committed.journal);
        let mark = Some((committed.journal, committed.key));
        self.run.append(&mut committed.postings.index);
        self.run_marks[slot] = mark;
        self.run_due.get_or_insert(now + self.intervals.index);
        self.balances.fold(committed.postings);
        self.balance_marks[slot] = mark;
        self.balances_due.get_or_insert(now + self.intervals.checkpoint);
    }

    /// Flushes the two derived families' memtables to disk: what they hold, with
    /// their watermarks, survives a crash from here on. Whether it worked.
    fn persist(&mut self) -> bool {
        self.checkpoints_unpersisted = 0;
        if self.store.is_poisoned(CHECKPOINT_JOURNAL) {
            return false;
        }
        let db = self.store.db();
        let flushed = db
            .flush_cf(self.store.cf(CF_INDEX))
            .and_then(|()| db.flush_cf(self.store.cf(CF_BALANCES)));
        if let Err(error) = flushed {
            tracing::error!(%error, "flushing the checkpoint failed; the next start replays more");
            return false;
        }
        self.crash_point(CrashPoint::AfterPersist);
        true
    }

    /// Writes the index run gathered so far with its watermarks; whether it landed.
    fn write_run(&mut self) -> bool {
        self.run_due = None;
        let marks = take_marks(&mut self.run_marks);
        if marks.is_empty() {
            return true;
        }
        let mut run = std::mem::take(&mut self.run);
        run.sort_unstable();
        let mut write = WriteBatch::default();
        let index = self.store.cf(CF_INDEX);
        for key in &run {
            write.put_cf(index, key, []);
        }
        put_watermarks(&mut write, index, &marks);
        let landed = self.write(write, "index run");
        if landed {
            for (journal, key) in marks {
                self.indexed.advance(journal, key);
            }
        }
        self.crash_point(CrashPoint::AfterIndexRun);
        landed
    }

    /// Writes the balance deltas folded so far with their watermarks; whether they
    /// landed.
    fn write_balances(&mut self) -> bool {
        self.balances_due = None;
        let marks = take_marks(&mut self.balance_marks);
        if marks.is_empty() {
            return true;
        }
        let balances = std::mem::take(&mut self.balances);
        let mut write = WriteBatch::default();
        balances.write_balances(self.store.cf(CF_BALANCES), &mut write);
        put_watermarks(&mut write, self.store.cf(CF_BALANCES), &marks);
        self.crash_point(CrashPoint::BeforeBalances);
        let landed = self.write(write, "balance checkpoint");
        self.crash_point(CrashPoint::AfterBalances);
        landed
    }

    /// Aborts the process here if a test armed this point and its count is reached.
    fn crash_point(&mut self, point: CrashPoint) {
        let Some((plan, seen)) = self.crash.as_mut() else { return };
        if plan.point != point {
            return;
        }
        if *seen < plan.after_writes {
            *seen += 1;
            return;
        }
        tracing::warn!(?point, "crashing inside the checkpointer, as armed");
        std::process::abort();
    }

    /// Writes a checkpoint or an index run, unlogged: on disk at the family's next
    /// flush ([`Checkpointer::persist`]); whether it landed.
    fn write(&self, write: WriteBatch, what: &'static str) -> bool {
        if self.store.is_poisoned(CHECKPOINT_JOURNAL) {
            // Poisoned by an earlier failure: nothing more is written until the
            // restart, which replays the journals from the last checkpoint that landed.
            return false;
        }
        let started = Instant::now();
        let written = self.store.write_unlogged(CHECKPOINT_JOURNAL, write);
        self.metrics.checkpoint_seconds.observe(started.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                self.metrics.checkpoints_total.inc();
                true
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    what,
                    "checkpoint write failed; nothing is lost (the journals hold it), and \
                     the next start replays them from the last checkpoint that landed"
                );
                false
            }
        }
    }
}
