//! The ledger's commit path, in process: a small campus (1,000 cards, 10 merchants,
//! 2 shards, every commit synced) on a temporary store.
//!
//! `cargo bench -p onecard-benches --bench ledger`. Two measurements:
//! - `ledger/purchase_lone`: one purchase through `submit_wait` — the latency of a lone
//!   durable commit (a batch of one request, one synced RocksDB write).
//! - `ledger/purchase_pipelined_1000`: 1,000 purchases spread over the campus's
//!   terminals, all submitted and then all awaited; the shards batch them. Throughput
//!   is per purchase.
//!
//! The in-process harness for the whole lunch-peak mix at scale is the
//! `ledger-throughput` binary.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use onecard_benches::campus::{self, Campus, Rng, Spec, TempDir};
use onecard_engine::{Ledger, LedgerConfig};
use onecard_protocol::AnswerCode;

/// Purchases per pipelined iteration.
const PIPELINED: u64 = 1_000;

fn ledger(c: &mut Criterion) {
    let dir = TempDir::new("bench-ledger");
    let config = LedgerConfig { shards: 2, sync: true, ..LedgerConfig::default() };
    let ledger = Ledger::open(dir.path(), config).expect("the ledger opens");
    let spec = Spec { cards: 1_000, merchants: 10, centre_terminals: 2, merchant_terminals: 30 };
    let mut campus = Campus::build(&ledger, &spec).expect("the campus builds");
    campus.open_cards(&ledger, spec.cards, |_| {}).expect("the cards open");
    campus.fund(&ledger, 10_000_000).expect("the cards are funded");
    let terminals: Vec<u32> =
        campus.merchants.iter().flat_map(|m| m.terminals.iter().copied()).collect();
    let mut rng = Rng::new(7);

    let mut group = c.benchmark_group("ledger");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    group.bench_function("purchase_lone", |b| {
        b.iter(|| {
            let terminal = terminals[rng.index(terminals.len())];
            let card = Campus::card_number(rng.below(campus.cards));
            let submission = campus.submission(terminal, campus::purchase(card, 100));
            let answer = ledger.submit_wait(submission);
            assert_eq!(answer.code(), AnswerCode::Approved, "{answer:?}");
        });
    });
    group.throughput(Throughput::Elements(PIPELINED));
    group.bench_function("purchase_pipelined_1000", |b| {
        b.iter(|| {
            let answers: Vec<_> = (0..PIPELINED)
                .zip(terminals.iter().cycle())
                .map(|(_, &terminal)| {
                    let card = Campus::card_number(rng.below(campus.cards));
                    ledger.submit(campus.submission(terminal, campus::purchase(card, 100)))
                })
                .collect();
            for answer in answers {
                let answer = answer.blocking_recv().expect("the ledger answers");
                assert_eq!(answer.code(), AnswerCode::Approved, "{answer:?}");
            }
        });
    });
    group.finish();
    let report = ledger.verify().expect("the store reads");
    assert!(report.is_clean(), "{report}");
    ledger.close();
}

criterion_group!(benches, ledger);
criterion_main!(benches);
