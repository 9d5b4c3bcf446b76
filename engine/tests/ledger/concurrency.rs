//! Real threads hammering one card from every shard at once.

use std::sync::Arc;

use onecard_engine::cards::{CardType, LimitOverrides};
use onecard_engine::{Ledger, Submission};
use onecard_protocol::{AnswerCode, MacAlgorithm};

use crate::support::*;

#[test]
fn one_card_bought_from_every_shard_at_once_never_goes_below_zero_or_loses_a_fen() {
    let shards = 4;
    let mut campus = Campus::with_shards("hammer", shards);
    campus.open_card(1001, CardType::Staff);
    campus
        .ledger()
        .set_limits(
            1001,
            LimitOverrides { daily_fen_max: Some(i64::MAX / 4), ..LimitOverrides::default() },
        )
        .expect("limits");
    let funded = 2_000_00;
    assert_eq!(
        campus.top_up(1001, u32::try_from(funded).expect("fits")).code,
        AnswerCode::Approved
    );
    // More merchants so every shard has terminals: one canteen per shard at least.
    let ledger = campus.ledger.take().expect("open");
    let mut terminals = Vec::new();
    for n in 0..8 {
        let merchant = ledger
            .create_merchant(
                &format!("窗口{n}"),
                onecard_engine::directory::MerchantCategory::Canteen,
                rust_decimal::Decimal::ZERO,
            )
            .expect("merchant");
        let id = u32::try_from(ledger.terminals().len() + 1).expect("small");
        terminals.push(ledger.create_terminal(merchant.id, &key(id)).expect("terminal").id);
    }
    let shards_used: std::collections::HashSet<u8> =
        terminals.iter().map(|t| ledger.terminal(*t).expect("t").shard).collect();
    assert_eq!(shards_used.len(), shards);
    let ledger = Arc::new(ledger);
    // Each thread pipelines purchases of varying amounts until the card runs dry.
    let threads: Vec<_> = terminals
        .iter()
        .copied()
        .map(|terminal| {
            let ledger = Arc::clone(&ledger);
            std::thread::spawn(move || hammer(&ledger, terminal))
        })
        .collect();
    let mut approved_fen = 0i64;
    let mut approved = 0u64;
    for thread in threads {
        let (fen, count) = thread.join().expect("thread");
        approved_fen += fen;
        approved += count;
    }
    assert!(approved > 0);
    let card = ledger.card(1001).expect("card");
    assert!(card.balance_fen >= 0);
    assert_eq!(
        card.balance_fen,
        funded - approved_fen,
        "every approved fen left the card, no more"
    );
    // Every thread stopped after a refusal for funds, and balances only fell after.
    assert!(card.balance_fen < 11_00, "the card was drained");
    let report = ledger.verify().expect("reads");
    assert!(report.is_clean(), "{report}");
    let ledger = Arc::into_inner(ledger).expect("threads are done");
    ledger.close();
    campus.reopen();
    assert_eq!(campus.balance(1001), funded - approved_fen);
    campus.assert_verified();
}

/// Buys until refused for funds; returns (fen approved, purchases approved).
fn hammer(ledger: &Ledger, terminal: u32) -> (i64, u64) {
    let mut sequence = 0u64;
    let mut approved_fen = 0i64;
    let mut approved = 0u64;
    let mut dry = false;
    while !dry {
        // A pipeline of 32 requests in flight, as a busy terminal would have.
        let pending: Vec<_> = (0..32u32)
            .map(|i| {
                sequence += 1;
                let amount = 5_00 + (i % 7) * 1_00;
                let receiver = ledger.submit(Submission {
                    terminal_id: terminal,
                    sequence,
                    mac_algorithm: MacAlgorithm::HmacSha256,
                    request: purchase(1001, amount),
                });
                (amount, receiver)
            })
            .collect();
        for (amount, receiver) in pending {
            let answer = transfer(receiver.blocking_recv().expect("answered"));
            match answer.code {
                AnswerCode::Approved => {
                    approved_fen += i64::from(amount);
                    approved += 1;
                    assert!(answer.balance_fen >= 0);
                }
                AnswerCode::InsufficientFunds => dry = true,
                other => panic!("unexpected {other}"),
            }
        }
    }
    (approved_fen, approved)
}

#[test]
fn top_ups_and_purchases_race_across_shards_and_the_books_balance() {
    let mut campus = Campus::with_shards("race", 2);
    for card in 1..=20u64 {
        campus.open_card(card, CardType::Staff);
        campus.top_up(card, 100_00);
    }
    let terminals = campus.terminals;
    let counter_before = campus.last_sequence(terminals.counter);
    let ledger = Arc::new(campus.ledger.take().expect("open"));
    let buyers: Vec<_> =
        [terminals.canteen_a, terminals.canteen_b, terminals.shop, terminals.counter]
            .into_iter()
            .map(|terminal| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    let mut net = 0i64;
                    let first = if terminal == terminals.counter { counter_before } else { 0 };
                    for sequence in first + 1..=first + 400 {
                        let card = sequence % 20 + 1;
                        let request = if terminal == terminals.counter {
                            top_up(card, 3_00)
                        } else {
                            purchase(card, 7_00)
                        };
                        let answer = transfer(ledger.submit_wait(Submission {
                            terminal_id: terminal,
                            sequence,
                            mac_algorithm: MacAlgorithm::HmacSha256,
                            request,
                        }));
                        assert!(!answer.duplicate, "every sequence is new");
                        if answer.code == AnswerCode::Approved {
                            net += if terminal == terminals.counter { 3_00 } else { -7_00 };
                        }
                    }
                    net
                })
            })
            .collect();
    let net: i64 = buyers.into_iter().map(|t| t.join().expect("thread")).sum();
    let total: i64 = (1..=20u64).map(|card| ledger.card(card).expect("card").balance_fen).sum();
    assert_eq!(total, 20 * 100_00 + net);
    let report = ledger.verify().expect("reads");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.card_pool_fen, total);
}
