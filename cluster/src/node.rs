//! One node of a cell: its store (the state machine), its Raft log, its listener on
//! the cluster link, and openraft running them; and the door through which the
//! leader's engine writes.
//!
//! A node's directory holds `store/` (the engine's RocksDB, as a single node's data
//! directory does), `raft-log/` (the log's own RocksDB) and `snapshots/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use onecard_engine::storage::{Replicate, StorageError};
use onecard_engine::store::Store;
use openraft::error::InitializeError;
use openraft::{RaftMetrics, ServerState};
use rocksdb::WriteBatch;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{COMMIT_WAIT_MAX, raft_config};
use crate::lease::Lease;
use crate::log_store::LogStore;
use crate::network::{Network, serve};
use crate::state_machine::{StateMachine, StoreSlot};
use crate::{ClusterError, NodeAddress, NodeId, Raft, Write};

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The cell's name: every node of a cell has the same.
    pub cell: String,
    /// This node's number in the cell.
    pub id: NodeId,
    /// The node's directory.
    pub dir: PathBuf,
    /// Every founding member of the cell and its addresses, this node included.
    pub members: BTreeMap<NodeId, NodeAddress>,
    /// Where this node listens for its peers, when that is not the cluster address
    /// the members list for it (a node behind a proxy or a NAT).
    pub listen: Option<SocketAddr>,
    /// Shards of a new store.
    pub shards: usize,
}

impl NodeSettings {
    /// Where this node listens on the cluster link: [`NodeSettings::listen`], or else
    /// its own cluster address among the members.
    ///
    /// # Errors
    /// [`ClusterError::Settings`] if the node is not among the members or its address
    /// does not parse.
    pub fn listen_address(&self) -> Result<SocketAddr, ClusterError> {
        if let Some(listen) = self.listen {
            return Ok(listen);
        }
        let address = self.members.get(&self.id).ok_or_else(|| {
            ClusterError::Settings(format!("node {} is not among the members", self.id))
        })?;
        address.cluster.parse().map_err(|error| {
            ClusterError::Settings(format!("node {}'s address {address:?}: {error}", self.id))
        })
    }
}

/// A running node.
pub struct Node {
    id: NodeId,
    raft: Raft,
    slot: Arc<StoreSlot>,
    members: BTreeMap<NodeId, NodeAddress>,
    link: JoinHandle<()>,
    address: SocketAddr,
    door: ReplicatedDoor,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("address", &self.address).finish()
    }
}

impl Node {
    /// Opens the node's store and log, listens on its cluster address, and starts its
    /// Raft. A node of a new cell waits for [`Node::initialize`] on one founding member.
    ///
    /// # Errors
    /// [`ClusterError`] if a store will not open or the address cannot be bound.
    pub async fn start(settings: NodeSettings) -> Result<Self, ClusterError> {
        let address = settings.listen_address()?;
        let listener = TcpListener::bind(address).await.map_err(|source| ClusterError::Io {
            what: format!("listening on {address}"),
            source,
        })?;
        Self::start_on(settings, listener).await
    }

    /// [`Node::start`] on a listener already bound (tests bind port 0 first).
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_on(
        settings: NodeSettings,
        listener: TcpListener,
    ) -> Result<Self, ClusterError> {
        let io = |what: String| move |source| ClusterError::Io { what, source };
        std::fs::create_dir_all(&settings.dir)
            .map_err(io(format!("creating {}", settings.dir.display())))?;
        let address = listener.local_addr().map_err(io("reading the listen address".into()))?;
        let log = LogStore::open(&settings.dir.join("raft-log"))?;
        let state_machine = StateMachine::open(&settings.dir, settings.shards)?;
        let slot = state_machine.slot();
        let config =
            raft_config(&settings.cell).map_err(|e| ClusterError::Settings(e.to_string()))?;
        let lease = Arc::new(Lease::default());
        let network = Network::new(Arc::clone(&lease));
        let raft = Raft::new(settings.id, Arc::new(config), network, log, state_machine)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let door = ReplicatedDoor {
            id: settings.id,
            lease,
            metrics: raft.metrics(),
            raft: raft.clone(),
            runtime: tokio::runtime::Handle::current(),
            families: slot.get().map_or(0, |store| store.families_fingerprint()),
        };
        slot.set_door(Arc::new(door.clone()));
        let link = tokio::spawn(serve(listener, raft.clone()));
        tracing::info!(node = settings.id, %address, cell = %settings.cell, "cell node started");
        Ok(Self { id: settings.id, raft, slot, members: settings.members, link, address, door })
    }

    /// Founds the cell with its members, once: on a cell that already has a log this
    /// does nothing.
    ///
    /// # Errors
    /// [`ClusterError::Raft`] if openraft refuses for another reason.
    pub async fn initialize(&self) -> Result<(), ClusterError> {
        match self.raft.initialize(self.members.clone()).await {
            Ok(()) => Ok(()),
            Err(error) if matches!(error.api_error(), Some(InitializeError::NotAllowed(_))) => {
                Ok(())
            }
            Err(error) => Err(ClusterError::Raft(error.to_string())),
        }
    }

    /// This node's number.
    #[must_use]
    pub const fn id(&self) -> NodeId {
        self.id
    }

    /// This node's address on the cluster link.
    #[must_use]
    pub const fn address(&self) -> SocketAddr {
        self.address
    }

    /// The node's Raft.
    #[must_use]
    pub const fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The node's store, unless a snapshot is being installed in its place.
    #[must_use]
    pub fn store(&self) -> Option<Arc<Store>> {
        self.slot.get()
    }

    /// Snapshots this node built since it started, and installed from a peer.
    #[must_use]
    pub fn snapshots(&self) -> (u64, u64) {
        self.slot.snapshots()
    }

    /// openraft's view of this node now.
    #[must_use]
    pub fn metrics(&self) -> RaftMetrics<NodeId, NodeAddress> {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this node leads its cell.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// The door every write to this node's store goes through: the cell's log. It is
    /// set on the store when the node starts (a ledger opened on [`Node::store`]
    /// writes through it), and must be used from threads outside the node's runtime,
    /// as the ledger's shard threads are.
    #[must_use]
    pub fn door(&self) -> ReplicatedDoor {
        self.door.clone()
    }

    /// Stops the node: its Raft, then its listener. Its directory stays as it is.
    pub async fn shutdown(self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(node = self.id, %error, "raft did not stop cleanly");
        }
        self.link.abort();
        let _ = self.link.await;
    }
}

/// The leader's storage door: each write becomes one entry of the cell's log and
/// returns once it is committed and applied here.
#[derive(Clone)]
pub struct ReplicatedDoor {
    id: NodeId,
    lease: Arc<Lease>,
    /// openraft's view of this node, read by every lease check.
    metrics: tokio::sync::watch::Receiver<RaftMetrics<NodeId, NodeAddress>>,
    raft: Raft,
    runtime: tokio::runtime::Handle,
    families: u64,
}

impl std::fmt::Debug for ReplicatedDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedDoor").field("families", &self.families).finish()
    }
}

impl ReplicatedDoor {
    /// Replicates one write and waits for it, at most [`COMMIT_WAIT_MAX`].
    ///
    /// # Errors
    /// [`StorageError::NotReplicated`] if this node does not lead, lost its majority,
    /// or the commit took too long; the write may still commit later.
    pub fn write(&self, journal: u8, batch: &WriteBatch) -> Result<(), StorageError> {
        let write = Write { journal, families: self.families, batch: batch.data().to_vec() };
        let raft = self.raft.clone();
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let outcome =
                match tokio::time::timeout(COMMIT_WAIT_MAX, raft.client_write(write)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("not committed within {COMMIT_WAIT_MAX:?}")),
                };
            let _ = answer.send(outcome);
        });
        match answered.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StorageError::NotReplicated(reason)),
            Err(_) => Err(StorageError::NotReplicated("the cell's runtime has stopped".into())),
        }
    }

    /// Whether this node leads with its lead confirmed within the lease ([`Lease`]).
    #[must_use]
    pub fn holds_lease(&self) -> bool {
        self.lease.holds(self.id, &self.metrics.borrow())
    }
}

impl Replicate for ReplicatedDoor {
    fn replicate(&self, journal: u8, batch: WriteBatch) -> Result<(), StorageError> {
        self.write(journal, &batch)
    }

    fn holds_lease(&self) -> bool {
        Self::holds_lease(self)
    }
}
