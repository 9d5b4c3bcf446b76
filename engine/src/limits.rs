//! Every bound the engine works within, named in one place.
//!
//! Wire-level bounds (frame size, pipeline depth) are the protocol's and live in
//! `onecard_protocol::limits`; the bounds here are the server's own.

use std::time::Duration;

/// Terminal connections served at once. A permit is taken before `accept()`, so
/// connection 20,001 waits in the kernel's backlog instead of costing memory here.
pub const TERMINAL_CONNECTIONS_MAX: usize = 20_000;

/// A connection that sends nothing for this long is closed. Terminals heartbeat
/// every 30 seconds.
pub const TERMINAL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A frame once started must arrive whole within this, so a client trickling one byte
/// a minute cannot hold a connection's buffer.
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers that cannot be written within this close the connection: a client that
/// stops reading cannot hold the server's buffers.
pub const TERMINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// At shutdown, how long a connection waits for the answers to requests already in a
/// shard's queue before it closes without them. Shards commit in milliseconds; this
/// only bounds a stuck disk.
pub const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Unauthenticated frames (unknown terminal) tolerated on one connection before it is
/// closed.
pub const UNKNOWN_TERMINAL_FRAMES_MAX: u32 = 3;

const _: () = assert!(FRAME_READ_TIMEOUT.as_secs() < TERMINAL_IDLE_TIMEOUT.as_secs());
const _: () = assert!(UNKNOWN_TERMINAL_FRAMES_MAX >= 1);

/// Shards a store may have. Shard numbers are the first byte of a journal's batch
/// keys, below the shard journal's other key prefixes (0xF1 and up).
pub const SHARDS_MAX: usize = 64;

/// Requests waiting in one shard's queue. A full queue answers "server busy" at once,
/// so memory stays bounded whatever the offered load.
pub const SHARD_QUEUE_REQUESTS_MAX: usize = 16_384;

/// Requests one shard decides and commits as one batch. Batches form by themselves:
/// the writer takes what is queued, up to this.
pub const BATCH_REQUESTS_MAX: usize = 4_096;

/// Answers each terminal keeps for retries. A retry of an older sequence is refused
/// as stale; a terminal never has more than its pipeline depth unanswered.
pub const RETRY_WINDOW_REQUESTS: usize = 64;

/// Wrong PINs in a row after which a card's PIN is locked until the card centre
/// resets it.
pub const PIN_FAILURES_MAX: u32 = 5;

/// Batches per shard whose keys the writer remembers, for point reads of recent
/// transfers by refunds and reversals (24 bytes each).
pub const RECENT_BATCHES_MAX: usize = 1 << 20;

/// Durable batches waiting for the checkpointer. A full queue makes the journals wait
/// for it (it folds a batch in microseconds), so memory stays bounded.
pub const CHECKPOINT_QUEUE_BATCHES_MAX: usize = 4_096;

/// Index keys the checkpointer gathers before it writes them as one sorted run, even
/// if the index interval has not passed (24 bytes each: 6 MiB).
pub const INDEX_RUN_KEYS_MAX: usize = 1 << 18;

/// How often changed balances are checkpointed by default, ms: a restart after
/// `kill -9` replays at most this much journal (BENCHMARKS.md gives the cost).
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// Balance checkpoints between flushes of the derived families to disk. Checkpoints
/// and index runs skip the write-ahead log (so they never add to a shard's sync); what
/// they wrote is on disk once flushed, so a restart after `kill -9` replays at most
/// this many checkpoint intervals of journal.
pub const CHECKPOINTS_PER_PERSIST: u32 = 10;

/// How often the statement index is written by default, ms: a statement reads at
/// most this much journal beside the index.
pub const INDEX_INTERVAL_MS_DEFAULT: u64 = 200;

/// Transfers one statement page returns at most.
pub const STATEMENT_PAGE_MAX: usize = 200;

/// Batches of terminal history a terminal's state points at, at most one per
/// retained answer.
pub const TERMINAL_HISTORY_BATCHES_MAX: usize = RETRY_WINDOW_REQUESTS;

/// Rows one subsidy batch posts in one control batch.
pub const SUBSIDY_BATCH_ROWS_MAX: usize = 10_000;

/// Discrepancies one reconciliation check lists; more are counted, not listed, so a
/// badly broken store still gives a report of bounded size.
pub const RECONCILIATION_DISCREPANCIES_MAX: usize = 1_000;

/// Longest name a cardholder, merchant or terminal may have, in bytes.
pub const NAME_BYTES_MAX: usize = 128;

const _: () = assert!(SHARDS_MAX <= 0xF0);
const _: () = assert!(RETRY_WINDOW_REQUESTS >= onecard_protocol::limits::PIPELINE_REQUESTS_MAX);
const _: () = assert!(BATCH_REQUESTS_MAX <= SHARD_QUEUE_REQUESTS_MAX);
// A batch's transfers are indexed by u32 in its entries: at most two per request and
// two per offline record.
const _: () = assert!(
    BATCH_REQUESTS_MAX * 2 * onecard_protocol::limits::OFFLINE_RECORDS_MAX < u32::MAX as usize
);

/// Bytes all memtables together may hold before RocksDB flushes the largest, whatever
/// the column families' own sizes: the bound that keeps a busy server's memory flat.
pub const MEMTABLE_BYTES_MAX: usize = 128 << 20;

/// Bytes of RocksDB's block cache, shared by every column family; index and filter
/// blocks live in it too, so the SST metadata of a large store is bounded by it.
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
