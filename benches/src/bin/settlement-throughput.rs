//! `settlement-throughput`: how long settling a busy day takes.
//!
//! Builds a campus of `--merchants` merchants (one terminal each) and `--cards` funded
//! cards on a fresh store, posts `--transfers` purchases on one business date straight
//! into `Ledger::submit` (commits unsynced: this measures settlement, not the disk),
//! closes the day, then times computing the day's settlement `--repeat` times
//! (`Ledger::preview_settlement`: every shard's slice read in parallel, nothing
//! posted) and posting it once (`Ledger::settle`), and the internal reconciliation
//! once. Prints each figure; the medians go in docs/BENCHMARKS.md.
//!
//! ```text
//! cargo run -p onecard-benches --bin settlement-throughput -- --transfers 10000000
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use clap::Parser;
use onecard_benches::campus::{Campus, Rng, Spec, TempDir, purchase};
use onecard_engine::{Ledger, LedgerConfig};
use onecard_protocol::{Answer, AnswerCode};

/// Settle a generated busy day and time it.
#[derive(Debug, Parser)]
struct Args {
    /// Merchants (each with one terminal).
    #[arg(long, default_value_t = 5_000)]
    merchants: u32,
    /// Cards.
    #[arg(long, default_value_t = 100_000)]
    cards: u64,
    /// Purchases posted on the day.
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    /// Shards of the store [default: the number of cores].
    #[arg(long)]
    shards: Option<usize>,
    /// Times the settlement is computed (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn seconds(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = TempDir::new("settlement-bench");
    let mut config = LedgerConfig { sync: false, ..LedgerConfig::default() };
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    let ledger = Ledger::open(dir.path(), config).map_err(|e| e.to_string())?;
    let spec = Spec {
        cards: args.cards,
        merchants: args.merchants,
        centre_terminals: 16,
        merchant_terminals: args.merchants,
    };
    let started = Instant::now();
    let mut campus = Campus::build(&ledger, &spec).map_err(|e| e.to_string())?;
    campus.open_cards(&ledger, args.cards, |_| {}).map_err(|e| e.to_string())?;
    // Enough for the day: the purchases average a yuan.
    let per_card = args.transfers / args.cards.max(1) * 200 + 10_000;
    campus.fund(&ledger, u32::try_from(per_card).unwrap_or(u32::MAX))?;
    println!(
        "campus: {} merchants, {} cards, {:.1} s",
        args.merchants,
        args.cards,
        seconds(started)
    );

    let started = Instant::now();
    let terminals: Vec<u32> = campus.merchants.iter().map(|m| m.terminals[0]).collect();
    let mut rng = Rng::new(0x005e_771e);
    let mut in_flight: VecDeque<tokio::sync::oneshot::Receiver<Answer>> = VecDeque::new();
    let mut approved = 0u64;
    let mut settle_answer = |answer: Result<Answer, _>| -> Result<(), String> {
        match answer {
            Ok(answer) if answer.code() == AnswerCode::Approved => {
                approved += 1;
                Ok(())
            }
            Ok(answer) => Err(format!("a purchase was refused: {:?}", answer.code())),
            Err(_) => Err("the ledger shut down".to_owned()),
        }
    };
    for _ in 0..args.transfers {
        if in_flight.len() >= 16_384
            && let Some(answer) = in_flight.pop_front()
        {
            settle_answer(answer.blocking_recv())?;
        }
        let terminal = terminals[rng.index(terminals.len())];
        let card = Campus::card_number(rng.below(args.cards));
        let submission = campus.submission(terminal, purchase(card, rng.between(1, 199)));
        in_flight.push_back(ledger.submit(submission));
    }
    while let Some(answer) = in_flight.pop_front() {
        settle_answer(answer.blocking_recv())?;
    }
    let posting = seconds(started);
    #[allow(
        clippy::cast_precision_loss,
        clippy::float_arithmetic,
        reason = "a rate for people to read"
    )]
    let rate = approved as f64 / posting;
    println!("day: {approved} purchases in {posting:.1} s ({rate:.0}/s, unsynced)");

    let date = ledger.business_date();
    ledger.cutover(date).map_err(|e| e.to_string())?;
    let mut computed = Vec::new();
    for run in 1..=args.repeat.max(1) {
        let started = Instant::now();
        let preview = ledger.preview_settlement(date).map_err(|e| e.to_string())?;
        let elapsed = seconds(started);
        let totals = preview.totals();
        println!(
            "compute {run}: {elapsed:.2} s, {} merchants, {} purchases, net {} fen",
            totals.merchants, totals.purchases.count, totals.net_sales_fen
        );
        computed.push(elapsed);
    }
    computed.sort_by(f64::total_cmp);
    let median = computed[computed.len() / 2];
    let started = Instant::now();
    let settled = ledger.settle(date).map_err(|e| e.to_string())?;
    let settle_s = seconds(started);
    let started = Instant::now();
    let reconciliation = ledger.reconcile(date).map_err(|e| e.to_string())?;
    let reconcile_s = seconds(started);
    println!(
        "settlement of {approved} transfers over {} merchants: compute median {median:.2} s; \
         settle (compute and post {} transfers, synced) {settle_s:.2} s; reconcile {reconcile_s:.2} s ({})",
        settled.settlement.merchants.len(),
        settled.settlement.transfer_count,
        if reconciliation.passed { "passed" } else { "FAILED" },
    );
    ledger.close();
    Ok(())
}
