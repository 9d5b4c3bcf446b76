//! The card rules a decision applies under the account's lock: state and expiry, the
//! limits, the PIN above the no-PIN limit, and which purse pays.

use super::*;

/// What a purchase-like debit took from a card.
pub(super) struct Debit {
    pub(super) restricted_fen: i64,
    pub(super) main_fen: i64,
    pub(super) balance_fen: i64,
    pub(super) restricted_after_fen: i64,
}

/// Whether a card may take a debit or credit now.
pub(super) fn usable(
    card: &CardEntry,
    state: &AccountState,
    date: BusinessDate,
) -> Result<(), AnswerCode> {
    if card.replaced_at_ms != 0 {
        return Err(AnswerCode::CardReplaced);
    }
    if state.state != CardState::Active {
        return Err(state_code(state.state));
    }
    if state.record.expiry_date < date.to_yyyymmdd() {
        return Err(AnswerCode::CardExpired);
    }
    Ok(())
}

pub(super) const fn state_code(state: CardState) -> AnswerCode {
    match state {
        CardState::Active => AnswerCode::Approved,
        CardState::Lost => AnswerCode::CardLost,
        CardState::Frozen => AnswerCode::CardFrozen,
        CardState::Closed => AnswerCode::CardClosed,
        CardState::Replaced => AnswerCode::CardReplaced,
    }
}

/// A purchase's checks at the card, in order, and its debit, all under the account's
/// lock: state and expiry, the per-purchase and daily limits, the PIN above the no-PIN
/// limit, then the funds.
pub(super) fn debit_purchase(
    state: &mut AccountState,
    card: &CardEntry,
    terminal: &Terminal,
    submission: &Submission<Transaction>,
    purchase: &Purchase,
    date: BusinessDate,
) -> Result<Debit, AnswerCode> {
    usable(card, state, date)?;
    let fen = i64::from(purchase.amount_fen);
    if fen > state.limits.transaction_fen_max {
        return Err(AnswerCode::TransactionLimit);
    }
    if state.spent_on(date) + fen > state.limits.daily_fen_max {
        return Err(AnswerCode::DailyLimit);
    }
    if fen > state.limits.no_pin_fen_max {
        check_pin(state, terminal, submission, purchase)?;
    }
    let utility = terminal.category == MerchantCategory::Utility;
    let debit = take(state, fen, utility).ok_or(AnswerCode::InsufficientFunds)?;
    state.add_spent(date, fen);
    Ok(debit)
}

/// Takes `fen` from a card: the restricted purse first at a utility, then the main.
///
/// # Panics
/// If a purse was below zero before (memory no longer holds the card's money) or the
/// debit would take one there: neither can happen while every debit comes through
/// here.
pub(super) fn take(state: &mut AccountState, fen: i64, utility: bool) -> Option<Debit> {
    assert!(fen > 0, "a debit moves money");
    assert!(state.balance_fen >= 0 && state.restricted_fen >= 0, "a purse is never below zero");
    let restricted_fen = if utility { state.restricted_fen.clamp(0, fen) } else { 0 };
    let main_fen = fen - restricted_fen;
    if main_fen > state.balance_fen {
        return None;
    }
    state.restricted_fen -= restricted_fen;
    state.balance_fen -= main_fen;
    assert!(
        state.balance_fen >= 0 && state.restricted_fen >= 0,
        "a debit never takes a purse below zero"
    );
    assert_eq!(restricted_fen + main_fen, fen, "the purses pay the whole amount");
    Some(Debit {
        restricted_fen,
        main_fen,
        balance_fen: state.balance_fen,
        restricted_after_fen: state.restricted_fen,
    })
}

pub(super) fn check_pin(
    state: &mut AccountState,
    terminal: &Terminal,
    submission: &Submission<Transaction>,
    purchase: &Purchase,
) -> Result<(), AnswerCode> {
    let Some(block) = purchase.pin_block else {
        return Err(AnswerCode::PinRequired);
    };
    if state.pin_failures >= PIN_FAILURES_MAX {
        return Err(AnswerCode::PinLocked);
    }
    let Some(hash) = state.record.pin.as_ref() else {
        return Err(AnswerCode::WrongPin);
    };
    let opened = MacKey::new(submission.mac_algorithm, &terminal.key()).ok().and_then(|key| {
        let context = PinContext {
            terminal_id: terminal.id,
            sequence: submission.sequence,
            card_number: purchase.card_number,
        };
        block.open(&key.derive(PIN_KEY_LABEL), context).ok()
    });
    if opened.is_some_and(|pin| hash.matches(&pin)) {
        state.pin_failures = 0;
        Ok(())
    } else {
        state.pin_failures += 1;
        Err(if state.pin_failures >= PIN_FAILURES_MAX {
            AnswerCode::PinLocked
        } else {
            AnswerCode::WrongPin
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::{AccountRecord, CardMoney, CardType, LimitOverrides};

    fn state(main_fen: i64, restricted_fen: i64, card_state: CardState) -> AccountState {
        let record = AccountRecord {
            account_number: 1,
            holder_id: "S1".to_owned(),
            holder_name: "张三".to_owned(),
            card_type: CardType::Student,
            card_number: 1001,
            replaced_cards: Vec::new(),
            state: card_state.to_wire(),
            state_changed_at_ms: 0,
            expiry_date: 20_261_231,
            overrides: LimitOverrides::default(),
            pin: None,
            deposit_fen: 0,
        };
        let money = CardMoney { balance_fen: main_fen, restricted_fen, ..CardMoney::default() };
        AccountState::new(record, money)
    }

    fn date(yyyymmdd: u32) -> BusinessDate {
        BusinessDate::from_yyyymmdd(yyyymmdd).expect("a date")
    }

    #[test]
    fn a_utility_takes_the_restricted_purse_first_and_a_canteen_never_does() {
        let mut card = state(10_00, 3_00, CardState::Active);
        let debit = take(&mut card, 5_00, true).expect("paid");
        assert_eq!((debit.restricted_fen, debit.main_fen), (3_00, 2_00));
        assert_eq!((card.balance_fen, card.restricted_fen), (8_00, 0));
        let debit = take(&mut card, 5_00, false).expect("paid");
        assert_eq!((debit.restricted_fen, debit.main_fen), (0, 5_00));
        assert_eq!((debit.balance_fen, debit.restricted_after_fen), (3_00, 0));
    }

    #[test]
    fn a_debit_beyond_the_main_purse_takes_nothing() {
        let mut card = state(2_00, 1_00, CardState::Active);
        assert!(take(&mut card, 2_01, false).is_none(), "the restricted purse is not a canteen's");
        assert!(take(&mut card, 3_01, true).is_none());
        assert_eq!((card.balance_fen, card.restricted_fen), (2_00, 1_00), "nothing taken");
        let debit = take(&mut card, 3_00, true).expect("exactly what it holds");
        assert_eq!((debit.balance_fen, debit.restricted_after_fen), (0, 0));
    }

    #[test]
    #[should_panic(expected = "never below zero")]
    fn a_purse_below_zero_stops_the_process() {
        let mut card = state(-1, 0, CardState::Active);
        let _ = take(&mut card, 1, false);
    }

    #[test]
    fn only_an_active_unexpired_current_card_is_usable() {
        let account =
            std::sync::Arc::new(crate::cards::CardAccount::new(state(0, 0, CardState::Active)));
        let current = CardEntry { account: std::sync::Arc::clone(&account), replaced_at_ms: 0 };
        let replaced = CardEntry { account, replaced_at_ms: 5 };
        let active = state(0, 0, CardState::Active);
        assert_eq!(usable(&current, &active, date(20_261_231)), Ok(()));
        assert_eq!(usable(&current, &active, date(20_270_101)), Err(AnswerCode::CardExpired));
        assert_eq!(usable(&replaced, &active, date(20_260_901)), Err(AnswerCode::CardReplaced));
        for (card_state, code) in [
            (CardState::Lost, AnswerCode::CardLost),
            (CardState::Frozen, AnswerCode::CardFrozen),
            (CardState::Closed, AnswerCode::CardClosed),
        ] {
            let held = state(0, 0, card_state);
            assert_eq!(usable(&current, &held, date(20_260_901)), Err(code));
        }
    }
}
