//! Crash safety: `onecard serve` killed with SIGKILL at random moments while terminals
//! buy, restarted each time. The terminals' own log of what they were told is the
//! oracle: every purchase a terminal was told "approved" is in the ledger exactly once,
//! nothing else moved any card, a retry after a restart gets the original answer, and
//! `onecard verify` passes after every kill.
//!
//! About half the restarts arm a storage fault (`ONECARD_STORAGE_FAULT`: a failed
//! write or a failed sync on one shard, or a full disk, which once it fires fails
//! every journal, after a random number of one shard's writes). A purchase answered `ServiceUnavailable` by the failed shard is, to its
//! terminal, undecided: it is sent again, under its own sequence, to the next server,
//! exactly as a purchase whose answer a kill cut off.
//!
//! About a third of the other restarts arm a crash inside the checkpointer
//! (`ONECARD_CHECKPOINT_CRASH`: the process aborts just before a balance checkpoint,
//! just after one, just after an index run, or just after the two were flushed to
//! disk), with checkpoints every 20 ms, so the next start replays the journal after a
//! checkpoint that the index is ahead of or behind.
//!
//! `ONECARD_CRASH_KILLS` sets the number of kills (20 by default; the long run in
//! docs/RELIABILITY.md used hundreds) and `ONECARD_CRASH_SEED` replays a run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use onecard_protocol::{Answer, AnswerCode, TerminalClient};
use onecard_tests::{Server, purchase};

use crate::support::{Campus, FUNDED_FEN, TerminalSpec, balance_fen, one_attempt, yuan_to_fen};

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What one terminal sent and was told.
#[derive(Debug, Clone)]
struct Told {
    card: u64,
    amount_fen: u32,
    code: AnswerCode,
    transfer_id: u64,
}

/// One terminal's log, carried across kills: the oracle.
#[derive(Debug, Default)]
struct TerminalLog {
    /// The highest sequence this terminal has used.
    last_sequence: u64,
    /// Every purchase answered, by sequence.
    told: BTreeMap<u64, Told>,
    /// A purchase sent whose answer never came (the server died first).
    pending: Option<(u64, u64, u32)>,
    /// Retries of answered purchases after a restart, each given its original answer.
    retries_checked: u64,
    /// Purchases in flight at a kill, resolved by their retry: (committed before the
    /// kill, decided after the restart).
    resolved: (u64, u64),
    /// Purchases answered `ServiceUnavailable` by a server whose storage failed: not
    /// decided, so kept open and sent again to the next server.
    unavailable: u64,
}

fn transfer_answer(answer: &Answer) -> (bool, AnswerCode, u64) {
    match answer {
        Answer::Purchase(a) => (a.duplicate, a.code, a.transfer_id),
        other => panic!("a purchase answer, not {other:?}"),
    }
}

/// Drives one terminal until the connection dies (or, once `stop` is set, until it has
/// nothing outstanding). First it settles what the last kill left open: the purchase
/// in flight is retried under its own sequence, and the last answered one is asked
/// again and must come back as a duplicate of what the terminal was told.
async fn drive(
    addr: SocketAddr,
    spec: TerminalSpec,
    cards: Arc<Vec<u64>>,
    mut log: TerminalLog,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
) -> TerminalLog {
    let Ok(client) =
        TerminalClient::connect(addr, spec.id, &spec.key, log.last_sequence, one_attempt()).await
    else {
        return log;
    };
    log.last_sequence = log.last_sequence.max(client.last_sequence());
    // The last answer, whatever it said: older ones may have left the retry window
    // (a decline is an answer too, and retained like an approval).
    if let Some((&sequence, told)) = log.told.iter().next_back() {
        let told = told.clone();
        let Ok(answer) =
            client.call_with_sequence(sequence, purchase(told.card, told.amount_fen)).await
        else {
            return log;
        };
        let (duplicate, code, transfer_id) = transfer_answer(&answer);
        if code == AnswerCode::ServiceUnavailable && !duplicate {
            // The armed fault has already poisoned this shard: ask the next server.
            return log;
        }
        assert!(
            duplicate,
            "terminal {} sequence {sequence}: a retry is a duplicate: {answer:?}",
            spec.id
        );
        assert_eq!(
            (code, transfer_id),
            (told.code, told.transfer_id),
            "terminal {} sequence {sequence}: the original answer",
            spec.id
        );
        log.retries_checked += 1;
    }
    loop {
        let (sequence, card, amount_fen) = match log.pending {
            Some(pending) => pending,
            None if stop.load(Ordering::Relaxed) => return log,
            None => {
                let card = cards[usize::try_from(rng.below(cards.len() as u64)).expect("fits")];
                let amount_fen = 1 + u32::try_from(rng.below(3)).expect("fits");
                (client.next_sequence(), card, amount_fen)
            }
        };
        let retry = log.pending.is_some();
        log.pending = Some((sequence, card, amount_fen));
        log.last_sequence = log.last_sequence.max(sequence);
        let Ok(answer) = client.call_with_sequence(sequence, purchase(card, amount_fen)).await
        else {
            return log;
        };
        let (duplicate, code, transfer_id) = transfer_answer(&answer);
        if code == AnswerCode::ServiceUnavailable {
            // The storage failed under it: the purchase may or may not have reached the
            // disk. It stays open, and the terminal waits for the next server.
            log.unavailable += 1;
            return log;
        }
        if retry {
            // Committed before the kill: the original answer behind `Duplicate`. Never
            // committed: the restarted shard has not seen the sequence, and decides it
            // now, once.
            if duplicate { log.resolved.0 += 1 } else { log.resolved.1 += 1 }
        } else {
            assert!(!duplicate, "terminal {} sequence {sequence} is new: {answer:?}", spec.id);
        }
        log.pending = None;
        log.told.insert(sequence, Told { card, amount_fen, code, transfer_id });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_purchase_and_adds_none() {
    let kills: u32 =
        std::env::var("ONECARD_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("ONECARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) << 20 | 0x9E37);
    eprintln!("crash test: {kills} kills, ONECARD_CRASH_SEED={seed}");
    let mut rng = Rng(seed.max(1));

    // Enough cards that a run does not spend them all even on a fast disk (declines
    // are correct, but they test less): 20 kills once took 60,000 purchases.
    let campus = Campus::build("crash", u64::from(kills.max(20)) * 3, &[]).await;
    let terminals = campus.windows(4, 60);
    let Campus { server, dir, cards, .. } = campus;
    let cards = Arc::new(cards);
    let mut logs: Vec<TerminalLog> = terminals.iter().map(|_| TerminalLog::default()).collect();
    let mut server = Some(server);
    let mut restart_ms_max = 0u128;
    let mut faults_armed = 0u64;
    let mut checkpoint_crashes = 0u64;
    let started = Instant::now();

    for round in 0..=kills {
        let running = server.take().expect("a server");
        let last = round == kills;
        let stop = Arc::new(AtomicBool::new(last));
        let tasks: Vec<_> = terminals
            .iter()
            .zip(std::mem::take(&mut logs))
            .map(|(spec, log)| {
                tokio::spawn(drive(
                    running.terminal_addr(),
                    spec.clone(),
                    Arc::clone(&cards),
                    log,
                    Rng(rng.next() | 1),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        if last {
            logs = join_terminals(tasks).await;
            server = Some(running);
            break;
        }
        // Let it run for a random moment, then kill it mid-stride.
        tokio::time::sleep(Duration::from_millis(150 + rng.below(600))).await;
        running.kill();
        logs = join_terminals(tasks).await;
        // What survived the kill is a consistent ledger before anything else touches it.
        let report = onecard_tests::verify(dir.path());
        assert!(!report.is_empty());
        let restarting = Instant::now();
        let fault = if round + 1 < kills && rng.below(2) == 0 {
            let kind = ["write_fails", "sync_fails", "disk_full"]
                [usize::try_from(rng.below(3)).expect("fits")];
            faults_armed += 1;
            Some(format!("{kind}@{}+{}", rng.below(2), rng.below(300)))
        } else {
            None
        };
        let mut env: Vec<(&str, &str)> =
            fault.iter().map(|plan| ("ONECARD_STORAGE_FAULT", plan.as_str())).collect();
        // A third of the other restarts crash inside the checkpointer instead of
        // being killed from outside: checkpoints every 20 ms, and an abort just
        // before or after one of its writes.
        let crash = if fault.is_none() && rng.below(3) == 0 {
            let point = ["before_balances", "after_balances", "after_index_run", "after_persist"]
                [usize::try_from(rng.below(4)).expect("fits")];
            checkpoint_crashes += 1;
            Some(format!("{point}+{}", rng.below(20)))
        } else {
            None
        };
        if let Some(plan) = &crash {
            env.push(("ONECARD_CHECKPOINT_CRASH", plan.as_str()));
            env.push(("ONECARD_CHECKPOINT_INTERVAL_MS", "20"));
            env.push(("ONECARD_INDEX_INTERVAL_MS", "10"));
        }
        server = Some(Server::start_with_env(dir.path(), &[], &env));
        restart_ms_max = restart_ms_max.max(restarting.elapsed().as_millis());
    }

    let server = server.expect("the last server");
    let admin = server.admin();
    let mut spent: BTreeMap<u64, i64> = BTreeMap::new();
    let (mut approved, mut answered, mut retries, mut committed_unanswered, mut lost_in_flight) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut unavailable = 0u64;
    for (spec, log) in terminals.iter().zip(&logs) {
        assert!(log.pending.is_none(), "terminal {} still has a purchase open", spec.id);
        retries += log.retries_checked;
        unavailable += log.unavailable;
        committed_unanswered += log.resolved.0;
        lost_in_flight += log.resolved.1;
        for (sequence, told) in &log.told {
            answered += 1;
            if told.code != AnswerCode::Approved {
                assert_eq!(told.transfer_id, 0, "a refusal commits nothing");
                continue;
            }
            approved += 1;
            *spent.entry(told.card).or_default() += i64::from(told.amount_fen);
            let (status, transfer) = admin.get(&format!("/api/transfers/{}", told.transfer_id));
            assert_eq!(status, 200, "approved transfer {} is in the ledger", told.transfer_id);
            assert_eq!(transfer["card_number"], told.card);
            assert_eq!(transfer["terminal_id"], spec.id);
            assert_eq!(transfer["sequence"], *sequence);
            assert_eq!(
                yuan_to_fen(transfer["amount_yuan"].as_str().expect("an amount")),
                i64::from(told.amount_fen)
            );
        }
    }
    // Exactly once: each card moved by what its terminals were told and nothing more.
    for card in cards.iter() {
        let told = spent.get(card).copied().unwrap_or(0);
        assert_eq!(balance_fen(&admin, *card), FUNDED_FEN - told, "card {card}");
    }
    assert!(approved > u64::from(kills) * 5, "the load ran: {approved} approved");
    eprintln!(
        "crash test: {kills} kills in {:.1} s; {answered} purchases answered, {approved} \
         approved; of those left open by a kill or a storage fault, {committed_unanswered} had committed and \
         {lost_in_flight} had not, each settled by its retry; {retries} retries given \
         their original answer; {faults_armed} restarts with a storage fault armed, \
         {unavailable} purchases answered ServiceUnavailable and sent again; \
         {checkpoint_crashes} restarts armed to crash inside the checkpointer; slowest \
         restart {restart_ms_max} ms",
        started.elapsed().as_secs_f64()
    );
    assert!(server.stop().success());
    let _ = onecard_tests::verify(dir.path());
    drop(dir);
}

/// Awaits every terminal task in order.
async fn join_terminals(tasks: Vec<tokio::task::JoinHandle<TerminalLog>>) -> Vec<TerminalLog> {
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        logs.push(task.await.expect("a terminal task"));
    }
    logs
}
