//! The rules, one scenario each: purchases and purses, limits and PINs, refunds,
//! reversals and retries, card lifecycle, offline uploads, bad input, poisoning.

use onecard_engine::account::{AccountId, AccountKind};
use onecard_engine::cards::{CardType, LimitOverrides, Purse};
use onecard_engine::{BusinessDate, ControlError};
use onecard_protocol::message::{OfflineRecord, OfflineUpload, TransferAnswer};
use onecard_protocol::pin::PIN_KEY_LABEL;
use onecard_protocol::{
    Answer, AnswerCode, CardState, MacAlgorithm, MacKey, MealPeriod, Pin, PinBlock, PinContext,
    Request,
};

use crate::support::*;

#[test]
fn a_purchase_moves_money_from_the_card_to_the_merchant_and_survives_reopen() {
    let mut campus = Campus::new("purchase");
    campus.open_card(1001, CardType::Student);
    assert_eq!(campus.top_up(1001, 50_00).code, AnswerCode::Approved);
    let answer = campus.buy(campus.terminals.canteen_a, 1001, 12_50);
    assert_eq!(answer.code, AnswerCode::Approved);
    assert_eq!(answer.balance_fen, 37_50);
    assert_ne!(answer.transfer_id, 0);
    let transfer = campus.ledger().transfer(answer.transfer_id).expect("committed");
    assert_eq!(transfer.amount_fen, 12_50);
    assert_eq!(transfer.debit.kind(), AccountKind::Card);
    let merchant = transfer.credit;
    assert_eq!(campus.ledger().account_balance(merchant).expect("reads"), 12_50);
    campus.assert_verified();
    campus.reopen();
    assert_eq!(campus.balance(1001), 37_50);
    assert_eq!(campus.ledger().card(1001).expect("card").spent_today_fen, 12_50);
    assert_eq!(campus.ledger().account_balance(merchant).expect("reads"), 12_50);
    campus.assert_verified();
}

#[test]
fn insufficient_funds_and_unknown_cards_are_refused_and_write_nothing_that_moves_money() {
    let mut campus = Campus::new("refusals");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    let before = campus.transfers_committed();
    let canteen = campus.terminals.canteen_a;
    assert_eq!(campus.buy(canteen, 1001, 10_01).code, AnswerCode::InsufficientFunds);
    assert_eq!(campus.buy(canteen, 999_999, 100).code, AnswerCode::UnknownCard);
    assert_eq!(campus.buy(canteen, 1001, 0).code, AnswerCode::InvalidAmount);
    assert_eq!(campus.top_up(1001, 0).code, AnswerCode::InvalidAmount);
    // The largest amount the wire can carry is refused by the limits, not overflowed.
    assert_eq!(campus.buy(canteen, 1001, u32::MAX).code, AnswerCode::TransactionLimit);
    assert_eq!(campus.top_up(1001, u32::MAX).code, AnswerCode::BalanceLimit);
    // Not a card's purchase: refunds and reversals of it are refused.
    assert_eq!(
        transfer(campus.send(canteen, refund(1001, 1, 1_00))).code,
        AnswerCode::UnknownTransfer
    );
    // A canteen cannot take top-ups.
    assert_eq!(
        transfer(campus.send(canteen, top_up(1001, 100))).code,
        AnswerCode::ChannelNotAllowed
    );
    // An unknown terminal is refused before any shard sees it.
    let answer = campus.send(4242, purchase(1001, 100));
    assert_eq!(answer.code(), AnswerCode::UnknownTerminal);
    assert_eq!(campus.transfers_committed(), before);
    assert_eq!(campus.balance(1001), 10_00);
    campus.assert_verified();
}

#[test]
fn the_restricted_purse_pays_first_at_utilities_and_only_there() {
    let mut campus = Campus::new("purses");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    campus.ledger().post_subsidy(1001, 3_00, Purse::Restricted).expect("grants");
    let canteen = campus.buy(campus.terminals.canteen_a, 1001, 1_00);
    assert_eq!((canteen.balance_fen, canteen.restricted_balance_fen), (9_00, 3_00));
    let water = campus.buy(campus.terminals.utility, 1001, 4_00);
    assert_eq!(water.code, AnswerCode::Approved);
    assert_eq!((water.balance_fen, water.restricted_balance_fen), (8_00, 0));
    // Two transfers for one purchase: the restricted purse's part, then the main's.
    let first = campus.ledger().transfer(water.transfer_id).expect("committed");
    let second = campus.ledger().transfer(water.transfer_id + 1).expect("committed");
    assert_eq!(
        (first.debit.kind(), first.amount_fen, first.continues),
        (AccountKind::CardRestricted, 3_00, false)
    );
    assert_eq!(
        (second.debit.kind(), second.amount_fen, second.continues),
        (AccountKind::Card, 1_00, true)
    );
    let statement = campus.ledger().statement(1001, None, 10).expect("statement").transfers;
    assert_eq!(statement.len(), 5, "top-up, subsidy, canteen purchase and the two parts");
    campus.assert_verified();
}

#[test]
fn limits_hold_per_purchase_per_day_and_reset_with_the_business_date() {
    let mut campus = Campus::new("limits");
    campus.open_card(1001, CardType::Student);
    campus
        .ledger()
        .set_limits(
            1001,
            LimitOverrides {
                transaction_fen_max: Some(30_00),
                daily_fen_max: Some(50_00),
                ..LimitOverrides::default()
            },
        )
        .expect("sets");
    campus.top_up(1001, 100_00);
    let canteen = campus.terminals.canteen_a;
    assert_eq!(campus.buy(canteen, 1001, 30_01).code, AnswerCode::TransactionLimit);
    assert_eq!(campus.buy(canteen, 1001, 30_00).code, AnswerCode::Approved);
    // The daily limit counts across shards.
    assert_eq!(campus.buy(campus.terminals.canteen_b, 1001, 20_01).code, AnswerCode::DailyLimit);
    assert_eq!(campus.buy(campus.terminals.canteen_b, 1001, 20_00).code, AnswerCode::Approved);
    let tomorrow = campus.ledger().business_date().to_yyyymmdd() + 1;
    let tomorrow = BusinessDate::from_yyyymmdd(tomorrow)
        .or_else(|| BusinessDate::from_yyyymmdd(20_991_201))
        .expect("date");
    campus.ledger().set_business_date(tomorrow).expect("turns");
    assert_eq!(campus.buy(canteen, 1001, 20_00).code, AnswerCode::Approved);
    campus.reopen();
    assert_eq!(campus.ledger().card(1001).expect("card").spent_today_fen, 20_00);
    campus.assert_verified();
}

fn pin_purchase(
    campus: &Campus,
    terminal: u32,
    sequence: u64,
    card: u64,
    amount: u32,
    pin: &str,
) -> Request {
    let mac = MacKey::new(MacAlgorithm::HmacSha256, &key(terminal)).expect("key");
    let context = PinContext { terminal_id: terminal, sequence, card_number: card };
    let block = PinBlock::seal(&mac.derive(PIN_KEY_LABEL), context, &Pin::new(pin).expect("pin"));
    let _ = campus;
    Request::Purchase(onecard_protocol::message::Purchase {
        card_number: card,
        amount_fen: amount,
        meal_period: MealPeriod::Dinner,
        item_code: 0,
        pin_block: Some(block),
    })
}

#[test]
fn above_the_no_pin_limit_a_pin_is_required_checked_and_locked_after_five_wrong() {
    let mut campus = Campus::new("pin");
    campus.open_card(1001, CardType::Student);
    campus.ledger().set_pin(1001, &Pin::new("246810").expect("pin")).expect("sets");
    campus.top_up(1001, 200_00);
    let shop = campus.terminals.shop;
    let above = 60_00; // the student no-PIN limit is 50 yuan
    assert_eq!(campus.buy(shop, 1001, above).code, AnswerCode::PinRequired);
    let next = campus.last_sequence(shop) + 1;
    let right = pin_purchase(&campus, shop, next, 1001, above, "246810");
    assert_eq!(transfer(campus.send_at(shop, next, right)).code, AnswerCode::Approved);
    for attempt in 1..=5 {
        let next = campus.last_sequence(shop) + 1;
        let wrong = pin_purchase(&campus, shop, next, 1001, above, "000000");
        let expected = if attempt < 5 { AnswerCode::WrongPin } else { AnswerCode::PinLocked };
        assert_eq!(transfer(campus.send_at(shop, next, wrong)).code, expected);
    }
    let next = campus.last_sequence(shop) + 1;
    let right = pin_purchase(&campus, shop, next, 1001, above, "246810");
    assert_eq!(transfer(campus.send_at(shop, next, right)).code, AnswerCode::PinLocked);
    // A PIN sealed for another sequence does not open.
    campus.ledger().set_pin(1001, &Pin::new("246810").expect("pin")).expect("resets");
    let next = campus.last_sequence(shop) + 1;
    let replayed = pin_purchase(&campus, shop, next + 7, 1001, above, "246810");
    assert_eq!(transfer(campus.send_at(shop, next, replayed)).code, AnswerCode::WrongPin);
    assert_eq!(campus.buy(shop, 1001, 10_00).code, AnswerCode::Approved, "below the limit no PIN");
    campus.assert_verified();
}

#[test]
fn a_retry_gets_the_original_answer_and_changes_nothing_even_after_reopen() {
    let mut campus = Campus::new("retry");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 50_00);
    let canteen = campus.terminals.canteen_a;
    let first = campus.buy(canteen, 1001, 5_00);
    let sequence = campus.last_sequence(canteen);
    let retry = transfer(campus.send_at(canteen, sequence, purchase(1001, 5_00)));
    assert!(retry.duplicate);
    assert_eq!(
        (retry.code, retry.transfer_id, retry.balance_fen),
        (first.code, first.transfer_id, first.balance_fen)
    );
    assert_eq!(campus.balance(1001), 45_00);
    // A refused request's retry is refused the same way.
    let refused = campus.buy(canteen, 1001, 500_00);
    let refused_sequence = campus.last_sequence(canteen);
    campus.reopen();
    let retry = transfer(campus.send_at(canteen, sequence, purchase(1001, 5_00)));
    assert!(retry.duplicate);
    assert_eq!(retry.transfer_id, first.transfer_id);
    let retry = transfer(campus.send_at(canteen, refused_sequence, purchase(1001, 500_00)));
    assert_eq!((retry.duplicate, retry.code), (true, refused.code));
    assert_eq!(campus.balance(1001), 45_00);
    assert_eq!(
        campus
            .ledger()
            .terminal(canteen)
            .expect("t")
            .last_sequence
            .load(std::sync::atomic::Ordering::Acquire),
        refused_sequence
    );
    campus.assert_verified();
}

#[test]
fn a_window_spread_over_many_batches_is_rebuilt_whole_on_reopen() {
    let mut campus = Campus::new("window-batches");
    campus.open_card(1001, CardType::Staff);
    campus.top_up(1001, 500_00);
    let canteen = campus.terminals.canteen_a;
    // One purchase per batch: the terminal's state names one batch per retained answer
    // and must let go of the older ones as they leave the window.
    let answers: Vec<(u64, TransferAnswer)> = (0..100)
        .map(|_| {
            let answer = campus.buy(canteen, 1001, 1);
            (campus.last_sequence(canteen), answer)
        })
        .collect();
    let retained = campus.ledger().terminal_answers(canteen).expect("reads");
    assert_eq!(retained.len(), onecard_engine::limits::RETRY_WINDOW_REQUESTS);
    campus.reopen();
    let balance = campus.balance(1001);
    for (sequence, first) in
        &answers[answers.len() - onecard_engine::limits::RETRY_WINDOW_REQUESTS..]
    {
        let retry = transfer(campus.send_at(canteen, *sequence, purchase(1001, 1)));
        assert!(retry.duplicate, "sequence {sequence} is answered from the rebuilt window");
        assert_eq!(retry.transfer_id, first.transfer_id);
    }
    let (oldest, _) = answers[0];
    assert_eq!(
        transfer(campus.send_at(canteen, oldest, purchase(1001, 1))).code,
        AnswerCode::StaleSequence
    );
    assert_eq!(campus.balance(1001), balance);
    campus.assert_verified();
}

#[test]
fn a_sequence_older_than_the_retry_window_is_refused_as_stale() {
    let mut campus = Campus::new("stale");
    campus.open_card(1001, CardType::Staff);
    campus.top_up(1001, 500_00);
    let canteen = campus.terminals.canteen_a;
    for _ in 0..70 {
        assert_eq!(campus.buy(canteen, 1001, 1).code, AnswerCode::Approved);
    }
    let balance = campus.balance(1001);
    assert_eq!(
        transfer(campus.send_at(canteen, 2, purchase(1001, 1))).code,
        AnswerCode::StaleSequence
    );
    assert_eq!(campus.balance(1001), balance);
    campus.assert_verified();
}

#[test]
fn a_reversal_undoes_a_purchase_once_and_a_reversal_of_the_unseen_leaves_a_tombstone() {
    let mut campus = Campus::new("reversal");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 50_00);
    let canteen = campus.terminals.canteen_b;
    let bought = campus.buy(canteen, 1001, 8_00);
    let bought_sequence = campus.last_sequence(canteen);
    let reversed = transfer(campus.send(canteen, reversal(bought_sequence, 1001, 8_00)));
    assert_eq!(reversed.code, AnswerCode::Approved);
    assert_eq!(reversed.balance_fen, 50_00);
    assert_eq!(campus.ledger().card(1001).expect("card").spent_today_fen, 0);
    let undo = campus.ledger().transfer(reversed.transfer_id).expect("committed");
    assert_eq!(undo.corrects, bought.transfer_id);
    // Twice: refused. A reversal of the reversal: refused.
    let again = transfer(campus.send(canteen, reversal(bought_sequence, 1001, 8_00)));
    assert_eq!(again.code, AnswerCode::AlreadyReversed);
    let reversal_sequence = campus.last_sequence(canteen) - 1;
    let of_reversal = transfer(campus.send(canteen, reversal(reversal_sequence, 1001, 8_00)));
    assert_eq!(of_reversal.code, AnswerCode::ReversalMismatch);
    // Wrong card or amount: refused.
    let other = campus.buy(canteen, 1001, 3_00);
    assert_eq!(other.code, AnswerCode::Approved);
    let other_sequence = campus.last_sequence(canteen);
    let mismatch = transfer(campus.send(canteen, reversal(other_sequence, 1001, 3_01)));
    assert_eq!(mismatch.code, AnswerCode::ReversalMismatch);
    // The terminal reverses a purchase the server never saw; the late original is refused.
    let unseen = campus.last_sequence(canteen) + 1;
    let tombstone = transfer(campus.send_at(canteen, unseen + 1, reversal(unseen, 1001, 2_00)));
    assert_eq!((tombstone.code, tombstone.transfer_id), (AnswerCode::Approved, 0));
    campus.reopen();
    let late = transfer(campus.send_at(canteen, unseen, purchase(1001, 2_00)));
    assert_eq!(late.code, AnswerCode::AlreadyReversed);
    assert_eq!(campus.balance(1001), 47_00);
    campus.assert_verified();
}

#[test]
fn refunds_return_at_most_what_was_paid_at_the_same_merchant() {
    let mut campus = Campus::new("refund");
    campus.open_card(1001, CardType::Student);
    campus.open_card(1002, CardType::Student);
    campus.top_up(1001, 50_00);
    let canteen = campus.terminals.canteen_a;
    let sale = campus.buy(canteen, 1001, 10_00);
    let id = sale.transfer_id;
    let before = campus.transfers_committed();
    let send = |campus: &mut Campus, terminal, request| transfer(campus.send(terminal, request));
    assert_eq!(
        send(&mut campus, canteen, refund(1001, id, 10_01)).code,
        AnswerCode::RefundExceedsPurchase
    );
    assert_eq!(send(&mut campus, canteen, refund(1001, id, 0)).code, AnswerCode::InvalidAmount);
    assert_eq!(
        send(&mut campus, canteen, refund(1002, id, 1_00)).code,
        AnswerCode::UnknownTransfer
    );
    assert_eq!(
        send(&mut campus, canteen, refund(1001, id + 1_000, 1_00)).code,
        AnswerCode::UnknownTransfer
    );
    let shop = campus.terminals.shop;
    let expected = send_code(&mut campus, shop, id);
    assert_eq!(send(&mut campus, shop, refund(1001, id, 1_00)).code, expected);
    assert_eq!(campus.transfers_committed(), before, "refused refunds write no transfer");
    // Another terminal of the same merchant may refund.
    let canteen_a2 = campus.terminals.canteen_a2;
    let first = send(&mut campus, canteen_a2, refund(1001, id, 6_00));
    assert_eq!((first.code, first.balance_fen), (AnswerCode::Approved, 46_00));
    let refund_transfer = campus.ledger().transfer(first.transfer_id).expect("committed");
    assert_eq!(refund_transfer.corrects, id);
    assert_eq!(
        send(&mut campus, canteen, refund(1001, id, 4_01)).code,
        AnswerCode::RefundExceedsPurchase
    );
    assert_eq!(send(&mut campus, canteen, refund(1001, id, 4_00)).code, AnswerCode::Approved);
    assert_eq!(
        send(&mut campus, canteen, refund(1001, id, 1)).code,
        AnswerCode::RefundExceedsPurchase
    );
    // A refund is not a purchase: it cannot itself be refunded.
    assert_eq!(
        send(&mut campus, canteen, refund(1001, first.transfer_id, 1)).code,
        AnswerCode::UnknownTransfer
    );
    assert_eq!(campus.balance(1001), 50_00);
    campus.reopen();
    assert_eq!(
        send(&mut campus, canteen, refund(1001, id, 1)).code,
        AnswerCode::RefundExceedsPurchase
    );
    campus.assert_verified();
}

/// A refund from a terminal of another merchant on the same shard is `WrongMerchant`;
/// on another shard the purchase is not found there, `UnknownTransfer`.
fn send_code(campus: &mut Campus, shop: u32, id: u64) -> AnswerCode {
    let shop_shard = campus.ledger().terminal(shop).expect("t").shard;
    let sale_shard = onecard_engine::journal::journal_of(id);
    let _ = campus;
    if shop_shard == sale_shard { AnswerCode::WrongMerchant } else { AnswerCode::UnknownTransfer }
}

#[test]
fn a_lost_card_is_refused_until_unlocked_and_the_blacklist_says_so() {
    let mut campus = Campus::new("lost");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 20_00);
    let version = campus.ledger().blacklist_version();
    campus.ledger().report_lost(1001).expect("lost");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardLost);
    campus.ledger().freeze(1001).expect_err("a lost card is not frozen");
    campus.ledger().unlock(1001).expect("unlocked");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::Approved);
    let (current, entries) = campus.ledger().blacklist_since(version, 100).expect("reads");
    assert_eq!(current, version + 2);
    assert_eq!(
        entries.iter().map(|e| (e.card_number, e.listed)).collect::<Vec<_>>(),
        [(1001, true), (1001, false)]
    );
    campus.ledger().freeze(1001).expect("frozen");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardFrozen);
    assert_eq!(campus.top_up(1001, 1_00).code, AnswerCode::CardFrozen);
    campus.reopen();
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardFrozen);
    assert_eq!(campus.ledger().blacklist_version(), version + 3);
    campus.assert_verified();
}

#[test]
fn a_reissued_card_keeps_the_balance_and_the_old_number_is_blocked_forever() {
    let mut campus = Campus::new("reissue");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 20_00);
    campus.ledger().report_lost(1001).expect("lost");
    let new = campus.ledger().reissue(1001, 2001, 15_00).expect("reissued");
    assert_eq!((new.state, new.balance_fen), (CardState::Active, 20_00));
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardReplaced);
    assert_eq!(campus.buy(campus.terminals.canteen_a, 2001, 1_00).code, AnswerCode::Approved);
    assert!(matches!(campus.ledger().unlock(1001), Err(ControlError::NotAllowed { .. })));
    assert!(matches!(campus.ledger().reissue(2001, 2001, 0), Err(ControlError::CardExists(2001))));
    let fee = campus
        .ledger()
        .account_balance(AccountId::single(AccountKind::CardFeeIncome))
        .expect("reads");
    assert_eq!(fee, 15_00);
    campus.reopen();
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardReplaced);
    assert_eq!(campus.ledger().card(1001).expect("old").state, CardState::Replaced);
    assert_eq!(campus.balance(2001), 19_00);
    campus.assert_verified();
}

#[test]
fn closing_a_card_moves_balance_and_deposit_to_refund_payable_and_the_card_never_works_again() {
    let mut campus = Campus::new("close");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 33_00);
    let closed = campus.ledger().close_card(1001).expect("closed");
    assert_eq!((closed.state, closed.balance_fen, closed.deposit_fen), (CardState::Closed, 0, 0));
    let payable =
        campus.ledger().account_balance(AccountId::single(AccountKind::RefundPayable)).expect("r");
    assert_eq!(payable, 33_00 + 20_00);
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1).code, AnswerCode::CardClosed);
    assert_eq!(campus.top_up(1001, 1).code, AnswerCode::CardClosed);
    assert!(matches!(campus.ledger().close_card(1001), Err(ControlError::NotAllowed { .. })));
    assert!(matches!(campus.ledger().unlock(1001), Err(ControlError::NotAllowed { .. })));
    campus.reopen();
    assert_eq!(campus.ledger().card(1001).expect("card").state, CardState::Closed);
    campus.assert_verified();
}

#[test]
fn bad_control_input_is_refused_with_a_typed_error() {
    let campus = Campus::new("control");
    campus.open_card(1001, CardType::Student);
    let ledger = campus.ledger();
    let open = |number, name: &str, deposit, expiry| onecard_engine::OpenCard {
        card_number: number,
        holder_id: "S1".to_owned(),
        holder_name: name.to_owned(),
        card_type: CardType::Temporary,
        expiry_date: expiry,
        deposit_fen: deposit,
        pin: None,
        overrides: LimitOverrides::default(),
    };
    assert!(matches!(
        ledger.open_card(open(1001, "x", 0, EXPIRY)),
        Err(ControlError::CardExists(1001))
    ));
    assert!(matches!(ledger.open_card(open(0, "x", 0, EXPIRY)), Err(ControlError::Zero(_))));
    assert!(matches!(ledger.open_card(open(7, "", 0, EXPIRY)), Err(ControlError::InvalidName(_))));
    assert!(matches!(
        ledger.open_card(open(7, "x", -1, EXPIRY)),
        Err(ControlError::InvalidAmount(-1))
    ));
    assert!(matches!(
        ledger.open_card(open(7, "x", 0, 20_260_231)),
        Err(ControlError::InvalidDate(_))
    ));
    assert!(matches!(ledger.extend(1001, 20_200_101), Err(ControlError::InvalidDate(_))));
    assert!(matches!(ledger.report_lost(5), Err(ControlError::UnknownCard(5))));
    let negative = LimitOverrides { daily_fen_max: Some(-1), ..LimitOverrides::default() };
    assert!(matches!(ledger.set_limits(1001, negative), Err(ControlError::InvalidLimits)));
    let rate = rust_decimal::Decimal::new(15, 1);
    let category = onecard_engine::directory::MerchantCategory::Shop;
    assert!(matches!(
        ledger.create_merchant("x", category, rate),
        Err(ControlError::InvalidRate(_))
    ));
    assert!(matches!(
        ledger.create_terminal(999, &key(1)),
        Err(ControlError::UnknownMerchant(999))
    ));
    assert_eq!(ledger.extend(1001, EXPIRY + 10_000).expect("extends").expiry_date, EXPIRY + 10_000);
    // A batch opens all its cards or none.
    let batch = vec![open(7, "x", 0, EXPIRY), open(8, "y", 0, EXPIRY), open(7, "z", 0, EXPIRY)];
    assert!(matches!(ledger.open_cards(batch), Err(ControlError::CardExists(7))));
    assert!(ledger.card(7).is_none() && ledger.card(8).is_none());
    ledger.open_cards(vec![open(7, "x", 1_00, EXPIRY), open(8, "y", 1_00, EXPIRY)]).expect("opens");
    assert_eq!(ledger.card(8).expect("opened").deposit_fen, 1_00);
    campus.assert_verified();
}

#[test]
fn an_expired_card_is_refused() {
    let mut campus = Campus::new("expired");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    campus.ledger().set_business_date(BusinessDate::from_yyyymmdd(EXPIRY).expect("d")).expect("t");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::Approved);
    let later = BusinessDate::from_yyyymmdd(EXPIRY + 10_000 - 1_130).expect("2100-01-01");
    campus.ledger().set_business_date(later).expect("t");
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 1_00).code, AnswerCode::CardExpired);
    campus.assert_verified();
}

#[test]
fn offline_records_post_quarantine_or_refuse_each_one_and_never_twice() {
    let mut campus = Campus::new("offline");
    campus.open_card(1001, CardType::Student);
    campus.open_card(1002, CardType::Student);
    campus.top_up(1001, 10_00);
    campus.top_up(1002, 10_00);
    let taken_at_ms = onecard_engine::date::now_ms() - 60_000;
    campus.ledger().report_lost(1002).expect("lost after the records were taken");
    campus.open_card(1003, CardType::Student);
    campus.ledger().report_lost(1003).expect("lost");
    let record = |sequence, card_number, amount_fen, taken_at_ms| OfflineRecord {
        sequence,
        card_number,
        amount_fen,
        taken_at_ms,
        meal_period: MealPeriod::Breakfast,
        item_code: 0,
    };
    let records = vec![
        record(9001, 1001, 4_00, taken_at_ms),           // posted
        record(9002, 1001, 7_00, taken_at_ms),           // would go below zero: quarantine
        record(9003, 1002, 1_00, taken_at_ms),           // lost after: posted
        record(9004, 1003, 1_00, taken_at_ms + 120_000), // lost before: quarantine
        record(9005, 777, 1_00, taken_at_ms),            // unknown card: refused
        record(9006, 1001, 0, taken_at_ms),              // zero: refused
        record(9007, 1001, 60_00, taken_at_ms),          // over the offline limit: quarantine
        record(9001, 1001, 4_00, taken_at_ms),           // duplicate inside the upload
    ];
    let canteen = campus.terminals.canteen_a;
    let answer =
        campus.send(canteen, Request::OfflineUpload(OfflineUpload { records: records.clone() }));
    let Answer::OfflineUpload(upload) = answer else { panic!("{answer:?}") };
    let codes: Vec<_> = upload.results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            AnswerCode::Approved,
            AnswerCode::InsufficientFunds,
            AnswerCode::Approved,
            AnswerCode::CardLost,
            AnswerCode::UnknownCard,
            AnswerCode::InvalidAmount,
            AnswerCode::TransactionLimit,
            AnswerCode::Duplicate,
        ]
    );
    let quarantined: Vec<_> = upload
        .results
        .iter()
        .filter(|r| {
            r.transfer_id != 0 && r.code != AnswerCode::Approved && r.code != AnswerCode::Duplicate
        })
        .collect();
    assert_eq!(quarantined.len(), 3);
    assert_eq!(upload.results[7].transfer_id, upload.results[0].transfer_id);
    let posted = campus.ledger().transfer(upload.results[0].transfer_id).expect("posted");
    assert_eq!(posted.timestamp_ms, taken_at_ms, "the terminal's time is kept");
    let suspense =
        campus.ledger().account_balance(AccountId::single(AccountKind::Suspense)).expect("r");
    assert_eq!(suspense, -(7_00 + 1_00 + 60_00));
    assert_eq!(campus.balance(1001), 6_00);
    // The same records uploaded again, in a new upload: every one a duplicate.
    campus.reopen();
    let again = campus
        .send(canteen, Request::OfflineUpload(OfflineUpload { records: records[..4].to_vec() }));
    let Answer::OfflineUpload(again) = again else { panic!("{again:?}") };
    assert!(again.results.iter().all(|r| r.code == AnswerCode::Duplicate), "{again:?}");
    assert_eq!(campus.balance(1001), 6_00);
    // A retry of the first upload gets its original answer.
    let retry = campus.send_at(canteen, 1, Request::OfflineUpload(OfflineUpload { records }));
    let Answer::OfflineUpload(retry) = retry else { panic!("{retry:?}") };
    assert!(retry.duplicate);
    assert_eq!(retry.results, upload.results);
    campus.assert_verified();
}

#[test]
fn statements_page_newest_first_and_merchant_days_read_one_shard() {
    let mut campus = Campus::new("statement");
    campus.open_card(1001, CardType::Staff);
    campus.top_up(1001, 100_00);
    // Statements order by commit time; keep the top-up in an earlier millisecond.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let canteen = campus.terminals.canteen_a;
    let mut ids = Vec::new();
    for amount in 1..=7u32 {
        ids.push(campus.buy(canteen, 1001, amount * 100).transfer_id);
    }
    let first = campus.ledger().statement(1001, None, 3).expect("page");
    assert_eq!(first.transfers.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[6], ids[5], ids[4]]);
    let second = campus.ledger().statement(1001, first.next, 3).expect("page");
    assert_eq!(second.transfers.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[3], ids[2], ids[1]]);
    let third = campus.ledger().statement(1001, second.next, 3).expect("page");
    assert_eq!(third.transfers.len(), 2, "the purchase and the top-up");
    assert!(third.next.is_none());
    let merchant = campus.ledger().terminal(canteen).expect("t").merchant_id;
    let day =
        campus.ledger().merchant_transfers(merchant, campus.ledger().business_date()).expect("day");
    assert_eq!(day.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    let answers = campus.ledger().terminal_answers(canteen).expect("answers");
    assert_eq!(answers.len(), 7);
    assert_eq!(
        campus.ledger().statement(5, None, 3).err().map(|e| e.to_string()),
        Some("no card 5".to_owned())
    );
    campus.assert_verified();
}

#[test]
fn inquiries_report_balance_state_and_expiry() {
    let mut campus = Campus::new("inquiry");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 12_34);
    let answer = campus.send(campus.terminals.canteen_a, inquiry(1001));
    let Answer::BalanceInquiry(balance) = answer else { panic!("{answer:?}") };
    assert_eq!(
        (balance.code, balance.balance_fen, balance.card_state, balance.expiry_date),
        (AnswerCode::Approved, 12_34, CardState::Active, EXPIRY)
    );
    let answer = campus.send(campus.terminals.canteen_a, inquiry(5));
    assert_eq!(answer.code(), AnswerCode::UnknownCard);
    campus.assert_verified();
}

#[test]
fn a_disabled_terminal_is_refused() {
    let mut campus = Campus::new("disabled");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    let canteen = campus.terminals.canteen_a;
    campus.ledger().set_terminal_enabled(canteen, false).expect("disables");
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::TerminalDisabled);
    campus.reopen();
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::TerminalDisabled);
    campus.ledger().set_terminal_enabled(canteen, true).expect("enables");
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::Approved);
    campus.assert_verified();
}

#[test]
fn top_ups_stop_at_the_maximum_balance() {
    let mut campus = Campus::new("max-balance");
    campus.open_card(1001, CardType::Temporary);
    assert_eq!(campus.top_up(1001, 500_00).code, AnswerCode::Approved);
    assert_eq!(campus.top_up(1001, 1).code, AnswerCode::BalanceLimit);
    assert_eq!(campus.balance(1001), 500_00);
    campus.assert_verified();
}
