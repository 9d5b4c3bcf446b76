//! A cell of three `onecard serve` processes under terminal load, with nodes killed,
//! paused and failing. The terminals' log of answers is the oracle:
//! - every purchase answered approved is in the ledger exactly once (its card's
//!   balance fell by exactly the approved purchases, and no transfer id repeats);
//! - nothing that was not approved was charged;
//! - each terminal's last approved purchase, sent again under its sequence, comes
//!   back as the same answer;
//! - once the cell is quiet, every replica has applied the same index, holds the
//!   same state hash there, and passes `onecard verify`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onecard_protocol::message::{BalanceInquiry, Heartbeat};
use onecard_protocol::{
    Answer, AnswerCode, CellClient, ClientConfig, ClientError, Request, TerminalClient, TerminalKey,
};
use onecard_tests::cell::Cell;
use onecard_tests::purchase;

/// The demo campus's first card.
const CARD_FIRST: u64 = 20_260_000_001;

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// One answer a terminal logged.
#[derive(Debug, Clone)]
struct Logged {
    sequence: u64,
    card: u64,
    answer: Result<Answer, String>,
    at: Instant,
    /// The till's connection count when answered: which leader answered.
    connection: u64,
}

/// A till of the load: a terminal of the cell and the cards it sells to.
struct Till {
    client: Arc<CellClient>,
    cards: Vec<u64>,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// Terminals under load on a cell, and what they were answered.
struct Load {
    runtime: tokio::runtime::Runtime,
    tills: Vec<Till>,
    initial: BTreeMap<u64, i64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn client(cell: &Cell, terminal_id: u32, key_hex: &str) -> CellClient {
    let key: [u8; 32] = hex::decode(key_hex).expect("hex").try_into().expect("32 bytes");
    let config = ClientConfig {
        answer_timeout: Duration::from_secs(2),
        attempts_max: 2,
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    CellClient::new(cell.terminal_addresses(), terminal_id, TerminalKey::new(key), 0, config, WAIT)
}

async fn balance(client: &CellClient, card: u64) -> i64 {
    let (_, answer) =
        client.call(Request::BalanceInquiry(BalanceInquiry { card_number: card })).await;
    match answer.expect("a balance inquiry is answered") {
        Answer::BalanceInquiry(answer) if answer.code == AnswerCode::Approved => answer.balance_fen,
        other => panic!("balance of {card}: {other:?}"),
    }
}

impl Load {
    /// `terminals` canteen tills, each selling 1 fen purchases to ten cards of its own.
    fn start(cell: &Cell, terminals: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let canteen: Vec<(u32, String)> = cell
            .demo_terminals()
            .into_iter()
            .filter(|(_, _, category)| category == "canteen")
            .map(|(id, key, _)| (id, key))
            .take(terminals)
            .collect();
        assert_eq!(canteen.len(), terminals, "the demo has canteen terminals");
        // Cards of ordinary balance: the demo makes every hundredth card poor.
        let cards: Vec<u64> =
            (0..150u64).filter(|index| index % 100 != 50).map(|index| CARD_FIRST + index).collect();
        let mut tills = Vec::new();
        let mut initial = BTreeMap::new();
        for (n, (id, key)) in canteen.iter().enumerate() {
            let client = Arc::new(client(cell, *id, key));
            let own: Vec<u64> = cards.iter().skip(n * 10).take(10).copied().collect();
            for card in &own {
                initial.insert(*card, runtime.block_on(balance(&client, *card)));
            }
            tills.push(Till { client, cards: own, log: Arc::new(Mutex::new(Vec::new())) });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = tills
            .iter()
            .map(|till| {
                let (client, cards, log, stop) = (
                    Arc::clone(&till.client),
                    till.cards.clone(),
                    Arc::clone(&till.log),
                    Arc::clone(&stop),
                );
                runtime.spawn(async move {
                    let mut next = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let card = cards[next % cards.len()];
                        next += 1;
                        let sequence = client.next_sequence();
                        let answer = client
                            .call_with_sequence(sequence, purchase(card, 1))
                            .await
                            .map_err(|e| e.to_string());
                        let (at, connection) = (Instant::now(), client.failovers());
                        let logged = Logged { sequence, card, answer, at, connection };
                        log.lock().expect("log").push(logged);
                    }
                })
            })
            .collect();
        Self { runtime, tills, initial, stop, tasks }
    }

    /// Approvals so far, across the tills.
    fn approved(&self) -> usize {
        self.tills
            .iter()
            .map(|till| {
                till.log.lock().expect("log").iter().filter(|l| is_approved(&l.answer)).count()
            })
            .sum()
    }

    /// Waits until `more` approvals have come since `since`.
    fn wait_progress(&self, since: usize, more: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.approved();
            if now >= since + more {
                return now;
            }
            assert!(Instant::now() < deadline, "the cell approved nothing for {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Each till's connection count now.
    fn connections(&self) -> Vec<u64> {
        self.tills.iter().map(|till| till.client.failovers()).collect()
    }

    /// The first approval a till had on a connection made after `connections` (the
    /// counts when the leader was killed): the first the new leader gave.
    fn first_approval_after(&self, connections: &[u64]) -> Option<Instant> {
        self.tills
            .iter()
            .zip(connections)
            .filter_map(|(till, before)| {
                till.log
                    .lock()
                    .expect("log")
                    .iter()
                    .filter(|l| l.connection > *before && is_approved(&l.answer))
                    .map(|l| l.at)
                    .min()
            })
            .min()
    }

    /// Stops the load, settles every request that got no answer by sending it again
    /// under its sequence, and checks the oracle against the cell as it is now.
    fn finish_and_check(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let Self { runtime, tills, initial, tasks, .. } = self;
        runtime.block_on(async {
            for task in tasks {
                task.await.expect("a till");
            }
        });
        let mut transfer_ids = BTreeSet::new();
        let mut approved_total = 0;
        for till in &tills {
            let mut log = till.log.lock().expect("log").clone();
            for entry in &mut log {
                if entry.answer.is_err() {
                    let again = runtime.block_on(
                        till.client.call_with_sequence(entry.sequence, purchase(entry.card, 1)),
                    );
                    entry.answer = Ok(again.expect("a request sent again is answered"));
                }
            }
            let mut charged: BTreeMap<u64, i64> = BTreeMap::new();
            let mut last_approved = None;
            for entry in &log {
                let answer = entry.answer.as_ref().expect("settled above");
                let Answer::Purchase(purchase_answer) = answer else {
                    panic!("sequence {}: not a purchase answer: {answer:?}", entry.sequence)
                };
                match purchase_answer.code {
                    AnswerCode::Approved => {
                        assert!(
                            transfer_ids.insert(purchase_answer.transfer_id),
                            "transfer {} approved twice",
                            purchase_answer.transfer_id
                        );
                        *charged.entry(entry.card).or_default() += 1;
                        approved_total += 1;
                        last_approved = Some(entry.clone());
                    }
                    // A request the old leader never committed, overtaken by the
                    // sign-on at the new one: nothing happened.
                    AnswerCode::StaleSequence => {}
                    code => panic!("sequence {}: unexpected {code}", entry.sequence),
                }
            }
            for card in &till.cards {
                let now = runtime.block_on(balance(&till.client, *card));
                let expected = initial[card] - charged.get(card).copied().unwrap_or(0);
                assert_eq!(now, expected, "card {card}: balance against its approved purchases");
            }
            let last = last_approved.expect("every till had a purchase approved");
            let again = runtime
                .block_on(till.client.call_with_sequence(last.sequence, purchase(last.card, 1)))
                .expect("the last approved purchase, sent again, is answered");
            let (Ok(Answer::Purchase(first)), Answer::Purchase(retried)) = (&last.answer, &again)
            else {
                panic!("the retry of sequence {} came back as {again:?}", last.sequence)
            };
            assert!(retried.duplicate, "the retry is flagged duplicate: {retried:?}");
            assert_eq!(
                (retried.code, retried.transfer_id, retried.balance_fen),
                (first.code, first.transfer_id, first.balance_fen),
                "the retry of sequence {} carries the original answer",
                last.sequence
            );
        }
        approved_total
    }
}

fn is_approved(answer: &Result<Answer, String>) -> bool {
    matches!(answer, Ok(Answer::Purchase(a)) if a.code == AnswerCode::Approved)
}

/// Once the cell is quiet, every replica of `ids` has the same state at the same
/// index and passes verification.
fn check_replicas(mut cell: Cell, ids: &[u64]) {
    let index = cell.wait_quiescent(WAIT);
    for id in cell.members().iter().map(|m| m.id).collect::<Vec<_>>() {
        cell.kill(id);
    }
    let hashes: Vec<String> = ids.iter().map(|id| cell.replica_hash(*id)).collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "the replicas differ after settling at index {index}: {hashes:#?}"
    );
    assert!(hashes[0].starts_with(&format!("applied through {index} ")), "{}", hashes[0]);
    for id in ids {
        let report = cell.verify(*id);
        assert!(!report.is_empty(), "node {id} verified");
    }
}

/// A deterministic spread of pauses, so a failure repeats under the same seed.
fn pause_ms(round: u64) -> u64 {
    (round.wrapping_mul(2_654_435_761) >> 7) % 400
}

#[test]
fn the_leader_killed_again_and_again_loses_nothing_acknowledged() {
    let kills: u64 =
        std::env::var("ONECARD_CELL_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut cell = Cell::start("cell-kills", 3, 200);
    let _ = cell.wait_leader(WAIT);
    let load = Load::start(&cell, 4);
    let mut approved = load.wait_progress(0, 50);
    let mut failovers_ms = Vec::new();
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(pause_ms(round)));
        let leader = cell.wait_leader(WAIT);
        let connections = load.connections();
        let killed_at = Instant::now();
        cell.kill(leader);
        // Down until another node leads; then back, to catch up as a follower.
        let next = cell.wait_leader_other_than(Some(leader), WAIT);
        let elected_ms = killed_at.elapsed().as_millis();
        approved = load.wait_progress(approved, 20);
        cell.start_node(leader);
        if let Some(first) = load.first_approval_after(&connections) {
            let failover_ms = first.duration_since(killed_at).as_millis();
            eprintln!(
                "kill {round}: node {leader} -> node {next} leads after {elected_ms} ms, approves after {failover_ms} ms"
            );
            failovers_ms.push(failover_ms);
        }
    }
    let total = load.finish_and_check();
    failovers_ms.sort_unstable();
    eprintln!(
        "{kills} leader kills, {total} purchases approved; from a kill to the next approval: \
         median {} ms, max {} ms",
        failovers_ms.get(failovers_ms.len() / 2).copied().unwrap_or(0),
        failovers_ms.last().copied().unwrap_or(0)
    );
    check_replicas(cell, &[1, 2, 3]);
}

/// The followers of `cell` now, by asking the leader.
fn followers(cell: &Cell, leader: u64) -> Vec<u64> {
    cell.members().iter().map(|m| m.id).filter(|id| *id != leader).collect()
}

#[test]
fn a_follower_killed_and_restarted_catches_up_and_the_leader_never_stops() {
    let mut cell = Cell::start("cell-follower", 3, 200);
    let leader = cell.wait_leader(WAIT);
    let load = Load::start(&cell, 2);
    let mut approved = load.wait_progress(0, 30);
    for follower in followers(&cell, leader) {
        cell.kill(follower);
        approved = load.wait_progress(approved, 100);
        cell.start_node(follower);
        approved = load.wait_progress(approved, 50);
    }
    assert_eq!(cell.wait_leader(WAIT), leader, "losing a follower does not move the lead");
    load.finish_and_check();
    check_replicas(cell, &[1, 2, 3]);
}

/// A terminal that talks to one node only, as a terminal configured with one address
/// would, and waits as long as the test for each answer.
async fn connect_to(
    address: std::net::SocketAddr,
    (terminal_id, key_hex): &(u32, String),
) -> Result<TerminalClient, ClientError> {
    let key: [u8; 32] = hex::decode(key_hex).expect("hex").try_into().expect("32 bytes");
    let config = ClientConfig { answer_timeout: WAIT, attempts_max: 1, ..ClientConfig::default() };
    TerminalClient::connect(address, *terminal_id, &TerminalKey::new(key), 0, config).await
}

#[test]
fn a_leader_paused_past_its_lease_answers_nothing_as_leader_once_it_resumes() {
    let cell = Cell::start("cell-paused", 3, 200);
    let leader = cell.wait_leader(WAIT);
    let load = Load::start(&cell, 2);
    let approved = load.wait_progress(0, 30);
    // Two terminals the load does not use, each talking to the leader alone: one
    // signed on before the pause, one that connects during it.
    let spare: Vec<(u32, String)> = cell
        .demo_terminals()
        .into_iter()
        .filter(|(_, _, category)| category == "canteen")
        .map(|(id, key, _)| (id, key))
        .skip(2)
        .take(2)
        .collect();
    let at = cell.members().iter().find(|m| m.id == leader).expect("the leader").terminals;
    let probes = tokio::runtime::Runtime::new().expect("a runtime");
    let signed_on = probes.block_on(connect_to(at, &spare[0])).expect("signs on at the leader");
    cell.signal(leader, "STOP");
    // Sent while the leader is stopped: the frames wait in its socket buffers, to be
    // read the moment it resumes, before it has heard of the new term.
    let heartbeat = probes.spawn(async move {
        signed_on.call(Request::Heartbeat(Heartbeat { blacklist_version: 0 })).await
    });
    let sign_on = probes.spawn({
        let terminal = spare[1].clone();
        async move { connect_to(at, &terminal).await.map(|_| ()) }
    });
    let next = cell.wait_leader_other_than(Some(leader), WAIT);
    let approved = load.wait_progress(approved, 50);
    cell.signal(leader, "CONT");
    // Neither is answered as by a leader: a redirect (naming no leader while it
    // cannot be sure it leads, or the new leader once it has learned of it and
    // follows), or a closed connection.
    let heartbeat = probes.block_on(heartbeat).expect("the heartbeat's task");
    assert!(
        matches!(heartbeat, Err(ClientError::Redirected { .. } | ClientError::Disconnected { .. })),
        "the resumed node answered a heartbeat: {heartbeat:?}"
    );
    let sign_on = probes.block_on(sign_on).expect("the sign-on's task");
    assert!(
        matches!(sign_on, Err(ClientError::Redirected { .. } | ClientError::Disconnected { .. })),
        "the resumed node signed a terminal on: {sign_on:?}"
    );
    // Back, it learns of the new term and follows: its ledger closes.
    let deadline = Instant::now() + WAIT;
    while cell.status(leader).is_none_or(|s| s["ledger_open"] == true || s["role"] != "follower") {
        assert!(Instant::now() < deadline, "the resumed node still acts as leader");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cell.wait_leader(WAIT), next);
    let _ = load.wait_progress(approved, 50);
    load.finish_and_check();
    check_replicas(cell, &[1, 2, 3]);
}

/// Node 3's disk suffers `fault` on its 301st write: its Raft stops and the process
/// exits; the other two keep approving.
fn a_storage_fault_on_one_follower_takes_out_that_node_alone(label: &str, fault: &str) {
    let env =
        BTreeMap::from([(3, vec![("ONECARD_STORAGE_FAULT".to_owned(), format!("{fault}+300"))])]);
    let mut cell = Cell::start_with_env(label, 3, 200, &env);
    let leader = cell.wait_leader(WAIT);
    if leader == 3 {
        // The faulty node must be a follower for this scenario: hand the lead on.
        cell.kill(3);
        let _ = cell.wait_leader_other_than(Some(3), WAIT);
        cell.start_node(3);
    }
    let load = Load::start(&cell, 2);
    let mut approved = load.wait_progress(0, 30);
    let deadline = Instant::now() + WAIT;
    while cell.is_running(3) {
        approved = load.wait_progress(approved, 20);
        assert!(Instant::now() < deadline, "node 3's disk never failed ({fault})");
    }
    cell.kill(3);
    let approved = load.wait_progress(approved, 100);
    assert!(approved > 0);
    load.finish_and_check();
    check_replicas(cell, &[1, 2]);
}

#[test]
fn a_failing_write_on_one_follower_takes_out_that_node_alone() {
    a_storage_fault_on_one_follower_takes_out_that_node_alone("cell-write", "write_fails");
}

#[test]
fn a_failing_sync_on_one_follower_takes_out_that_node_alone() {
    a_storage_fault_on_one_follower_takes_out_that_node_alone("cell-sync", "sync_fails");
}

#[test]
fn a_full_disk_on_one_follower_takes_out_that_node_alone() {
    a_storage_fault_on_one_follower_takes_out_that_node_alone("cell-full", "disk_full");
}

#[test]
fn a_follower_cut_off_from_its_peers_catches_up_once_the_link_heals() {
    let cell = Cell::start_behind_proxies("cell-cut", 3, 200);
    let leader = cell.wait_leader(WAIT);
    let load = Load::start(&cell, 2);
    let mut approved = load.wait_progress(0, 30);
    let cut = followers(&cell, leader)[0];
    let applied = |id| cell.status(id).and_then(|s| s["applied_index"].as_u64()).unwrap_or(0);
    cell.cut(cut);
    // The leader and the other follower are a majority: approvals go on while the
    // cut node's replica stands still.
    approved = load.wait_progress(approved, 200);
    let stood_at = applied(cut);
    approved = load.wait_progress(approved, 100);
    assert_eq!(applied(cut), stood_at, "node {cut} applied entries while cut off");
    assert!(applied(leader) > stood_at, "the leader moved on without node {cut}");
    assert!(cell.refused(cut) > 0, "the leader never tried node {cut} again while it was cut");
    cell.heal(cut);
    let deadline = Instant::now() + WAIT;
    while applied(cut) <= stood_at {
        assert!(Instant::now() < deadline, "node {cut} did not catch up once healed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = load.wait_progress(approved, 50);
    load.finish_and_check();
    check_replicas(cell, &[1, 2, 3]);
}

#[test]
fn a_dead_node_is_replaced_online_by_a_new_one() {
    let mut cell = Cell::start("cell-replace", 3, 200);
    let leader = cell.wait_leader(WAIT);
    let dead = followers(&cell, leader)[0];
    cell.kill(dead);
    let new = cell.add_node();
    let api = cell.admin(leader);
    let (status, body) = api.post(
        "/api/cluster/members",
        &serde_json::json!({
            "id": new.id,
            "cluster": new.cluster.to_string(),
            "terminals": new.terminals.to_string(),
            "admin": new.admin.to_string(),
        }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.delete(&format!("/api/cluster/members/{dead}"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.delete(&format!("/api/cluster/members/{leader}"));
    assert_eq!(status, 409, "the leader does not remove itself: {body}");
    let remaining: BTreeSet<u64> =
        cell.members().iter().map(|m| m.id).filter(|id| *id != dead).collect();
    let voters = || -> BTreeSet<u64> {
        cell.status(leader).expect("the leader answers")["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["voter"] == true)
            .map(|m| m["id"].as_u64().expect("an id"))
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while voters() != remaining {
        assert!(Instant::now() < deadline, "the voters are {:?}, not {remaining:?}", voters());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The cell of the survivor and the new node outlives its leader.
    let load = Load::start(&cell, 2);
    let approved = load.wait_progress(0, 30);
    cell.kill(leader);
    let _ = cell.wait_leader_other_than(Some(leader), WAIT);
    let _ = load.wait_progress(approved, 50);
    cell.start_node(leader);
    load.finish_and_check();
    let live: Vec<u64> = remaining.into_iter().collect();
    check_replicas(cell, &live);
}
