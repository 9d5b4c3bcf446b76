//! Reads: a card, an account's balance, a transfer, a statement, a merchant's day,
//! a terminal's answers, the blacklist, and verify.

use super::*;

/// A card as the card centre sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardView {
    /// The card number asked about.
    pub card_number: u64,
    /// Its account.
    pub account_number: u64,
    /// The cardholder's student or staff number.
    pub holder_id: String,
    /// The cardholder's name.
    pub holder_name: String,
    /// The card type.
    pub card_type: CardType,
    /// The card's state (`Replaced` for a retired number).
    pub state: CardState,
    /// The last business date the card works.
    pub expiry_date: u32,
    /// Main purse, available.
    pub balance_fen: i64,
    /// Restricted purse, available.
    pub restricted_fen: i64,
    /// Deposit held.
    pub deposit_fen: i64,
    /// Limits in force.
    pub limits: Limits,
    /// Spent on the current business date.
    pub spent_today_fen: i64,
    /// Whether a PIN is set.
    pub has_pin: bool,
}

/// One page of a card statement, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The transfers.
    pub transfers: Vec<Transfer>,
    /// Pass back to get the next (older) page; `None` at the end.
    pub next: Option<StatementCursor>,
}

/// Where a statement page ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementCursor {
    /// Time of the last transfer on the page.
    pub timestamp_ms: u64,
    /// Its id.
    pub transfer_id: u64,
}

impl Ledger {
    /// A card as the card centre sees it; `None` for an unknown number.
    #[must_use]
    pub fn card(&self, card_number: u64) -> Option<CardView> {
        let card = self.shared.cards.card(card_number)?;
        let state = card.account.lock();
        let date = self.shared.business_date();
        Some(CardView {
            card_number,
            account_number: card.account.number,
            holder_id: state.record.holder_id.clone(),
            holder_name: state.record.holder_name.clone(),
            card_type: state.record.card_type,
            state: if card.replaced_at_ms != 0 { CardState::Replaced } else { state.state },
            expiry_date: state.record.expiry_date,
            balance_fen: state.balance_fen,
            restricted_fen: state.restricted_fen,
            deposit_fen: state.record.deposit_fen,
            limits: state.limits,
            spent_today_fen: state.spent_on(date),
            has_pin: state.record.pin.is_some(),
        })
    }

    /// The cards a clerk's search names, at most `limit`, by card number: the card
    /// numbered `text`, and every current card whose holder's student or staff number
    /// is `text` or whose holder's name contains it. Empty for an empty search.
    #[must_use]
    pub fn find_cards(&self, text: &str, limit: usize) -> Vec<CardView> {
        let text = text.trim();
        if text.is_empty() || limit == 0 {
            return Vec::new();
        }
        let mut numbers: Vec<u64> = text.parse().ok().into_iter().collect();
        for account in self.shared.cards.accounts() {
            let state = account.lock();
            let record = &state.record;
            if record.holder_id == text || record.holder_name.contains(text) {
                numbers.push(record.card_number);
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        numbers.into_iter().filter_map(|number| self.card(number)).take(limit).collect()
    }

    /// An account's balance as of every durable batch, from memory. For a card purse,
    /// the purse as the card table holds it (the authority: a debit being committed
    /// is already taken from it).
    ///
    /// # Errors
    /// None today; the signature keeps the store's reads possible.
    pub fn account_balance(&self, account: AccountId) -> Result<i64, rocksdb::Error> {
        let purse = |restricted: bool| {
            self.shared.cards.account(account.number()).map_or(0, |card| {
                let state = card.lock();
                if restricted { state.restricted_fen } else { state.balance_fen }
            })
        };
        Ok(match account.kind() {
            AccountKind::Card => purse(false),
            AccountKind::CardRestricted => purse(true),
            _ => self.shared.totals().balance(account),
        })
    }

    /// One transfer by id.
    #[must_use]
    pub fn transfer(&self, id: u64) -> Option<Transfer> {
        let journal = journal_of(id);
        if journal != CONTROL_JOURNAL && journal >= self.shards() {
            return None;
        }
        self.shared.transfer_pair(journal, id).map(|(transfer, _)| transfer)
    }

    /// A page of a card's statement, newest first, starting before `before`.
    ///
    /// The statement index reaches each journal's index watermark; the batches after
    /// it (at most an index interval's) are read from the journal and merged in, so a
    /// movement is listed from the moment its answer was sent.
    ///
    /// # Errors
    /// [`ControlError::UnknownCard`], or a failed read.
    pub fn statement(
        &self,
        card_number: u64,
        before: Option<StatementCursor>,
        limit: usize,
    ) -> Result<Statement, ControlError> {
        let card =
            self.shared.cards.card(card_number).ok_or(ControlError::UnknownCard(card_number))?;
        let account = card.account.number;
        let limit = limit.clamp(1, STATEMENT_PAGE_MAX);
        let upper = before.map_or_else(
            || index_key(account, u64::MAX, u64::MAX),
            |cursor| index_key(account, cursor.timestamp_ms, cursor.transfer_id),
        );
        // The watermarks first: whatever the index holds past them is found twice and
        // kept once; nothing after them can be missing from the journal.
        let store = &self.shared.store;
        let watermarks: Vec<(u8, [u8; 16])> =
            store.journals().map(|journal| (journal, self.shared.indexed.of(journal))).collect();
        let view = store.db().snapshot();
        let mut keys = Vec::new();
        let mut iter = view.raw_iterator_cf(store.cf(CF_INDEX));
        iter.seek_for_prev(upper);
        while iter.valid() && keys.len() < limit {
            let Some(key) = iter.key() else { break };
            let Ok(key) = <[u8; 24]>::try_from(key) else { break };
            if be_u64(&key[..8]) != Some(account) {
                break;
            }
            if key != upper {
                keys.push(key);
            }
            iter.prev();
        }
        iter.status()?;
        drop(iter);
        let mut tail = Vec::new();
        for (journal, watermark) in watermarks {
            crate::checkpoint::for_each_batch_after(
                store,
                &view,
                journal,
                watermark,
                |_, batch| {
                    for transfer in &batch.transfers {
                        let moves_card = [transfer.debit, transfer.credit]
                            .iter()
                            .any(|side| side.kind().is_card() && side.number() == account);
                        let key = index_key(account, transfer.timestamp_ms, transfer.id);
                        if moves_card && key < upper {
                            keys.push(key);
                            tail.push(*transfer);
                        }
                    }
                    Ok(())
                },
            )
            .map_err(|error| ControlError::Corrupt(error.to_string()))?;
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.dedup();
        keys.truncate(limit);
        let mut transfers = Vec::with_capacity(keys.len());
        for key in &keys {
            let id = be_u64(&key[16..]).unwrap_or(0);
            let found = tail.iter().find(|t| t.id == id).copied().or_else(|| self.transfer(id));
            if let Some(transfer) = found {
                transfers.push(transfer);
            }
        }
        let next = (transfers.len() == limit)
            .then(|| transfers.last())
            .flatten()
            .map(|last| StatementCursor { timestamp_ms: last.timestamp_ms, transfer_id: last.id });
        Ok(Statement { transfers, next })
    }

    /// A merchant's transfers for a business date, in commit order, read from its
    /// shard's journal alone.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed or corrupt read.
    pub fn merchant_transfers(
        &self,
        merchant_id: u32,
        date: BusinessDate,
    ) -> Result<Vec<Transfer>, ControlError> {
        let merchant = self
            .shared
            .directory
            .merchant(merchant_id)
            .ok_or(ControlError::UnknownMerchant(merchant_id))?;
        let account = AccountId::merchant(merchant_id);
        let store = &self.shared.store;
        let journal = store.cf(&journal_cf(merchant.shard));
        let day_key = prefixed_key(shard_key::DAY_START, &date.to_yyyymmdd().to_be_bytes());
        let Some(start) = store.db().get_cf(journal, day_key)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let iter = store.db().iterator_cf(journal, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if key.first() != Some(&merchant.shard) || key.len() != 16 {
                break;
            }
            let batch =
                Batch::decode(&value).map_err(|_| ControlError::UnknownMerchant(merchant_id))?;
            if batch.business_date > date {
                break;
            }
            out.extend(batch.transfers.into_iter().filter(|t| {
                t.business_date == date && (t.debit == account || t.credit == account)
            }));
        }
        Ok(out)
    }

    /// The answers a terminal's retries would be served from, oldest first, read from
    /// disk (what it was told, as committed).
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed read.
    pub fn terminal_answers(&self, terminal_id: u32) -> Result<Vec<Entry>, ControlError> {
        let terminal = self
            .shared
            .directory
            .terminal(terminal_id)
            .ok_or(ControlError::UnknownTerminal(terminal_id))?;
        let store = &self.shared.store;
        let journal = store.cf(&journal_cf(terminal.shard));
        let key = prefixed_key(shard_key::TERMINAL_STATE, &terminal_id.to_be_bytes());
        let Some(bytes) = store.db().get_cf(journal, key)? else {
            return Ok(Vec::new());
        };
        let state =
            TerminalState::decode(&bytes).ok_or(ControlError::UnknownTerminal(terminal_id))?;
        let mut keys = state.batches;
        keys.sort_unstable();
        let mut out = Vec::new();
        for key in keys {
            if let Some(value) = store.db().get_cf(journal, key)?
                && let Ok(batch) = Batch::decode(&value)
            {
                out.extend(batch.entries.into_iter().filter(|e| e.terminal_id == terminal_id));
            }
        }
        Ok(out)
    }

    /// Blacklist changes after `since`, at most `max` (and at most the protocol's
    /// limit), with the current version.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn blacklist_since(
        &self,
        since: u64,
        max: usize,
    ) -> Result<(u64, Vec<BlacklistEntry>), rocksdb::Error> {
        let current = self.blacklist_version();
        let max = max.min(onecard_protocol::limits::BLACKLIST_ENTRIES_MAX);
        let cf = self.shared.store.cf(CF_CONTROL);
        let start = prefixed_key(control_key::BLACKLIST, &since.saturating_add(1).to_be_bytes());
        let mut entries = Vec::new();
        for item in
            self.shared.store.db().iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            if key.first() != Some(&control_key::BLACKLIST) || entries.len() >= max {
                break;
            }
            let (Some(version), Some(card_number)) =
                (be_u64(&key[1..]), value.get(..8).and_then(be_u64))
            else {
                continue;
            };
            entries.push(BlacklistEntry { version, card_number, listed: value.get(8) == Some(&1) });
        }
        Ok((current, entries))
    }

    /// Proves the ledger's invariants from disk; see [`crate::verify`].
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn verify(&self) -> Result<crate::verify::VerifyReport, rocksdb::Error> {
        let in_memory: Vec<(u64, i64, i64)> = self
            .shared
            .cards
            .accounts()
            .iter()
            .map(|account| {
                let state = account.lock();
                (account.number, state.balance_fen, state.restricted_fen)
            })
            .collect();
        // Balances and the index written up to this moment, so that the checkpoint
        // compared is the latest.
        self.shared.flush_checkpoint();
        crate::verify::verify(&self.shared.store, Some(&self.shared.chain), Some(&in_memory))
    }
}
