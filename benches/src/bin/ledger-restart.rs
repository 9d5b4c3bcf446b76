//! `ledger-restart`: how long the ledger takes to reopen with a large store.
//!
//! Builds (or reuses) a store with `--cards` cards and at least `--transfers`
//! transfers, closes it, and times `Ledger::open`: reading every card account and
//! balance and rebuilding each terminal's retry window. The journal is not replayed,
//! so the time follows the number of cards, not of transfers; `--verify` also times a
//! full `verify`, which does read every transfer.
//!
//! ```text
//! cargo run -p onecard-benches --bin ledger-restart -- --cards 1000000 --transfers 50000000 \
//!     --data-dir /var/tmp/onecard-restart
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Parser;
use onecard_benches::campus::{Campus, Rng, Spec, TempDir, purchase};
use onecard_engine::directory::MerchantCategory;
use onecard_engine::sealing::MasterKey;
use onecard_engine::{Ledger, LedgerConfig, Submission};
use onecard_protocol::{AnswerCode, MacAlgorithm};

/// Reopen time of a large ledger.
#[derive(Debug, Parser)]
struct Args {
    /// Cards on the campus.
    #[arg(long, default_value_t = 1_000_000)]
    cards: u64,
    /// Transfers to commit before measuring.
    #[arg(long, default_value_t = 50_000_000)]
    transfers: u64,
    /// Merchants.
    #[arg(long, default_value_t = 300)]
    merchants: u32,
    /// Keep the store here (and reuse it if it is already built).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also time a full verify after the reopen.
    #[arg(long)]
    verify: bool,
    /// Commit this many more transfers to an existing store before measuring.
    #[arg(long, default_value_t = 0)]
    extend: u64,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let temp;
    let path = match &args.data_dir {
        Some(path) => path.clone(),
        None => {
            temp = TempDir::try_new("restart").map_err(|e| e.to_string())?;
            temp.path().to_owned()
        }
    };
    let master_key = master_key(&path)?;
    let built = path.join("CURRENT").exists();
    if !built {
        build(&args, &path, &master_key)?;
    } else if args.extend > 0 {
        let started = Instant::now();
        let config =
            LedgerConfig { sync: false, master_key: master_key.clone(), ..LedgerConfig::default() };
        let ledger = Ledger::open(&path, config).map_err(|e| e.to_string())?;
        drive(&ledger, args.cards, args.extend, started)?;
        ledger.close();
        println!(
            "extended by {}+ transfers in {:.0} s",
            args.extend,
            started.elapsed().as_secs_f64()
        );
    }
    for round in 1..=3 {
        let started = Instant::now();
        let config = LedgerConfig { master_key: master_key.clone(), ..LedgerConfig::default() };
        let ledger = Ledger::open(&path, config).map_err(|e| e.to_string())?;
        let opened = started.elapsed();
        let shards = ledger.health().len();
        println!(
            "reopen {round}: {:.2} s ({} shards, {} terminals)",
            opened.as_secs_f64(),
            shards,
            ledger.terminals().len()
        );
        if args.verify && round == 1 {
            let started = Instant::now();
            let mut read_back = onecard_engine::VerifyReport::default();
            onecard_engine::verify::check_checksums(ledger.store(), &mut read_back)
                .map_err(|e| e.to_string())?;
            println!(
                "checksum pass alone: {:.1} s ({} SST files, {} keys)",
                started.elapsed().as_secs_f64(),
                read_back.sst_files,
                read_back.keys_checked
            );
            let started = Instant::now();
            let report = ledger.verify().map_err(|e| e.to_string())?;
            println!("verify: {:.1} s\n{report}", started.elapsed().as_secs_f64());
            if !report.is_clean() {
                return Err("verify found problems".to_owned());
            }
        }
        ledger.close();
    }
    Ok(())
}

/// The store's master key, kept in a file beside it so a store built by one run
/// reopens in the next.
fn master_key(path: &Path) -> Result<MasterKey, String> {
    let file = path.join("bench-master.key");
    if let Ok(text) = std::fs::read_to_string(&file) {
        return MasterKey::from_hex(&text).map_err(|e| e.to_string());
    }
    let key = MasterKey::generate().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
    std::fs::write(&file, key.to_hex()).map_err(|e| e.to_string())?;
    Ok(key)
}

fn build(args: &Args, path: &Path, master_key: &MasterKey) -> Result<(), String> {
    let started = Instant::now();
    // Building is not what is measured: commits are not synced while it runs.
    let config =
        LedgerConfig { sync: false, master_key: master_key.clone(), ..LedgerConfig::default() };
    let ledger = Ledger::open(path, config).map_err(|e| e.to_string())?;
    let spec = Spec {
        cards: args.cards,
        merchants: args.merchants,
        centre_terminals: 16,
        merchant_terminals: 1_000,
    };
    let mut campus = Campus::build(&ledger, &spec).map_err(|e| e.to_string())?;
    campus.open_cards(&ledger, args.cards, |_| {}).map_err(|e| e.to_string())?;
    println!("opened {} cards in {:.1} s", args.cards, started.elapsed().as_secs_f64());
    campus.fund(&ledger, 1_000_000)?;
    println!("funded in {:.1} s", started.elapsed().as_secs_f64());
    let committed = drive(&ledger, args.cards, args.transfers, started)?;
    ledger.close();
    println!("built {committed}+ transfers in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Commits at least `transfers` purchases from the merchants' terminals, many in
/// flight, each terminal continuing from its last sequence.
fn drive(ledger: &Ledger, cards: u64, transfers: u64, started: Instant) -> Result<u64, String> {
    let terminals: Vec<u32> = ledger
        .terminals()
        .iter()
        .filter(|t| t.category != MerchantCategory::CardCentre)
        .map(|t| t.id)
        .collect();
    let mut next: HashMap<u32, u64> = ledger
        .terminals()
        .iter()
        .map(|t| (t.id, t.last_sequence.load(Ordering::Acquire) + 1))
        .collect();
    let mut rng = Rng::new(started.elapsed().as_nanos().try_into().unwrap_or(7));
    let mut in_flight = VecDeque::with_capacity(16_384);
    let mut committed = 0u64;
    let mut sent = 0u64;
    while committed < transfers {
        while in_flight.len() < 16_384 {
            let terminal_id = terminals[rng.index(terminals.len())];
            let card = Campus::card_number(rng.below(cards));
            let sequence = next.entry(terminal_id).or_insert(1);
            let submission = Submission {
                terminal_id,
                sequence: *sequence,
                mac_algorithm: MacAlgorithm::HmacSha256,
                request: purchase(card, rng.between(100, 3_000)),
            };
            *sequence += 1;
            in_flight.push_back(ledger.submit(submission));
            sent += 1;
        }
        if let Some(answer) = in_flight.pop_front() {
            match answer.blocking_recv().map(|a| a.code()) {
                Ok(AnswerCode::Approved) => committed += 1,
                Ok(AnswerCode::ServerBusy | AnswerCode::InsufficientFunds) => {}
                Ok(other) => return Err(format!("a purchase was answered {other}")),
                Err(_) => return Err("the ledger shut down".to_owned()),
            }
        }
        if sent.is_multiple_of(5_000_000) {
            println!("{committed} transfers at {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    for answer in in_flight {
        let _ = answer.blocking_recv();
    }
    Ok(committed)
}
