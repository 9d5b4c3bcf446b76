//! Merchants and terminals: who may post, for whom, through which shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use onecard_protocol::TerminalKey;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// What a merchant sells, which decides which purse pays and whether it may take
/// top-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MerchantCategory {
    /// A canteen window or stall.
    Canteen,
    /// A campus shop.
    Shop,
    /// A laundry.
    Laundry,
    /// Hot water, electricity: the restricted purse pays here first.
    Utility,
    /// The card centre's counters and self-service kiosks: the only terminals that
    /// take top-ups.
    CardCentre,
}

/// A merchant as the control column family stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantRecord {
    /// The merchant id.
    pub id: u32,
    /// The name on the settlement file.
    pub name: String,
    /// What it sells.
    pub category: MerchantCategory,
    /// The shard that owns its accounts, terminals and journal.
    pub shard: u8,
    /// The university's share of its sales, a fraction (0.015 for 1.5%).
    pub commission_rate: Decimal,
    /// A disabled merchant's terminals are all refused.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Approved commission changes, each in force from its business date on, oldest
    /// first; before the first, `commission_rate` applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_changes: Vec<RateChange>,
    /// An onboarded merchant waits, disabled, until this business date (`yyyymmdd`);
    /// the day cutover that opens it enables the merchant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<u32>,
}

/// A commission rate in force from a business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateChange {
    /// The first business date it applies to, `yyyymmdd`.
    pub from: u32,
    /// The rate, a fraction.
    pub rate: Decimal,
}

impl MerchantRecord {
    /// The commission rate in force on business date `date` (`yyyymmdd`).
    #[must_use]
    pub fn rate_on(&self, date: u32) -> Decimal {
        self.rate_changes
            .iter()
            .rev()
            .find(|change| change.from <= date)
            .map_or(self.commission_rate, |change| change.rate)
    }
}

const fn enabled_by_default() -> bool {
    true
}

/// A terminal as the control column family stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalRecord {
    /// The terminal id.
    pub id: u32,
    /// The merchant it posts for.
    pub merchant_id: u32,
    /// The terminal key sealed with the master key, hex (`sealing`).
    #[serde(default)]
    pub sealed_key: String,
    /// The key in the clear, as builds before sealing stored it; the store's next
    /// open seals it and drops this.
    #[serde(default, rename = "key", skip_serializing_if = "Option::is_none")]
    pub clear_key: Option<String>,
    /// A disabled terminal is refused.
    pub enabled: bool,
}

/// A terminal in memory: its record, and what its shard and the front door publish
/// about it.
#[derive(Debug)]
pub struct Terminal {
    /// The terminal id.
    pub id: u32,
    /// The merchant it posts for.
    pub merchant_id: u32,
    /// The merchant's category.
    pub category: MerchantCategory,
    /// The shard that owns it.
    pub shard: u8,
    /// Its key; replaced when the card centre rotates it.
    key: RwLock<TerminalKey>,
    /// Bumped on every key rotation and every disable, so a session signed on under
    /// the old key (or while enabled) notices and ends.
    pub key_generation: AtomicU32,
    /// Whether it may post.
    pub enabled: AtomicBool,
    /// Whether its merchant may take payments; shared by the merchant's terminals.
    pub merchant_enabled: Arc<AtomicBool>,
    /// The highest sequence its shard has answered, published for sign-on.
    pub last_sequence: AtomicU64,
    /// The blacklist version it last said it holds.
    pub blacklist_version: AtomicU64,
    /// When a frame from it last arrived, ms since the epoch (0: never since start).
    pub last_seen_ms: AtomicU64,
    /// Its clock minus the server's at its last sign-on or heartbeat, ms.
    pub clock_skew_ms: AtomicI64,
    /// The software version it reported at sign-on.
    pub software_version: AtomicU32,
    /// Signed-on sessions it has open now (normally 0 or 1).
    pub sessions: AtomicU32,
}

impl Terminal {
    /// A terminal with nothing yet published about it.
    #[must_use]
    pub fn new(
        id: u32,
        merchant: &MerchantRecord,
        merchant_enabled: Arc<AtomicBool>,
        key: TerminalKey,
        enabled: bool,
    ) -> Self {
        Self {
            id,
            merchant_id: merchant.id,
            category: merchant.category,
            shard: merchant.shard,
            key: RwLock::new(key),
            key_generation: AtomicU32::new(0),
            enabled: AtomicBool::new(enabled),
            merchant_enabled,
            last_sequence: AtomicU64::new(0),
            blacklist_version: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(0),
            clock_skew_ms: AtomicI64::new(0),
            software_version: AtomicU32::new(0),
            sessions: AtomicU32::new(0),
        }
    }

    /// Whether it may post: it and its merchant are both enabled.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire) && self.merchant_enabled.load(Ordering::Acquire)
    }

    /// Its current key.
    #[must_use]
    pub fn key(&self) -> TerminalKey {
        self.key.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces its key and ends every session signed on under the old one.
    pub fn set_key(&self, key: TerminalKey) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = key;
        self.key_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Enables or disables it; disabling ends its sessions.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        if !enabled {
            self.key_generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Every merchant and terminal, in memory.
#[derive(Debug, Default)]
pub struct Directory {
    merchants: RwLock<HashMap<u32, Arc<MerchantRecord>>>,
    terminals: RwLock<HashMap<u32, Arc<Terminal>>>,
    /// Each merchant's enabled flag, shared with its terminals.
    merchant_flags: RwLock<HashMap<u32, Arc<AtomicBool>>>,
}

impl Directory {
    /// The merchant `id`.
    #[must_use]
    pub fn merchant(&self, id: u32) -> Option<Arc<MerchantRecord>> {
        self.merchants.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// The terminal `id`.
    #[must_use]
    pub fn terminal(&self, id: u32) -> Option<Arc<Terminal>> {
        self.terminals.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// The enabled flag merchant `id`'s terminals share (created enabled if new).
    #[must_use]
    pub fn merchant_flag(&self, id: u32) -> Arc<AtomicBool> {
        Arc::clone(
            self.merchant_flags
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_insert_with(|| Arc::new(AtomicBool::new(true))),
        )
    }

    /// Adds or replaces a merchant, and sets its terminals' shared enabled flag.
    pub fn insert_merchant(&self, merchant: MerchantRecord) {
        self.merchant_flag(merchant.id).store(merchant.enabled, Ordering::Release);
        self.merchants
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(merchant.id, Arc::new(merchant));
    }

    /// Adds or replaces a terminal.
    pub fn insert_terminal(&self, terminal: Terminal) {
        self.terminals
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(terminal.id, Arc::new(terminal));
    }

    /// Every merchant, by id.
    #[must_use]
    pub fn merchants(&self) -> Vec<Arc<MerchantRecord>> {
        let mut all: Vec<_> = self
            .merchants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|merchant| merchant.id);
        all
    }

    /// Every terminal, by id.
    #[must_use]
    pub fn terminals(&self) -> Vec<Arc<Terminal>> {
        let mut all: Vec<_> = self
            .terminals
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|terminal| terminal.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_in_force_is_the_latest_change_on_or_before_the_date() {
        let mut record = MerchantRecord {
            id: 1,
            name: "x".to_owned(),
            category: MerchantCategory::Canteen,
            shard: 0,
            commission_rate: Decimal::new(15, 3),
            enabled: true,
            rate_changes: Vec::new(),
            active_from: None,
        };
        assert_eq!(record.rate_on(20_260_901), Decimal::new(15, 3));
        record.rate_changes.push(RateChange { from: 20_260_902, rate: Decimal::new(2, 2) });
        record.rate_changes.push(RateChange { from: 20_260_910, rate: Decimal::new(1, 2) });
        assert_eq!(record.rate_on(20_260_901), Decimal::new(15, 3));
        assert_eq!(record.rate_on(20_260_902), Decimal::new(2, 2));
        assert_eq!(record.rate_on(20_260_909), Decimal::new(2, 2));
        assert_eq!(record.rate_on(20_261_231), Decimal::new(1, 2));
    }
}
