//! A onecard cell: three nodes holding one replicated ledger, through openraft.
//!
//! Every durable write the engine makes passes one door (`onecard_engine::storage`).
//! On a cell's node that door is this crate's [`ReplicatedDoor`]: the write batch's
//! bytes become one entry of the cell's Raft log, and the door returns once the entry
//! is durable on a majority and applied to this node's store. Every node applies the
//! same entries in the same order ([`StateMachine`]), so every store holds the same
//! journal bytes, seals, balances, index runs and terminal states; a node that falls
//! far behind or joins late installs a snapshot, a RocksDB checkpoint of a peer's
//! store streamed over the cluster link ([`network`]).
//!
//! # Layout
//! - [`config`] — the timings and bounds of a cell, in one place.
//! - [`log_store`] — the Raft log on its own RocksDB; every append synced before
//!   openraft is told it is durable.
//! - [`state_machine`] — applies entries to the engine's store, with the entry's
//!   position in the same atomic write; builds and installs snapshots.
//! - [`network`] — the cluster link: length-delimited frames over TCP, postcard.
//! - [`lease`] — whether the leader may answer from memory: its lead confirmed by a
//!   majority within the lease.
//! - [`node`] — one node: its store, its log, its listener and its Raft; the door.
//!
//! docs/SCALING.md gives the design and the choice of openraft.

#![allow(
    clippy::result_large_err,
    reason = "openraft's traits return its own StorageError and ConfigError, both large"
)]

pub mod config;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;

use serde::{Deserialize, Serialize};

pub use node::{Node, NodeSettings, ReplicatedDoor};
pub use openraft;
pub use state_machine::StateMachine;
pub use state_machine::applied_index;

/// A node's number in its cell.
pub type NodeId = u64;

/// Where a member of a cell is reached: the cell's membership carries it, so every
/// node knows every member's addresses, a member added later included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// The cluster link, `host:port`.
    pub cluster: String,
    /// The terminal port, as terminals reach it: what a follower's redirect names.
    pub terminals: String,
    /// The admin API, as operators reach it: what a follower's refusal names.
    pub admin: String,
}

impl NodeAddress {
    /// A member reached only on the cluster link (a node with no ports of its own,
    /// as in the cluster's own tests).
    #[must_use]
    pub fn link_only(cluster: impl Into<String>) -> Self {
        Self { cluster: cluster.into(), ..Self::default() }
    }
}

openraft::declare_raft_types!(
    /// The cell's Raft types: each entry is one [`Write`] of the engine's.
    pub TypeConfig:
        D = Write,
        R = Applied,
        NodeId = NodeId,
        Node = NodeAddress,
        SnapshotData = tokio::fs::File,
);

/// A log entry of a cell, as openraft stores and ships it.
pub type LogEntry = openraft::Entry<TypeConfig>;

/// The cell's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// One durable write of the leader's engine: a RocksDB write batch for one journal.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The journal the write is for: a shard, the control plane or the checkpointer
    /// (`onecard_engine::storage`).
    pub journal: u8,
    /// The writer's [`onecard_engine::store::Store::families_fingerprint`]: a batch
    /// names column families by number, so it applies only to a store numbered alike.
    pub families: u64,
    /// The write batch's bytes (`rocksdb::WriteBatch::data`).
    #[serde(with = "serde_bytes")]
    pub batch: Vec<u8>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("journal", &self.journal)
            .field("families", &format_args!("{:016x}", self.families))
            .field("bytes", &self.batch.len())
            .finish()
    }
}

/// What applying an entry answers the writer: the log index it was applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The entry's log index.
    pub index: u64,
}

/// Why a node cannot start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The engine's store would not open.
    #[error("opening the store: {0}")]
    Store(#[from] onecard_engine::store::OpenError),
    /// The Raft log's own RocksDB would not open.
    #[error("opening the raft log in {path}: {source}")]
    Log {
        /// Its directory.
        path: std::path::PathBuf,
        /// What RocksDB said.
        source: rocksdb::Error,
    },
    /// A directory or file of the node could not be made or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The settings do not describe a cell.
    #[error("cluster settings: {0}")]
    Settings(String),
    /// openraft refused to start or to act.
    #[error("raft: {0}")]
    Raft(String),
}

/// Encodes a value for the log, the store or the link.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// openraft's storage error for a failed `verb` on `subject`.
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: &dyn std::error::Error,
) -> openraft::StorageError<NodeId> {
    let source = openraft::AnyError::error(error.to_string());
    openraft::StorageIOError::new(subject, verb, source).into()
}
