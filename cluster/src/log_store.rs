//! The cell's Raft log, on a RocksDB of its own beside the engine's store.
//!
//! | family | key | value |
//! |---|---|---|
//! | `log` | log index, 8 bytes big-endian | the entry (postcard) |
//! | `state` | `vote` | the vote this node last cast or holds |
//! | `state` | `purged` | the last log id purged |
//! | `state` | `committed` | the last log id known committed |
//!
//! An append is one synced write of all its entries; openraft is told they are
//! durable only after that write returns, and a vote is synced before it is
//! answered. A failed write is fatal to the node (openraft stops it): the log of a
//! node that cannot write is no log, and the other two carry the cell.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};

use crate::{ClusterError, LogEntry, NodeId, TypeConfig, decode, encode, io_error};

const CF_LOG: &str = "log";
const CF_STATE: &str = "state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// The Raft log of one node. Clones share the database (openraft reads the log from
/// its replication tasks while the core appends).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    /// Opens (or creates) the log in `path`.
    ///
    /// # Errors
    /// [`ClusterError::Log`] if RocksDB cannot open it.
    pub fn open(path: &Path) -> Result<Self, ClusterError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        let families =
            [CF_LOG, CF_STATE].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families)
            .map_err(|source| ClusterError::Log { path: path.to_owned(), source })?;
        Ok(Self { db: Arc::new(db) })
    }

    fn family(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError<NodeId>> {
        self.db.cf_handle(name).ok_or_else(|| {
            let missing = std::io::Error::other(format!("the raft log has no family {name}"));
            io_error(ErrorSubject::Store, ErrorVerb::Read, &missing)
        })
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let state = self.family(CF_STATE)?;
        let Some(bytes) = self
            .db
            .get_cf(state, key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    fn write_synced(
        &self,
        batch: WriteBatch,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options).map_err(|e| io_error(subject, ErrorVerb::Write, &e))
    }

    fn last_entry(&self) -> Result<Option<LogEntry>, StorageError<NodeId>> {
        let log = self.family(CF_LOG)?;
        match self.db.iterator_cf(log, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) =
                    item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
                decode(&value)
                    .map(Some)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let log = self.family(CF_LOG)?;
        let mut entries = Vec::new();
        let from = start.to_be_bytes();
        for item in self.db.iterator_cf(log, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) =
                item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            let index = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes).map_err(|_| {
                let bad = std::io::Error::other("a log key is not 8 bytes");
                io_error(ErrorSubject::Logs, ErrorVerb::Read, &bad)
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry: LogEntry = decode(&value)
                .map_err(|e| io_error(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_state(KEY_PURGED, ErrorSubject::Store)?;
        let last_log_id = self.last_entry()?.map(|entry| entry.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(vote).map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.family(CF_STATE)?, KEY_VOTE, bytes);
        self.write_synced(batch, ErrorSubject::Vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Unsynced: a committed id read back after a crash may be older than the one
        // saved, never newer than the log, and openraft learns the rest from the leader.
        let bytes =
            encode(&committed).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.db
            .put_cf(self.family(CF_STATE)?, KEY_COMMITTED, bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.read_state::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = self.family(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = encode(&entry)
                .map_err(|e| io_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            batch.put_cf(log, entry.log_id.index.to_be_bytes(), bytes);
        }
        // Durable before openraft hears of it: the leader counts this node's append
        // toward the majority, and a follower's acknowledgement promises it.
        let written = self.write_synced(batch, ErrorSubject::Logs);
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(error) => callback.log_io_completed(Err(std::io::Error::other(error.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.family(CF_LOG)?,
            log_id.index.to_be_bytes(),
            u64::MAX.to_be_bytes(),
        );
        if log_id.index == u64::MAX {
            batch.delete_cf(self.family(CF_LOG)?, u64::MAX.to_be_bytes());
        }
        self.write_synced(batch, ErrorSubject::Logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purged id first, in the same write as the deletion: the log never has a
        // hole that its state does not account for.
        let bytes =
            encode(&log_id).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.family(CF_STATE)?, KEY_PURGED, bytes);
        batch.delete_range_cf(
            self.family(CF_LOG)?,
            0u64.to_be_bytes(),
            log_id.index.saturating_add(1).to_be_bytes(),
        );
        self.write_synced(batch, ErrorSubject::Logs)
    }
}
