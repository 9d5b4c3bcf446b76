//! The business date and the day cutover.

use super::*;

/// What a day cutover did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutover {
    /// The last closed date: it and every date before it take no more transfers.
    pub closed_through: BusinessDate,
    /// The open date.
    pub open: BusinessDate,
    /// Whether this call turned the day (false: it had turned already).
    pub changed: bool,
}

impl Ledger {
    /// The business date transfers are stamped with now.
    #[must_use]
    pub fn business_date(&self) -> BusinessDate {
        self.shared.business_date()
    }

    /// The last closed business date: settlement may run for it and any before it.
    #[must_use]
    pub fn closed_through(&self) -> BusinessDate {
        self.shared.closed_through()
    }

    /// The day cutover (日切) for `date`: closes it and opens the next day, early if the
    /// clock has not reached the turn yet. Repeat-safe: closing a date already closed
    /// changes nothing and says so.
    ///
    /// # Errors
    /// [`ControlError::DateNotOpen`] for a date after the open one, or one the clock
    /// has not reached (a day can close early, but not before it has begun); a failed
    /// write.
    pub fn cutover(&self, date: BusinessDate) -> Result<Cutover, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let open = self.shared.open_date();
        if date < open {
            return Ok(Cutover { closed_through: self.closed_through(), open, changed: false });
        }
        if date > open || date > self.shared.config.clock_date() {
            return Err(ControlError::DateNotOpen { date, open });
        }
        self.turn(date.next())
    }

    /// The scheduled cutover: if the clock has passed the turn of the open date,
    /// closes every date before the clock's. `None` if the day has not turned.
    ///
    /// # Errors
    /// A failed write.
    pub fn cutover_due(&self) -> Result<Option<Cutover>, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let today = self.shared.config.clock_date();
        if today <= self.shared.open_date() {
            return Ok(None);
        }
        self.turn(today).map(Some)
    }

    /// Opens `date`, closing every date before it: a cutover over several days at
    /// once. For tests and for a campus brought back after days away.
    ///
    /// # Errors
    /// [`ControlError::InvalidDate`] for a date before the open one; a failed write.
    pub fn set_business_date(&self, date: BusinessDate) -> Result<Cutover, ControlError> {
        let _turning = self.shared.cutover.lock().unwrap_or_else(PoisonError::into_inner);
        let open = self.shared.open_date();
        match date.cmp(&open) {
            std::cmp::Ordering::Less => Err(ControlError::InvalidDate(date.to_yyyymmdd())),
            std::cmp::Ordering::Equal => {
                Ok(Cutover { closed_through: self.closed_through(), open, changed: false })
            }
            std::cmp::Ordering::Greater => self.turn(date),
        }
    }

    /// Moves the open date to `open` and closes the days before it. The caller holds
    /// the cutover lock. The open date is stored first; then every shard's writer and
    /// the control plane are waited for once, so no batch that read the old date is
    /// still being written; only then are the old days closed in memory, where
    /// settlement looks.
    pub(super) fn turn(&self, open: BusinessDate) -> Result<Cutover, ControlError> {
        let shared = &self.shared;
        let meta = shared.store.cf(CF_META);
        let mut write = WriteBatch::default();
        write.put_cf(meta, KEY_BUSINESS_DATE, open.to_yyyymmdd().to_be_bytes());
        shared.store.write_synced(CONTROL_JOURNAL, write)?;
        shared.business_date.store(open.to_yyyymmdd(), Ordering::Release);
        for stats in &self.stats {
            drop(stats.batch_gate.lock().unwrap_or_else(PoisonError::into_inner));
        }
        drop(self.control());
        shared.persist_dates(open)?;
        self.activate_merchants(open)?;
        let cutover = Cutover { closed_through: open.previous(), open, changed: true };
        tracing::info!(closed_through = %cutover.closed_through, open = %open, "day cutover");
        shared.metrics.business_date.set(i64::from(open.to_yyyymmdd()));
        Ok(cutover)
    }
}
