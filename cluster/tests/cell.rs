//! A cell of three nodes on loopback sockets in one process: the engine's ledger
//! opened on the leader's store writes through the cell's log; every node's store
//! ends with the same state hash at the same applied index; the leader stops and a
//! new one, opening the ledger on its own replica, finds every balance and answers
//! a retry with the original answer; a restarted node and a node added late (from
//! a snapshot) catch up.

use std::collections::BTreeMap;
use std::time::Duration;

use onecard_cluster::{Node, NodeAddress, NodeSettings};
use onecard_engine::cards::{CardType, LimitOverrides};
use onecard_engine::directory::MerchantCategory;
use onecard_engine::storage::StorageError;
use onecard_engine::{Ledger, LedgerConfig, OpenCard, Submission};
use onecard_protocol::message::{Heartbeat, Reference, SignOn, TopUp};
use onecard_protocol::{Answer, AnswerCode, Channel, MacAlgorithm, Request, TerminalKey};
use onecard_tests::{TempDir, purchase};
use rust_decimal::Decimal;
use tokio::net::TcpListener;

/// How long any wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(30);

struct Cell {
    nodes: BTreeMap<u64, Node>,
    dirs: BTreeMap<u64, TempDir>,
    members: BTreeMap<u64, NodeAddress>,
}

fn settings(id: u64, dir: &TempDir, members: &BTreeMap<u64, NodeAddress>) -> NodeSettings {
    NodeSettings {
        cell: "test-campus".to_owned(),
        id,
        dir: dir.path().to_owned(),
        members: members.clone(),
        listen: None,
        shards: 2,
    }
}

impl Cell {
    async fn start(size: u64) -> Self {
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=size {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
            let address = listener.local_addr().expect("an address").to_string();
            members.insert(id, NodeAddress::link_only(address));
            listeners.insert(id, listener);
        }
        let mut nodes = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for (id, listener) in listeners {
            let dir = TempDir::new(&format!("cell-node{id}"));
            let node =
                Node::start_on(settings(id, &dir, &members), listener).await.expect("starts");
            nodes.insert(id, node);
            dirs.insert(id, dir);
        }
        nodes[&1].initialize().await.expect("the cell is founded");
        Self { nodes, dirs, members }
    }

    /// The leader among the running nodes, once there is one and it has applied
    /// everything committed before its term.
    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for (id, node) in &self.nodes {
                if node.is_leader() && node.raft().ensure_linearizable().await.is_ok() {
                    return *id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node has applied what `leader` has, and the leader
    /// nothing more meanwhile (an entry still committing, a membership change's, moves
    /// it on), and returns the applied index they share.
    async fn settle(&self, leader: u64) -> u64 {
        let applied = |node: &Node| node.metrics().last_applied.map_or(0, |id| id.index);
        loop {
            let index = applied(&self.nodes[&leader]);
            for node in self.nodes.values() {
                node.raft()
                    .wait(Some(WAIT))
                    .applied_index_at_least(Some(index), "the node catches up")
                    .await
                    .expect("catches up");
            }
            if self.nodes.values().all(|node| applied(node) == index) {
                return index;
            }
        }
    }

    /// Every running node's state hash: all equal, or the test fails.
    fn assert_replicas_agree(&self) -> [u8; 32] {
        let hashes: BTreeMap<u64, [u8; 32]> = self
            .nodes
            .iter()
            .map(|(id, node)| (*id, node.store().expect("a store").state_hash().expect("hashes")))
            .collect();
        let first = *hashes.values().next().expect("a node");
        let applied: BTreeMap<u64, Option<u64>> = self
            .nodes
            .iter()
            .map(|(id, node)| (*id, node.metrics().last_applied.map(|log_id| log_id.index)))
            .collect();
        for (id, hash) in &hashes {
            assert_eq!(
                hash, &first,
                "node {id}'s store differs (applied {applied:?}): {hashes:02x?}"
            );
        }
        first
    }

    async fn restart(&mut self, id: u64) {
        let address = &self.members[&id].cluster;
        let listener = TcpListener::bind(address).await.expect("binds its old address");
        let node = Node::start_on(settings(id, &self.dirs[&id], &self.members), listener)
            .await
            .expect("restarts");
        self.nodes.insert(id, node);
    }
}

/// The ledger on a node's store, its writes through the node's door: run on a
/// blocking thread, as the engine's threads are outside the cell's runtime.
async fn open_ledger(node: &Node, config: &LedgerConfig) -> Ledger {
    let store = node.store().expect("a store");
    let config = config.clone();
    tokio::task::spawn_blocking(move || Ledger::open_on(store, config).expect("opens"))
        .await
        .expect("joins")
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("joins")
}

fn submission(terminal_id: u32, sequence: u64, request: Request) -> Submission {
    Submission { terminal_id, sequence, mac_algorithm: MacAlgorithm::HmacSha256, request }
}

fn approved(answer: &Answer) -> bool {
    answer.code() == AnswerCode::Approved
}

const CARDS: u64 = 20;
const FIRST_CARD: u64 = 880_000_001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_replicates_the_ledger_fails_over_and_loses_nothing_acknowledged() {
    let mut cell = Cell::start(3).await;
    let config = LedgerConfig { shards: 2, ..LedgerConfig::default() };
    let first = cell.leader().await;
    let ledger = open_ledger(&cell.nodes[&first], &config).await;

    // A campus: a counter and a canteen, twenty funded cards, then lunch.
    let (ledger, terminals, answers) = blocking(move || {
        let rate = Decimal::new(15, 3);
        let centre =
            ledger.create_merchant("卡务中心", MerchantCategory::CardCentre, rate).expect("m");
        let canteen = ledger.create_merchant("一食堂", MerchantCategory::Canteen, rate).expect("m");
        let counter = ledger.create_terminal(centre.id, &TerminalKey::new([1; 32])).expect("t").id;
        let till = ledger.create_terminal(canteen.id, &TerminalKey::new([2; 32])).expect("t").id;
        let mut answers = Vec::new();
        for card in FIRST_CARD..FIRST_CARD + CARDS {
            ledger
                .open_card(OpenCard {
                    card_number: card,
                    holder_id: format!("S{card}"),
                    holder_name: "张三".to_owned(),
                    card_type: CardType::Student,
                    expiry_date: 20_991_231,
                    deposit_fen: 0,
                    pin: None,
                    overrides: LimitOverrides::default(),
                })
                .expect("opens a card");
            let top_up = Request::TopUp(TopUp {
                card_number: card,
                amount_fen: 10_000,
                channel: Channel::Counter,
                reference: Reference::EMPTY,
            });
            let answer = ledger.submit_wait(submission(counter, card - FIRST_CARD + 1, top_up));
            assert!(approved(&answer), "{answer:?}");
        }
        for (sequence, card) in (1..).zip(FIRST_CARD..FIRST_CARD + CARDS) {
            let answer = ledger.submit_wait(submission(till, sequence, purchase(card, 1_250)));
            assert!(approved(&answer), "{answer:?}");
            answers.push(answer);
        }
        (ledger, (counter, till), answers)
    })
    .await;
    let (_, till) = terminals;

    // Nothing is applied on a follower by writing to it: its door refuses and names
    // no success.
    let follower = *cell.nodes.keys().find(|id| **id != first).expect("a follower");
    let refused = blocking({
        let door = cell.nodes[&follower].door();
        move || {
            door.write(onecard_engine::storage::CONTROL_JOURNAL, &rocksdb::WriteBatch::default())
        }
    })
    .await;
    assert!(matches!(refused, Err(StorageError::NotReplicated(_))), "{refused:?}");

    // The leader closes its ledger (its last checkpoint goes through the log too);
    // every replica then holds the same bytes.
    blocking(move || ledger.close()).await;
    let applied = cell.settle(first).await;
    assert!(applied > CARDS * 2, "every write was an entry: {applied}");
    let before = cell.assert_replicas_agree();

    // The leader stops. Another is elected and opens the ledger on its replica.
    let stopped = cell.nodes.remove(&first).expect("the leader");
    stopped.shutdown().await;
    let second = cell.leader().await;
    assert_ne!(second, first);
    let ledger = open_ledger(&cell.nodes[&second], &config).await;
    let ledger = blocking(move || {
        for card in FIRST_CARD..FIRST_CARD + CARDS {
            let view = ledger.card(card).expect("the card is on the replica");
            assert_eq!(view.balance_fen, 10_000 - 1_250, "card {card}");
        }
        // The canteen's last purchase retried under its sequence: the original answer,
        // and no second charge.
        let retried =
            ledger.submit_wait(submission(till, CARDS, purchase(FIRST_CARD + CARDS - 1, 1_250)));
        let Answer::Purchase(mut original) = answers[answers.len() - 1] else {
            panic!("a purchase's answer")
        };
        original.duplicate = true;
        assert_eq!(retried, Answer::Purchase(original), "the retry gets the original answer");
        assert_eq!(ledger.card(FIRST_CARD + CARDS - 1).expect("card").balance_fen, 8_750);
        // And lunch goes on.
        let next = ledger.submit_wait(submission(till, CARDS + 1, purchase(FIRST_CARD, 500)));
        assert!(approved(&next), "{next:?}");
        assert_eq!(ledger.card(FIRST_CARD).expect("card").balance_fen, 8_250);
        let report = ledger.verify().expect("verifies");
        assert!(report.is_clean(), "{report}");
        ledger
    })
    .await;
    blocking(move || ledger.close()).await;

    // The old leader comes back and catches up from the log.
    cell.restart(first).await;
    let again = cell.settle(second).await;
    assert!(again > applied);
    let after = cell.assert_replicas_agree();
    assert_ne!(before, after, "the purchase after the failover is in every store");

    for node in std::mem::take(&mut cell.nodes).into_values() {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_late_catches_up_from_a_snapshot_and_replaces_a_member() {
    let mut cell = Cell::start(3).await;
    let config = LedgerConfig { shards: 2, ..LedgerConfig::default() };
    let leader = cell.leader().await;
    let ledger = open_ledger(&cell.nodes[&leader], &config).await;
    let ledger = blocking(move || {
        let rate = Decimal::new(15, 3);
        for n in 0..30 {
            ledger
                .create_merchant(&format!("窗口{n}"), MerchantCategory::Canteen, rate)
                .expect("m");
        }
        ledger
    })
    .await;
    blocking(move || ledger.close()).await;
    let applied = cell.settle(leader).await;

    // A snapshot, then the log behind it purged: a new node can only start from the
    // snapshot.
    let raft = cell.nodes[&leader].raft().clone();
    raft.trigger().snapshot().await.expect("asks for a snapshot");
    raft.wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some_and(|id| id.index >= applied), "the snapshot is built")
        .await
        .expect("builds");
    raft.trigger().purge_log(applied).await.expect("asks for a purge");
    raft.wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|id| id.index >= applied), "the log is purged")
        .await
        .expect("purges");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("an address").to_string();
    cell.members.insert(4, NodeAddress::link_only(address.clone()));
    let dir = TempDir::new("cell-node4");
    let node = Node::start_on(settings(4, &dir, &cell.members), listener).await.expect("starts");
    cell.dirs.insert(4, dir);
    cell.nodes.insert(4, node);
    raft.add_learner(4, NodeAddress::link_only(address), true)
        .await
        .expect("the learner is added and caught up");
    cell.settle(leader).await;
    assert!(
        cell.nodes[&4].metrics().snapshot.is_some_and(|id| id.index >= applied),
        "node 4 started from the snapshot"
    );
    cell.assert_replicas_agree();

    // Node 4 takes the place of a follower, online; the cell still commits.
    let retired = *cell.nodes.keys().find(|id| **id != leader && **id != 4).expect("a follower");
    let voters: std::collections::BTreeSet<u64> =
        cell.nodes.keys().copied().filter(|id| *id != retired).collect();
    raft.change_membership(voters, false).await.expect("the membership changes");
    cell.nodes.remove(&retired).expect("the follower").shutdown().await;
    let ledger = open_ledger(&cell.nodes[&leader], &config).await;
    blocking(move || {
        let rate = Decimal::new(15, 3);
        ledger.create_merchant("新窗口", MerchantCategory::Canteen, rate).expect("commits");
        ledger.close();
    })
    .await;
    cell.settle(leader).await;
    cell.assert_replicas_agree();
    for node in std::mem::take(&mut cell.nodes).into_values() {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_majority_answers_nothing_from_memory_until_it_returns() {
    let mut cell = Cell::start(3).await;
    let config = LedgerConfig { shards: 2, ..LedgerConfig::default() };
    let leader = cell.leader().await;
    let ledger = open_ledger(&cell.nodes[&leader], &config).await;
    let heartbeat = || Request::Heartbeat(Heartbeat { blacklist_version: 0 });
    let (ledger, till) = blocking(move || {
        let canteen = ledger
            .create_merchant("二食堂", MerchantCategory::Canteen, Decimal::new(15, 3))
            .expect("m");
        let till = ledger.create_terminal(canteen.id, &TerminalKey::new([3; 32])).expect("t").id;
        (ledger, till)
    })
    .await;
    let ledger = std::sync::Arc::new(ledger);
    let submit = |sequence, request| {
        let ledger = std::sync::Arc::clone(&ledger);
        blocking(move || ledger.submit_wait(submission(till, sequence, request)))
    };
    // With its majority the leader answers from memory: a heartbeat, and a refusal's
    // retry from the retry window.
    let door = cell.nodes[&leader].door();
    assert!(door.holds_lease(), "a leader with both followers holds its lease");
    assert!(approved(&submit(1, heartbeat()).await));
    let refused = submit(2, purchase(FIRST_CARD, 100)).await;
    assert_eq!(refused.code(), AnswerCode::UnknownCard, "{refused:?}");
    assert_eq!(submit(2, purchase(FIRST_CARD, 100)).await.code(), AnswerCode::UnknownCard);

    // Both followers stop: within the lease, the leader can no longer be sure it leads.
    let followers: Vec<u64> = cell.nodes.keys().copied().filter(|id| *id != leader).collect();
    for id in &followers {
        cell.nodes.remove(id).expect("a follower").shutdown().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while door.holds_lease() {
        assert!(tokio::time::Instant::now() < deadline, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nowhere = |answer: &Answer| matches!(answer, Answer::Redirect(r) if r.code == AnswerCode::NotLeader && r.leader.is_empty());
    let answer = submit(3, heartbeat()).await;
    assert!(nowhere(&answer), "a heartbeat without the lease: {answer:?}");
    let answer =
        submit(4, Request::SignOn(SignOn { software_version: 1, blacklist_version: 0 })).await;
    assert!(nowhere(&answer), "a sign-on without the lease: {answer:?}");
    let answer = submit(2, purchase(FIRST_CARD, 100)).await;
    assert!(nowhere(&answer), "a retry without the lease: {answer:?}");

    // One follower back is a majority again: the lease is renewed.
    cell.restart(followers[0]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !door.holds_lease() {
        assert!(tokio::time::Instant::now() < deadline, "the lease was never renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(approved(&submit(5, heartbeat()).await));
    assert_eq!(submit(2, purchase(FIRST_CARD, 100)).await.code(), AnswerCode::UnknownCard);

    let ledger = std::sync::Arc::into_inner(ledger).expect("the only holder");
    blocking(move || ledger.close()).await;
    for node in std::mem::take(&mut cell.nodes).into_values() {
        node.shutdown().await;
    }
}
