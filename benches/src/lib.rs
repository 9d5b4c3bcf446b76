//! # onecard-benches
//!
//! Benchmarks of onecard's hot paths. The criterion benchmarks are in `benches/`
//! (`cargo bench -p onecard-benches`); the in-process ledger throughput harness is the
//! `ledger-throughput` binary
//! (`cargo run --release -p onecard-benches --bin ledger-throughput -- --help`). The
//! figures and the machine they were taken on are in docs/BENCHMARKS.md.
//!
//! This library holds what the ledger benchmarks share: [`campus`], a fresh ledger
//! with merchants, terminals and funded cards, and a tiny deterministic [`campus::Rng`].

pub mod campus;
