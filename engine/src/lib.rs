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
pub mod notice;
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
pub use ledger::{
    ControlError, Cutover, HallCredential, Ledger, LedgerConfig, LedgerError, OpenCard, SubsidyRow,
};
pub use shard::Submission;
pub use verify::VerifyReport;

#[cfg(test)]
mod layers {
    //! The engine's modules import each other in one direction (docs/ARCHITECTURE.md,
    //! "The engine's modules, lowest first"): this reads every source file's
    //! `crate::` paths and fails on the first circle.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules its code names.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("reads the source directory") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    walk(&path, files);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let module = |path: &Path| {
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a component");
            first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned()
        };
        let modules: BTreeSet<String> =
            files.iter().map(|path| module(path)).filter(|m| m != "lib").collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in &files {
            let from = module(path);
            if from == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(path).expect("reads a source file");
            let named = graph.entry(from.clone()).or_default();
            for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
                    let to = &rest[..end.unwrap_or(rest.len())];
                    if to != from && modules.contains(to) {
                        named.insert(to.to_owned());
                    }
                }
            }
        }
        graph
    }

    #[test]
    fn no_two_modules_import_each_other_even_round_a_circle() {
        let graph = imports();
        assert!(graph["shard"].contains("shared"), "the walk sees imports: {graph:?}");
        // Depth-first, keeping the path: a module met again on it closes a circle.
        fn visit<'a>(
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            module: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(module) {
                return;
            }
            if let Some(at) = path.iter().position(|m| *m == module) {
                panic!("a circle of imports: {} -> {module}", path[at..].join(" -> "));
            }
            path.push(module);
            for next in graph.get(module).into_iter().flatten() {
                visit(graph, next, path, done);
            }
            path.pop();
            done.insert(module);
        }
        let mut done = BTreeSet::new();
        for module in graph.keys() {
            visit(&graph, module, &mut Vec::new(), &mut done);
        }
    }
}
