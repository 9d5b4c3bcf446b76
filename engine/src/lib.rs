//! # onecard-engine
//!
//! The engine at the centre of onecard: it will hold the ledger, the shards and their
//! commit pipeline, cards and limits, settlement, reconciliation and workflows. Today it
//! holds the store and the terminal front door.
//!
//! # Layout
//! - [`limits`] — every bound the engine works within, named in one place.
//! - [`store`] — the RocksDB store: opening it, its column families, its format version.
//! - [`frontdoor`] — the TCP listener and per-connection tasks terminals talk to.

pub mod frontdoor;
pub mod limits;
pub mod store;
