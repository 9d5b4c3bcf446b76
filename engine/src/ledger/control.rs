//! The control plane's one write: a control batch and its records, synced, then
//! memory.

use super::*;

/// A control-plane transfer before it has an id.
pub(crate) struct ControlTransfer {
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount_fen: i64,
    pub kind: TransferKind,
    pub card_number: u64,
}

impl Ledger {
    /// Writes one control batch: the transfers (with their balance merges and index
    /// keys) and whatever records `records` adds, synced.
    ///
    /// If the write fails, every card account it touches (`accounts`, and the card
    /// purses its transfers move) is put in doubt until the restart: the write may
    /// have reached the disk although the caller leaves memory as it was, so the
    /// shards refuse the account's cards (`ServiceUnavailable`) rather than decide on
    /// a balance or a state that may no longer be the account's.
    pub(crate) fn commit_control(
        &self,
        control: &mut ControlState,
        accounts: &[u64],
        transfers: &[ControlTransfer],
        records: impl FnOnce(&mut WriteBatch, &ColumnFamily),
    ) -> Result<(), ControlError> {
        let written = self.write_control(control, transfers, records);
        // A journal already poisoned refused the write without trying it: nothing can
        // have reached the disk, and the accounts are as memory says.
        let attempted = !matches!(written, Err(ControlError::Write(StorageError::Poisoned)));
        if written.is_err() && attempted {
            let purses = transfers
                .iter()
                .flat_map(|transfer| [transfer.debit, transfer.credit])
                .filter(|account| account.kind().is_card())
                .map(AccountId::number);
            for account in accounts.iter().copied().chain(purses) {
                if self.shared.cards.put_in_doubt(account) {
                    tracing::error!(
                        account,
                        "a control write on this card account failed; its cards are refused \
                         until the restart"
                    );
                }
            }
        }
        written
    }

    pub(super) fn write_control(
        &self,
        control: &mut ControlState,
        transfers: &[ControlTransfer],
        records: impl FnOnce(&mut WriteBatch, &ColumnFamily),
    ) -> Result<(), ControlError> {
        let store = &self.shared.store;
        let mut write = WriteBatch::default();
        records(&mut write, store.cf(CF_CONTROL));
        if transfers.is_empty() {
            store.write_synced(CONTROL_JOURNAL, write)?;
            return Ok(());
        }
        let now = self.shared.config.clock.now_ms();
        let date = control.tail.date_for(self.shared.date_at(now));
        let first_transfer_id = control.tail.next_transfer_id();
        let batch = Batch {
            number: control.tail.next_batch(),
            business_date: date,
            committed_at_ms: now,
            first_transfer_id,
            transfers: (0u64..)
                .zip(transfers)
                .map(|(offset, t)| Transfer {
                    id: first_transfer_id + offset,
                    debit: t.debit,
                    credit: t.credit,
                    amount_fen: t.amount_fen,
                    kind: t.kind,
                    business_date: date,
                    timestamp_ms: now,
                    terminal_id: 0,
                    sequence: 0,
                    corrects: 0,
                    card_number: t.card_number,
                    meal_period: MealPeriod::Unspecified,
                    continues: false,
                })
                .collect(),
            entries: Vec::<Entry>::new(),
            seal: None,
        };
        let postings = Postings::of(date, &batch.transfers, &batch.entries);
        let key = control.tail.key();
        let journal = store.cf(&journal_cf(CONTROL_JOURNAL));
        let tail = control.tail.append(&self.shared.chain.key, &batch.view(), &mut write, journal);
        store.write_synced(CONTROL_JOURNAL, write)?;
        control.tail = tail;
        self.shared.totals().apply(&postings);
        // Sent under the control mutex, so the control journal's batches reach the
        // checkpointer in commit order.
        self.shared.checkpoint(Committed { journal: CONTROL_JOURNAL, key, postings });
        Ok(())
    }
}
