//! # onecard-engine
//!
//! The engine at the centre of onecard: the double-entry ledger on RocksDB, its
//! per-merchant shards and their commit pipeline, cards and limits, and the terminal
//! front door. Settlement, reconciliation and workflows build on it.
//!
//! # Layout
//! - [`limits`] — every bound the engine works within, named in one place.
//! - [`account`] — the chart of accounts: what an account id means.
//! - [`audit`] — the append-only audit log of operators' actions.
//! - [`date`] — business dates and the clock.
//! - [`journal`] — transfers, entries and the batch record a shard commits.
//! - [`chain`] — the seal that links each journal batch to the one before it.
//! - [`cards`] — card accounts, limits, PINs, and the in-memory card table.
//! - [`directory`] — merchants and terminals.
//! - [`postings`] — the one apply: what a batch record derives (balances, index keys).
//! - [`checkpoint`] — balances and the statement index written off the commit path,
//!   with their journal watermarks; recovery of the journal tail.
//! - [`shard`] — a shard's writer thread: decide a batch, commit it, answer.
//! - [`ledger`] — opening and recovery, submission, control operations, queries.
//! - [`settlement`] — merchant settlement of a closed business date.
//! - [`reconcile`] — internal reconciliation of a closed business date.
//! - [`statement`] — a top-up channel's statement matched against our top-ups.
//! - [`adjustment`] — approved correcting transfers, posted exactly once.
//! - [`sealing`] — terminal keys sealed with the master key before they are stored.
//! - [`rekey`] — rotating the master key: every sealed secret sealed again.
//! - [`verify`] — proving the invariants from disk.
//! - [`workflow`] — approval workflows and their exactly-once ledger effects.
//! - [`metrics`] — the Prometheus metrics the engine keeps.
//! - [`storage`] — the door every write goes through, and the faults tests put in it.
//! - [`store`] — the RocksDB store: column families, key layout, merge operator.
//! - [`frontdoor`] — the TCP listener and per-connection tasks terminals talk to.

pub mod account;
pub mod adjustment;
pub mod audit;
pub mod cards;
pub mod chain;
pub mod checkpoint;
pub mod date;
pub mod directory;
pub mod frontdoor;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod postings;
pub mod reconcile;
pub mod rekey;
pub mod sealing;
pub mod settlement;
pub mod shard;
mod shared;
pub mod statement;
pub mod storage;
pub mod store;
pub mod terminal_state;
pub mod verify;
pub mod workflow;

pub use account::{AccountId, AccountKind};
pub use date::BusinessDate;
pub use ledger::{ControlError, Cutover, Ledger, LedgerConfig, LedgerError, OpenCard, SubsidyRow};
pub use shard::Submission;
pub use verify::VerifyReport;
