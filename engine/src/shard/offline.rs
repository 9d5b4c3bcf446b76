//! Deciding an offline upload: each record posted, quarantined or refused, once.

use super::*;

impl ShardWriter {
    pub(super) fn offline(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        records: &[OfflineRecord],
    ) -> WindowEntry {
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let result = self.offline_record(work, terminal, sequence, record);
            results.push(result);
        }
        let mut upload =
            WindowEntry::new(sequence, MessageType::OfflineUpload, AnswerCode::Approved);
        upload.offline = Some(results.into_boxed_slice());
        upload
    }

    pub(super) fn offline_record(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        record: &OfflineRecord,
    ) -> OfflineResult {
        let origin = Origin { terminal_id: terminal.id, sequence, card_number: record.card_number };
        let note = |work: &mut Work, code, first: Option<u64>, balance_fen, flags, reference| {
            let kind = MessageType::OfflineUpload;
            Self::record(work, origin, kind, code, first, record.amount_fen, (balance_fen, 0));
            if let Some(last) = work.entries.last_mut() {
                last.aux = record.sequence;
                last.reference = reference;
                last.flags = flags;
            }
            let transfer_id = first.unwrap_or(reference);
            if flags & Entry::DUPLICATE == 0 {
                work.offline_records.insert((terminal.id, record.sequence), (code, transfer_id));
            }
            OfflineResult { sequence: record.sequence, code, transfer_id, balance_fen }
        };
        if let Some(transfer_id) = self.offline_seen(work, terminal.id, record.sequence) {
            return note(work, AnswerCode::Duplicate, None, 0, Entry::DUPLICATE, transfer_id);
        }
        if record.amount_fen == 0 {
            return note(work, AnswerCode::InvalidAmount, None, 0, 0, 0);
        }
        let Some(card) = self.shared.cards.card(record.card_number) else {
            return note(work, AnswerCode::UnknownCard, None, 0, 0, 0);
        };
        let fen = i64::from(record.amount_fen);
        let mut state = card.account.lock();
        if card.account.in_doubt() {
            drop(state);
            return note(work, AnswerCode::ServiceUnavailable, None, 0, 0, 0);
        }
        let taken_at = record.taken_at_ms;
        let blocked = if card.replaced_at_ms != 0 && card.replaced_at_ms <= taken_at {
            Some(AnswerCode::CardReplaced)
        } else if state.state != CardState::Active && state.record.state_changed_at_ms <= taken_at {
            Some(state_code(state.state))
        } else if fen > state.limits.no_pin_fen_max {
            Some(AnswerCode::TransactionLimit)
        } else {
            None
        };
        let utility = terminal.category == MerchantCategory::Utility;
        let quarantine = match blocked {
            Some(code) => Some(code),
            None => match take(&mut state, fen, utility) {
                None => Some(AnswerCode::InsufficientFunds),
                Some(debit) => {
                    drop(state);
                    work.taken.push(Movement {
                        account: Arc::clone(&card.account),
                        main_fen: debit.main_fen,
                        restricted_fen: debit.restricted_fen,
                        spent_fen: 0,
                    });
                    let first = self.post_sale(
                        work,
                        terminal,
                        sequence,
                        record.card_number,
                        card.account.number,
                        &debit,
                        TransferKind::OfflinePurchase,
                        record.meal_period,
                        taken_at,
                    );
                    return note(work, AnswerCode::Approved, Some(first), debit.balance_fen, 0, 0);
                }
            },
        };
        let balance_fen = state.balance_fen;
        drop(state);
        let code = quarantine.unwrap_or(AnswerCode::InsufficientFunds);
        let first = work.transfer(
            origin,
            Leg {
                debit: AccountId::single(crate::account::AccountKind::Suspense),
                credit: AccountId::merchant(terminal.merchant_id),
                amount_fen: fen,
                kind: TransferKind::OfflineQuarantine,
                corrects: 0,
                meal_period: record.meal_period,
                timestamp_ms: taken_at,
                continues: false,
            },
        );
        note(work, code, Some(first), balance_fen, Entry::QUARANTINED, 0)
    }

    /// The transfer an offline record was posted or quarantined under (0 if it was
    /// refused), if the record has been seen before.
    pub(super) fn offline_seen(&self, work: &Work, terminal_id: u32, sequence: u64) -> Option<u64> {
        if let Some((_, transfer_id)) = work.offline_records.get(&(terminal_id, sequence)) {
            return Some(*transfer_id);
        }
        let journal = self.shared.store.cf(&self.journal);
        let bytes =
            self.shared.store.db().get_cf(journal, offline_key(terminal_id, sequence)).ok()??;
        Some(bytes.get(2..10).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
    }
}
