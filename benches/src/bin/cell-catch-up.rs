//! `cell-catch-up`: how long a node of a cell that was down while the others
//! committed `--transfers` purchases takes to catch up once it is started again.
//!
//! Starts a cell of three `onecard serve` processes on loopback (the harness of the
//! end-to-end tests), kills a follower with SIGKILL, has `--tills` canteen terminals
//! buy until the other two have approved `--transfers` purchases, stops them, starts
//! the follower again and times two things: from the start to its ready line (the
//! process opens its store and log), and from the ready line until it has applied
//! every entry the leader had, and whether it needed a snapshot. Repeats `--rounds` times on a fresh cell and prints
//! each round and the medians.
//!
//! ```text
//! cargo build --release -p onecard-ops -p onecard-benches
//! target/release/cell-catch-up --transfers 20000 --rounds 3
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use onecard_protocol::{Answer, AnswerCode, CellClient, ClientConfig, TerminalKey};
use onecard_tests::cell::Cell;
use onecard_tests::purchase;

/// The demo campus's first card.
const CARD_FIRST: u64 = 20_260_000_001;

/// How long any one wait may take before the benchmark gives up.
const WAIT: Duration = Duration::from_secs(120);

/// Catch-up time of a node that was down.
#[derive(Debug, Parser)]
struct Args {
    /// Purchases the cell approves while the node is down.
    #[arg(long, default_value_t = 20_000)]
    transfers: u64,
    /// Canteen terminals buying, each a request at a time.
    #[arg(long, default_value_t = 8)]
    tills: usize,
    /// Cells to measure, each fresh.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Cards in the demo campus.
    #[arg(long, default_value_t = 2_000)]
    cards: u64,
}

/// One round's figures.
#[derive(Debug, Clone, Copy)]
struct Round {
    entries_behind: u64,
    ready_ms: u128,
    caught_up_ms: u128,
    /// Whether the node caught up through a snapshot of the leader's store (the
    /// entries it lacked were purged from the leader's log) rather than the log.
    from_snapshot: bool,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.tills == 0 || args.tills > 100 || args.transfers == 0 {
        return Err("--tills must be 1 to 100 and --transfers at least 1".to_owned());
    }
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let figures = measure(&args)?;
        println!(
            "round {round}: {} entries behind ({} purchases); ready after {} ms, caught up {} ms \
             later, from {}",
            figures.entries_behind,
            args.transfers,
            figures.ready_ms,
            figures.caught_up_ms,
            if figures.from_snapshot { "a snapshot and the log" } else { "the log" }
        );
        rounds.push(figures);
    }
    let median = |pick: fn(&Round) -> u128| {
        let mut values: Vec<u128> = rounds.iter().map(pick).collect();
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    };
    println!(
        "SUMMARY cell-catch-up transfers={} tills={} rounds={} entries_behind_median={} \
         ready_ms_median={} caught_up_ms_median={}",
        args.transfers,
        args.tills,
        args.rounds,
        median(|r| u128::from(r.entries_behind)),
        median(|r| r.ready_ms),
        median(|r| r.caught_up_ms),
    );
    Ok(())
}

/// A node's applied index, from its `/api/cluster`.
fn applied_index(cell: &Cell, id: u64) -> Option<u64> {
    cell.status(id).and_then(|status| status["applied_index"].as_u64())
}

fn measure(args: &Args) -> Result<Round, String> {
    // The cluster crate's info lines say whether a node installed a snapshot.
    let logging = vec![("RUST_LOG".to_owned(), "warn,onecard_cluster=info".to_owned())];
    let env = (1..=3).map(|id| (id, logging.clone())).collect();
    let mut cell = Cell::start_with_env("catch-up", 3, args.cards, &env);
    let leader = cell.wait_leader(WAIT);
    let down = cell
        .members()
        .iter()
        .map(|m| m.id)
        .find(|id| *id != leader)
        .ok_or("a cell of three has a follower")?;
    cell.kill(down);
    let before = applied_index(&cell, leader).ok_or("the leader answers")?;
    buy(&cell, args)?;
    let target = applied_index(&cell, leader).ok_or("the leader answers")?;
    let started = Instant::now();
    cell.start_node(down);
    let ready_ms = started.elapsed().as_millis();
    let ready = Instant::now();
    while applied_index(&cell, down).is_none_or(|index| index < target) {
        if ready.elapsed() > WAIT {
            return Err(format!("node {down} did not catch up to {target} within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let caught_up_ms = ready.elapsed().as_millis();
    let log = std::fs::read_to_string(cell.log(down)).map_err(|e| e.to_string())?;
    Ok(Round {
        entries_behind: target.saturating_sub(before),
        ready_ms,
        caught_up_ms,
        from_snapshot: log.contains("installed a snapshot from the leader"),
    })
}

/// Has `args.tills` canteen terminals buy 1 fen at a time until the cell has
/// approved `args.transfers` purchases.
fn buy(cell: &Cell, args: &Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let approved = Arc::new(AtomicU64::new(0));
    let config = ClientConfig {
        answer_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    // Cards of ordinary balance (the demo makes every hundredth card poor), split
    // between the tills; a till stops selling to a card that is declined.
    let cards: Vec<u64> =
        (0..args.cards).filter(|index| index % 100 != 50).map(|index| CARD_FIRST + index).collect();
    let per_till = (cards.len() / args.tills).max(1);
    let canteen = cell
        .demo_terminals()
        .into_iter()
        .filter(|(_, _, category)| category == "canteen")
        .take(args.tills)
        .collect::<Vec<_>>();
    if canteen.len() < args.tills {
        return Err(format!("the demo has {} canteen terminals", canteen.len()));
    }
    let tasks: Vec<_> = canteen
        .into_iter()
        .enumerate()
        .map(|(n, (id, key_hex, _))| {
            let key = hex_key(&key_hex)?;
            let client = CellClient::new(
                cell.terminal_addresses(),
                id,
                TerminalKey::new(key),
                0,
                config.clone(),
                WAIT,
            );
            let mut own: Vec<u64> =
                cards.iter().skip(n * per_till).take(per_till).copied().collect();
            let (approved, goal) = (Arc::clone(&approved), args.transfers);
            Ok(runtime.spawn(async move {
                let mut next = 0;
                while approved.load(Ordering::Relaxed) < goal {
                    let Some(card) = own.get(next % own.len().max(1)).copied() else {
                        return Err(format!("terminal {id}: every card of its own was declined"));
                    };
                    next += 1;
                    match client.call(purchase(card, 1)).await.1 {
                        Ok(Answer::Purchase(answer)) if answer.code == AnswerCode::Approved => {
                            approved.fetch_add(1, Ordering::Relaxed);
                        }
                        // A lost or frozen card of the demo: sell to the others.
                        Ok(Answer::Purchase(_)) => own.retain(|c| *c != card),
                        other => return Err(format!("card {card}: {other:?}")),
                    }
                }
                Ok(())
            }))
        })
        .collect::<Result<_, String>>()?;
    runtime.block_on(async {
        for task in tasks {
            task.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    })
}

fn hex_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text).map_err(|e| format!("a terminal key {text:?}: {e}"))?;
    bytes.try_into().map_err(|_| format!("a terminal key of 32 bytes, not {text:?}"))
}
