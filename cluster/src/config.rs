//! The timings and bounds of a cell, in one place.
//!
//! openraft's defaults (heartbeat 50 ms, election timeout 150–300 ms) suit dedicated
//! machines; a cell that shares two cores with its own load generator, where one
//! synced write can take milliseconds, would elect a new leader whenever a tick came
//! late. These are set for that. A failover waits for the dead leader's lease to run
//! out (a follower refuses to vote while it lasts, the longest election timeout) and
//! then one election: about 1 to 2 seconds.

use std::time::Duration;

/// How often the leader reaches every follower, ms. Also openraft's limit on one
/// append RPC, so it bounds how long a batch of entries may take on the link.
pub const HEARTBEAT_MS: u64 = 100;

/// A follower that hears nothing from a leader for a random time in this range, ms,
/// stands for election.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (500, 1_000);

/// The leader answers from memory only while a majority accepted an append it sent
/// less than this long ago, ms (`lease`): shorter than the shortest election timeout,
/// before which no follower that accepted it stands or votes, by a margin for the
/// rates of two machines' clocks and the time from the check to the answer's write.
pub const LEASE_MS: u64 = 400;

const _: () = assert!(LEASE_MS + 100 <= ELECTION_TIMEOUT_MS.0, "the lease ends before any vote");
const _: () = assert!(HEARTBEAT_MS * 2 <= LEASE_MS, "heartbeats renew the lease twice over");

/// Entries in one append RPC at most.
pub const APPEND_ENTRIES_MAX: u64 = 64;

/// A frame on the cluster link, bytes at most. A larger append is refused before it
/// is sent and openraft retries with fewer entries; a larger frame received closes
/// the connection.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// A snapshot is sent in chunks of this size, bytes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;

/// One snapshot chunk may take this long to install, ms.
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// A snapshot is built after this many entries since the last one.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 20_000;

/// Entries kept in the log behind the last snapshot, so a node briefly down catches
/// up from the log rather than a snapshot.
pub const LOG_KEPT_BEHIND_SNAPSHOT: u64 = 5_000;

/// How long the leader's door waits for a write to commit before it answers that
/// the write is not replicated (and the journal is poisoned, as by a failed sync).
pub const COMMIT_WAIT_MAX: Duration = Duration::from_secs(5);

/// Connecting to a peer gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// openraft's configuration for a cell named `cell`.
///
/// # Errors
/// If openraft finds the settings inconsistent (it cannot, for these constants; the
/// check stays so that a change to them is caught at start).
pub fn raft_config(cell: &str) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: cell.to_owned(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: LOG_KEPT_BEHIND_SNAPSHOT,
        ..openraft::Config::default()
    }
    .validate()
}
