//! Cards, card accounts and the limits at the card.
//!
//! A cardholder has one card account (卡账户) and, at any time, one current card.
//! Reissue gives the account a new card number; the old number stays in the table,
//! pointing at the account, so a purchase with it is refused as replaced rather than
//! unknown. Each account's money and state sit behind one small mutex: it is the single
//! authority for the card's available balance across every shard, and a purchase's
//! checks (state, expiry, limits, PIN, funds) and its debit happen under one lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use onecard_protocol::CardState;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::date::BusinessDate;

/// A card type, which sets the default limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardType {
    /// An undergraduate or graduate student.
    Student,
    /// Faculty and staff.
    Staff,
    /// A visitor or short-term card.
    Temporary,
}

impl CardType {
    /// The card centre's defaults for this type.
    #[must_use]
    pub const fn default_limits(self) -> Limits {
        match self {
            Self::Student => Limits {
                transaction_fen_max: 20_000,
                daily_fen_max: 50_000,
                no_pin_fen_max: 5_000,
                balance_fen_max: 100_000,
            },
            Self::Staff => Limits {
                transaction_fen_max: 50_000,
                daily_fen_max: 100_000,
                no_pin_fen_max: 10_000,
                balance_fen_max: 500_000,
            },
            Self::Temporary => Limits {
                transaction_fen_max: 10_000,
                daily_fen_max: 20_000,
                no_pin_fen_max: 2_000,
                balance_fen_max: 50_000,
            },
        }
    }
}

/// One of a card account's two purses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purse {
    /// The main purse: top-ups, refunds, general subsidies.
    Main,
    /// The restricted purse: spendable only at utility merchants, paid from first
    /// there, cleared at term end.
    Restricted,
}

/// The limits a purchase is held to at the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most one purchase may take (单笔限额).
    pub transaction_fen_max: i64,
    /// Most the card may spend in one business date (日累计限额).
    pub daily_fen_max: i64,
    /// Above this a purchase must carry a PIN (小额免密).
    pub no_pin_fen_max: i64,
    /// Most the main purse may hold; top-ups beyond it are refused.
    pub balance_fen_max: i64,
}

/// Per-card overrides of the type's defaults; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Overrides [`Limits::transaction_fen_max`].
    pub transaction_fen_max: Option<i64>,
    /// Overrides [`Limits::daily_fen_max`].
    pub daily_fen_max: Option<i64>,
    /// Overrides [`Limits::no_pin_fen_max`].
    pub no_pin_fen_max: Option<i64>,
    /// Overrides [`Limits::balance_fen_max`].
    pub balance_fen_max: Option<i64>,
}

impl LimitOverrides {
    /// The limits in force for a card of `card_type` with these overrides.
    #[must_use]
    pub fn apply(&self, card_type: CardType) -> Limits {
        let base = card_type.default_limits();
        Limits {
            transaction_fen_max: self.transaction_fen_max.unwrap_or(base.transaction_fen_max),
            daily_fen_max: self.daily_fen_max.unwrap_or(base.daily_fen_max),
            no_pin_fen_max: self.no_pin_fen_max.unwrap_or(base.no_pin_fen_max),
            balance_fen_max: self.balance_fen_max.unwrap_or(base.balance_fen_max),
        }
    }

    /// Whether every override is a sensible amount (none negative).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        [self.transaction_fen_max, self.daily_fen_max, self.no_pin_fen_max, self.balance_fen_max]
            .into_iter()
            .flatten()
            .all(|fen| fen >= 0)
    }
}

/// A PIN stored as a salted SHA-256. A 6-digit PIN cannot resist an offline search
/// of any hash, so the defence is that the hashes never leave the server and that a
/// card locks after [`crate::limits::PIN_FAILURES_MAX`] wrong PINs in a row.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinHash {
    /// 16 random bytes, hex.
    salt: String,
    /// SHA-256 of label, salt and the PIN's ASCII digits, hex.
    hash: String,
}

impl PinHash {
    const LABEL: &'static [u8] = b"onecard card pin v1";

    /// Hashes `pin` under a fresh random salt.
    ///
    /// # Errors
    /// If the operating system has no randomness to give.
    pub fn new(pin: &onecard_protocol::Pin) -> Result<Self, getrandom::Error> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)?;
        Ok(Self { salt: hex::encode(salt), hash: hex::encode(Self::digest(&salt, pin)) })
    }

    fn digest(salt: &[u8], pin: &onecard_protocol::Pin) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(Self::LABEL);
        hasher.update(salt);
        hasher.update(pin.as_ascii().as_slice());
        hasher.finalize().into()
    }

    /// Whether `pin` is the one hashed, compared in constant time.
    #[must_use]
    pub fn matches(&self, pin: &onecard_protocol::Pin) -> bool {
        let (Ok(salt), Ok(stored)) = (hex::decode(&self.salt), hex::decode(&self.hash)) else {
            return false;
        };
        bool::from(Self::digest(&salt, pin).as_slice().ct_eq(&stored))
    }
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

/// The persisted, non-money part of a card account, kept in the control column family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRecord {
    /// The card account number (also the number of its two purse accounts).
    pub account_number: u64,
    /// The cardholder's student or staff number.
    pub holder_id: String,
    /// The cardholder's name.
    pub holder_name: String,
    /// Sets the default limits.
    pub card_type: CardType,
    /// The current card.
    pub card_number: u64,
    /// Every card number this account had before, oldest first.
    pub replaced_cards: Vec<u64>,
    /// The card state (wire number).
    pub state: u8,
    /// When the state last changed, ms since the Unix epoch.
    pub state_changed_at_ms: u64,
    /// The last business date the card works.
    pub expiry_date: u32,
    /// Per-card limit overrides.
    pub overrides: LimitOverrides,
    /// The PIN, if one is set.
    pub pin: Option<PinHash>,
    /// The deposit held, in fen.
    pub deposit_fen: i64,
}

/// The money and state of one card account, under its mutex.
#[derive(Debug, Clone)]
pub struct AccountState {
    /// Persisted fields.
    pub record: AccountRecord,
    /// The decoded card state.
    pub state: CardState,
    /// Limits in force.
    pub limits: Limits,
    /// Main purse, available: committed balance less debits reserved by batches in
    /// flight.
    pub balance_fen: i64,
    /// Restricted purse, available, likewise.
    pub restricted_fen: i64,
    /// The business date `spent_fen` counts for.
    pub spent_date: u32,
    /// Purchases on `spent_date`, for the daily limit.
    pub spent_fen: i64,
    /// Wrong PINs in a row.
    pub pin_failures: u32,
}

impl AccountState {
    /// Builds the in-memory state from its record and committed money.
    #[must_use]
    pub fn new(record: AccountRecord, money: CardMoney) -> Self {
        let state = CardState::from_wire(record.state).unwrap_or(CardState::Frozen);
        let limits = record.overrides.apply(record.card_type);
        Self {
            record,
            state,
            limits,
            balance_fen: money.balance_fen,
            restricted_fen: money.restricted_fen,
            spent_date: money.spent_date,
            spent_fen: money.spent_fen,
            pin_failures: 0,
        }
    }

    /// What the card has spent on `date`.
    #[must_use]
    pub const fn spent_on(&self, date: BusinessDate) -> i64 {
        if self.spent_date == date.to_yyyymmdd() { self.spent_fen } else { 0 }
    }

    /// Adds `fen` (negative to give back) to the spending of `date`.
    pub fn add_spent(&mut self, date: BusinessDate, fen: i64) {
        if self.spent_date == date.to_yyyymmdd() {
            self.spent_fen += fen;
        } else if self.spent_date < date.to_yyyymmdd() {
            self.spent_date = date.to_yyyymmdd();
            self.spent_fen = fen;
        }
    }
}

/// The committed money of a card account, as the balances column family holds it.
///
/// Stored as 32 bytes: main purse, restricted purse, spent date, spent — each an
/// 8-byte little-endian integer. Shards add to it with a merge operand of the same
/// shape, so writes from different shards commute (see [`crate::store`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CardMoney {
    /// Main purse.
    pub balance_fen: i64,
    /// Restricted purse.
    pub restricted_fen: i64,
    /// The business date of `spent_fen`.
    pub spent_date: u32,
    /// Purchases on `spent_date`.
    pub spent_fen: i64,
}

impl CardMoney {
    /// Bytes in the stored form.
    pub const BYTES: usize = 32;

    /// The stored form.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.balance_fen.to_le_bytes());
        out[8..16].copy_from_slice(&self.restricted_fen.to_le_bytes());
        out[16..24].copy_from_slice(&u64::from(self.spent_date).to_le_bytes());
        out[24..].copy_from_slice(&self.spent_fen.to_le_bytes());
        out
    }

    /// Reads the stored form.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        let word = |i: usize| <[u8; 8]>::try_from(&bytes[i..i + 8]).expect("8 bytes");
        Some(Self {
            balance_fen: i64::from_le_bytes(word(0)),
            restricted_fen: i64::from_le_bytes(word(8)),
            spent_date: u32::try_from(u64::from_le_bytes(word(16))).ok()?,
            spent_fen: i64::from_le_bytes(word(24)),
        })
    }

    /// Folds another movement in: purses add; spending adds within a date and the
    /// later date wins. The fold is associative and commutative, so the order in
    /// which shards' commits land does not matter.
    #[must_use]
    pub const fn merge(self, other: Self) -> Self {
        let (spent_date, spent_fen) = if self.spent_date == other.spent_date {
            (self.spent_date, self.spent_fen + other.spent_fen)
        } else if self.spent_date > other.spent_date {
            (self.spent_date, self.spent_fen)
        } else {
            (other.spent_date, other.spent_fen)
        };
        Self {
            balance_fen: self.balance_fen + other.balance_fen,
            restricted_fen: self.restricted_fen + other.restricted_fen,
            spent_date,
            spent_fen,
        }
    }
}

/// One card account in memory.
#[derive(Debug)]
pub struct CardAccount {
    /// The card account number.
    pub number: u64,
    state: Mutex<AccountState>,
    /// A write on this account failed: it may or may not be on disk, so the state in
    /// memory may not be the account's. Set without the lock (the writer
    /// holds it); cleared only by a restart, which reads the disk.
    in_doubt: AtomicBool,
}

impl CardAccount {
    /// Wraps a state.
    #[must_use]
    pub fn new(state: AccountState) -> Self {
        Self {
            number: state.record.account_number,
            state: Mutex::new(state),
            in_doubt: AtomicBool::new(false),
        }
    }

    /// Whether a failed write left this account's memory in doubt.
    #[must_use]
    pub fn in_doubt(&self) -> bool {
        self.in_doubt.load(Ordering::Acquire)
    }

    /// Locks the account. Nothing panics while holding it, so a poisoned lock still
    /// holds a consistent state and is taken as is.
    pub fn lock(&self) -> MutexGuard<'_, AccountState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A card number's entry: the account, and when the number was replaced (0 while it
/// is the account's current card).
#[derive(Debug, Clone)]
pub struct CardEntry {
    /// The account.
    pub account: Arc<CardAccount>,
    /// When a reissue retired this number, ms since the Unix epoch; 0 if current.
    pub replaced_at_ms: u64,
}

/// Stripes of a [`Striped`] map: enough that two shards looking up cards rarely read
/// the same lock.
const STRIPE_BITS: u32 = 6;

/// A map from u64 keys split over `2^STRIPE_BITS` read-write locks, each on its own
/// cache line. Every purchase looks its card up here; with one lock, every lookup on
/// every shard wrote the same cache line (the lock's reader count), and a shared
/// campus's lunch peak spent 9% of its time on it (BENCHMARKS.md). Keys are card and
/// account numbers, which only the card centre adds, so an unkeyed fast hash is safe:
/// a terminal can look up any number, but cannot make the table's chains longer.
#[derive(Debug)]
struct Striped<V> {
    stripes: Box<[crossbeam::utils::CachePadded<Stripe<V>>]>,
}

/// One lock of a [`Striped`] map and the keys that hash to it.
type Stripe<V> = RwLock<HashMap<u64, V, FxBuildHasher>>;

impl<V> Default for Striped<V> {
    fn default() -> Self {
        Self { stripes: (0..1 << STRIPE_BITS).map(|_| Default::default()).collect() }
    }
}

impl<V: Clone> Striped<V> {
    fn stripe(&self, key: u64) -> &Stripe<V> {
        let index = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - STRIPE_BITS);
        &self.stripes[usize::try_from(index).unwrap_or(0)]
    }

    fn get(&self, key: u64) -> Option<V> {
        self.stripe(key).read().unwrap_or_else(PoisonError::into_inner).get(&key).cloned()
    }

    fn insert(&self, key: u64, value: V) {
        self.stripe(key).write().unwrap_or_else(PoisonError::into_inner).insert(key, value);
    }

    fn values(&self) -> Vec<V> {
        let mut values = Vec::new();
        for stripe in &self.stripes {
            values.extend(stripe.read().unwrap_or_else(PoisonError::into_inner).values().cloned());
        }
        values
    }

    fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

/// Every card number and account, in memory.
#[derive(Debug, Default)]
pub struct CardTable {
    by_card: Striped<CardEntry>,
    by_account: Striped<Arc<CardAccount>>,
    /// Whether any account is in doubt: the shards' one load on the common path.
    any_in_doubt: AtomicBool,
    /// How many accounts are in doubt.
    in_doubt_count: AtomicU64,
}

impl CardTable {
    /// Marks `account_number` in doubt ([`CardAccount::in_doubt`]) until restart.
    /// Returns whether it is a card account this table holds.
    pub fn put_in_doubt(&self, account_number: u64) -> bool {
        let Some(account) = self.account(account_number) else { return false };
        self.put_account_in_doubt(&account);
        true
    }

    /// Marks `account`, one of this table's, in doubt until restart.
    pub fn put_account_in_doubt(&self, account: &CardAccount) {
        if !account.in_doubt.swap(true, Ordering::AcqRel) {
            self.in_doubt_count.fetch_add(1, Ordering::Relaxed);
        }
        self.any_in_doubt.store(true, Ordering::Release);
    }

    /// How many card accounts are in doubt.
    #[must_use]
    pub fn in_doubt_count(&self) -> u64 {
        self.in_doubt_count.load(Ordering::Relaxed)
    }

    /// Whether card number `card_number` belongs to an account in doubt.
    #[must_use]
    pub fn card_in_doubt(&self, card_number: u64) -> bool {
        self.any_in_doubt.load(Ordering::Acquire)
            && self.card(card_number).is_some_and(|card| card.account.in_doubt())
    }

    /// The entry for a card number.
    #[must_use]
    pub fn card(&self, card_number: u64) -> Option<CardEntry> {
        self.by_card.get(card_number)
    }

    /// The account numbered `account_number`.
    #[must_use]
    pub fn account(&self, account_number: u64) -> Option<Arc<CardAccount>> {
        self.by_account.get(account_number)
    }

    /// Adds or replaces a card number's entry.
    pub fn insert_card(&self, card_number: u64, entry: CardEntry) {
        self.by_account.insert(entry.account.number, Arc::clone(&entry.account));
        self.by_card.insert(card_number, entry);
    }

    /// Every account, for verification and restart.
    #[must_use]
    pub fn accounts(&self) -> Vec<Arc<CardAccount>> {
        self.by_account.values()
    }

    /// Number of card accounts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_account.len()
    }

    /// Whether there are no card accounts.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_money_merges_in_any_order() {
        let a = CardMoney {
            balance_fen: 100,
            restricted_fen: 5,
            spent_date: 20_260_901,
            spent_fen: 30,
        };
        let b = CardMoney {
            balance_fen: -40,
            restricted_fen: 0,
            spent_date: 20_260_902,
            spent_fen: 40,
        };
        let c =
            CardMoney { balance_fen: 7, restricted_fen: -5, spent_date: 20_260_902, spent_fen: 2 };
        let left = a.merge(b).merge(c);
        assert_eq!(left, c.merge(a).merge(b));
        assert_eq!(left, b.merge(c.merge(a)));
        assert_eq!(left.balance_fen, 67);
        assert_eq!((left.spent_date, left.spent_fen), (20_260_902, 42));
        assert_eq!(CardMoney::decode(&left.encode()), Some(left));
    }

    #[test]
    fn pins_match_only_themselves() {
        let pin = onecard_protocol::Pin::new("123456").expect("pin");
        let other = onecard_protocol::Pin::new("123457").expect("pin");
        let hash = PinHash::new(&pin).expect("random");
        assert!(hash.matches(&pin));
        assert!(!hash.matches(&other));
        assert_ne!(hash, PinHash::new(&pin).expect("random"), "salted");
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let overrides = LimitOverrides { daily_fen_max: Some(1), ..LimitOverrides::default() };
        let limits = overrides.apply(CardType::Student);
        assert_eq!(limits.daily_fen_max, 1);
        assert_eq!(
            limits.transaction_fen_max,
            CardType::Student.default_limits().transaction_fen_max
        );
    }
}
