//! Deciding a top-up at the card centre, and a balance inquiry.

use super::*;

impl ShardWriter {
    pub(super) fn top_up(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        top_up: &TopUp,
    ) -> WindowEntry {
        let card_number = top_up.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = top_up.amount_fen;
        let refuse = |work: &mut Work, code, balances| {
            Self::record(work, origin, MessageType::TopUp, code, None, amount, balances)
        };
        if terminal.category != MerchantCategory::CardCentre {
            return refuse(work, AnswerCode::ChannelNotAllowed, (0, 0));
        }
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount, (0, 0));
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard, (0, 0));
        };
        let state = card.account.lock();
        let balances = (state.balance_fen, state.restricted_fen);
        if let Err(code) = usable(&card, &state, work.date) {
            drop(state);
            return refuse(work, code, balances);
        }
        let fen = i64::from(amount);
        let held: i64 = work
            .held
            .iter()
            .filter(|m| Arc::ptr_eq(&m.account, &card.account))
            .map(|m| m.main_fen)
            .sum();
        if state.balance_fen + held + fen > state.limits.balance_fen_max {
            drop(state);
            return refuse(work, AnswerCode::BalanceLimit, balances);
        }
        let after = (state.balance_fen + held + fen, state.restricted_fen);
        let account_number = card.account.number;
        drop(state);
        work.held.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: fen,
            restricted_fen: 0,
            spent_fen: 0,
        });
        let first = work.transfer(
            origin,
            Leg {
                debit: AccountId::channel(top_up.channel),
                credit: AccountId::card(account_number),
                amount_fen: fen,
                kind: TransferKind::TopUp,
                corrects: 0,
                meal_period: MealPeriod::Unspecified,
                timestamp_ms: work.now_ms,
                continues: false,
            },
        );
        if !top_up.reference.as_bytes().is_empty() {
            let value = top_up_reference_value(top_up.channel, fen, top_up.reference.as_bytes());
            work.top_up_references.push((first, value));
        }
        Self::record(
            work,
            origin,
            MessageType::TopUp,
            AnswerCode::Approved,
            Some(first),
            amount,
            after,
        )
    }

    /// Answers an inquiry. It moves no money but is journalled like every answer, so
    /// that a retry after a restart gets the same answer and the retry window is the
    /// same before and after.
    pub(super) fn inquiry(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        card_number: u64,
    ) -> WindowEntry {
        let (code, card_state, balances, expiry_date) = match self.shared.cards.card(card_number) {
            None => (AnswerCode::UnknownCard, CardState::Closed, (0, 0), 0),
            Some(card) => {
                let state = card.account.lock();
                let card_state =
                    if card.replaced_at_ms != 0 { CardState::Replaced } else { state.state };
                (
                    AnswerCode::Approved,
                    card_state,
                    (state.balance_fen, state.restricted_fen),
                    state.record.expiry_date,
                )
            }
        };
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let mut entry =
            Self::record(work, origin, MessageType::BalanceInquiry, code, None, 0, balances);
        if let Some(last) = work.entries.last_mut() {
            last.aux = u64::from(expiry_date);
            last.reference = u64::from(card_state.to_wire());
        }
        entry.card_state = card_state;
        entry.expiry_date = expiry_date;
        entry
    }
}
