//! Storage faults: a failed write, a failed sync and a full disk, injected at the one
//! door every write goes through. Nothing is approved that is not durable, the journal
//! that failed refuses work (and says so), and a restart comes back clean, with
//! retries answered from what really reached the disk.

use onecard_engine::ControlError;
use onecard_engine::cards::CardType;
use onecard_engine::journal::CONTROL_JOURNAL;
use onecard_engine::storage::{Fault, FaultPlan};
use onecard_protocol::{AnswerCode, CardState};

use crate::support::*;

fn plan(fault: Fault, journal: Option<u8>) -> FaultPlan {
    FaultPlan { fault, journal, after_writes: 0 }
}

fn poisoned(campus: &Campus) -> Vec<u8> {
    campus.ledger().health().iter().filter(|h| h.poisoned).map(|h| h.shard).collect()
}

/// A campus with two funded cards, 1001 and 1002 (a failed write puts the cards it
/// moved in doubt, so a test that goes on after one needs another card); its canteens
/// on shards 0 and 1.
fn funded(name: &str) -> (Campus, u8) {
    let mut campus = Campus::new(name);
    for card in [1001, 1002] {
        campus.open_card(card, CardType::Student);
        campus.top_up(card, 10_00);
    }
    let shard = campus.ledger().terminal(campus.terminals.canteen_a).expect("t").shard;
    (campus, shard)
}

#[test]
fn a_failed_write_approves_nothing_poisons_its_shard_alone_and_a_restart_is_clean() {
    let (mut campus, shard) = funded("fault-write");
    let canteen = campus.terminals.canteen_a;
    campus.ledger().inject_fault(plan(Fault::WriteFails, Some(shard)));
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::ServiceUnavailable);
    let failed_sequence = campus.last_sequence(canteen);
    assert_eq!(campus.balance(1001), 10_00, "the debit was given back");
    // Poisoned: the next request is refused without a write being tried.
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::ServiceUnavailable);
    assert_eq!(poisoned(&campus), [shard]);
    assert!(!campus.ledger().control_poisoned());
    // The other shard and the control plane go on, but not for the card the failed
    // batch moved: whether any of it reached the disk is not known until the restart.
    assert_eq!(campus.buy(campus.terminals.canteen_b, 1002, 1_00).code, AnswerCode::Approved);
    campus.ledger().freeze(1002).expect("the control plane writes");
    campus.ledger().unfreeze(1002).expect("and again");
    assert_eq!(
        campus.buy(campus.terminals.canteen_b, 1001, 1_00).code,
        AnswerCode::ServiceUnavailable
    );
    assert!(matches!(campus.ledger().freeze(1001), Err(ControlError::InDoubt(_))));

    campus.reopen();
    assert!(poisoned(&campus).is_empty());
    campus.assert_verified();
    // Nothing of the failed batch reached the disk: its retry is decided now, once.
    let retry = transfer(campus.send_at(canteen, failed_sequence, purchase(1001, 1_00)));
    assert_eq!((retry.duplicate, retry.code), (false, AnswerCode::Approved));
    assert_eq!(campus.balance(1001), 9_00);
    campus.assert_verified();
}

#[test]
fn a_failed_sync_is_not_approved_and_after_restart_the_retry_gets_what_reached_the_disk() {
    let (mut campus, shard) = funded("fault-sync");
    let canteen = campus.terminals.canteen_a;
    campus.ledger().inject_fault(plan(Fault::SyncFails, Some(shard)));
    let answer = campus.buy(canteen, 1001, 1_00);
    assert_eq!((answer.code, answer.transfer_id), (AnswerCode::ServiceUnavailable, 0));
    let sequence = campus.last_sequence(canteen);
    assert_eq!(campus.balance(1001), 10_00, "not approved, not spent in memory");
    assert_eq!(poisoned(&campus), [shard]);
    // Memory holds 10.00 but the disk may hold 9.00: the card is in doubt everywhere,
    // on the other shard and for the card centre, until the restart.
    let other = campus.terminals.canteen_b;
    assert_eq!(campus.buy(other, 1001, 10_00).code, AnswerCode::ServiceUnavailable);
    assert!(matches!(campus.ledger().freeze(1001), Err(ControlError::InDoubt(_))));

    // The bytes reached the log before the sync failed: after a restart the purchase
    // is in the ledger, and the terminal's retry is told so, as a duplicate.
    campus.reopen();
    assert!(poisoned(&campus).is_empty());
    campus.assert_verified();
    assert_eq!(campus.balance(1001), 9_00);
    let retry = transfer(campus.send_at(canteen, sequence, purchase(1001, 1_00)));
    assert_eq!((retry.duplicate, retry.code), (true, AnswerCode::Approved));
    assert_ne!(retry.transfer_id, 0);
    assert_eq!(campus.balance(1001), 9_00, "once");
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::Approved);
    campus.assert_verified();
}

#[test]
fn a_full_disk_poisons_every_journal_that_tries_to_write_and_a_restart_is_clean() {
    let (mut campus, shard) = funded("fault-full");
    campus.open_card(1003, CardType::Student);
    let (canteen, other) = (campus.terminals.canteen_a, campus.terminals.canteen_b);
    let other_shard = campus.ledger().terminal(other).expect("t").shard;
    assert_ne!(shard, other_shard);
    campus.ledger().inject_fault(FaultPlan {
        fault: Fault::DiskFull,
        journal: Some(shard),
        after_writes: 1,
    });
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::Approved, "one write let through");
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::ServiceUnavailable);
    // The disk stays full for everyone: the next journal to write fails too (card
    // 1001 itself is in doubt now, refused before any write).
    assert_eq!(campus.buy(other, 1002, 1_00).code, AnswerCode::ServiceUnavailable);
    assert!(matches!(campus.ledger().report_lost(1003), Err(ControlError::Write(_))));
    assert_eq!(campus.ledger().card(1003).expect("card").state, CardState::Active);
    assert!(matches!(campus.ledger().report_lost(1001), Err(ControlError::InDoubt(_))));
    assert_eq!(poisoned(&campus), [0, 1]);
    assert!(campus.ledger().control_poisoned());
    // Reads still answer.
    assert_eq!(campus.balance(1001), 9_00);

    campus.reopen();
    assert!(poisoned(&campus).is_empty());
    assert!(!campus.ledger().control_poisoned());
    campus.assert_verified();
    assert_eq!(campus.balance(1001), 9_00);
    assert_eq!(campus.buy(other, 1001, 1_00).code, AnswerCode::Approved);
    campus.ledger().report_lost(1001).expect("writes again");
    campus.assert_verified();
}

#[test]
fn a_failed_control_write_changes_nothing_and_poisons_the_control_plane_alone() {
    let (mut campus, _) = funded("fault-control");
    campus.ledger().inject_fault(plan(Fault::WriteFails, Some(CONTROL_JOURNAL)));
    assert!(matches!(campus.ledger().report_lost(1001), Err(ControlError::Write(_))));
    assert_eq!(campus.ledger().card(1001).expect("card").state, CardState::Active);
    assert!(campus.ledger().control_poisoned());
    assert!(
        matches!(campus.ledger().report_lost(1001), Err(ControlError::InDoubt(_))),
        "the card is in doubt"
    );
    assert!(
        matches!(campus.ledger().report_lost(1002), Err(ControlError::Write(_))),
        "and the control plane refuses every change until restart"
    );
    assert!(poisoned(&campus).is_empty(), "the shards go on");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1002, 1_00).code, AnswerCode::Approved);
    assert_eq!(
        campus.buy(campus.terminals.canteen_a, 1001, 1_00).code,
        AnswerCode::ServiceUnavailable,
        "the card the failed write was about is in doubt until the restart"
    );
    campus.reopen();
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::Approved);
    assert!(!campus.ledger().control_poisoned());
    campus.ledger().report_lost(1001).expect("writes after the restart");
    campus.assert_verified();
}

#[test]
fn a_card_closed_by_a_write_whose_sync_failed_is_refused_until_the_restart_reads_the_disk() {
    let (mut campus, _) = funded("fault-control-sync");
    let canteen = campus.terminals.canteen_a;
    // The closure moves the card's 10.00 to refund payable; its write reaches the log,
    // then the sync fails. Memory still holds an active card with 10.00.
    campus.ledger().inject_fault(plan(Fault::SyncFails, Some(CONTROL_JOURNAL)));
    assert!(matches!(campus.ledger().close_card(1001), Err(ControlError::Write(_))));
    assert_eq!(campus.balance(1001), 10_00, "memory unchanged");
    // Deciding on that memory would spend money the disk has already refunded.
    assert_eq!(campus.buy(canteen, 1001, 5_00).code, AnswerCode::ServiceUnavailable);
    let refused = campus.last_sequence(canteen);
    let other_window = campus.terminals.canteen_a2;
    let inquiry = campus.send(other_window, inquiry(1001));
    assert!(
        matches!(inquiry, onecard_protocol::Answer::BalanceInquiry(ref a)
            if a.code == AnswerCode::ServiceUnavailable),
        "{inquiry:?}"
    );
    assert_eq!(campus.buy(other_window, 1002, 1_00).code, AnswerCode::Approved, "others go on");

    campus.reopen();
    assert_eq!(campus.ledger().card(1001).expect("card").state, CardState::Closed);
    assert_eq!(campus.balance(1001), 0, "the closure reached the disk");
    // The refused sequence was not retained: its retry is decided now, on the truth.
    let retry = transfer(campus.send_at(canteen, refused, purchase(1001, 5_00)));
    assert_eq!((retry.duplicate, retry.code), (false, AnswerCode::CardClosed));
    campus.assert_verified();
}
