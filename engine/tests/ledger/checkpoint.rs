//! Balances and the statement index off the commit path: a movement shows in the
//! card's statement the moment it is answered, a restart replays the journal after
//! the checkpoint through the same apply, and a failed checkpoint write loses nothing.

use onecard_engine::cards::CardType;
use onecard_engine::journal::CHECKPOINT_JOURNAL;
use onecard_engine::storage::{Fault, FaultPlan};
use onecard_engine::store::{CF_BALANCES, CF_INDEX, Store, watermark_key};
use onecard_engine::{AccountId, LedgerConfig};
use onecard_protocol::AnswerCode;

use crate::support::*;

/// A ledger whose checkpointer writes nothing on its own while a test runs: only a
/// flush (verify, close) or a restart writes balances and the index.
fn lazy(shards: usize) -> LedgerConfig {
    LedgerConfig {
        checkpoint_interval_ms: 3_600_000,
        index_interval_ms: 3_600_000,
        ..config(shards)
    }
}

/// Statements order by commit time, then transfer id: keep each movement a test
/// orders in a millisecond of its own.
fn next_millisecond() {
    std::thread::sleep(std::time::Duration::from_millis(2));
}

/// Index keys, its watermarks left out.
fn index_keys(store: &Store) -> usize {
    let keys = store.db().iterator_cf(store.cf(CF_INDEX), rocksdb::IteratorMode::Start);
    keys.filter(|item| item.as_ref().is_ok_and(|(key, _)| key.len() == 24)).count()
}

#[test]
fn a_movement_is_in_the_statement_the_moment_its_answer_is_sent() {
    let mut campus = Campus::with_config("checkpoint-statement", lazy(2));
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 50_00);
    let before = index_keys(campus.ledger().store());
    let canteen = campus.terminals.canteen_a;
    let mut ids = Vec::new();
    for amount in [3_00, 4_00, 5_00] {
        next_millisecond();
        let answer = campus.buy(canteen, 1001, amount);
        assert_eq!(answer.code, AnswerCode::Approved);
        ids.push(answer.transfer_id);
        // Answered: the statement lists it at once, though no index run has been
        // written since.
        let newest = campus.ledger().statement(1001, None, 1).expect("a page");
        assert_eq!(newest.transfers.iter().map(|t| t.id).collect::<Vec<_>>(), [answer.transfer_id]);
    }
    assert_eq!(index_keys(campus.ledger().store()), before, "nothing indexed yet");
    let page = campus.ledger().statement(1001, None, 10).expect("a page");
    assert_eq!(page.transfers.len(), 4, "three purchases and the top-up");
    // Paging crosses from the journal's tail into the index alike.
    let first = campus.ledger().statement(1001, None, 2).expect("a page");
    let second = campus.ledger().statement(1001, first.next, 2).expect("a page");
    let listed: Vec<u64> = first.transfers.iter().chain(&second.transfers).map(|t| t.id).collect();
    assert_eq!(listed[..3], [ids[2], ids[1], ids[0]]);
    assert!(second.next.is_none() || second.transfers.len() == 2);

    // Verify flushes the checkpointer: the same statement from the index alone.
    campus.assert_verified();
    assert!(index_keys(campus.ledger().store()) > before);
    let again = campus.ledger().statement(1001, None, 10).expect("a page");
    assert_eq!(again.transfers, page.transfers);
}

#[test]
fn balances_are_not_written_by_the_commit_and_a_restart_replays_the_tail() {
    let mut campus = Campus::with_config("checkpoint-replay", lazy(2));
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 50_00);
    let merchant = {
        let terminal = campus.ledger().terminal(campus.terminals.canteen_a).expect("t");
        AccountId::merchant(terminal.merchant_id)
    };
    // The checkpointer's own writes fail from now on: nothing it derives reaches the
    // disk, neither balances nor the index, nor at close.
    campus.ledger().inject_fault(FaultPlan {
        fault: Fault::WriteFails,
        journal: Some(CHECKPOINT_JOURNAL),
        after_writes: 0,
    });
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 12_00).code, AnswerCode::Approved);
    assert_eq!(campus.buy(campus.terminals.canteen_b, 1001, 8_00).code, AnswerCode::Approved);
    next_millisecond();
    let answered = campus.buy(campus.terminals.canteen_a, 1001, 1_00);
    assert_eq!(answered.code, AnswerCode::Approved);
    // Memory is the authority: balances and the card pool as of every durable batch.
    assert_eq!(campus.balance(1001), 29_00);
    assert_eq!(campus.ledger().account_balance(merchant).expect("reads"), 13_00);
    assert_eq!(campus.ledger().card_pool_fen().expect("reads"), 29_00);
    let spent = campus.ledger().card(1001).expect("card").spent_today_fen;
    assert_eq!(spent, 21_00);
    // The failed checkpoint approved nothing less and poisoned no journal of batches.
    assert!(campus.ledger().health().iter().all(|shard| !shard.poisoned));
    assert!(!campus.ledger().control_poisoned());

    campus.reopen();
    // The checkpoint on disk is from before the purchases; the journal after it was
    // replayed through the same apply: purses, spending of the day, merchant, pool.
    assert_eq!(campus.balance(1001), 29_00);
    assert_eq!(campus.ledger().card(1001).expect("card").spent_today_fen, spent);
    assert_eq!(campus.ledger().account_balance(merchant).expect("reads"), 13_00);
    assert_eq!(campus.ledger().card_pool_fen().expect("reads"), 29_00);
    let statement = campus.ledger().statement(1001, None, 10).expect("a page");
    assert_eq!(statement.transfers[0].id, answered.transfer_id);
    campus.assert_verified();
}

#[test]
fn the_checkpoint_names_how_far_it_reflects_each_journal() {
    let mut campus = Campus::with_config("checkpoint-watermark", lazy(2));
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 20_00);
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 2_00).code, AnswerCode::Approved);
    let shard = campus.ledger().terminal(campus.terminals.canteen_a).expect("t").shard;
    let watermark = |campus: &Campus| {
        let store = campus.ledger().store();
        store.db().get_cf(store.cf(CF_BALANCES), watermark_key(shard)).expect("reads")
    };
    let before = watermark(&campus);
    campus.assert_verified();
    let after = watermark(&campus);
    assert_ne!(before, after, "the flush moved the watermark to the purchase's batch");
    let last = campus.ledger().store().last_batch_key(shard).expect("reads");
    assert_eq!(after.as_deref(), last.as_ref().map(<[u8; 16]>::as_slice));
}
