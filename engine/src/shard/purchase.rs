//! Deciding a purchase: the card rules, the debit, and the sale's one or two transfers.

use super::*;

impl ShardWriter {
    pub(super) fn purchase(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        submission: &Submission<Transaction>,
        purchase: &Purchase,
    ) -> WindowEntry {
        let sequence = submission.sequence;
        let card_number = purchase.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = purchase.amount_fen;
        let refuse = |work: &mut Work, code, balances| {
            Self::record(work, origin, MessageType::Purchase, code, None, amount, balances)
        };
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount, (0, 0));
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard, (0, 0));
        };
        let fen = i64::from(amount);
        let mut state = card.account.lock();
        if card.account.in_doubt() {
            // Put in doubt while this request waited for the lock (see `decide`).
            drop(state);
            return refuse(work, AnswerCode::ServiceUnavailable, (0, 0));
        }
        let balances = (state.balance_fen, state.restricted_fen);
        let decided = debit_purchase(&mut state, &card, terminal, submission, purchase, work.date);
        drop(state);
        let debit = match decided {
            Ok(debit) => debit,
            Err(code) => return refuse(work, code, balances),
        };
        let account_number = card.account.number;
        work.taken.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: debit.main_fen,
            restricted_fen: debit.restricted_fen,
            spent_fen: fen,
        });
        let first = self.post_sale(
            work,
            terminal,
            sequence,
            card_number,
            account_number,
            &debit,
            TransferKind::Purchase,
            purchase.meal_period,
            work.now_ms,
        );
        Self::record(
            work,
            origin,
            MessageType::Purchase,
            AnswerCode::Approved,
            Some(first),
            amount,
            (debit.balance_fen, debit.restricted_after_fen),
        )
    }

    /// Posts a sale's one or two transfers (restricted purse first) and returns the
    /// first id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn post_sale(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        card_number: u64,
        account_number: u64,
        debit: &Debit,
        kind: TransferKind,
        meal_period: MealPeriod,
        timestamp_ms: u64,
    ) -> u64 {
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let merchant = AccountId::merchant(terminal.merchant_id);
        let first = work.next_id();
        let mut continues = false;
        if debit.restricted_fen > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: AccountId::card_restricted(account_number),
                    credit: merchant,
                    amount_fen: debit.restricted_fen,
                    kind,
                    corrects: 0,
                    meal_period,
                    timestamp_ms,
                    continues: false,
                },
            );
            continues = true;
        }
        if debit.main_fen > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: AccountId::card(account_number),
                    credit: merchant,
                    amount_fen: debit.main_fen,
                    kind,
                    corrects: 0,
                    meal_period,
                    timestamp_ms,
                    continues,
                },
            );
        }
        first
    }
}
