//! Merchant settlement (结算): what each merchant earned on a closed business date,
//! less the university's commission, and the transfers that pay it.
//!
//! A merchant's movements all live in its own shard's journal, and a date's batches
//! are contiguous there (each journal's dates only move forward, and its day-start key
//! names the first batch of each date), so settling a date reads each shard's slice of
//! that day once, all shards in parallel, plus the control journal's slice for
//! adjustments. Nothing else is read.
//!
//! For each merchant:
//! - purchases (online, offline and quarantined offline sales): count, fen, and
//!   distinct cards presented (人次);
//! - refunds and reversals: count and fen;
//! - adjustments: approved corrections to the merchant's account, signed;
//! - net sales = purchases − refunds − reversals + adjustments;
//! - commission = net sales × the merchant's rate, rounded half away from zero to the
//!   fen (half-up for a positive amount; a negative day mirrors a positive one);
//! - net payable = net sales − commission.
//!
//! Posting: one control batch with, per merchant, a commission transfer (merchant →
//! commission income) and a payout transfer (merchant → settlement payout), each
//! reversed in direction when negative and left out when zero, so the merchant's
//! account falls by exactly its net sales and holds only what is not yet settled. The
//! batch carries the settlement record in the same write: a date is settled once, and
//! settling it again returns the stored record without posting.

use std::collections::{BTreeMap, HashMap};

use onecard_protocol::MealPeriod;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use std::sync::PoisonError;

use crate::account::{AccountId, AccountKind};
pub use crate::date::MealHours;

use crate::date::{BusinessDate, DAY_MINUTES};
use crate::journal::{Batch, CONTROL_JOURNAL, RecordError, Transfer, TransferKind};
use crate::ledger::{ControlError, ControlTransfer, Ledger};
use crate::store::{CF_CONTROL, Store, control_key, journal_cf, prefixed_key, shard_key};

/// The four meal periods settlement breaks sales down by, in order.
pub const MEALS: [MealPeriod; 4] =
    [MealPeriod::Breakfast, MealPeriod::Lunch, MealPeriod::Dinner, MealPeriod::Night];

/// The name a meal period is written with in files and JSON.
#[must_use]
pub const fn meal_name(meal: MealPeriod) -> &'static str {
    match meal {
        MealPeriod::Breakfast => "breakfast",
        MealPeriod::Lunch => "lunch",
        MealPeriod::Dinner => "dinner",
        MealPeriod::Night => "night",
        _ => "unspecified",
    }
}

/// A count and a sum in fen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// How much, in fen.
    pub fen: i64,
}

impl Tally {
    fn add(&mut self, other: Self) {
        self.count += other.count;
        self.fen += other.fen;
    }
}

/// Sales for one merchant, terminal or meal period on one date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sales {
    /// Purchases (one per request, however many purses paid).
    pub purchases: Tally,
    /// Distinct cards that bought (人次).
    pub cardholders: u64,
    /// Refunds.
    pub refunds: Tally,
    /// Reversals.
    pub reversals: Tally,
    /// Approved adjustments, signed: positive credits the merchant.
    pub adjustments: Tally,
    /// Purchases − refunds − reversals + adjustments.
    pub net_fen: i64,
}

impl Sales {
    fn close(&mut self, cardholders: usize) {
        self.cardholders = cardholders as u64;
        self.net_fen =
            self.purchases.fen - self.refunds.fen - self.reversals.fen + self.adjustments.fen;
    }
}

/// One terminal's part of a merchant's day. Adjustments belong to the merchant, not a
/// terminal, so a merchant's net is its terminals' nets plus its adjustments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSales {
    /// The terminal.
    pub terminal_id: u32,
    /// Its sales.
    pub sales: Sales,
}

/// One meal period's part of a merchant's day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MealSales {
    /// `breakfast`, `lunch`, `dinner` or `night`.
    pub meal: String,
    /// Its sales.
    pub sales: Sales,
}

/// One merchant's settlement for one date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantSettlement {
    /// The merchant.
    pub merchant_id: u32,
    /// Its name, as on the day it was settled.
    pub name: String,
    /// Its shard.
    pub shard: u8,
    /// The commission rate applied, a fraction.
    pub commission_rate: Decimal,
    /// The day's sales.
    pub sales: Sales,
    /// The university's commission, fen.
    pub commission_fen: i64,
    /// What the merchant is paid, fen: net sales − commission.
    pub net_payable_fen: i64,
    /// By terminal, in terminal order; terminals with no movement are left out.
    pub terminals: Vec<TerminalSales>,
    /// By meal period, all four, in the order of the day.
    pub meals: Vec<MealSales>,
}

/// A business date's settlement, as stored when it was posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The business date settled, `yyyymmdd`.
    pub business_date: u32,
    /// When the settlement was posted, ms since the epoch.
    pub settled_at_ms: u64,
    /// The first payout or commission transfer posted (0 if the day had none).
    pub first_transfer_id: u64,
    /// Payout and commission transfers posted.
    pub transfer_count: u32,
    /// Every merchant that was enabled or had movement that day, by id.
    pub merchants: Vec<MerchantSettlement>,
}

/// A settlement's totals over all merchants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SettlementTotals {
    /// Merchants settled.
    pub merchants: u64,
    /// Purchases.
    pub purchases: Tally,
    /// Refunds.
    pub refunds: Tally,
    /// Reversals.
    pub reversals: Tally,
    /// Adjustments, signed.
    pub adjustments: Tally,
    /// Net sales.
    pub net_sales_fen: i64,
    /// Commission.
    pub commission_fen: i64,
    /// Net payable.
    pub net_payable_fen: i64,
}

impl Settlement {
    /// The business date settled.
    #[must_use]
    pub fn date(&self) -> Option<BusinessDate> {
        BusinessDate::from_yyyymmdd(self.business_date)
    }

    /// Totals over every merchant.
    #[must_use]
    pub fn totals(&self) -> SettlementTotals {
        let mut totals = SettlementTotals::default();
        for merchant in &self.merchants {
            totals.merchants += 1;
            totals.purchases.add(merchant.sales.purchases);
            totals.refunds.add(merchant.sales.refunds);
            totals.reversals.add(merchant.sales.reversals);
            totals.adjustments.add(merchant.sales.adjustments);
            totals.net_sales_fen += merchant.sales.net_fen;
            totals.commission_fen += merchant.commission_fen;
            totals.net_payable_fen += merchant.net_payable_fen;
        }
        totals
    }
}

/// The commission on `net_fen` at `rate`: rounded to the fen, half away from zero.
///
/// # Panics
/// Never for a rate the ledger accepts (0 to 1): the product fits an `i64`.
#[must_use]
pub fn commission_fen(net_fen: i64, rate: Decimal) -> i64 {
    let exact = Decimal::from(net_fen) * rate;
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(rounded).expect("commission within the net amount")
}

/// The transfers that settle one merchant: (debit, credit, fen, kind), amounts
/// positive. Their sum out of the merchant is exactly its net sales.
#[must_use]
pub fn settlement_legs(
    merchant: &MerchantSettlement,
) -> Vec<(AccountId, AccountId, i64, TransferKind)> {
    let account = AccountId::merchant(merchant.merchant_id);
    let mut legs = Vec::with_capacity(2);
    for (fen, other, kind) in [
        (
            merchant.commission_fen,
            AccountId::single(AccountKind::CommissionIncome),
            TransferKind::Commission,
        ),
        (
            merchant.net_payable_fen,
            AccountId::single(AccountKind::SettlementPayout),
            TransferKind::SettlementPayout,
        ),
    ] {
        match fen.signum() {
            1 => legs.push((account, other, fen, kind)),
            -1 => legs.push((other, account, -fen, kind)),
            _ => {}
        }
    }
    legs
}

/// What one date's movements look like to one merchant, terminal or meal.
///
/// Cards are pushed as they come and counted distinct once at the end (sort and
/// dedup): a push is far cheaper than a hash-set insert, and the day's three
/// pushes per purchase sort in a fraction of the time the inserts took.
#[derive(Default)]
struct Accumulator {
    sales: Sales,
    cards: Vec<u64>,
}

impl Accumulator {
    fn add(&mut self, class: Class, transfer: &Transfer) {
        let count = u64::from(!transfer.continues);
        let tally = Tally { count, fen: transfer.amount_fen };
        match class {
            Class::Purchase => {
                self.sales.purchases.add(tally);
                if transfer.card_number != 0 && !transfer.continues {
                    self.cards.push(transfer.card_number);
                }
            }
            Class::Refund => self.sales.refunds.add(tally),
            Class::Reversal => self.sales.reversals.add(tally),
            Class::AdjustmentIn => self.sales.adjustments.add(tally),
            Class::AdjustmentOut => {
                self.sales.adjustments.add(Tally { count, fen: -transfer.amount_fen });
            }
        }
    }

    fn finish(mut self) -> Sales {
        self.cards.sort_unstable();
        self.cards.dedup();
        self.sales.close(self.cards.len());
        self.sales
    }
}

#[derive(Debug, Clone, Copy)]
enum Class {
    Purchase,
    Refund,
    Reversal,
    AdjustmentIn,
    AdjustmentOut,
}

/// How a transfer touches merchant accounts: the merchant credited and the merchant
/// debited, each with its class (both, for an adjustment from one merchant to
/// another). Settlement's own transfers are not sales and are left out.
fn classify(transfer: &Transfer) -> [Option<(u32, Class)>; 2] {
    use TransferKind as K;
    if matches!(transfer.kind, K::SettlementPayout | K::Commission) {
        return [None, None];
    }
    let credited = transfer.credit.merchant_id().map(|merchant| {
        let class = match transfer.kind {
            K::Purchase | K::OfflinePurchase | K::OfflineQuarantine => Class::Purchase,
            _ => Class::AdjustmentIn,
        };
        (merchant, class)
    });
    let debited = transfer.debit.merchant_id().map(|merchant| {
        let class = match transfer.kind {
            K::Refund => Class::Refund,
            K::Reversal => Class::Reversal,
            _ => Class::AdjustmentOut,
        };
        (merchant, class)
    });
    [credited, debited]
}

/// One merchant's day as it is read.
#[derive(Default)]
pub(crate) struct MerchantDay {
    total: Accumulator,
    terminals: BTreeMap<u32, Accumulator>,
    meals: [Accumulator; 4],
}

/// Every merchant's day, by merchant id.
pub(crate) type Day = HashMap<u32, MerchantDay>;

/// How a day is read: the time zone and meal hours that place a movement in a meal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DayRules {
    pub utc_offset_minutes: i32,
    pub meal_hours: MealHours,
}

impl DayRules {
    fn meal_of(&self, transfer: &Transfer) -> MealPeriod {
        if transfer.meal_period != MealPeriod::Unspecified {
            return transfer.meal_period;
        }
        let minutes = i64::try_from(transfer.timestamp_ms / 60_000).unwrap_or(0)
            + i64::from(self.utc_offset_minutes);
        let minute = u16::try_from(minutes.rem_euclid(i64::from(DAY_MINUTES))).unwrap_or(0);
        self.meal_hours.meal_at(minute)
    }
}

fn meal_slot(meal: MealPeriod) -> usize {
    MEALS.iter().position(|m| *m == meal).unwrap_or(3)
}

/// Calls `each` with every batch journal `journal` committed for `date`, in commit
/// order, starting from the date's day-start key.
///
/// # Errors
/// A failed read, or a batch that does not decode.
pub(crate) fn for_each_batch_of_day(
    store: &Store,
    journal: u8,
    date: BusinessDate,
    mut each: impl FnMut(&Batch),
) -> Result<(), DayReadError> {
    let cf = store.cf(&journal_cf(journal));
    let day_key = prefixed_key(shard_key::DAY_START, &date.to_yyyymmdd().to_be_bytes());
    let Some(start) = store.db().get_cf(cf, day_key)? else {
        return Ok(());
    };
    let mut iter = store.db().raw_iterator_cf(cf);
    iter.seek(&start);
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if key.len() != 16 || key[0] != journal {
            break;
        }
        let batch = Batch::decode(value).map_err(|error| DayReadError::Corrupt {
            journal,
            key: hex::encode(key),
            error,
        })?;
        if batch.business_date > date {
            break;
        }
        if batch.business_date == date {
            each(&batch);
        }
        iter.next();
    }
    iter.status()?;
    Ok(())
}

/// Why a day's journal could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DayReadError {
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A reader thread could not start or did not finish.
    #[error("reader: {0}")]
    Reader(String),
    /// A batch does not decode.
    #[error("journal {journal} batch {key}: {error}")]
    Corrupt {
        /// The journal.
        journal: u8,
        /// The batch key, hex.
        key: String,
        /// What is wrong.
        error: RecordError,
    },
}

/// Reads one journal's movements of merchants for `date`.
pub(crate) fn read_day(
    store: &Store,
    journal: u8,
    date: BusinessDate,
    rules: DayRules,
) -> Result<Day, DayReadError> {
    let mut day = Day::new();
    for_each_batch_of_day(store, journal, date, |batch| {
        for transfer in &batch.transfers {
            for (merchant, class) in classify(transfer).into_iter().flatten() {
                let entry = day.entry(merchant).or_default();
                entry.total.add(class, transfer);
                if matches!(class, Class::AdjustmentIn | Class::AdjustmentOut) {
                    continue;
                }
                entry.terminals.entry(transfer.terminal_id).or_default().add(class, transfer);
                entry.meals[meal_slot(rules.meal_of(transfer))].add(class, transfer);
            }
        }
    })?;
    Ok(day)
}

fn absorb(into: &mut Accumulator, from: Accumulator) {
    let sales = &mut into.sales;
    sales.purchases.add(from.sales.purchases);
    sales.refunds.add(from.sales.refunds);
    sales.reversals.add(from.sales.reversals);
    sales.adjustments.add(from.sales.adjustments);
    into.cards.extend(from.cards);
}

/// Folds `from` into `into`: a merchant seen in two journals (its shard, and the
/// control journal for adjustments) is one merchant.
pub(crate) fn merge_days(into: &mut Day, from: Day) {
    for (merchant, day) in from {
        let target = into.entry(merchant).or_default();
        absorb(&mut target.total, day.total);
        for (terminal, accumulator) in day.terminals {
            absorb(target.terminals.entry(terminal).or_default(), accumulator);
        }
        for (slot, accumulator) in day.meals.into_iter().enumerate() {
            absorb(&mut target.meals[slot], accumulator);
        }
    }
}

/// One merchant's settlement from its day.
pub(crate) fn settle_merchant(
    merchant_id: u32,
    name: String,
    shard: u8,
    commission_rate: Decimal,
    day: MerchantDay,
) -> MerchantSettlement {
    let sales = day.total.finish();
    let commission = commission_fen(sales.net_fen, commission_rate);
    let terminals = day
        .terminals
        .into_iter()
        .map(|(terminal_id, accumulator)| TerminalSales {
            terminal_id,
            sales: accumulator.finish(),
        })
        .collect();
    let meals = MEALS
        .iter()
        .zip(day.meals)
        .map(|(meal, accumulator)| MealSales {
            meal: meal_name(*meal).to_owned(),
            sales: accumulator.finish(),
        })
        .collect();
    MerchantSettlement {
        merchant_id,
        name,
        shard,
        commission_rate,
        sales,
        commission_fen: commission,
        net_payable_fen: sales.net_fen - commission,
        terminals,
        meals,
    }
}

/// What [`Ledger::settle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The date's settlement.
    pub settlement: Settlement,
    /// Whether this call posted it (false: it was settled before, and this is the
    /// stored record).
    pub posted: bool,
}

impl From<DayReadError> for ControlError {
    fn from(error: DayReadError) -> Self {
        match error {
            DayReadError::Storage(error) => Self::Storage(error),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

fn settlement_key(date: BusinessDate) -> Vec<u8> {
    prefixed_key(control_key::SETTLEMENT, &date.to_yyyymmdd().to_be_bytes())
}

impl Ledger {
    /// Settles the closed business date `date`: reads every shard's slice of the day
    /// in parallel (and the control journal's, for adjustments), computes each
    /// merchant's settlement, and posts the payout and commission transfers with the
    /// settlement record in one synced write. Settling a date again posts nothing and
    /// returns the stored record.
    ///
    /// # Errors
    /// [`ControlError::DateNotClosed`] before the date's cutover; a failed or corrupt
    /// read; a failed write (then nothing was posted).
    pub fn settle(&self, date: BusinessDate) -> Result<Settled, ControlError> {
        let mut settled = self.shared.settled.lock().unwrap_or_else(PoisonError::into_inner);
        if settled.contains(&date) {
            let settlement = self.settlement(date)?.ok_or_else(|| {
                ControlError::Corrupt(format!("the settlement record of {date} is missing"))
            })?;
            return Ok(Settled { settlement, posted: false });
        }
        let closed_through = self.closed_through();
        if date > closed_through {
            return Err(ControlError::DateNotClosed { date, closed_through });
        }
        let merchants = self.merchant_settlements(date)?;
        let transfers: Vec<ControlTransfer> = merchants
            .iter()
            .flat_map(settlement_legs)
            .map(|(debit, credit, amount_fen, kind)| ControlTransfer {
                debit,
                credit,
                amount_fen,
                kind,
                card_number: 0,
            })
            .collect();
        let moved: i64 = transfers
            .iter()
            .map(|t| {
                i64::from(t.debit.kind() == AccountKind::Merchant) * t.amount_fen
                    - i64::from(t.credit.kind() == AccountKind::Merchant) * t.amount_fen
            })
            .sum();
        let net: i64 = merchants.iter().map(|m| m.sales.net_fen).sum();
        assert_eq!(moved, net, "settlement moves exactly the merchants' net sales");
        let mut control = self.control();
        let settlement = Settlement {
            business_date: date.to_yyyymmdd(),
            settled_at_ms: self.shared.config.clock.now_ms(),
            first_transfer_id: if transfers.is_empty() {
                0
            } else {
                control.tail.next_transfer_id()
            },
            transfer_count: u32::try_from(transfers.len()).expect("two transfers per merchant"),
            merchants,
        };
        let record = serde_json::to_vec(&settlement)
            .map_err(|error| ControlError::Corrupt(format!("settlement record: {error}")))?;
        self.commit_control(&mut control, &[], &transfers, |write, cf| {
            write.put_cf(cf, settlement_key(date), &record);
        })?;
        drop(control);
        settled.insert(date);
        let totals = settlement.totals();
        tracing::info!(
            date = %date,
            merchants = totals.merchants,
            net_sales_fen = totals.net_sales_fen,
            commission_fen = totals.commission_fen,
            "settled"
        );
        Ok(Settled { settlement, posted: true })
    }

    /// What settling `date` would post, computed now and posted nowhere: finance's
    /// view of a day still open ("so far today"), or of a closed one before it settles.
    ///
    /// # Errors
    /// A failed or corrupt read.
    pub fn preview_settlement(&self, date: BusinessDate) -> Result<Settlement, ControlError> {
        Ok(Settlement {
            business_date: date.to_yyyymmdd(),
            settled_at_ms: 0,
            first_transfer_id: 0,
            transfer_count: 0,
            merchants: self.merchant_settlements(date)?,
        })
    }

    /// Every merchant's settlement of `date`, read from the journals: each shard's
    /// slice of the day and the control journal's, in parallel threads.
    fn merchant_settlements(
        &self,
        date: BusinessDate,
    ) -> Result<Vec<MerchantSettlement>, ControlError> {
        let config = &self.shared.config;
        let rules = DayRules {
            utc_offset_minutes: config.utc_offset_minutes,
            meal_hours: config.meal_hours,
        };
        let store = &self.shared.store;
        let journals: Vec<u8> = (0..self.shards()).chain([CONTROL_JOURNAL]).collect();
        let days = std::thread::scope(|scope| {
            let readers: Vec<_> = journals
                .iter()
                .map(|journal| {
                    std::thread::Builder::new()
                        .name(format!("onecard-settle-{journal}"))
                        .spawn_scoped(scope, move || read_day(store, *journal, date, rules))
                })
                .collect();
            readers
                .into_iter()
                .map(|reader| match reader {
                    Ok(handle) => handle.join().unwrap_or_else(|_| {
                        Err(DayReadError::Reader("a reader thread panicked".to_owned()))
                    }),
                    Err(error) => Err(DayReadError::Reader(error.to_string())),
                })
                .collect::<Vec<_>>()
        });
        let mut day = Day::new();
        for read in days {
            merge_days(&mut day, read?);
        }
        let mut records = self.shared.directory.merchants();
        records.sort_by_key(|record| record.id);
        let mut merchants = Vec::with_capacity(records.len());
        for record in records {
            let merchant_day = day.remove(&record.id);
            if merchant_day.is_none() && !record.enabled {
                continue;
            }
            merchants.push(settle_merchant(
                record.id,
                record.name.clone(),
                record.shard,
                record.rate_on(date.to_yyyymmdd()),
                merchant_day.unwrap_or_default(),
            ));
        }
        if let Some(stranger) = day.keys().min() {
            return Err(ControlError::Corrupt(format!(
                "movement of merchant {stranger}, which is not in the directory"
            )));
        }
        Ok(merchants)
    }

    /// The stored settlement of `date`, if it has been settled.
    ///
    /// # Errors
    /// A failed read, or a record this build cannot read.
    pub fn settlement(&self, date: BusinessDate) -> Result<Option<Settlement>, ControlError> {
        let store = &self.shared.store;
        let Some(bytes) = store.db().get_cf(store.cf(CF_CONTROL), settlement_key(date))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| ControlError::Corrupt(format!("settlement record of {date}: {error}")))
    }

    /// Every settled business date, oldest first.
    ///
    /// # Errors
    /// None today: the dates are kept in memory (the `Result` leaves room for a
    /// store that pages them).
    pub fn settled_dates(&self) -> Result<Vec<BusinessDate>, ControlError> {
        let settled = self.shared.settled.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(settled.iter().copied().collect())
    }
}

#[cfg(test)]
#[allow(clippy::inconsistent_digit_grouping, reason = "amounts are written yuan_fen: 1_50 is 1.50")]
mod tests {
    use super::*;

    #[test]
    fn commission_rounds_half_away_from_zero_to_the_fen() {
        let rate = Decimal::new(15, 3); // 1.5%
        assert_eq!(commission_fen(100_00, rate), 1_50);
        assert_eq!(commission_fen(1_00, rate), 2); // 1.5 fen rounds up
        assert_eq!(commission_fen(-1_00, rate), -2); // and a negative day mirrors it
        assert_eq!(commission_fen(33, rate), 0); // 0.495 fen
        assert_eq!(commission_fen(34, rate), 1); // 0.51 fen
        assert_eq!(commission_fen(0, rate), 0);
        assert_eq!(commission_fen(i64::from(u32::MAX), Decimal::ONE), i64::from(u32::MAX));
    }

    #[test]
    fn legs_move_exactly_the_net_sales_out_of_the_merchant() {
        let merchant = |net_fen: i64, commission: i64| MerchantSettlement {
            merchant_id: 7,
            name: "x".to_owned(),
            shard: 0,
            commission_rate: Decimal::new(2, 2),
            sales: Sales { net_fen, ..Sales::default() },
            commission_fen: commission,
            net_payable_fen: net_fen - commission,
            terminals: Vec::new(),
            meals: Vec::new(),
        };
        for (net, commission) in [(100_00, 2_00), (-50_00, -1_00), (1, 0), (0, 0)] {
            let account = AccountId::merchant(7);
            let out: i64 = settlement_legs(&merchant(net, commission))
                .iter()
                .map(|(debit, credit, fen, _)| {
                    assert!(*fen > 0);
                    if *debit == account {
                        *fen
                    } else {
                        assert_eq!(*credit, account);
                        -fen
                    }
                })
                .sum();
            assert_eq!(out, net);
        }
        assert!(settlement_legs(&merchant(0, 0)).is_empty());
    }

    #[test]
    fn meal_hours_parse_and_place_every_minute() {
        let hours = MealHours::parse("06:00, 10:30,16:00,21:15").expect("parses");
        assert_eq!(hours.to_string(), "06:00,10:30,16:00,21:15");
        assert_eq!(hours.meal_at(5 * 60 + 59), MealPeriod::Night);
        assert_eq!(hours.meal_at(6 * 60), MealPeriod::Breakfast);
        assert_eq!(hours.meal_at(12 * 60), MealPeriod::Lunch);
        assert_eq!(hours.meal_at(16 * 60), MealPeriod::Dinner);
        assert_eq!(hours.meal_at(21 * 60 + 15), MealPeriod::Night);
        for bad in ["", "06:00,10:30,16:00", "10:30,06:00,16:00,21:00", "25:00,1:00,2:00,3:00"] {
            assert!(MealHours::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MealHours::parse(&MealHours::default().to_string()), Ok(MealHours::default()));
    }
}
