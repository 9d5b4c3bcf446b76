//! What the ledger's threads share: how the ledger runs ([`LedgerConfig`]) and the
//! state every shard's writer and the control plane read and move ([`Shared`]): the
//! store, the cards, the directory, the chain key, the metrics, the business dates,
//! the non-card totals and the checkpointer's queue. It sits below the shards and the
//! ledger, which both hold it; what only the control plane needs stays in the ledger.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam::channel::{Sender, bounded};
use rocksdb::WriteBatch;

use crate::cards::CardTable;
use crate::chain::Chain;
use crate::checkpoint::{Committed, IndexWatermarks, Message, Totals};
use crate::date::{BusinessDate, Clock, MealHours};
use crate::directory::Directory;
use crate::journal::{CONTROL_JOURNAL, Transfer, journal_of, read_transfer, seek_key};
use crate::limits::{CHECKPOINT_INTERVAL_MS_DEFAULT, INDEX_INTERVAL_MS_DEFAULT, SHARDS_MAX};
use crate::metrics::Metrics;
use crate::sealing::MasterKey;
use crate::storage::StorageError;
use crate::store::{CF_META, KEY_BUSINESS_DATE, KEY_CLOSED_THROUGH, Store, journal_cf};

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

/// What every thread of the ledger shares: the shards' writers and the control plane.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub cards: CardTable,
    pub directory: Directory,
    pub config: LedgerConfig,
    /// The key every journal's batches are sealed with, from the master key.
    pub chain: Chain,
    pub metrics: Arc<Metrics>,
    /// The open business date, `yyyymmdd`: no commit counts for an earlier one.
    pub business_date: AtomicU32,
    /// The last closed business date, `yyyymmdd`: no commit can count for it or an
    /// earlier one any more.
    pub closed_through: AtomicU32,
    /// Non-card balances and the card pool as of every durable batch.
    pub totals: Mutex<Totals>,
    /// How far the statement index reaches in each journal.
    pub indexed: Arc<IndexWatermarks>,
    /// Where durable batches go to be checkpointed and indexed.
    pub checkpoint: Sender<Message>,
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
    pub fn persist_dates(&self, open: BusinessDate) -> Result<(), StorageError> {
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
