//! Merchants and terminals: who may post, for whom, through which shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
}

/// A terminal as the control column family stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalRecord {
    /// The terminal id.
    pub id: u32,
    /// The merchant it posts for.
    pub merchant_id: u32,
    /// The terminal key, hex.
    pub key: String,
    /// A disabled terminal is refused.
    pub enabled: bool,
}

/// A terminal in memory: its record, and what its shard publishes about it.
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
    /// Its key.
    pub key: TerminalKey,
    /// Whether it may post.
    pub enabled: AtomicBool,
    /// The highest sequence its shard has answered, published for sign-on.
    pub last_sequence: AtomicU64,
    /// The blacklist version it last said it holds.
    pub blacklist_version: AtomicU64,
}

impl Terminal {
    /// Whether it may post.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

/// Every merchant and terminal, in memory.
#[derive(Debug, Default)]
pub struct Directory {
    merchants: RwLock<HashMap<u32, Arc<MerchantRecord>>>,
    terminals: RwLock<HashMap<u32, Arc<Terminal>>>,
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

    /// Adds or replaces a merchant.
    pub fn insert_merchant(&self, merchant: MerchantRecord) {
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
