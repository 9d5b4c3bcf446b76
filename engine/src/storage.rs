//! The door every durable write passes on its way to RocksDB, and the faults a test
//! can put in that door.
//!
//! A write names its journal: a shard, [`CHECKPOINT_JOURNAL`] for the checkpointer's
//! derived writes, or [`CONTROL_JOURNAL`] for everything else (control batches,
//! records, dates, workflows, the audit log, operators). A journal
//! whose write fails is poisoned: it refuses every later write until the process
//! restarts, because after a failed write or sync nobody knows what reached the disk,
//! and the engine's counters (next transfer id, next batch) may no longer match it.
//! Recovery at the next start reads what is really there.
//!
//! [`FaultInjecting`] wraps the real [`Rocks`] door and fails one chosen write the way
//! a disk does: the write refused ([`Fault::WriteFails`]), the write made but its sync
//! failed ([`Fault::SyncFails`]: the batch may well be on disk, unacknowledged), or the
//! disk full ([`Fault::DiskFull`]: that write and every later one, on every journal,
//! refused). Ledgers always sit behind it; with nothing armed it costs one atomic load.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocksdb::{DB, WriteBatch, WriteOptions};

/// The journal number of the control plane (card lifecycle, fees, deposits), which
/// has its own journal beside the shards'.
pub const CONTROL_JOURNAL: u8 = u8::MAX;

/// The number the checkpointer's writes go through the storage door under
/// (`checkpoint.rs`). It is no journal of batches: what it writes (balances and the
/// statement index, with the journal positions they reflect) is derived from the
/// journals, so losing it loses nothing, but it has its own poison flag and faults.
pub const CHECKPOINT_JOURNAL: u8 = 253;

/// Why a write did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused the write or its sync.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A fault armed by a test.
    #[error("{0} (injected)")]
    Injected(Fault),
    /// An earlier write of this journal failed; it takes none until restart.
    #[error("an earlier write failed; the journal takes no writes until restart")]
    Poisoned,
    /// A cell's log did not commit the write: this node is not the leader, lost its
    /// majority, or waited past its limit. The write may still commit later.
    #[error("not replicated: {0}")]
    NotReplicated(String),
}

/// How durable a write is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the write-ahead log, and the log synced: on disk.
    Synced,
    /// In the write-ahead log, not yet synced: on disk after the next synced write.
    Logged,
    /// Not in the write-ahead log at all: on disk only once its column family's
    /// memtable is flushed. For what is derived from the journals (the checkpointer's
    /// balances and index, each with its watermark in the same family, so a crash
    /// leaves a family at some earlier checkpoint, never between two).
    Unlogged,
}

impl Durability {
    /// The same write with its sync lost.
    const fn without_sync(self) -> Self {
        match self {
            Self::Synced | Self::Logged => Self::Logged,
            Self::Unlogged => Self::Unlogged,
        }
    }
}

/// Where batches are made durable.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Writes `batch` for `journal`, as durable as `durability` says.
    ///
    /// # Errors
    /// [`StorageError`] if the batch may not be durable.
    fn write(
        &self,
        db: &DB,
        journal: u8,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), StorageError>;
}

/// Where a cell's leader sends its durable writes: the replicated log
/// (`onecard-cluster`). [`Replicate::replicate`] returns once the write is durable on a
/// majority of the cell's nodes and applied to this node's store (through
/// [`crate::store::Store::apply_replicated`]), or fails, and then nothing may be
/// answered as approved on its strength.
pub trait Replicate: Send + Sync + fmt::Debug {
    /// Replicates `batch` (its RocksDB bytes) for `journal`. Whatever durability a
    /// single node would have asked of its disk, a replicated write is durable once its
    /// log entry is: every node applies it to its store logged but unsynced, with the
    /// entry's position in the same write.
    ///
    /// # Errors
    /// [`StorageError::NotReplicated`] if the write is not known to be committed.
    fn replicate(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError>;

    /// Whether this node may answer from memory now, with nothing written: whether a
    /// majority of the cell confirmed its lead recently enough that no other node can
    /// have been elected since. A leader paused past its election timeout and resumed
    /// must not answer a sign-on, a heartbeat, a blacklist download or a retry from a
    /// state the new leader may already have moved past; a write needs no such check,
    /// since it is answered only once committed.
    fn holds_lease(&self) -> bool {
        true
    }
}

/// RocksDB itself.
#[derive(Debug, Default)]
pub struct Rocks;

impl Storage for Rocks {
    fn write(
        &self,
        db: &DB,
        _journal: u8,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Synced);
        options.disable_wal(durability == Durability::Unlogged);
        db.write_opt(batch, &options)?;
        Ok(())
    }
}

/// A way a disk fails a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write is refused; nothing reaches the disk.
    WriteFails,
    /// The write reaches the operating system but its sync fails.
    SyncFails,
    /// No space left: this write and every later one are refused.
    DiskFull,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WriteFails => "write failed",
            Self::SyncFails => "sync failed",
            Self::DiskFull => "no space left on device",
        })
    }
}

/// One fault to inject: which, on which journal (any when `None`), after how many of
/// that journal's writes have gone through.
///
/// Written `fault[@journal][+after]`: `write_fails`, `sync_fails@1`,
/// `disk_full@control+20`, `write_fails@checkpoint`. Journals are shard numbers,
/// `control` or `checkpoint`. A plan for any journal counts and fails only the
/// journals of batches and the control plane's writes, never the checkpointer's,
/// unless it is a full disk (which refuses every write once it has fired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// The fault.
    pub fault: Fault,
    /// The journal whose write fails, or any.
    pub journal: Option<u8>,
    /// Writes of that journal to let through first.
    pub after_writes: u64,
}

/// A fault plan that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "storage fault `{0}`: expected write_fails|sync_fails|disk_full, then optionally \
     @<shard>|@control|@checkpoint and +<writes to let through>"
)]
pub struct FaultPlanError(String);

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || FaultPlanError(text.to_owned());
        let (rest, after_writes) = match text.split_once('+') {
            Some((rest, after)) => (rest, after.parse().map_err(|_| error())?),
            None => (text, 0),
        };
        let (fault, journal) = match rest.split_once('@') {
            Some((fault, "control")) => (fault, Some(CONTROL_JOURNAL)),
            Some((fault, "checkpoint")) => (fault, Some(CHECKPOINT_JOURNAL)),
            Some((fault, shard)) => (
                fault,
                Some(
                    shard
                        .parse()
                        .ok()
                        .filter(|s| *s != CONTROL_JOURNAL && *s != CHECKPOINT_JOURNAL)
                        .ok_or_else(error)?,
                ),
            ),
            None => (rest, None),
        };
        let fault = match fault {
            "write_fails" => Fault::WriteFails,
            "sync_fails" => Fault::SyncFails,
            "disk_full" => Fault::DiskFull,
            _ => return Err(error()),
        };
        Ok(Self { fault, journal, after_writes })
    }
}

/// An armed plan and how far it has counted.
#[derive(Debug)]
struct Armed {
    plan: FaultPlan,
    seen: u64,
}

/// A door that fails the write a [`FaultPlan`] picks, in front of another door.
#[derive(Debug, Default)]
pub struct FaultInjecting<S> {
    inner: S,
    /// Set while a plan waits to fire: the only cost of this door when unarmed.
    armed: AtomicBool,
    plan: Mutex<Option<Armed>>,
    disk_full: AtomicBool,
    injected: AtomicU64,
}

impl<S: Storage> FaultInjecting<S> {
    /// A door in front of `inner` with nothing armed.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            armed: AtomicBool::new(false),
            plan: Mutex::new(None),
            disk_full: AtomicBool::new(false),
            injected: AtomicU64::new(0),
        }
    }

    /// Arms `plan`, replacing any plan not yet fired.
    pub fn arm(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = Some(Armed { plan, seen: 0 });
        self.armed.store(true, Ordering::Release);
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The fault this write is to suffer, if any; counts the write against the plan.
    fn fires(&self, journal: u8) -> Option<Fault> {
        if self.disk_full.load(Ordering::Acquire) {
            return Some(Fault::DiskFull);
        }
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        let mut slot = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        let armed = slot.as_mut()?;
        match armed.plan.journal {
            Some(target) if target != journal => return None,
            None if journal == CHECKPOINT_JOURNAL => return None,
            _ => {}
        }
        if armed.seen < armed.plan.after_writes {
            armed.seen += 1;
            return None;
        }
        let fault = armed.plan.fault;
        *slot = None;
        self.armed.store(false, Ordering::Release);
        if fault == Fault::DiskFull {
            self.disk_full.store(true, Ordering::Release);
        }
        Some(fault)
    }
}

impl<S: Storage> Storage for FaultInjecting<S> {
    fn write(
        &self,
        db: &DB,
        journal: u8,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), StorageError> {
        match self.fires(journal) {
            None => self.inner.write(db, journal, batch, durability),
            Some(fault) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                if fault == Fault::SyncFails {
                    // The bytes reach the write-ahead log; only the sync is lost.
                    self.inner.write(db, journal, batch, durability.without_sync())?;
                }
                Err(StorageError::Injected(fault))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_refused_by_name() {
        assert_eq!(
            "disk_full@control+20".parse(),
            Ok(FaultPlan {
                fault: Fault::DiskFull,
                journal: Some(CONTROL_JOURNAL),
                after_writes: 20
            })
        );
        assert_eq!(
            "sync_fails@1".parse(),
            Ok(FaultPlan { fault: Fault::SyncFails, journal: Some(1), after_writes: 0 })
        );
        assert_eq!(
            "write_fails".parse(),
            Ok(FaultPlan { fault: Fault::WriteFails, journal: None, after_writes: 0 })
        );
        assert_eq!(
            "write_fails@checkpoint".parse(),
            Ok(FaultPlan {
                fault: Fault::WriteFails,
                journal: Some(CHECKPOINT_JOURNAL),
                after_writes: 0
            })
        );
        for bad in [
            "",
            "slow",
            "disk_full@",
            "disk_full@x",
            "disk_full@255",
            "disk_full@253",
            "write_fails+-1",
        ] {
            let error = bad.parse::<FaultPlan>().expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn a_plan_fires_once_on_its_journal_after_its_count_and_a_full_disk_stays_full() {
        let door = FaultInjecting::new(Rocks);
        assert_eq!(door.fires(0), None, "nothing armed");
        door.arm(FaultPlan { fault: Fault::WriteFails, journal: Some(1), after_writes: 2 });
        assert_eq!(door.fires(0), None, "another journal");
        assert_eq!(door.fires(1), None);
        assert_eq!(door.fires(1), None);
        assert_eq!(door.fires(1), Some(Fault::WriteFails));
        assert_eq!(door.fires(1), None, "once");
        door.arm(FaultPlan { fault: Fault::SyncFails, journal: None, after_writes: 0 });
        assert_eq!(door.fires(CHECKPOINT_JOURNAL), None, "any journal means the ledger's");
        assert_eq!(door.fires(2), Some(Fault::SyncFails));
        door.arm(FaultPlan { fault: Fault::DiskFull, journal: None, after_writes: 0 });
        assert_eq!(door.fires(3), Some(Fault::DiskFull));
        assert_eq!(door.fires(0), Some(Fault::DiskFull), "every journal, from then on");
        assert_eq!(door.fires(CONTROL_JOURNAL), Some(Fault::DiskFull));
        assert_eq!(door.fires(CHECKPOINT_JOURNAL), Some(Fault::DiskFull));
    }
}
