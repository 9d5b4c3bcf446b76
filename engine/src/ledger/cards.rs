//! The card centre's operations on cards: open, report lost, unlock, freeze, reissue,
//! extend, limits, PIN, close, subsidies and the term-end expiry.

use super::*;

/// What the card centre supplies to open a card.
#[derive(Debug, Clone)]
pub struct OpenCard {
    /// The number printed on the card; not zero, not used before.
    pub card_number: u64,
    /// Student or staff number.
    pub holder_id: String,
    /// Name.
    pub holder_name: String,
    /// Sets default limits.
    pub card_type: CardType,
    /// Last business date the card works.
    pub expiry_date: u32,
    /// Deposit taken in cash at the counter, in fen.
    pub deposit_fen: i64,
    /// Initial PIN, if any.
    pub pin: Option<Pin>,
    /// Limit overrides.
    pub overrides: LimitOverrides,
}

impl Ledger {
    /// Opens a card: cardholder, account and first card, with its deposit taken in
    /// cash at the counter (counter clearing → deposit).
    ///
    /// # Errors
    /// [`ControlError`] for a taken or zero card number, a bad name, amount, date or
    /// limit, or a failed write.
    pub fn open_card(&self, open: OpenCard) -> Result<CardView, ControlError> {
        let card_number = open.card_number;
        self.open_cards(vec![open])?;
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Opens many cards in one synced control batch: all of them or, if any one is
    /// refused, none. The batch card opening workflow and the demo campus use it.
    ///
    /// # Errors
    /// The first [`ControlError`] any card would get from [`Ledger::open_card`], a
    /// card number given twice, or a failed write.
    pub fn open_cards(&self, opens: Vec<OpenCard>) -> Result<(), ControlError> {
        for open in &opens {
            if open.card_number == 0 {
                return Err(ControlError::Zero("card number"));
            }
            check_name("holder id", &open.holder_id)?;
            check_name("holder name", &open.holder_name)?;
            if open.deposit_fen < 0 || open.deposit_fen > i64::from(u32::MAX) {
                return Err(ControlError::InvalidAmount(open.deposit_fen));
            }
            if !open.overrides.is_valid() {
                return Err(ControlError::InvalidLimits);
            }
            if BusinessDate::from_yyyymmdd(open.expiry_date).is_none() {
                return Err(ControlError::InvalidDate(open.expiry_date));
            }
        }
        let mut control = self.control();
        let mut numbers = std::collections::HashSet::with_capacity(opens.len());
        for open in &opens {
            if self.shared.cards.card(open.card_number).is_some()
                || !numbers.insert(open.card_number)
            {
                return Err(ControlError::CardExists(open.card_number));
            }
        }
        let now = now_ms();
        let mut records = Vec::with_capacity(opens.len());
        let mut transfers = Vec::new();
        for (offset, open) in (0u64..).zip(opens) {
            let pin = open
                .pin
                .as_ref()
                .map(PinHash::new)
                .transpose()
                .map_err(|_| ControlError::Random)?;
            if open.deposit_fen > 0 {
                transfers.push(ControlTransfer {
                    debit: AccountId::channel(Channel::Counter),
                    credit: AccountId::single(AccountKind::Deposit),
                    amount_fen: open.deposit_fen,
                    kind: TransferKind::Deposit,
                    card_number: open.card_number,
                });
            }
            records.push(AccountRecord {
                account_number: control.next_account + offset,
                holder_id: open.holder_id,
                holder_name: open.holder_name,
                card_type: open.card_type,
                card_number: open.card_number,
                replaced_cards: Vec::new(),
                state: CardState::Active.to_wire(),
                state_changed_at_ms: now,
                expiry_date: open.expiry_date,
                overrides: open.overrides,
                pin,
                deposit_fen: open.deposit_fen,
            });
        }
        self.commit_control(&mut control, &[], &transfers, |write, cf| {
            for record in &records {
                put_account(write, cf, record);
                put_card(write, cf, record.card_number, record.account_number, 0);
            }
        })?;
        control.next_account += records.len() as u64;
        drop(control);
        for record in records {
            let card_number = record.card_number;
            let account =
                Arc::new(CardAccount::new(AccountState::new(record, CardMoney::default())));
            self.shared.cards.insert_card(card_number, CardEntry { account, replaced_at_ms: 0 });
        }
        Ok(())
    }

    /// Reports a card lost (挂失): every debit is refused at once.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not active, or the write fails.
    pub fn report_lost(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(
            card_number,
            "report lost",
            &[CardState::Active, CardState::Frozen],
            CardState::Lost,
        )
    }

    /// Unlocks a lost card (解挂).
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not lost, or the write fails.
    pub fn unlock(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "unlock", &[CardState::Lost], CardState::Active)
    }

    /// Freezes a card (the card centre's hold).
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not active, or the write fails.
    pub fn freeze(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "freeze", &[CardState::Active], CardState::Frozen)
    }

    /// Lifts a freeze.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or not frozen, or the write fails.
    pub fn unfreeze(&self, card_number: u64) -> Result<CardView, ControlError> {
        self.change_state(card_number, "unfreeze", &[CardState::Frozen], CardState::Active)
    }

    pub(super) fn current(
        &self,
        card_number: u64,
        action: &'static str,
    ) -> Result<Arc<CardAccount>, ControlError> {
        let card =
            self.shared.cards.card(card_number).ok_or(ControlError::UnknownCard(card_number))?;
        if card.replaced_at_ms != 0 {
            return Err(ControlError::NotAllowed {
                card: card_number,
                state: CardState::Replaced,
                action,
            });
        }
        if card.account.in_doubt() {
            return Err(ControlError::InDoubt(card.account.number));
        }
        Ok(card.account)
    }

    pub(super) fn change_state(
        &self,
        card_number: u64,
        action: &'static str,
        from: &[CardState],
        to: CardState,
    ) -> Result<CardView, ControlError> {
        let account = self.current(card_number, action)?;
        let mut state = account.lock();
        if !from.contains(&state.state) {
            return Err(ControlError::NotAllowed { card: card_number, state: state.state, action });
        }
        let mut record = state.record.clone();
        record.state = to.to_wire();
        record.state_changed_at_ms = now_ms();
        let mut control = self.control();
        let listed = to != CardState::Active;
        let version = control.blacklist_version + 1;
        self.commit_control(&mut control, &[account.number], &[], |write, cf| {
            put_account(write, cf, &record);
            put_blacklist(write, cf, version, card_number, listed);
        })?;
        self.bump_blacklist(&mut control, version);
        state.record = record;
        state.state = to;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    pub(super) fn bump_blacklist(&self, control: &mut ControlState, version: u64) {
        control.blacklist_version = version;
        self.shared.blacklist_version.store(version, Ordering::Release);
    }

    /// Reissues a card (补卡): a new card number for the same account; the old number
    /// is blocked forever and the balance follows. A replacement fee, if any, is paid
    /// in cash at the counter (counter clearing → card fee income).
    ///
    /// # Errors
    /// [`ControlError`] if the old card is unknown, replaced or closed, the new number
    /// is taken or zero, the fee is negative, or the write fails.
    pub fn reissue(
        &self,
        old_card: u64,
        new_card: u64,
        fee_fen: i64,
    ) -> Result<CardView, ControlError> {
        if new_card == 0 {
            return Err(ControlError::Zero("card number"));
        }
        if !(0..=i64::from(u32::MAX)).contains(&fee_fen) {
            return Err(ControlError::InvalidAmount(fee_fen));
        }
        let account = self.current(old_card, "reissue")?;
        let mut state = account.lock();
        not_closed(&state, old_card, "reissue")?;
        let mut control = self.control();
        if self.shared.cards.card(new_card).is_some() {
            return Err(ControlError::CardExists(new_card));
        }
        let now = now_ms();
        let mut record = state.record.clone();
        record.replaced_cards.push(old_card);
        record.card_number = new_card;
        record.state = CardState::Active.to_wire();
        record.state_changed_at_ms = now;
        let transfers: Vec<ControlTransfer> = (fee_fen > 0)
            .then_some(ControlTransfer {
                debit: AccountId::channel(Channel::Counter),
                credit: AccountId::single(AccountKind::CardFeeIncome),
                amount_fen: fee_fen,
                kind: TransferKind::CardFee,
                card_number: new_card,
            })
            .into_iter()
            .collect();
        let version = control.blacklist_version + 1;
        let account_number = record.account_number;
        self.commit_control(&mut control, &[account_number], &transfers, |write, cf| {
            put_account(write, cf, &record);
            put_card(write, cf, old_card, account_number, now);
            put_card(write, cf, new_card, account_number, 0);
            put_blacklist(write, cf, version, old_card, true);
        })?;
        self.bump_blacklist(&mut control, version);
        drop(control);
        state.record = record;
        state.state = CardState::Active;
        drop(state);
        self.shared.cards.insert_card(
            old_card,
            CardEntry { account: Arc::clone(&account), replaced_at_ms: now },
        );
        self.shared.cards.insert_card(new_card, CardEntry { account, replaced_at_ms: 0 });
        self.card(new_card).ok_or(ControlError::UnknownCard(new_card))
    }

    /// Extends a card's expiry (延期) to a later date.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, the date is not later, or
    /// the write fails.
    pub fn extend(&self, card_number: u64, expiry_date: u32) -> Result<CardView, ControlError> {
        if BusinessDate::from_yyyymmdd(expiry_date).is_none() {
            return Err(ControlError::InvalidDate(expiry_date));
        }
        self.update_record(card_number, "extend", |record| {
            if expiry_date <= record.expiry_date {
                return Err(ControlError::InvalidDate(expiry_date));
            }
            record.expiry_date = expiry_date;
            Ok(())
        })
    }

    /// Sets per-card limit overrides.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, a limit is negative, or the
    /// write fails.
    pub fn set_limits(
        &self,
        card_number: u64,
        overrides: LimitOverrides,
    ) -> Result<CardView, ControlError> {
        if !overrides.is_valid() {
            return Err(ControlError::InvalidLimits);
        }
        self.update_record(card_number, "set limits", |record| {
            record.overrides = overrides;
            Ok(())
        })
    }

    /// Sets (or resets) the card's PIN and clears its wrong-PIN count.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown or closed, or the write fails.
    pub fn set_pin(&self, card_number: u64, pin: &Pin) -> Result<CardView, ControlError> {
        let hash = PinHash::new(pin).map_err(|_| ControlError::Random)?;
        self.update_record(card_number, "set PIN", |record| {
            record.pin = Some(hash);
            Ok(())
        })
    }

    pub(super) fn update_record(
        &self,
        card_number: u64,
        action: &'static str,
        change: impl FnOnce(&mut AccountRecord) -> Result<(), ControlError>,
    ) -> Result<CardView, ControlError> {
        let account = self.current(card_number, action)?;
        let mut state = account.lock();
        not_closed(&state, card_number, action)?;
        let mut record = state.record.clone();
        change(&mut record)?;
        let mut control = self.control();
        self.commit_control(&mut control, &[account.number], &[], |write, cf| {
            put_account(write, cf, &record);
        })?;
        drop(control);
        state.limits = record.overrides.apply(record.card_type);
        state.record = record;
        state.pin_failures = 0;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Closes a card's account (销户): the main purse and the deposit move to refund
    /// payable for finance to pay out, the restricted purse returns to subsidy funding,
    /// and the card never works again.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown, replaced or already closed, or the
    /// write fails.
    pub fn close_card(&self, card_number: u64) -> Result<CardView, ControlError> {
        let account = self.current(card_number, "close")?;
        let mut state = account.lock();
        not_closed(&state, card_number, "close")?;
        let account_number = account.number;
        let refund_payable = AccountId::single(AccountKind::RefundPayable);
        let mut transfers = Vec::new();
        let mut push = |debit, credit, amount_fen, kind| {
            if amount_fen > 0 {
                transfers.push(ControlTransfer { debit, credit, amount_fen, kind, card_number });
            }
        };
        push(
            AccountId::card(account_number),
            refund_payable,
            state.balance_fen,
            TransferKind::CloseBalance,
        );
        push(
            AccountId::card_restricted(account_number),
            AccountId::single(AccountKind::SubsidyFunding),
            state.restricted_fen,
            TransferKind::CloseBalance,
        );
        push(
            AccountId::single(AccountKind::Deposit),
            refund_payable,
            state.record.deposit_fen,
            TransferKind::CloseDeposit,
        );
        let mut record = state.record.clone();
        record.state = CardState::Closed.to_wire();
        record.state_changed_at_ms = now_ms();
        record.deposit_fen = 0;
        let mut control = self.control();
        let version = control.blacklist_version + 1;
        self.commit_control(&mut control, &[account_number], &transfers, |write, cf| {
            put_account(write, cf, &record);
            put_blacklist(write, cf, version, card_number, true);
        })?;
        self.bump_blacklist(&mut control, version);
        drop(control);
        state.balance_fen = 0;
        state.restricted_fen = 0;
        state.record = record;
        state.state = CardState::Closed;
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Credits a subsidy (补助) from subsidy funding to one of a card's purses. The
    /// subsidy workflow posts its approved batches through this.
    ///
    /// # Errors
    /// [`ControlError`] if the card is unknown, replaced or closed, the amount is not
    /// positive, or the write fails.
    pub fn post_subsidy(
        &self,
        card_number: u64,
        amount_fen: i64,
        purse: Purse,
    ) -> Result<CardView, ControlError> {
        if !(1..=i64::from(u32::MAX)).contains(&amount_fen) {
            return Err(ControlError::InvalidAmount(amount_fen));
        }
        let account = self.current(card_number, "post a subsidy")?;
        let mut state = account.lock();
        not_closed(&state, card_number, "post a subsidy")?;
        let credit = match purse {
            Purse::Main => AccountId::card(account.number),
            Purse::Restricted => AccountId::card_restricted(account.number),
        };
        let transfer = ControlTransfer {
            debit: AccountId::single(AccountKind::SubsidyFunding),
            credit,
            amount_fen,
            kind: TransferKind::Subsidy,
            card_number,
        };
        let mut control = self.control();
        self.commit_control(&mut control, &[], &[transfer], |_, _| {})?;
        drop(control);
        match purse {
            Purse::Main => state.balance_fen += amount_fen,
            Purse::Restricted => state.restricted_fen += amount_fen,
        }
        drop(state);
        self.card(card_number).ok_or(ControlError::UnknownCard(card_number))
    }

    /// Posts a batch of subsidies (补助) from subsidy funding in one synced control
    /// batch. Every row that can post does; a row that cannot (bad amount; unknown,
    /// replaced or closed card) gets its error in the returned list, in row order, and
    /// the rest still post. The subsidy workflow and the demo campus use it.
    ///
    /// # Errors
    /// [`ControlError::BatchTooLarge`] above [`SUBSIDY_BATCH_ROWS_MAX`] rows, or a
    /// failed write (then nothing posted).
    pub fn post_subsidies(
        &self,
        rows: &[SubsidyRow],
    ) -> Result<Vec<Result<(), ControlError>>, ControlError> {
        self.post_subsidies_keyed(rows, None).map(|(outcomes, _)| outcomes)
    }

    /// [`Ledger::post_subsidies`] exactly once for `key`: the batch's outcome is stored
    /// under the key in the same write as its transfers, and a second call with the
    /// key posts nothing and returns the stored outcome (each row's error in words,
    /// `None` for a row that posted), with `true` for "posted before".
    ///
    /// # Errors
    /// As [`Ledger::post_subsidies`].
    pub fn post_subsidies_once(
        &self,
        key: u64,
        rows: &[SubsidyRow],
    ) -> Result<(Vec<Option<String>>, bool), ControlError> {
        let store = self.store();
        if let Some(stored) = store.db().get_cf(store.cf(CF_CONTROL), once_key(key))? {
            return decode_outcomes(&stored).map(|outcomes| (outcomes, true));
        }
        let (outcomes, before) = self.post_subsidies_keyed(rows, Some(key))?;
        if before {
            let stored = store
                .db()
                .get_cf(store.cf(CF_CONTROL), once_key(key))?
                .ok_or_else(|| ControlError::Corrupt(format!("batch {key} vanished")))?;
            return decode_outcomes(&stored).map(|outcomes| (outcomes, true));
        }
        Ok((outcomes.iter().map(|o| o.as_ref().err().map(ToString::to_string)).collect(), false))
    }

    pub(super) fn post_subsidies_keyed(
        &self,
        rows: &[SubsidyRow],
        key: Option<u64>,
    ) -> Result<(Vec<Result<(), ControlError>>, bool), ControlError> {
        if rows.len() > SUBSIDY_BATCH_ROWS_MAX {
            return Err(ControlError::BatchTooLarge {
                rows: rows.len(),
                max: SUBSIDY_BATCH_ROWS_MAX,
            });
        }
        let mut outcomes: Vec<Result<(), ControlError>> = Vec::with_capacity(rows.len());
        let mut accounts: Vec<Arc<CardAccount>> = Vec::new();
        let mut row_accounts = Vec::with_capacity(rows.len());
        for row in rows {
            let account = if (1..=i64::from(u32::MAX)).contains(&row.amount_fen) {
                self.current(row.card_number, "post a subsidy")
            } else {
                Err(ControlError::InvalidAmount(row.amount_fen))
            };
            match account {
                Ok(account) => {
                    row_accounts.push(Some(Arc::clone(&account)));
                    accounts.push(account);
                    outcomes.push(Ok(()));
                }
                Err(error) => {
                    row_accounts.push(None);
                    outcomes.push(Err(error));
                }
            }
        }
        // Lock every account once, in account order (the order every multi-card
        // operation takes them in), then the control journal.
        accounts.sort_by_key(|account| account.number);
        accounts.dedup_by_key(|account| account.number);
        let mut guards: HashMap<u64, std::sync::MutexGuard<'_, AccountState>> =
            accounts.iter().map(|account| (account.number, account.lock())).collect();
        let mut transfers = Vec::new();
        let mut credits = Vec::new();
        for ((row, account), outcome) in rows.iter().zip(&row_accounts).zip(&mut outcomes) {
            let Some(account) = account else { continue };
            let Some(state) = guards.get(&account.number) else { continue };
            if let Err(error) = not_closed(state, row.card_number, "post a subsidy") {
                *outcome = Err(error);
                continue;
            }
            transfers.push(ControlTransfer {
                debit: AccountId::single(AccountKind::SubsidyFunding),
                credit: match row.purse {
                    Purse::Main => AccountId::card(account.number),
                    Purse::Restricted => AccountId::card_restricted(account.number),
                },
                amount_fen: row.amount_fen,
                kind: TransferKind::Subsidy,
                card_number: row.card_number,
            });
            credits.push((account.number, row.purse, row.amount_fen));
        }
        if transfers.is_empty() && key.is_none() {
            return Ok((outcomes, false));
        }
        let mut control = self.control();
        let marker = match key {
            Some(key) => {
                let store = self.store();
                if store.db().get_cf(store.cf(CF_CONTROL), once_key(key))?.is_some() {
                    return Ok((outcomes, true));
                }
                let words: Vec<Option<String>> =
                    outcomes.iter().map(|o| o.as_ref().err().map(ToString::to_string)).collect();
                Some((once_key(key), serde_json::to_vec(&words).unwrap_or_default()))
            }
            None => None,
        };
        self.commit_control(&mut control, &[], &transfers, |write, cf| {
            if let Some((marker_key, value)) = &marker {
                write.put_cf(cf, marker_key, value);
            }
        })?;
        drop(control);
        for (account_number, purse, amount_fen) in credits {
            if let Some(state) = guards.get_mut(&account_number) {
                match purse {
                    Purse::Main => state.balance_fen += amount_fen,
                    Purse::Restricted => state.restricted_fen += amount_fen,
                }
            }
        }
        Ok((outcomes, false))
    }

    /// Takes back what is left in a card account's restricted purse at term end
    /// (清零): one transfer from the purse to subsidy funding. Returns the fen moved
    /// (0: the purse was empty and nothing was written).
    ///
    /// # Errors
    /// [`ControlError::UnknownCard`] for an account that is not a card's, or a failed
    /// write (then nothing moved).
    pub fn expire_restricted(&self, account_number: u64) -> Result<i64, ControlError> {
        let account = self
            .shared
            .cards
            .account(account_number)
            .ok_or(ControlError::UnknownCard(account_number))?;
        if account.in_doubt() {
            return Err(ControlError::InDoubt(account_number));
        }
        let mut state = account.lock();
        let fen = state.restricted_fen;
        if fen <= 0 {
            return Ok(0);
        }
        let transfer = ControlTransfer {
            debit: AccountId::card_restricted(account_number),
            credit: AccountId::single(AccountKind::SubsidyFunding),
            amount_fen: fen,
            kind: TransferKind::SubsidyExpiry,
            card_number: 0,
        };
        let mut control = self.control();
        self.commit_control(&mut control, &[], &[transfer], |_, _| {})?;
        drop(control);
        state.restricted_fen = 0;
        Ok(fen)
    }

    /// The card accounts whose restricted purse holds money, in account order, with
    /// what each holds.
    #[must_use]
    pub fn restricted_purses(&self) -> Vec<(u64, i64)> {
        let mut out: Vec<(u64, i64)> = self
            .shared
            .cards
            .accounts()
            .iter()
            .map(|account| (account.number, account.lock().restricted_fen))
            .filter(|(_, fen)| *fen > 0)
            .collect();
        out.sort_unstable();
        out
    }
}

/// One row of a subsidy batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubsidyRow {
    /// The card credited.
    pub card_number: u64,
    /// Amount in fen, positive.
    pub amount_fen: i64,
    /// The purse credited.
    pub purse: Purse,
}

/// The control key of a batch posted exactly once under `key`.
pub(super) fn once_key(key: u64) -> Vec<u8> {
    prefixed_key(control_key::ONCE, &key.to_be_bytes())
}

pub(super) fn decode_outcomes(bytes: &[u8]) -> Result<Vec<Option<String>>, ControlError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ControlError::Corrupt(format!("batch outcome: {error}")))
}

/// Refuses an action on a closed card.
pub(super) fn not_closed(
    state: &AccountState,
    card: u64,
    action: &'static str,
) -> Result<(), ControlError> {
    if state.state == CardState::Closed {
        return Err(ControlError::NotAllowed { card, state: state.state, action });
    }
    Ok(())
}

pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), ControlError> {
    if name.trim().is_empty() || name.len() > NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(ControlError::InvalidName(what));
    }
    Ok(())
}

/// Writes a card account's record.
pub(super) fn put_account(write: &mut WriteBatch, cf: &ColumnFamily, record: &AccountRecord) {
    let key = prefixed_key(control_key::ACCOUNT, &record.account_number.to_be_bytes());
    write.put_cf(cf, key, json(record));
}

/// Writes a card number's entry: its account, and when it was replaced (0 if current).
pub(super) fn put_card(
    write: &mut WriteBatch,
    cf: &ColumnFamily,
    card_number: u64,
    account_number: u64,
    replaced_at_ms: u64,
) {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&account_number.to_be_bytes());
    value[8..].copy_from_slice(&replaced_at_ms.to_be_bytes());
    write.put_cf(cf, prefixed_key(control_key::CARD, &card_number.to_be_bytes()), value);
}

/// Writes blacklist entry `version`: the card, and whether it is now listed.
pub(super) fn put_blacklist(
    write: &mut WriteBatch,
    cf: &ColumnFamily,
    version: u64,
    card_number: u64,
    listed: bool,
) {
    let mut value = [0u8; 9];
    value[..8].copy_from_slice(&card_number.to_be_bytes());
    value[8] = u8::from(listed);
    write.put_cf(cf, prefixed_key(control_key::BLACKLIST, &version.to_be_bytes()), value);
}
