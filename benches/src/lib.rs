//! # onecard-benches
//!
//! Criterion benchmarks of onecard's hot paths; the benchmarks are in `benches/`, this
//! library is empty. Run them with `cargo bench -p onecard-benches`; the figures and the
//! machine they were taken on are in docs/BENCHMARKS.md.
