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
    submission: &Submission,
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
pub(super) fn take(state: &mut AccountState, fen: i64, utility: bool) -> Option<Debit> {
    let restricted_fen = if utility { state.restricted_fen.clamp(0, fen) } else { 0 };
    let main_fen = fen - restricted_fen;
    if main_fen > state.balance_fen {
        return None;
    }
    state.restricted_fen -= restricted_fen;
    state.balance_fen -= main_fen;
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
    submission: &Submission,
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
