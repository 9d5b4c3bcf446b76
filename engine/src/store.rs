//! The RocksDB store under the engine: its column families, key layout and merge
//! operator.
//!
//! One database per node, in the data directory. `docs/ARCHITECTURE.md` gives every
//! key byte by byte; this module is the one place that builds them.
//!
//! | column family | keys |
//! |---|---|
//! | `meta` | format version, shard count, business date; on a cell's node, the log position applied |
//! | `control` | cards, card accounts, merchants, terminals, blacklist |
//! | `balances` | every account's balance as of each journal's watermark, kept beside them |
//! | `journal-N` | shard N's batches, terminal state, refund marks, offline records |
//! | `journal-control` | the control plane's batches (deposits, fees, closures) |
//! | `index` | card statements: (card account, time, transfer id), to each journal's watermark |
//! | `audit` | the append-only audit log: sequence → record (see `audit.rs`) |
//! | `admin` | operators of the admin API, owned by onecard-ops |
//! | `workflow` | approval workflows' instances: `i` ++ id → JSON; `n` → the next id |

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, MergeOperands, Options,
    WriteBatch, WriteBufferManager,
};

use sha2::{Digest, Sha256};

use crate::cards::CardMoney;
use crate::limits::{BLOCK_CACHE_BYTES, MEMTABLE_BYTES_MAX, SHARDS_MAX};
use crate::storage::{
    CHECKPOINT_JOURNAL, CONTROL_JOURNAL, Durability, FaultInjecting, FaultPlan, Replicate, Rocks,
    Storage, StorageError,
};

/// Bits of a transfer id below the shard byte.
pub const TRANSFER_SEQUENCE_BITS: u32 = 56;

/// The shard (or [`CONTROL_JOURNAL`]) that wrote transfer `id`.
#[must_use]
pub fn journal_of(transfer_id: u64) -> u8 {
    u8::try_from(transfer_id >> TRANSFER_SEQUENCE_BITS).unwrap_or(u8::MAX)
}

/// The first transfer id journal `journal` hands out.
#[must_use]
pub const fn first_transfer_id(journal: u8) -> u64 {
    ((journal as u64) << TRANSFER_SEQUENCE_BITS) | 1
}

/// The batch's key in its journal column family: first transfer id, then batch number,
/// both big-endian, so batches sort in commit order and `seek_for_prev(id ++ FF..)`
/// lands on the batch holding transfer `id`.
#[must_use]
pub fn batch_key(first_transfer_id: u64, number: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&first_transfer_id.to_be_bytes());
    key[8..].copy_from_slice(&number.to_be_bytes());
    key
}

/// The key to `seek_for_prev` to for transfer `id`.
#[must_use]
pub fn seek_key(transfer_id: u64) -> [u8; 16] {
    batch_key(transfer_id, u64::MAX)
}

/// The store layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 5;

/// Earlier layouts, which this build upgrades in place when it opens one. Version 4
/// adds the control journal's day-start keys (`0xF4` ++ date), which settlement and
/// reconciliation read a day's control batches by. Version 5 takes balances and the
/// statement index off the commit path: they are checkpointed with the journal
/// position they reflect ([`watermark_key`] in each of the two families); a
/// store of version 4 wrote them with every batch, so each journal's watermarks start
/// at its last batch.
const FORMAT_VERSIONS_UPGRADABLE: [u32; 2] = [3, 4];

/// Column family of node-wide metadata.
pub const CF_META: &str = "meta";
/// Column family of control-plane records.
pub const CF_CONTROL: &str = "control";
/// Column family of committed balances (merge operator: [`merge_balance`]).
pub const CF_BALANCES: &str = "balances";
/// Column family of card statement index keys.
pub const CF_INDEX: &str = "index";
/// Column family of the control plane's journal.
pub const CF_JOURNAL_CONTROL: &str = "journal-control";
/// Column family of the append-only audit log.
pub const CF_AUDIT: &str = "audit";
/// Column family of the admin API's own records (operators), kept by onecard-ops.
pub const CF_ADMIN: &str = "admin";
/// Column family of approval workflows' instances (`workflow.rs`).
pub const CF_WORKFLOW: &str = "workflow";

/// Meta key of the store's layout version (u32 BE).
pub const KEY_FORMAT_VERSION: &[u8] = b"format_version";
const KEY_SHARDS: &[u8] = b"shards";
/// Meta key of the open business date: no commit counts for an earlier one.
pub const KEY_BUSINESS_DATE: &[u8] = b"business_date";
/// Meta key of the last closed business date (u32 BE `yyyymmdd`).
pub const KEY_CLOSED_THROUGH: &[u8] = b"closed_through";

/// Key of the card-pool control total in `balances`: the sum of every card movement
/// ever committed, kept beside the per-card balances so `verify` can compare them.
pub const KEY_CARD_POOL: &[u8] = b"card_pool";
/// In `meta`, on a node of a cell: the position of the last log entry applied to this
/// store and the cell's membership at it (`onecard-cluster` encodes it), written in
/// the same write as the entry's batch.
pub const KEY_REPLICATED_THROUGH: &[u8] = b"replicated_through";

/// The first byte of a watermark key, after every account id and index key.
pub const WATERMARK_PREFIX: u8 = 0xFF;

/// The key of `journal`'s watermark in a derived family: `0xFF` `w` ++ journal (1) →
/// the key of the journal's last batch the family reflects (16), or
/// [`before_first_batch`] for none. In `balances` it says how far the balances go, in
/// `index` how far the statement index does; each is written with what it covers, in
/// its own family, so that however a crash finds the family's memtable, it and its
/// watermark agree.
#[must_use]
pub const fn watermark_key(journal: u8) -> [u8; 3] {
    [WATERMARK_PREFIX, b'w', journal]
}

/// A batch key that sorts before every batch of `journal`: the watermark of a journal
/// nothing of which is reflected yet.
#[must_use]
pub fn before_first_batch(journal: u8) -> [u8; 16] {
    batch_key(first_transfer_id(journal) - 1, 0)
}

/// A key of one prefix byte and a big-endian number: how the control column family and
/// a shard journal's non-batch keys are built.
#[must_use]
pub fn prefixed_key(prefix: u8, number: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + number.len());
    key.push(prefix);
    key.extend_from_slice(number);
    key
}

/// Prefixes of the control column family's keys.
pub mod control_key {
    /// `c` ++ card number (8, BE) → card account number (8, BE) ++ replaced-at ms
    /// (8, BE; 0 while current).
    pub const CARD: u8 = b'c';
    /// `a` ++ account number (8, BE) → account record (JSON).
    pub const ACCOUNT: u8 = b'a';
    /// `m` ++ merchant id (4, BE) → merchant record (JSON).
    pub const MERCHANT: u8 = b'm';
    /// `t` ++ terminal id (4, BE) → terminal record (JSON).
    pub const TERMINAL: u8 = b't';
    /// `b` ++ version (8, BE) → card number (8, BE) ++ listed (1).
    pub const BLACKLIST: u8 = b'b';
    /// `n` ++ name → the next number to hand out (8, BE).
    pub const COUNTER: u8 = b'n';
    /// `s` ++ business date (4, BE) → the date's settlement record (JSON), written in
    /// the same batch as its payout and commission transfers.
    pub const SETTLEMENT: u8 = b's';
    /// `j` ++ adjustment id (8, BE) → the transfer it posted (8, BE), written with it.
    pub const ADJUSTMENT: u8 = b'j';
    /// `w` ++ key (8, BE) → the outcome of a batch posted exactly once under that key
    /// (a workflow's subsidy batch), JSON, written with its transfers.
    pub const ONCE: u8 = b'w';
    /// `h` ++ card number (8, BE) → the card's hall credential (JSON,
    /// `ledger::hall`): the hall password's hash, never the password.
    pub const HALL_CREDENTIAL: u8 = b'h';
}

/// Prefixes of a shard journal's non-batch keys. Batch keys start with the shard
/// number (below [`SHARDS_MAX`]), so these sort after every batch.
pub mod shard_key {
    /// `0xF1` ++ terminal id (4, BE) → terminal state (see `shard.rs`).
    pub const TERMINAL_STATE: u8 = 0xF1;
    /// `0xF2` ++ purchase transfer id (8, BE) → refunded fen (8, LE) ++ reversed (1).
    pub const SALE_MARK: u8 = 0xF2;
    /// `0xF3` ++ terminal id (4, BE) ++ offline sequence (8, BE) → answer code (2, LE)
    /// ++ transfer id (8, LE).
    pub const OFFLINE_RECORD: u8 = 0xF3;
    /// `0xF4` ++ business date (4, BE) → key of the first batch of that date.
    pub const DAY_START: u8 = 0xF4;
    /// `0xF5` ++ business date (4, BE) ++ transfer id (8, BE) → a top-up's channel
    /// (1) ++ fen (8, LE) ++ reference length (1) ++ the channel's reference.
    pub const TOP_UP_REFERENCE: u8 = 0xF5;
}

const _: () = assert!(SHARDS_MAX <= 0xF0);

/// The journal column family of `shard`.
#[must_use]
pub fn journal_cf(shard: u8) -> String {
    if shard == CONTROL_JOURNAL {
        CF_JOURNAL_CONTROL.to_owned()
    } else {
        format!("journal-{shard}")
    }
}

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// RocksDB refused: the directory is locked by another process, unreadable, or
    /// corrupt.
    #[error("cannot open the store in {path}: {source}")]
    Rocks {
        /// The data directory.
        path: PathBuf,
        /// What RocksDB said.
        source: rocksdb::Error,
    },
    /// The store was written by a build with another layout.
    #[error("the store in {path} has format version {found}; this build reads {FORMAT_VERSION}")]
    FormatVersion {
        /// The data directory.
        path: PathBuf,
        /// The version recorded in the store.
        found: u32,
    },
    /// A meta value is not what this build writes.
    #[error("the store in {path} has an unreadable {what}")]
    CorruptMeta {
        /// The data directory.
        path: PathBuf,
        /// Which value.
        what: &'static str,
    },
    /// The shard count asked for is out of range.
    #[error("a store has 1 to {SHARDS_MAX} shards, not {shards}")]
    Shards {
        /// The count asked for.
        shards: usize,
    },
}

/// An open store.
pub struct Store {
    db: DB,
    path: PathBuf,
    shards: u8,
    families: Vec<String>,
    /// The door every durable write after opening goes through.
    door: FaultInjecting<Rocks>,
    /// Per journal: a write failed, so it takes none until restart. Shards by number,
    /// then the control journal.
    poisoned: Vec<AtomicBool>,
    /// Set on a node of a cell: every write after it goes through the cell's log,
    /// and reaches this store through [`Store::apply_replicated`].
    replicator: OnceLock<Arc<dyn Replicate>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("shards", &self.shards).finish()
    }
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut options = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    options.set_block_based_table_factory(&table);
    // The newest levels churn: every flush writes L0 and compaction soon rewrites it
    // into L1. Compressing them costs CPU on the commit path's machine for data that
    // lives minutes (LZ4 was 12% of the server's CPU at saturation, BENCHMARKS.md);
    // the deeper levels, where the bytes settle, are compressed.
    use rocksdb::DBCompressionType::{Lz4, None as Plain};
    options.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
    if name == CF_BALANCES {
        options.set_merge_operator_associative("onecard-balance", merge_balance);
    }
    if name == CF_BALANCES || name == CF_INDEX {
        // Each purchase inserts a key at a random place in these two; a memtable that
        // stays in the CPU's cache makes that insert cheaper (measured in BENCHMARKS.md).
        options.set_write_buffer_size(16 << 20);
    }
    if name.starts_with("journal") {
        options.set_write_buffer_size(64 << 20);
        options.set_merge_operator_associative(
            "onecard-terminal-state",
            crate::terminal_state::merge_terminal_state,
        );
    }
    options
}

impl Store {
    /// Opens the store in `path`, creating it with `shards` shards if the directory is
    /// empty. An existing store keeps the shard count it was created with.
    ///
    /// # Errors
    /// [`OpenError`] if RocksDB cannot open it, it has another format version, or
    /// `shards` is out of range for a new store.
    pub fn open(path: &Path, shards: usize) -> Result<Self, OpenError> {
        let rocks = |source| OpenError::Rocks { path: path.to_owned(), source };
        let corrupt = |what| OpenError::CorruptMeta { path: path.to_owned(), what };
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_enable_pipelined_write(true);
        options.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(
            MEMTABLE_BYTES_MAX,
            false,
        ));
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        options.set_enable_write_thread_adaptive_yield(false);
        // A new store has no families to list; asking RocksDB anyway leaks the empty
        // list it allocates before failing (found by the API fuzz target).
        let existing = if path.join("CURRENT").exists() {
            DB::list_cf(&options, path).unwrap_or_default()
        } else {
            Vec::new()
        };
        let recorded =
            if existing.is_empty() { None } else { Self::recorded_shards(path, &existing)? };
        let shards = match recorded {
            Some(recorded) => recorded,
            None => u8::try_from(shards)
                .ok()
                .filter(|count| (1..=SHARDS_MAX).contains(&usize::from(*count)))
                .ok_or(OpenError::Shards { shards })?,
        };
        let mut names: Vec<String> = [
            CF_META,
            CF_CONTROL,
            CF_BALANCES,
            CF_INDEX,
            CF_JOURNAL_CONTROL,
            CF_AUDIT,
            CF_ADMIN,
            CF_WORKFLOW,
        ]
        .map(str::to_owned)
        .into();
        names.extend((0..shards).map(journal_cf));
        for name in existing {
            if name != "default" && !names.contains(&name) {
                names.push(name);
            }
        }
        let families =
            names.iter().map(|name| ColumnFamilyDescriptor::new(name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&options, path, families).map_err(rocks)?;
        let store = Self {
            db,
            path: path.to_owned(),
            shards,
            families: names,
            door: FaultInjecting::new(Rocks),
            poisoned: (0..=shards + 1).map(|_| AtomicBool::new(false)).collect(),
            replicator: OnceLock::new(),
        };
        let meta = store.cf(CF_META);
        match store.db.get_cf(meta, KEY_FORMAT_VERSION).map_err(rocks)? {
            None => {
                let empty = store.journals().map(|journal| (journal, before_first_batch(journal)));
                store.put_watermarks(empty.collect()).map_err(rocks)?;
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(meta, KEY_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
                batch.put_cf(meta, KEY_SHARDS, [shards]);
                store.db.write_opt(batch, &synced()).map_err(rocks)?;
            }
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt("format version"))?;
                if found == 3 {
                    store.upgrade_control_day_starts().map_err(rocks)?;
                }
                if FORMAT_VERSIONS_UPGRADABLE.contains(&found) {
                    store.upgrade_watermarks().map_err(rocks)?;
                } else if found != FORMAT_VERSION {
                    return Err(OpenError::FormatVersion { path: path.to_owned(), found });
                }
            }
        }
        Ok(store)
    }

    /// Every journal of batches: the shards', then the control plane's.
    pub fn journals(&self) -> impl Iterator<Item = u8> + use<> {
        (0..self.shards).chain(std::iter::once(CONTROL_JOURNAL))
    }

    /// The key of `journal`'s last batch, if it has one.
    ///
    /// # Errors
    /// A failed read.
    pub fn last_batch_key(&self, journal: u8) -> Result<Option<[u8; 16]>, rocksdb::Error> {
        let cf = self.cf(&journal_cf(journal));
        let mut iter = self.db.raw_iterator_cf(cf);
        let last_id = ((u64::from(journal) + 1) << 56).wrapping_sub(1);
        iter.seek_for_prev(batch_key(last_id, u64::MAX));
        iter.status()?;
        Ok(iter
            .key()
            .filter(|key| key.len() == 16 && key[0] == journal)
            .and_then(|key| <[u8; 16]>::try_from(key).ok()))
    }

    /// Writes the watermarks of both derived families, unlogged like every write to
    /// them, and flushes the two families so that they are on disk.
    fn put_watermarks(&self, marks: Vec<(u8, [u8; 16])>) -> Result<(), rocksdb::Error> {
        let (balances, index) = (self.cf(CF_BALANCES), self.cf(CF_INDEX));
        let mut write = rocksdb::WriteBatch::default();
        for (journal, last) in marks {
            write.put_cf(balances, watermark_key(journal), last);
            write.put_cf(index, watermark_key(journal), last);
        }
        let mut unlogged = rocksdb::WriteOptions::default();
        unlogged.disable_wal(true);
        self.db.write_opt(write, &unlogged)?;
        self.db.flush_cf(balances)?;
        self.db.flush_cf(index)
    }

    /// Version 4 to 5: a store that wrote balances and index keys with every batch
    /// reflects each journal to its last batch; those become the watermarks (flushed
    /// to disk), then the new version is written, synced.
    fn upgrade_watermarks(&self) -> Result<(), rocksdb::Error> {
        let mut marks = Vec::new();
        for journal in self.journals() {
            marks.push((
                journal,
                self.last_batch_key(journal)?.unwrap_or(before_first_batch(journal)),
            ));
        }
        self.put_watermarks(marks)?;
        let mut write = rocksdb::WriteBatch::default();
        write.put_cf(self.cf(CF_META), KEY_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
        self.db.write_opt(write, &synced())?;
        tracing::info!(path = %self.path.display(), "store upgraded to format version {FORMAT_VERSION}");
        Ok(())
    }

    /// Version 3 to 4: writes a day-start key for the first control batch of each
    /// business date, then the new version, in one synced write.
    fn upgrade_control_day_starts(&self) -> Result<(), rocksdb::Error> {
        let journal = self.cf(CF_JOURNAL_CONTROL);
        let mut write = rocksdb::WriteBatch::default();
        let mut last_date = None;
        for item in self.db.iterator_cf(journal, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            if key.len() != 16 || key[0] != CONTROL_JOURNAL {
                continue;
            }
            let Some(date) = value.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                continue;
            };
            let date = u32::from_le_bytes(date);
            if last_date != Some(date) {
                write.put_cf(
                    journal,
                    prefixed_key(shard_key::DAY_START, &date.to_be_bytes()),
                    &key,
                );
                last_date = Some(date);
            }
        }
        write.put_cf(self.cf(CF_META), KEY_FORMAT_VERSION, 4u32.to_be_bytes());
        self.db.write_opt(write, &synced())?;
        tracing::info!(path = %self.path.display(), "store upgraded to format version 4");
        Ok(())
    }

    /// Reads the shard count of an existing store without opening its journals.
    fn recorded_shards(path: &Path, existing: &[String]) -> Result<Option<u8>, OpenError> {
        if !existing.iter().any(|name| name == CF_META) {
            return Ok(None);
        }
        let options = Options::default();
        let db = DB::open_cf_for_read_only(&options, path, [CF_META], false)
            .map_err(|source| OpenError::Rocks { path: path.to_owned(), source })?;
        let meta = db.cf_handle(CF_META).expect("opened with meta");
        if let Some(found) = db
            .get_cf(meta, KEY_FORMAT_VERSION)
            .map_err(|source| OpenError::Rocks { path: path.to_owned(), source })?
        {
            let version = <[u8; 4]>::try_from(found.as_slice()).map(u32::from_be_bytes).ok();
            let readable = version
                .is_some_and(|v| v == FORMAT_VERSION || FORMAT_VERSIONS_UPGRADABLE.contains(&v));
            if !readable {
                return Err(OpenError::FormatVersion {
                    path: path.to_owned(),
                    found: version.unwrap_or(0),
                });
            }
        }
        let shards = db
            .get_cf(meta, KEY_SHARDS)
            .map_err(|source| OpenError::Rocks { path: path.to_owned(), source })?;
        match shards.as_deref() {
            None => Ok(None),
            Some([count]) if (1..=SHARDS_MAX).contains(&usize::from(*count)) => Ok(Some(*count)),
            Some(_) => Err(OpenError::CorruptMeta { path: path.to_owned(), what: "shard count" }),
        }
    }

    /// The data directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of shards the store was created with.
    #[must_use]
    pub const fn shards(&self) -> u8 {
        self.shards
    }

    /// Every column family the store has open.
    #[must_use]
    pub fn family_names(&self) -> &[String] {
        &self.families
    }

    /// Flushes every family's memtable to its files and waits for it: what a
    /// checkpoint would otherwise do while its caller holds writes back.
    ///
    /// # Errors
    /// A failed flush.
    pub fn flush_memtables(&self) -> Result<(), rocksdb::Error> {
        let families: Vec<&ColumnFamily> = self.families.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&families, &rocksdb::FlushOptions::default())
    }

    /// The underlying database, for reads. Writes go through [`Store::write`].
    #[must_use]
    pub const fn db(&self) -> &DB {
        &self.db
    }

    /// Writes `batch` for `journal` (a shard, or [`CONTROL_JOURNAL`] for everything
    /// else), synced to disk when `sync` is set. A failed write poisons the journal:
    /// it refuses every later write until restart (`storage.rs`).
    ///
    /// # Errors
    /// [`StorageError`] if the batch may not be durable.
    pub fn write(&self, journal: u8, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let durability = if sync { Durability::Synced } else { Durability::Logged };
        self.write_as(journal, batch, durability)
    }

    /// Writes `batch` for `journal` without the write-ahead log: what the checkpointer
    /// derives, in families no logged write touches once the store is open.
    ///
    /// # Errors
    /// As [`Store::write`].
    pub fn write_unlogged(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_as(journal, batch, Durability::Unlogged)
    }

    fn write_as(
        &self,
        journal: u8,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.poisoning(journal, || match self.replicator.get() {
            Some(replicator) => replicator.replicate(journal, batch),
            None => self.door.write(&self.db, journal, batch, durability),
        })
    }

    /// Runs `write` for `journal` unless the journal is poisoned, and poisons it if
    /// the write fails.
    fn poisoning(
        &self,
        journal: u8,
        write: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if self.poison_flag(journal).load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        self.poison_on_failure(journal, write())
    }

    /// Poisons `journal` if `written` failed, and passes it on.
    fn poison_on_failure(
        &self,
        journal: u8,
        written: Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if let Err(error) = &written {
            self.poison_flag(journal).store(true, Ordering::Release);
            let journal = journal_label(journal);
            tracing::error!(journal, %error, "write failed; the journal takes no more writes");
        }
        written
    }

    /// Sends every later write through `replicator`: this store is a cell's. Set once,
    /// before the ledger opens on the store.
    ///
    /// # Errors
    /// Gives `replicator` back if one is already set.
    pub fn replicate_through(
        &self,
        replicator: Arc<dyn Replicate>,
    ) -> Result<(), Arc<dyn Replicate>> {
        self.replicator.set(replicator)
    }

    /// Whether this store may answer from memory now ([`Replicate::holds_lease`]):
    /// always on a single node; on a cell's, while the node's lead is confirmed.
    #[must_use]
    pub fn holds_lease(&self) -> bool {
        self.replicator.get().is_none_or(|replicator| replicator.holds_lease())
    }

    /// Applies a committed entry of the cell's log: `batch` as its writer's store wrote
    /// it, with the entry's position already added by the caller. Logged and unsynced
    /// (the log entry is what is durable), through the fault door, and never through
    /// the replicator: this is the write the replicator waits for.
    ///
    /// # Errors
    /// [`StorageError`] if RocksDB refuses the write; the journal is poisoned.
    ///
    /// A journal poisoned by its writer (a leader whose write was not confirmed) still
    /// applies what the cell committed: the cell's log, not the writer, decides.
    pub fn apply_replicated(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError> {
        let written = self.door.write(&self.db, journal, batch, Durability::Logged);
        self.poison_on_failure(journal, written)
    }

    /// Lets every journal take writes again. For a node of a cell whose ledger has
    /// closed after losing the lead: its writes failed because they were not
    /// confirmed, which says nothing of the store, changed only by committed entries
    /// (and a failed apply stops the node). A single node never calls this: there a
    /// poisoned journal waits for a restart.
    pub fn clear_poison(&self) {
        for flag in self.poisoned.iter() {
            flag.store(false, Ordering::Release);
        }
    }

    /// A fingerprint of the store's column families in the order they were opened,
    /// which for a store this build created is the order RocksDB numbered them in. A
    /// write batch names families by number, so a replicated batch is applied only to
    /// a store with the writer's fingerprint.
    #[must_use]
    pub fn families_fingerprint(&self) -> u64 {
        let mut hasher = Sha256::new();
        for name in &self.families {
            hasher.update(name.as_bytes());
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }

    /// SHA-256 over every key and value of every family, families by name: two stores
    /// with the same hash hold the same data. What a cell's nodes compare at the same
    /// applied position.
    ///
    /// # Errors
    /// A failed read.
    pub fn state_hash(&self) -> Result<[u8; 32], rocksdb::Error> {
        let mut names = self.families.clone();
        names.sort();
        let mut hasher = Sha256::new();
        for name in &names {
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            let mut iter = self.db.raw_iterator_cf(self.cf(name));
            iter.seek_to_first();
            while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                hasher.update((key.len() as u64).to_be_bytes());
                hasher.update(key);
                hasher.update((value.len() as u64).to_be_bytes());
                hasher.update(value);
                iter.next();
            }
            iter.status()?;
        }
        Ok(hasher.finalize().into())
    }

    /// [`Store::write`], synced.
    ///
    /// # Errors
    /// As [`Store::write`].
    pub fn write_synced(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError> {
        self.write(journal, batch, true)
    }

    /// Whether a failed write has poisoned `journal`.
    #[must_use]
    pub fn is_poisoned(&self, journal: u8) -> bool {
        self.poison_flag(journal).load(Ordering::Acquire)
    }

    /// Arms a storage fault (tests, and `serve` under `ONECARD_STORAGE_FAULT`).
    pub fn arm_fault(&self, plan: FaultPlan) {
        tracing::warn!(?plan, "storage fault armed");
        self.door.arm(plan);
    }

    /// Storage faults injected so far.
    #[must_use]
    pub fn faults_injected(&self) -> u64 {
        self.door.injected()
    }

    fn poison_flag(&self, journal: u8) -> &AtomicBool {
        let index = match journal {
            CONTROL_JOURNAL => usize::from(self.shards),
            CHECKPOINT_JOURNAL => usize::from(self.shards) + 1,
            shard => usize::from(shard).min(usize::from(self.shards)),
        };
        &self.poisoned[index]
    }

    /// The number a counter key in `family` holds (8 bytes, big-endian): the next id
    /// to hand out, 1 while the key is absent.
    ///
    /// # Errors
    /// A failed read.
    pub fn counter(&self, family: &str, key: &[u8]) -> Result<u64, rocksdb::Error> {
        Ok(self
            .db
            .get_cf(self.cf(family), key)?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(1, u64::from_be_bytes))
    }

    /// The column family `name`.
    ///
    /// # Panics
    /// If the store was opened without it; every family is opened by [`Store::open`].
    #[must_use]
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is opened"))
    }
}

/// A journal as logs and metrics name it: its shard number, or `control`.
#[must_use]
pub fn journal_label(journal: u8) -> String {
    match journal {
        CONTROL_JOURNAL => "control".to_owned(),
        CHECKPOINT_JOURNAL => "checkpoint".to_owned(),
        shard => shard.to_string(),
    }
}

/// Write options that sync the WAL before returning.
#[must_use]
pub fn synced() -> rocksdb::WriteOptions {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    options
}

/// The balances merge operator: card keys fold [`CardMoney`] operands, every other key
/// adds `i64` operands. Addition commutes, so shards never need to agree on an order.
/// An operand of the wrong size (which no writer produces) is skipped and `verify`
/// reports the balance it leaves wrong.
#[must_use]
pub fn merge_balance(
    key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    if is_card_balance_key(key) {
        let mut money = existing.and_then(CardMoney::decode).unwrap_or_default();
        for operand in operands {
            if let Some(delta) = CardMoney::decode(operand) {
                money = money.merge(delta);
            }
        }
        Some(money.encode().to_vec())
    } else {
        let read = |bytes: &[u8]| <[u8; 8]>::try_from(bytes).ok().map(i64::from_le_bytes);
        let mut sum = existing.and_then(read).unwrap_or(0);
        for operand in operands {
            sum = sum.wrapping_add(read(operand).unwrap_or(0));
        }
        Some(sum.to_le_bytes().to_vec())
    }
}

/// Whether a balances key holds a card account's [`CardMoney`].
#[must_use]
pub fn is_card_balance_key(key: &[u8]) -> bool {
    key.len() == 8 && key[0] == crate::account::AccountKind::Card as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("onecard-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_store_records_its_format_and_shards_and_reopens_with_them() {
        let dir = temp_dir("reopen");
        drop(Store::open(&dir, 3).expect("creates"));
        let store = Store::open(&dir, 8).expect("reopens");
        assert_eq!(store.shards(), 3, "an existing store keeps its shard count");
        let version = store.db().get_cf(store.cf(CF_META), KEY_FORMAT_VERSION).expect("reads");
        assert_eq!(version.as_deref(), Some(&FORMAT_VERSION.to_be_bytes()[..]));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_another_format_is_refused() {
        let dir = temp_dir("format");
        {
            let store = Store::open(&dir, 1).expect("creates");
            store
                .db()
                .put_cf(store.cf(CF_META), KEY_FORMAT_VERSION, 99u32.to_be_bytes())
                .expect("w");
        }
        let error = Store::open(&dir, 1).expect_err("refused");
        assert!(matches!(error, OpenError::FormatVersion { found: 99, .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_open_in_another_handle_is_refused_not_shared() {
        let dir = temp_dir("lock");
        let first = Store::open(&dir, 1).expect("creates");
        let error = Store::open(&dir, 1).expect_err("locked");
        assert!(matches!(error, OpenError::Rocks { .. }), "{error}");
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shard_counts_out_of_range_are_refused() {
        let dir = temp_dir("shards");
        assert!(matches!(Store::open(&dir, 0), Err(OpenError::Shards { shards: 0 })));
        assert!(matches!(Store::open(&dir, 1000), Err(OpenError::Shards { shards: 1000 })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn balances_merge_by_addition() {
        let dir = temp_dir("merge");
        let store = Store::open(&dir, 1).expect("creates");
        let balances = store.cf(CF_BALANCES);
        let merchant = crate::account::AccountId::merchant(1).to_u64().to_be_bytes();
        store.db().merge_cf(balances, merchant, 5i64.to_le_bytes()).expect("merge");
        store.db().merge_cf(balances, merchant, (-2i64).to_le_bytes()).expect("merge");
        let value = store.db().get_cf(balances, merchant).expect("get").expect("present");
        assert_eq!(value, 3i64.to_le_bytes());
        let card = crate::account::AccountId::card(1).to_u64().to_be_bytes();
        let delta = CardMoney { balance_fen: 10, restricted_fen: 1, spent_date: 1, spent_fen: 4 };
        store.db().merge_cf(balances, card, delta.encode()).expect("merge");
        store.db().merge_cf(balances, card, delta.encode()).expect("merge");
        let value = store.db().get_cf(balances, card).expect("get").expect("present");
        assert_eq!(CardMoney::decode(&value).map(|m| (m.balance_fen, m.spent_fen)), Some((20, 8)));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Sends every write it is given to another store, as a cell's log would after
    /// committing it.
    #[derive(Debug)]
    struct ToReplica(Arc<Store>, std::sync::Mutex<u32>);

    impl Replicate for ToReplica {
        fn replicate(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError> {
            *self.1.lock().expect("not poisoned") += 1;
            self.0.apply_replicated(journal, WriteBatch::from_data(batch.data()))
        }
    }

    #[test]
    fn a_replicated_store_writes_through_its_replicator_and_the_replica_hashes_alike() {
        let (dir_a, dir_b) = (temp_dir("replicated-a"), temp_dir("replicated-b"));
        let leader = Store::open(&dir_a, 2).expect("creates");
        let replica = Arc::new(Store::open(&dir_b, 2).expect("creates"));
        assert_eq!(leader.families_fingerprint(), replica.families_fingerprint());
        assert_eq!(leader.state_hash().expect("hashes"), replica.state_hash().expect("hashes"));
        let sent = Arc::new(ToReplica(Arc::clone(&replica), std::sync::Mutex::new(0)));
        assert!(leader.replicate_through(Arc::clone(&sent) as Arc<dyn Replicate>).is_ok());
        assert!(leader.replicate_through(sent.clone()).is_err(), "set once");
        let mut batch = WriteBatch::default();
        batch.put_cf(leader.cf(CF_WORKFLOW), b"n", 7u64.to_be_bytes());
        leader.write_synced(CONTROL_JOURNAL, batch).expect("replicates");
        assert_eq!(*sent.1.lock().expect("not poisoned"), 1);
        let read = |store: &Store| store.db().get_cf(store.cf(CF_WORKFLOW), b"n").expect("reads");
        assert_eq!(read(&replica).as_deref(), Some(&7u64.to_be_bytes()[..]), "on the replica");
        assert_eq!(read(&leader), None, "the leader's store is written only by the log's apply");
        let mut own = WriteBatch::default();
        own.put_cf(leader.cf(CF_WORKFLOW), b"n", 7u64.to_be_bytes());
        leader.apply_replicated(CONTROL_JOURNAL, own).expect("applies");
        assert_eq!(leader.state_hash().expect("hashes"), replica.state_hash().expect("hashes"));
        let mut other = WriteBatch::default();
        other.put_cf(replica.cf(CF_WORKFLOW), b"n", 8u64.to_be_bytes());
        replica.apply_replicated(CONTROL_JOURNAL, other).expect("applies");
        assert_ne!(leader.state_hash().expect("hashes"), replica.state_hash().expect("hashes"));
        drop((leader, sent, replica));
        let _ = std::fs::remove_dir_all(&dir_a);
        let _ = std::fs::remove_dir_all(&dir_b);
    }
}
