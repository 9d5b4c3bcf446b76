//! The cluster link: openraft's three calls (append, vote, snapshot chunk) between
//! the nodes of a cell, over TCP.
//!
//! Each frame is a 4-byte big-endian length and a postcard body, at most
//! [`FRAME_BYTES_MAX`] bytes. A node dials each peer once and keeps the connection;
//! calls on it are one at a time, each answered in order, and a call abandoned half
//! way (openraft times its calls out) takes the connection with it, so no answer is
//! ever read as another call's. The link carries no terminal traffic and no secrets
//! beyond the ledger's own records; it belongs on the card centre's private network
//! between the cell's machines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::config::{CONNECT_TIMEOUT, FRAME_BYTES_MAX};
use crate::lease::Lease;
use crate::{NodeAddress, NodeId, Raft, TypeConfig, decode, encode};

/// A call from one node to another.
#[derive(Debug, Serialize, Deserialize)]
enum Call {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`Call`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(FRAME_BYTES_MAX).new_codec()
}

/// Dials the cell's peers on openraft's behalf, and records in the leader's
/// [`Lease`] every append a peer accepts.
#[derive(Debug, Clone, Default)]
pub struct Network {
    lease: Arc<Lease>,
}

impl Network {
    /// A network that records accepted appends in `lease`.
    #[must_use]
    pub const fn new(lease: Arc<Lease>) -> Self {
        Self { lease }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddress) -> Peer {
        Peer {
            target,
            address: node.cluster.clone(),
            connection: None,
            lease: Arc::clone(&self.lease),
        }
    }
}

/// One peer, as seen from this node: dialled on first use and again after any
/// failure.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    address: String,
    connection: Option<Framed<TcpStream, LengthDelimitedCodec>>,
    lease: Arc<Lease>,
}

/// Why a call did not get its answer.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot reach node at {0}: {1}")]
    Connect(String, String),
    #[error("the call is {0} bytes, above the link's frame limit")]
    TooLarge(usize),
    #[error("link: {0}")]
    Link(String),
}

impl Peer {
    /// This peer's connection, taken out of `self` for the length of one call: a call
    /// dropped half way (openraft times its calls out itself, and may stop awaiting
    /// one after it was sent) drops the connection with it, so a late answer is never
    /// read as the answer to a later call. Only a call that got its answer puts the
    /// connection back.
    async fn take_connection(
        &mut self,
    ) -> Result<Framed<TcpStream, LengthDelimitedCodec>, LinkError> {
        if let Some(connection) = self.connection.take() {
            return Ok(connection);
        }
        let dial = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address));
        let stream = match dial.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(LinkError::Connect(self.address.clone(), error.to_string()));
            }
            Err(_) => return Err(LinkError::Connect(self.address.clone(), "timed out".into())),
        };
        let _ = stream.set_nodelay(true);
        Ok(Framed::new(stream, codec()))
    }

    async fn call(&mut self, call: &Call, option: &RPCOption) -> Result<Reply, LinkError> {
        let bytes = encode(call).map_err(|e| LinkError::Link(e.to_string()))?;
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(LinkError::TooLarge(bytes.len()));
        }
        let exchanged = tokio::time::timeout(option.hard_ttl(), async {
            let mut connection = self.take_connection().await?;
            connection
                .send(bytes::Bytes::from(bytes))
                .await
                .map_err(|e| LinkError::Link(e.to_string()))?;
            let answer = match connection.next().await {
                Some(Ok(frame)) => {
                    decode::<Reply>(&frame).map_err(|e| LinkError::Link(e.to_string()))
                }
                Some(Err(error)) => Err(LinkError::Link(error.to_string())),
                None => Err(LinkError::Link("the peer closed the connection".into())),
            };
            // A connection whose answer did not decode may hold half a frame: only
            // a good exchange keeps it.
            if answer.is_ok() {
                self.connection = Some(connection);
            }
            answer
        })
        .await;
        match exchanged {
            Ok(answer) => answer,
            Err(_) => Err(LinkError::Link(format!("no answer within {:?}", option.hard_ttl()))),
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        error: &LinkError,
        entries: usize,
    ) -> RPCError<NodeId, NodeAddress, E> {
        match error {
            LinkError::Connect(..) => RPCError::Unreachable(Unreachable::new(error)),
            LinkError::TooLarge(_) => {
                let fewer = u64::try_from(entries / 2).unwrap_or(1).max(1);
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fewer))
            }
            LinkError::Link(_) => RPCError::Network(NetworkError::new(error)),
        }
    }

    fn unexpected<E: std::error::Error>(&mut self) -> RPCError<NodeId, NodeAddress, E> {
        self.connection = None;
        let error = LinkError::Link("the peer answered a different call".into());
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddress, RaftError<NodeId>>>
    {
        let entries = rpc.entries.len();
        let term = rpc.vote.leader_id.term;
        let sent = Instant::now();
        match self.call(&Call::Append(rpc), &option).await {
            Ok(Reply::Append(Ok(answer))) => {
                // Any answer but a higher vote means the peer took this node's vote
                // as its leader's when the append arrived (a conflict included).
                if !matches!(answer, AppendEntriesResponse::HigherVote(_)) {
                    self.lease.accepted(self.target, term, sent);
                }
                Ok(answer)
            }
            Ok(Reply::Append(Err(error))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(_) => Err(self.unexpected()),
            Err(error) => Err(self.rpc_error(&error, entries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddress, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(&Call::Snapshot(rpc), &option).await {
            Ok(Reply::Snapshot(Ok(answer))) => Ok(answer),
            Ok(Reply::Snapshot(Err(error))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(_) => Err(self.unexpected()),
            Err(error) => Err(self.rpc_error(&error, 2)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddress, RaftError<NodeId>>> {
        match self.call(&Call::Vote(rpc), &option).await {
            Ok(Reply::Vote(Ok(answer))) => Ok(answer),
            Ok(Reply::Vote(Err(error))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, error)))
            }
            Ok(_) => Err(self.unexpected()),
            Err(error) => Err(self.rpc_error(&error, 2)),
        }
    }
}

/// Answers peers' calls on `listener` until the task is dropped, and with it every
/// connection it accepted (a node stopped in a process that goes on, as in tests,
/// must not keep answering on an old connection for the raft it stopped).
pub async fn serve(listener: TcpListener, raft: Raft) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cluster link: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(answer(stream, peer, raft.clone()));
    }
}

async fn answer(stream: TcpStream, peer: SocketAddr, raft: Raft) {
    let mut framed = Framed::new(stream, codec());
    while let Some(frame) = framed.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%peer, %error, "cluster link: a bad frame; closing");
                return;
            }
        };
        let call = match decode::<Call>(&frame) {
            Ok(call) => call,
            Err(error) => {
                tracing::warn!(%peer, %error, "cluster link: an unreadable call; closing");
                return;
            }
        };
        let reply = match call {
            Call::Append(request) => Reply::Append(raft.append_entries(request).await),
            Call::Vote(request) => Reply::Vote(raft.vote(request).await),
            Call::Snapshot(request) => Reply::Snapshot(raft.install_snapshot(request).await),
        };
        let bytes = match encode(&reply) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%peer, %error, "cluster link: cannot encode a reply; closing");
                return;
            }
        };
        if framed.send(bytes::Bytes::from(bytes)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use openraft::Vote;

    use super::*;

    fn heartbeat(term: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    /// A peer that accepts the first append it is sent, but answers it only after
    /// `late`, and refuses every later one at once: it has voted for a new leader.
    async fn slow_then_deposing(listener: TcpListener, late: Duration) {
        let calls = AtomicUsize::new(0);
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let mut framed = Framed::new(stream, codec());
            while let Some(Ok(frame)) = framed.next().await {
                let Ok(Call::Append(request)) = decode::<Call>(&frame) else { return };
                let answer = if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                    tokio::time::sleep(late).await;
                    AppendEntriesResponse::Success
                } else {
                    AppendEntriesResponse::HigherVote(Vote::new(request.vote.leader_id.term + 1, 2))
                };
                let bytes = encode(&Reply::Append(Ok(answer))).expect("a reply encodes");
                if framed.send(bytes::Bytes::from(bytes)).await.is_err() {
                    break;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_call_dropped_after_its_send_leaves_no_late_answer_for_the_next_call() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address").to_string();
        let late = Duration::from_millis(300);
        tokio::spawn(slow_then_deposing(listener, late));
        let lease = Arc::new(Lease::default());
        let mut peer = Peer { target: 2, address, connection: None, lease };
        let option = RPCOption::new(Duration::from_secs(5));
        // openraft times its calls out itself: here it gives up on the first after its
        // send, before the peer answers.
        let first = peer.append_entries(heartbeat(5), option.clone());
        assert!(tokio::time::timeout(Duration::from_millis(100), first).await.is_err());
        tokio::time::sleep(late * 2).await;
        // The first call's late answer (an acceptance) must not be read as the answer
        // to this one: the peer refuses this one.
        let second = peer.append_entries(heartbeat(5), option).await.expect("an answer");
        assert!(
            matches!(second, AppendEntriesResponse::HigherVote(_)),
            "a late answer to a dropped call was taken for the next call's: {second:?}"
        );
    }
}
