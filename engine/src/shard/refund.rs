//! Deciding refunds and reversals: finding the original, and undoing it.

use super::*;

impl ShardWriter {
    /// Finds a transfer of this shard, in the batch being decided or on disk.
    pub(super) fn find_transfer(
        &self,
        work: &Work,
        id: u64,
    ) -> Option<(Transfer, Option<Transfer>)> {
        if journal_of(id) != self.id {
            return None;
        }
        let pair = |transfers: &[Transfer], index: usize| {
            let first = *transfers.get(index)?;
            let next = transfers.get(index + 1).filter(|t| t.continues).copied();
            Some((first, next))
        };
        if id >= work.first_transfer_id {
            return pair(&work.transfers, usize::try_from(id - work.first_transfer_id).ok()?);
        }
        // Recent batches are found by a point read of their key; older ones (before the
        // ledger was opened, or pushed out of the map) by seeking the journal.
        let recent = self.recent_batches.range(..=id).next_back();
        let Some((_, key)) =
            recent.filter(|_| self.recent_batches.keys().next().is_some_and(|first| *first <= id))
        else {
            return self.shared.transfer_pair(self.id, id);
        };
        let journal = self.shared.store.cf(&self.journal);
        let value = self.shared.store.db().get_pinned_cf(journal, key).ok()??;
        read_transfer(&value, id).ok()?
    }

    pub(super) fn sale_mark(&self, work: &Work, id: u64) -> SaleMark {
        if let Some(mark) = work.sale_marks.get(&id) {
            return *mark;
        }
        let key = prefixed_key(shard_key::SALE_MARK, &id.to_be_bytes());
        let journal = self.shared.store.cf(&self.journal);
        match self.shared.store.db().get_cf(journal, key) {
            Ok(Some(bytes)) => SaleMark::decode(&bytes).unwrap_or_default(),
            Ok(None) => SaleMark::default(),
            Err(error) => {
                tracing::error!(shard = self.id, %error, "cannot read a sale mark");
                SaleMark { refunded_fen: i64::MAX / 2, reversed: true }
            }
        }
    }

    pub(super) fn refund(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        refund: &Refund,
    ) -> WindowEntry {
        let card_number = refund.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = refund.amount_fen;
        let refuse = |work: &mut Work, code| {
            Self::record(work, origin, MessageType::Refund, code, None, amount, (0, 0))
        };
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount);
        }
        let id = refund.purchase_transfer_id;
        let Some((first, second)) = self.find_transfer(work, id) else {
            return refuse(work, AnswerCode::UnknownTransfer);
        };
        if !first.kind.is_sale() || first.continues || first.card_number != card_number {
            return refuse(work, AnswerCode::UnknownTransfer);
        }
        if first.credit != AccountId::merchant(terminal.merchant_id) {
            return refuse(work, AnswerCode::WrongMerchant);
        }
        let mark = self.sale_mark(work, id);
        if mark.reversed {
            return refuse(work, AnswerCode::AlreadyReversed);
        }
        // The sale's purses: restricted first (if it paid), then main.
        let (restricted_paid, main_paid) = match (first.debit.kind(), second) {
            (crate::account::AccountKind::CardRestricted, Some(main)) => {
                (first.amount_fen, main.amount_fen)
            }
            (crate::account::AccountKind::CardRestricted, None) => (first.amount_fen, 0),
            _ => (0, first.amount_fen),
        };
        let fen = i64::from(amount);
        if mark.refunded_fen + fen > restricted_paid + main_paid {
            return refuse(work, AnswerCode::RefundExceedsPurchase);
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard);
        };
        let state = card.account.lock();
        if state.state == CardState::Closed {
            drop(state);
            return refuse(work, AnswerCode::CardClosed);
        }
        // Money goes back to the main purse first, then the restricted one.
        let main_left = (main_paid - mark.refunded_fen).max(0);
        let to_main = fen.min(main_left);
        let to_restricted = fen - to_main;
        let held = |work: &Work, restricted: bool| -> i64 {
            work.held
                .iter()
                .filter(|m| Arc::ptr_eq(&m.account, &card.account))
                .map(|m| if restricted { m.restricted_fen } else { m.main_fen })
                .sum()
        };
        let after = (
            state.balance_fen + held(work, false) + to_main,
            state.restricted_fen + held(work, true) + to_restricted,
        );
        drop(state);
        let account_number = card.account.number;
        let merchant = AccountId::merchant(terminal.merchant_id);
        let first_id = work.next_id();
        if to_main > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: merchant,
                    credit: AccountId::card(account_number),
                    amount_fen: to_main,
                    kind: TransferKind::Refund,
                    corrects: id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: false,
                },
            );
        }
        if to_restricted > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: merchant,
                    credit: AccountId::card_restricted(account_number),
                    amount_fen: to_restricted,
                    kind: TransferKind::Refund,
                    corrects: id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: to_main > 0,
                },
            );
        }
        work.held.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: to_main,
            restricted_fen: to_restricted,
            spent_fen: 0,
        });
        work.sale_marks
            .insert(id, SaleMark { refunded_fen: mark.refunded_fen + fen, reversed: false });
        let mut entry = Self::record(
            work,
            origin,
            MessageType::Refund,
            AnswerCode::Approved,
            Some(first_id),
            amount,
            after,
        );
        if let Some(last) = work.entries.last_mut() {
            last.reference = id;
        }
        entry.transfer_id = first_id;
        entry
    }

    pub(super) fn reversal(
        &mut self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        reversal: &Reversal,
    ) -> WindowEntry {
        let card_number = reversal.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = reversal.amount_fen;
        let original_sequence = reversal.original_sequence;
        let answer = |work: &mut Work, code, first: Option<u64>, balances, flags| {
            let entry =
                Self::record(work, origin, MessageType::Reversal, code, first, amount, balances);
            if let Some(last) = work.entries.last_mut() {
                last.aux = original_sequence;
                last.flags = flags;
            }
            entry
        };
        if original_sequence >= sequence {
            return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
        }
        let window = self.windows.entry(terminal.id).or_default();
        let Some(original) = window.find(original_sequence).cloned() else {
            if original_sequence <= window.floor {
                return answer(work, AnswerCode::StaleSequence, None, (0, 0), 0);
            }
            // Never seen: leave a tombstone so the late original is refused.
            let mut tombstone = WindowEntry::new(
                original_sequence,
                MessageType::Purchase,
                AnswerCode::AlreadyReversed,
            );
            tombstone.tombstone = true;
            tombstone.batch = Some(work.key);
            window.push(tombstone);
            return answer(work, AnswerCode::Approved, None, (0, 0), Entry::TOMBSTONE);
        };
        if original.tombstone || original.reversed {
            return answer(work, AnswerCode::AlreadyReversed, None, (0, 0), 0);
        }
        let reversible =
            matches!(original.message_type, MessageType::Purchase | MessageType::TopUp);
        if !reversible || original.card_number != card_number || original.amount_fen != amount {
            return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
        }
        if original.code != AnswerCode::Approved {
            // Nothing was done, so nothing is undone.
            return answer(work, AnswerCode::Approved, None, (0, 0), 0);
        }
        let Some((first, second)) = self.find_transfer(work, original.transfer_id) else {
            return answer(work, AnswerCode::UnknownTransfer, None, (0, 0), 0);
        };
        let Some(card) = self.shared.cards.card(card_number) else {
            return answer(work, AnswerCode::UnknownCard, None, (0, 0), 0);
        };
        let first_id = work.next_id();
        let balances;
        let mut flags = 0;
        if original.message_type == MessageType::Purchase {
            if self.sale_mark(work, first.id).refunded_fen > 0 {
                return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
            }
            let state = card.account.lock();
            let (mut main, mut restricted) = (0, 0);
            for part in std::iter::once(first).chain(second) {
                if part.debit.kind() == crate::account::AccountKind::CardRestricted {
                    restricted += part.amount_fen;
                } else {
                    main += part.amount_fen;
                }
            }
            balances = (state.balance_fen + main, state.restricted_fen + restricted);
            drop(state);
            let same_day = first.business_date == work.date;
            let spent_back = if same_day { -(main + restricted) } else { 0 };
            for part in std::iter::once(first).chain(second) {
                work.transfer(
                    origin,
                    Leg {
                        debit: part.credit,
                        credit: part.debit,
                        amount_fen: part.amount_fen,
                        kind: TransferKind::Reversal,
                        corrects: part.id,
                        meal_period: part.meal_period,
                        timestamp_ms: work.now_ms,
                        continues: part.id != first.id,
                    },
                );
            }
            if same_day {
                flags = Entry::SPENT_BACK;
            }
            work.held.push(Movement {
                account: Arc::clone(&card.account),
                main_fen: main,
                restricted_fen: restricted,
                spent_fen: spent_back,
            });
            work.sale_marks.insert(first.id, SaleMark { refunded_fen: 0, reversed: true });
        } else {
            let fen = first.amount_fen;
            let mut state = card.account.lock();
            if card.account.in_doubt() {
                drop(state);
                return answer(work, AnswerCode::ServiceUnavailable, None, (0, 0), 0);
            }
            if state.balance_fen < fen {
                let balances = (state.balance_fen, state.restricted_fen);
                drop(state);
                return answer(work, AnswerCode::InsufficientFunds, None, balances, 0);
            }
            state.balance_fen -= fen;
            balances = (state.balance_fen, state.restricted_fen);
            drop(state);
            work.taken.push(Movement {
                account: Arc::clone(&card.account),
                main_fen: fen,
                restricted_fen: 0,
                spent_fen: 0,
            });
            work.transfer(
                origin,
                Leg {
                    debit: first.credit,
                    credit: first.debit,
                    amount_fen: fen,
                    kind: TransferKind::Reversal,
                    corrects: first.id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: false,
                },
            );
        }
        if let Some(original) =
            self.windows.entry(terminal.id).or_default().find_mut(original_sequence)
        {
            original.reversed = true;
        }
        answer(work, AnswerCode::Approved, Some(first_id), balances, flags)
    }
}
