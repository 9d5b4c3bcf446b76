//! The cell's state machine: the engine's store, to which every committed entry's
//! write batch is applied in log order.
//!
//! Applying an entry is one RocksDB write: the entry's batch as the leader's engine
//! built it, plus the entry's log position and the membership at it under
//! [`KEY_REPLICATED_THROUGH`] in `meta`. The write is logged but not synced (the log
//! entry is what is durable); after a crash the store is at some applied position,
//! never between two, and openraft applies again from there.
//!
//! A snapshot is a RocksDB checkpoint of the store (hard links, then the files packed
//! into one tar file under `snapshots/`), taken while no entry is being applied so
//! that its data and its recorded position agree. The memtables are flushed first,
//! while entries go on being applied, so that pause is short; building and packing
//! run on a blocking thread, not on the workers that run Raft. Installing one closes the store,
//! puts the unpacked checkpoint in its place and opens it again; the ledger must not
//! be open on the store then, and a node installs snapshots only while it follows.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use onecard_engine::storage::Replicate;
use onecard_engine::store::{CF_META, KEY_REPLICATED_THROUGH, Store};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use rocksdb::WriteBatch;
use tokio::io::AsyncSeekExt;

use crate::{
    Applied, ClusterError, LogEntry, NodeAddress, NodeId, TypeConfig, decode, encode, io_error,
};

/// Where a node's store is applied to. Installing a snapshot replaces the store, so
/// everyone who needs it (the ledger, the door, the tests) asks this slot.
#[derive(Debug)]
pub struct StoreSlot {
    store: RwLock<Option<Arc<Store>>>,
    /// Held while an entry is applied, and while a snapshot's checkpoint is taken.
    applying: Mutex<()>,
    /// The node's door, set on every store the slot holds: whatever opens a ledger
    /// on it writes through the cell's log.
    door: OnceLock<Arc<dyn Replicate>>,
    /// Snapshots this node built, and installed from a peer.
    snapshots_built: AtomicU64,
    snapshots_installed: AtomicU64,
}

impl StoreSlot {
    fn new(store: Store) -> Self {
        Self {
            store: RwLock::new(Some(Arc::new(store))),
            applying: Mutex::new(()),
            door: OnceLock::new(),
            snapshots_built: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
        }
    }

    /// Snapshots built here since the node started, and installed from a peer.
    #[must_use]
    pub fn snapshots(&self) -> (u64, u64) {
        (
            self.snapshots_built.load(Ordering::Relaxed),
            self.snapshots_installed.load(Ordering::Relaxed),
        )
    }

    /// Sets the node's door on the store, and on every store a snapshot puts here.
    pub(crate) fn set_door(&self, door: Arc<dyn Replicate>) {
        let door = Arc::clone(self.door.get_or_init(|| door));
        if let Some(store) = self.get() {
            let _ = store.replicate_through(door);
        }
    }

    /// The store, unless a snapshot is being installed in its place this moment.
    #[must_use]
    pub fn get(&self) -> Option<Arc<Store>> {
        self.store.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The position a store was applied through, as [`KEY_REPLICATED_THROUGH`] holds it.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddress>);

fn read_applied(store: &Store) -> Result<AppliedState, StorageError<NodeId>> {
    let bytes = store
        .db()
        .get_cf(store.cf(CF_META), KEY_REPLICATED_THROUGH)
        .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))?;
    match bytes {
        None => Ok((None, StoredMembership::default())),
        Some(bytes) => {
            decode(&bytes).map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))
        }
    }
}

/// The log index `store` was applied through, if any: what a replica's
/// [`Store::state_hash`] is compared at.
///
/// # Errors
/// If the position cannot be read.
pub fn applied_index(store: &Store) -> Result<Option<u64>, StorageError<NodeId>> {
    Ok(read_applied(store)?.0.map(|log_id| log_id.index))
}

/// The newest snapshot this node holds: its description and its packed file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct HeldSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddress>,
    file: PathBuf,
}

/// One node's state machine.
#[derive(Debug)]
pub struct StateMachine {
    slot: Arc<StoreSlot>,
    /// The store's directory.
    store_dir: PathBuf,
    /// Packed snapshots, built here or received.
    snapshots: PathBuf,
    /// Shards of a new store (an existing one keeps its own).
    shards: usize,
    applied: AppliedState,
    /// A snapshot being received: the file openraft writes its chunks into.
    receiving: Option<PathBuf>,
    next_file: Arc<AtomicU64>,
}

const HELD: &str = "held";

impl StateMachine {
    /// Opens (or creates) the store in `dir/store` and the snapshots in
    /// `dir/snapshots`.
    ///
    /// # Errors
    /// [`ClusterError`] if the store will not open or a directory cannot be made.
    pub fn open(dir: &Path, shards: usize) -> Result<Self, ClusterError> {
        let store_dir = dir.join("store");
        let snapshots = dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|source| ClusterError::Io {
            what: format!("creating {}", snapshots.display()),
            source,
        })?;
        // A snapshot half installed when the node stopped: the old store is whole
        // still, and the snapshot will be sent again.
        let _ = std::fs::remove_dir_all(dir.join("store.incoming"));
        let store = Store::open(&store_dir, shards)?;
        let applied = read_applied(&store).map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(Self {
            slot: Arc::new(StoreSlot::new(store)),
            store_dir,
            snapshots,
            shards,
            applied,
            receiving: None,
            next_file: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The slot the store is in.
    #[must_use]
    pub fn slot(&self) -> Arc<StoreSlot> {
        Arc::clone(&self.slot)
    }

    fn store(&self) -> Result<Arc<Store>, StorageError<NodeId>> {
        self.slot.get().ok_or_else(|| {
            let gone = io::Error::other("the store is being replaced by a snapshot");
            io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &gone)
        })
    }

    fn held(&self) -> Option<HeldSnapshot> {
        let bytes = std::fs::read(self.snapshots.join(HELD)).ok()?;
        decode(&bytes).ok()
    }

    /// Records `held` as the newest snapshot and removes every older file.
    fn hold(snapshots: &Path, held: &HeldSnapshot) -> io::Result<()> {
        let bytes = encode(held).map_err(io::Error::other)?;
        let temporary = snapshots.join(format!("{HELD}.new"));
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, snapshots.join(HELD))?;
        for file in std::fs::read_dir(snapshots)? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == "tar") && path != held.file {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        store: &Store,
        entry: &LogEntry,
    ) -> Result<Applied, StorageError<NodeId>> {
        let log_id = entry.log_id;
        let failed = |error: &dyn std::error::Error| {
            io_error(ErrorSubject::Apply(log_id), ErrorVerb::Write, error)
        };
        let (journal, mut batch) = match &entry.payload {
            EntryPayload::Blank => {
                (onecard_engine::storage::CONTROL_JOURNAL, WriteBatch::default())
            }
            EntryPayload::Normal(write) => {
                let ours = store.families_fingerprint();
                if write.families != ours {
                    let mismatch = io::Error::other(format!(
                        "entry {log_id} was written by a store with families {:016x}, this \
                         store has {ours:016x}: it would land in the wrong families; the \
                         node stops (replace it from a snapshot)",
                        write.families
                    ));
                    return Err(failed(&mismatch));
                }
                (write.journal, WriteBatch::from_data(&write.batch))
            }
            EntryPayload::Membership(membership) => {
                self.applied.1 = StoredMembership::new(Some(log_id), membership.clone());
                (onecard_engine::storage::CONTROL_JOURNAL, WriteBatch::default())
            }
        };
        let position: AppliedState = (Some(log_id), self.applied.1.clone());
        let bytes = encode(&position).map_err(|e| failed(&e))?;
        batch.put_cf(store.cf(CF_META), KEY_REPLICATED_THROUGH, bytes);
        store.apply_replicated(journal, batch).map_err(|e| failed(&e))?;
        self.applied.0 = Some(log_id);
        Ok(Applied { index: log_id.index })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError<NodeId>> {
        Ok(self.applied.clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let store = self.store()?;
        let slot = Arc::clone(&self.slot);
        let _applying = slot.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let mut answers = Vec::new();
        for entry in entries {
            answers.push(self.apply_one(&store, &entry)?);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            slot: Arc::clone(&self.slot),
            snapshots: self.snapshots.clone(),
            next_file: Arc::clone(&self.next_file),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let number = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.snapshots.join(format!("receiving-{number}.tar"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddress>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let failed = |error: &dyn std::error::Error| {
            io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, error)
        };
        // The data is what openraft hands over (the file it received the chunks into,
        // or any other), copied from its start into the snapshot's own file.
        let mut snapshot = snapshot;
        let file = self.snapshots.join(format!("{}.tar", meta.snapshot_id));
        let copying = file.with_extension("tar.new");
        let copied = async {
            snapshot.seek(io::SeekFrom::Start(0)).await?;
            let mut kept = tokio::fs::File::create(&copying).await?;
            tokio::io::copy(&mut snapshot, &mut kept).await?;
            kept.sync_all().await?;
            tokio::fs::rename(&copying, &file).await
        };
        copied.await.map_err(|e| failed(&e))?;
        drop(snapshot);
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        let incoming = self.store_dir.with_extension("incoming");
        let _ = std::fs::remove_dir_all(&incoming);
        let (packed, into) = (file.clone(), incoming.clone());
        tokio::task::spawn_blocking(move || unpack(&packed, &into))
            .await
            .map_err(|e| failed(&io::Error::other(e.to_string())))?
            .map_err(|e| failed(&e))?;
        // The swap: nobody else may hold the store (a node installs snapshots only
        // while it follows, with no ledger open on it).
        let mut slot = self.slot.store.write().unwrap_or_else(PoisonError::into_inner);
        let old = slot.take();
        if let Some(old) = old
            && let Err(still_shared) = Arc::try_unwrap(old)
        {
            *slot = Some(still_shared);
            return Err(failed(&io::Error::other(
                "the store is still in use (a ledger is open on it); no snapshot installed",
            )));
        }
        let replaced = self.store_dir.with_extension("replaced");
        let _ = std::fs::remove_dir_all(&replaced);
        std::fs::rename(&self.store_dir, &replaced).map_err(|e| failed(&e))?;
        std::fs::rename(&incoming, &self.store_dir).map_err(|e| failed(&e))?;
        let store = Store::open(&self.store_dir, self.shards).map_err(|e| failed(&e))?;
        if let Some(door) = self.slot.door.get() {
            let _ = store.replicate_through(Arc::clone(door));
        }
        self.applied = read_applied(&store)?;
        *slot = Some(Arc::new(store));
        drop(slot);
        let _ = std::fs::remove_dir_all(&replaced);
        if self.applied.0 != meta.last_log_id {
            return Err(failed(&io::Error::other(format!(
                "the snapshot says it reflects {:?} but its store was applied through {:?}",
                meta.last_log_id, self.applied.0
            ))));
        }
        Self::hold(&self.snapshots, &HeldSnapshot { meta: meta.clone(), file })
            .map_err(|e| failed(&e))?;
        self.slot.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(held) = self.held() else { return Ok(None) };
        let file = tokio::fs::File::open(&held.file).await.map_err(|e| {
            io_error(ErrorSubject::Snapshot(Some(held.meta.signature())), ErrorVerb::Read, &e)
        })?;
        Ok(Some(Snapshot { meta: held.meta, snapshot: Box::new(file) }))
    }
}

/// Builds a snapshot of the store as it stands.
#[derive(Debug)]
pub struct SnapshotBuilder {
    slot: Arc<StoreSlot>,
    snapshots: PathBuf,
    next_file: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (slot, snapshots) = (Arc::clone(&self.slot), self.snapshots.clone());
        let number = self.next_file.fetch_add(1, Ordering::Relaxed);
        // The checkpoint flushes the store's memtables and the packing copies every
        // file of it: seconds of disk work on a large store, kept off the runtime's
        // workers, which run Raft and the cluster link.
        let (meta, file) =
            tokio::task::spawn_blocking(move || build_checkpoint(&slot, &snapshots, number))
                .await
                .map_err(|e| snapshot_failed(&io::Error::other(e.to_string())))??;
        let file = tokio::fs::File::open(&file).await.map_err(|e| snapshot_failed(&e))?;
        self.slot.snapshots_built.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

fn snapshot_failed(error: &dyn std::error::Error) -> StorageError<NodeId> {
    io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, error)
}

/// Takes snapshot number `number` of the store in `slot` into `snapshots/`: a
/// checkpoint taken while no entry is applied (so its data and its recorded position
/// agree), packed into one tar file, then held as the node's current snapshot.
fn build_checkpoint(
    slot: &StoreSlot,
    snapshots: &Path,
    number: u64,
) -> Result<(SnapshotMeta<NodeId, NodeAddress>, PathBuf), StorageError<NodeId>> {
    let store = slot.get().ok_or_else(|| snapshot_failed(&io::Error::other("no store")))?;
    let checkpoint = snapshots.join(format!("checkpoint-{number}"));
    let _ = std::fs::remove_dir_all(&checkpoint);
    let started = std::time::Instant::now();
    // A checkpoint flushes the memtables, which on a busy disk takes a second; done
    // first, while entries go on being applied, the flush under the lock below has
    // only what arrived since.
    store.flush_memtables().map_err(|e| snapshot_failed(&e))?;
    let locked = std::time::Instant::now();
    let applied = {
        let _applying = slot.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let applied = read_applied(&store)?;
        rocksdb::checkpoint::Checkpoint::new(store.db())
            .and_then(|taker| taker.create_checkpoint(&checkpoint))
            .map_err(|e| snapshot_failed(&e))?;
        applied
    };
    drop(store);
    let (flush_ms, checkpoint_ms) =
        (locked.duration_since(started).as_millis(), locked.elapsed().as_millis());
    let (last_log_id, last_membership) = applied;
    let snapshot_id = match last_log_id {
        Some(log_id) => format!("{}-{}-{number}", log_id.leader_id, log_id.index),
        None => format!("empty-{number}"),
    };
    let file = snapshots.join(format!("{snapshot_id}.tar"));
    let packed = pack(&checkpoint, &file);
    let _ = std::fs::remove_dir_all(&checkpoint);
    packed.map_err(|e| snapshot_failed(&e))?;
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
    StateMachine::hold(snapshots, &HeldSnapshot { meta: meta.clone(), file: file.clone() })
        .map_err(|e| snapshot_failed(&e))?;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        snapshot = %meta.snapshot_id,
        bytes,
        flush_ms,
        checkpoint_ms,
        total_ms = started.elapsed().as_millis(),
        "built a snapshot"
    );
    Ok((meta, file))
}

/// Packs the checkpoint directory `dir` into the tar file `file`.
fn pack(dir: &Path, file: &Path) -> io::Result<()> {
    let out = std::fs::File::create(file)?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let out = builder.into_inner()?;
    out.sync_all()
}

/// Unpacks the tar file `file` into the new directory `dir`, refusing any entry
/// that would land outside it.
fn unpack(file: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(std::fs::File::open(file)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.unpack_in(dir)? {
            return Err(io::Error::other("a snapshot entry names a path outside the store"));
        }
    }
    Ok(())
}
