//! Merchants and terminals: creating, enabling, commission rates, keys.

use super::*;

impl Ledger {
    /// Creates a merchant on the next shard in turn.
    ///
    /// # Errors
    /// [`ControlError`] for a bad name or rate, or a failed write.
    pub fn create_merchant(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
    ) -> Result<MerchantRecord, ControlError> {
        self.create_merchant_from(name, category, commission_rate, None)
    }

    /// Onboards a merchant (the onboarding workflow's effect): created now, disabled,
    /// and enabled by the cutover that opens the next business date. Returns the
    /// record and that date.
    ///
    /// # Errors
    /// As [`Ledger::create_merchant`].
    pub fn onboard_merchant(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
    ) -> Result<(MerchantRecord, BusinessDate), ControlError> {
        let from = self.business_date().next();
        let record = self.create_merchant_from(name, category, commission_rate, Some(from))?;
        Ok((record, from))
    }

    /// Enables every onboarded merchant whose first business date is `open` or before.
    pub(super) fn activate_merchants(&self, open: BusinessDate) -> Result<(), ControlError> {
        for merchant in self.shared.directory.merchants() {
            if merchant.active_from.is_some_and(|from| from <= open.to_yyyymmdd()) {
                self.update_merchant(merchant.id, |record| {
                    record.enabled = true;
                    record.active_from = None;
                })?;
                tracing::info!(merchant = merchant.id, "onboarded merchant enabled");
            }
        }
        Ok(())
    }

    pub(super) fn create_merchant_from(
        &self,
        name: &str,
        category: MerchantCategory,
        commission_rate: Decimal,
        active_from: Option<BusinessDate>,
    ) -> Result<MerchantRecord, ControlError> {
        check_name("merchant name", name)?;
        if commission_rate < Decimal::ZERO || commission_rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(commission_rate));
        }
        let mut control = self.control();
        let id = control.next_merchant;
        let shard = u8::try_from(id % u32::from(self.shards())).unwrap_or(0);
        let record = MerchantRecord {
            id,
            name: name.to_owned(),
            category,
            shard,
            commission_rate,
            enabled: active_from.is_none(),
            rate_changes: Vec::new(),
            active_from: active_from.map(BusinessDate::to_yyyymmdd),
        };
        let mut write = WriteBatch::default();
        write.put_cf(
            self.shared.store.cf(CF_CONTROL),
            prefixed_key(control_key::MERCHANT, &id.to_be_bytes()),
            json(&record),
        );
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        control.next_merchant += 1;
        self.shared.directory.insert_merchant(record.clone());
        Ok(record)
    }

    /// Creates a terminal for a merchant with its key.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed write.
    pub fn create_terminal(
        &self,
        merchant_id: u32,
        key: &TerminalKey,
    ) -> Result<TerminalRecord, ControlError> {
        let merchant = self
            .shared
            .directory
            .merchant(merchant_id)
            .ok_or(ControlError::UnknownMerchant(merchant_id))?;
        let mut control = self.control();
        let id = control.next_terminal;
        let record = TerminalRecord {
            id,
            merchant_id,
            sealed_key: self.config().master_key.seal(id, key).map_err(|_| ControlError::Random)?,
            clear_key: None,
            enabled: true,
        };
        self.write_terminal_record(&record)?;
        control.next_terminal += 1;
        let terminal = Terminal::new(
            id,
            &merchant,
            self.shared.directory.merchant_flag(merchant.id),
            key.clone(),
            true,
        );
        self.shared.directory.insert_terminal(terminal);
        Ok(record)
    }

    /// Enables or disables a terminal. Disabling ends its open sessions.
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed write.
    pub fn set_terminal_enabled(
        &self,
        terminal_id: u32,
        enabled: bool,
    ) -> Result<(), ControlError> {
        let terminal = self.known_terminal(terminal_id)?;
        let _control = self.control();
        self.write_terminal(&terminal, &terminal.key(), enabled)?;
        terminal.set_enabled(enabled);
        Ok(())
    }

    /// Installs a new key for a terminal (the card centre loads the same key into the
    /// device). Sessions signed on under the old key end; the terminal signs on again.
    ///
    /// # Errors
    /// [`ControlError::UnknownTerminal`], or a failed write.
    pub fn rotate_terminal_key(
        &self,
        terminal_id: u32,
        key: &TerminalKey,
    ) -> Result<(), ControlError> {
        let terminal = self.known_terminal(terminal_id)?;
        let _control = self.control();
        self.write_terminal(&terminal, key, terminal.enabled.load(Ordering::Acquire))?;
        terminal.set_key(key.clone());
        Ok(())
    }

    pub(super) fn known_terminal(&self, terminal_id: u32) -> Result<Arc<Terminal>, ControlError> {
        self.shared
            .directory
            .terminal(terminal_id)
            .ok_or(ControlError::UnknownTerminal(terminal_id))
    }

    pub(super) fn write_terminal(
        &self,
        terminal: &Terminal,
        key: &TerminalKey,
        enabled: bool,
    ) -> Result<(), ControlError> {
        let record = TerminalRecord {
            id: terminal.id,
            merchant_id: terminal.merchant_id,
            sealed_key: self
                .config()
                .master_key
                .seal(terminal.id, key)
                .map_err(|_| ControlError::Random)?,
            clear_key: None,
            enabled,
        };
        self.write_terminal_record(&record)
    }

    pub(super) fn write_terminal_record(
        &self,
        record: &TerminalRecord,
    ) -> Result<(), ControlError> {
        let key = prefixed_key(control_key::TERMINAL, &record.id.to_be_bytes());
        let mut write = WriteBatch::default();
        write.put_cf(self.shared.store.cf(CF_CONTROL), key, json(record));
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        Ok(())
    }

    /// Sets a merchant's commission rate from today's business date on (dates already
    /// closed keep the rate they had); it replaces any change scheduled for later.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], a rate outside 0 to 1, or a failed write.
    pub fn set_commission_rate(
        &self,
        merchant_id: u32,
        commission_rate: Decimal,
    ) -> Result<MerchantRecord, ControlError> {
        if commission_rate < Decimal::ZERO || commission_rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(commission_rate));
        }
        let from = self.business_date().to_yyyymmdd();
        self.update_merchant(merchant_id, |record| {
            record.rate_changes.retain(|change| change.from < from);
            record.rate_changes.push(crate::directory::RateChange { from, rate: commission_rate });
        })
    }

    /// Schedules a merchant's new commission rate from the next business date on (an
    /// approved change takes effect the next day; settlement of today keeps today's
    /// rate). Scheduling the same rate from the same date again changes nothing.
    /// Returns the record and the date the rate applies from.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], a rate outside 0 to 1, or a failed write.
    pub fn schedule_commission_rate(
        &self,
        merchant_id: u32,
        rate: Decimal,
    ) -> Result<(MerchantRecord, BusinessDate), ControlError> {
        if rate < Decimal::ZERO || rate >= Decimal::ONE {
            return Err(ControlError::InvalidRate(rate));
        }
        let from = self.business_date().next();
        let record = self.update_merchant(merchant_id, |record| {
            let change = crate::directory::RateChange { from: from.to_yyyymmdd(), rate };
            // A later date replaces any change already scheduled on or after it.
            record.rate_changes.retain(|c| c.from < change.from);
            record.rate_changes.push(change);
        })?;
        Ok((record, from))
    }

    /// Enables or disables a merchant: a disabled merchant's terminals are all
    /// refused, and their sessions end.
    ///
    /// # Errors
    /// [`ControlError::UnknownMerchant`], or a failed write.
    pub fn set_merchant_enabled(
        &self,
        merchant_id: u32,
        enabled: bool,
    ) -> Result<MerchantRecord, ControlError> {
        let record = self.update_merchant(merchant_id, |record| record.enabled = enabled)?;
        if !enabled {
            for terminal in self.shared.directory.terminals() {
                if terminal.merchant_id == merchant_id {
                    terminal.key_generation.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        Ok(record)
    }

    pub(super) fn update_merchant(
        &self,
        merchant_id: u32,
        change: impl FnOnce(&mut MerchantRecord),
    ) -> Result<MerchantRecord, ControlError> {
        let _control = self.control();
        let mut record = MerchantRecord::clone(
            &*self
                .shared
                .directory
                .merchant(merchant_id)
                .ok_or(ControlError::UnknownMerchant(merchant_id))?,
        );
        change(&mut record);
        let mut write = WriteBatch::default();
        write.put_cf(
            self.shared.store.cf(CF_CONTROL),
            prefixed_key(control_key::MERCHANT, &merchant_id.to_be_bytes()),
            json(&record),
        );
        self.shared.store.write_synced(CONTROL_JOURNAL, write)?;
        self.shared.directory.insert_merchant(record.clone());
        Ok(record)
    }

    /// The merchant `id`.
    #[must_use]
    pub fn merchant(&self, id: u32) -> Option<Arc<MerchantRecord>> {
        self.shared.directory.merchant(id)
    }

    /// The terminal `id`.
    #[must_use]
    pub fn terminal(&self, id: u32) -> Option<Arc<Terminal>> {
        self.shared.directory.terminal(id)
    }

    /// Every merchant.
    #[must_use]
    pub fn merchants(&self) -> Vec<Arc<MerchantRecord>> {
        self.shared.directory.merchants()
    }

    /// Every terminal.
    #[must_use]
    pub fn terminals(&self) -> Vec<Arc<Terminal>> {
        self.shared.directory.terminals()
    }
}
