//! Internal reconciliation (对账) of a closed business date: proves from the journals
//! and the stored balances that the ledger agrees with itself, and names every account
//! or record that does not, with the difference in fen.
//!
//! Every read goes through one RocksDB snapshot, so a reconciliation run while
//! terminals keep buying sees the ledger as of one instant: each batch is one write,
//! wholly in the snapshot or wholly out of it.
//!
//! Checks, each passed or failed with its discrepancies:
//! - `trial_balance`: every stored balance (each a sum of merges, credits less debits)
//!   adds up to zero across the whole chart of accounts;
//! - `card_pool`: the card pool (the sum of every card's balance) equals the
//!   card-liability control total kept beside it;
//! - `card_flow`: the day's opening card pool plus its top-ups, subsidies, refunds,
//!   reversals and adjustments, less its purchases and closures, is its closing pool;
//!   the closing pool plus every later movement is today's card pool; and no card
//!   moved for a reason the flow does not name;
//! - `merchants`: each merchant's account holds exactly its unsettled sales (the net
//!   sales of every date not yet settled), and each settled date's record matches the
//!   journal;
//! - `terminal_sequences`: within the day, each terminal's journaled requests have
//!   distinct sequences rising in commit order, and every transfer belongs to one.
//!   Sequences not in the journal are counted, not failed: sign-on, heartbeats and
//!   blacklist downloads take sequences too and move no money.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::account::AccountId;
use crate::date::BusinessDate;
use onecard_protocol::MessageType;

use crate::journal::{Batch, CONTROL_JOURNAL, TransferKind, batch_key, first_transfer_id};
use crate::ledger::{ControlError, Ledger};
use crate::limits::RECONCILIATION_DISCREPANCIES_MAX;
use crate::settlement::Settlement;
use crate::store::{CF_CONTROL, Store, control_key, journal_cf};

/// One disagreement: what, and by how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// The account, record or terminal, as `merchant:12`, `terminal:7`.
    pub subject: String,
    /// What it should be, fen (0 where not an amount).
    pub expected_fen: i64,
    /// What it is, fen.
    pub found_fen: i64,
    /// In words.
    pub note: String,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// `trial_balance`, `card_pool`, `card_flow`, `merchants`, `terminal_sequences`.
    pub name: &'static str,
    /// Whether it holds.
    pub passed: bool,
    /// Discrepancies, at most [`RECONCILIATION_DISCREPANCIES_MAX`].
    pub discrepancies: Vec<Discrepancy>,
    /// Discrepancies in all, listed or not.
    pub discrepancy_count: u64,
}

impl CheckOutcome {
    fn new(name: &'static str) -> Self {
        Self { name, passed: true, discrepancies: Vec::new(), discrepancy_count: 0 }
    }

    fn fail(&mut self, discrepancy: Discrepancy) {
        self.passed = false;
        self.discrepancy_count += 1;
        if self.discrepancies.len() < RECONCILIATION_DISCREPANCIES_MAX {
            self.discrepancies.push(discrepancy);
        }
    }
}

/// The card pool through the day, fen, each movement signed as the cards see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CardFlow {
    /// The pool at the start of the day.
    pub opening_fen: i64,
    /// Top-ups (their reversals count under reversals).
    pub top_ups_fen: i64,
    /// Subsidies.
    pub subsidies_fen: i64,
    /// Refunds from merchants.
    pub refunds_fen: i64,
    /// Reversals: purchases given back less top-ups taken back.
    pub reversals_fen: i64,
    /// Approved adjustments.
    pub adjustments_fen: i64,
    /// Purchases, online and offline (negative: out of the cards).
    pub purchases_fen: i64,
    /// Balances moved out at closure (negative).
    pub closures_fen: i64,
    /// Restricted purses taken back at term end, 清零 (negative).
    pub expiries_fen: i64,
    /// Anything else (should be 0; a failed check if not).
    pub other_fen: i64,
    /// The pool at the end of the day.
    pub closing_fen: i64,
}

impl CardFlow {
    fn add(&mut self, kind: TransferKind, fen: i64) {
        use TransferKind as K;
        let slot = match kind {
            K::TopUp => &mut self.top_ups_fen,
            K::Subsidy => &mut self.subsidies_fen,
            K::Refund => &mut self.refunds_fen,
            K::Reversal => &mut self.reversals_fen,
            K::Adjustment => &mut self.adjustments_fen,
            K::Purchase | K::OfflinePurchase => &mut self.purchases_fen,
            K::CloseBalance => &mut self.closures_fen,
            K::SubsidyExpiry => &mut self.expiries_fen,
            _ => &mut self.other_fen,
        };
        *slot += fen;
    }

    fn net(&self) -> i64 {
        self.top_ups_fen
            + self.subsidies_fen
            + self.refunds_fen
            + self.reversals_fen
            + self.adjustments_fen
            + self.purchases_fen
            + self.closures_fen
            + self.expiries_fen
            + self.other_fen
    }
}

/// Terminal sequences within the day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SequenceSummary {
    /// Terminals with journaled requests that day.
    pub terminals: u64,
    /// Requests journaled.
    pub requests: u64,
    /// Sequences between a terminal's first and last of the day that are not in the
    /// journal: taken by session messages (or refused before the ledger).
    pub unjournaled_sequences: u64,
}

/// A date's internal reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// The date, `yyyymmdd`.
    pub business_date: u32,
    /// Whether every check passed.
    pub passed: bool,
    /// The checks.
    pub checks: Vec<CheckOutcome>,
    /// The card pool through the day.
    pub card_flow: CardFlow,
    /// The day's terminal sequences.
    pub sequences: SequenceSummary,
    /// The card pool now, fen.
    pub card_pool_fen: i64,
}

/// What one pass over every journal gathers.
#[derive(Default)]
struct Scan {
    flow: CardFlow,
    /// Card movements after the day.
    later_fen: i64,
    /// Merchant → date → net movement (settlement kinds left out).
    merchant_days: HashMap<u32, BTreeMap<u32, i64>>,
    /// Terminal → the day's requests in commit order: (sequence, an offline upload).
    sequences: BTreeMap<u32, Vec<(u64, bool)>>,
    /// Transfers of the day whose request has no entry.
    orphans: Vec<(u8, u64)>,
}

impl Scan {
    fn batch(&mut self, journal: u8, batch: &Batch, date: BusinessDate) {
        let on_day = batch.business_date == date;
        for transfer in &batch.transfers {
            let card = i64::from(transfer.credit.kind().is_card()) * transfer.amount_fen
                - i64::from(transfer.debit.kind().is_card()) * transfer.amount_fen;
            if card != 0 {
                match batch.business_date.cmp(&date) {
                    std::cmp::Ordering::Less => self.flow.opening_fen += card,
                    std::cmp::Ordering::Equal => self.flow.add(transfer.kind, card),
                    std::cmp::Ordering::Greater => self.later_fen += card,
                }
            }
            for (account, sign) in [(transfer.credit, 1), (transfer.debit, -1)] {
                let Some(merchant) = account.merchant_id() else { continue };
                let fen = sign * transfer.amount_fen;
                if !matches!(
                    transfer.kind,
                    TransferKind::SettlementPayout | TransferKind::Commission
                ) {
                    *self
                        .merchant_days
                        .entry(merchant)
                        .or_default()
                        .entry(batch.business_date.to_yyyymmdd())
                        .or_default() += fen;
                }
            }
        }
        if on_day && journal != CONTROL_JOURNAL {
            let mut covered = vec![false; batch.transfers.len()];
            for entry in &batch.entries {
                let offline = entry.message_type == MessageType::OfflineUpload;
                self.sequences
                    .entry(entry.terminal_id)
                    .or_default()
                    .push((entry.sequence, offline));
                let from = entry.transfer_index as usize;
                for slot in covered.iter_mut().skip(from).take(usize::from(entry.transfer_count)) {
                    *slot = true;
                }
            }
            for (transfer, covered) in batch.transfers.iter().zip(covered) {
                if !covered {
                    self.orphans.push((journal, transfer.id));
                }
            }
        }
    }
}

/// One consistent view of the whole store: every read of a reconciliation goes
/// through it, so batches committed while it runs are in none of them.
type View<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

fn scan(store: &Store, view: &View<'_>, date: BusinessDate) -> Result<Scan, ControlError> {
    let mut scan = Scan::default();
    for journal in (0..store.shards()).chain([CONTROL_JOURNAL]) {
        let cf = store.cf(&journal_cf(journal));
        let start = batch_key(first_transfer_id(journal) - 1, 0);
        let mut iter = view.raw_iterator_cf(cf);
        iter.seek(start);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if key.len() != 16 || key[0] != journal {
                break;
            }
            let batch = Batch::decode(value).map_err(|error| {
                ControlError::Corrupt(format!(
                    "journal {journal} batch {}: {error}",
                    hex::encode(key)
                ))
            })?;
            scan.batch(journal, &batch, date);
            iter.next();
        }
        iter.status()?;
    }
    Ok(scan)
}

/// Every balance as the view's journals give it (the checkpoint, and the batches
/// after its watermarks): (sum of all accounts, sum of card purses, the card-pool
/// control total, each merchant's balance).
fn balances(
    store: &Store,
    view: &View<'_>,
) -> Result<(i64, i64, i64, HashMap<u32, i64>), ControlError> {
    let (cards, totals) = crate::checkpoint::balances_in(store, view)
        .map_err(|error| ControlError::Corrupt(format!("balances: {error}")))?;
    let cards_fen: i64 = cards.values().map(|money| money.balance_fen + money.restricted_fen).sum();
    let mut all = cards_fen;
    let mut merchants = HashMap::new();
    for (account, fen) in totals.accounts() {
        all += fen;
        if let Some(merchant) = account.merchant_id() {
            merchants.insert(merchant, fen);
        }
    }
    Ok((all, cards_fen, totals.card_pool_fen(), merchants))
}

/// Every stored settlement record, oldest date first.
fn settlements(store: &Store, view: &View<'_>) -> Result<Vec<Settlement>, ControlError> {
    let prefix = [control_key::SETTLEMENT];
    let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
    let mut out = Vec::new();
    for item in view.iterator_cf(store.cf(CF_CONTROL), mode) {
        let (key, value) = item?;
        if key.first() != Some(&control_key::SETTLEMENT) {
            break;
        }
        let record: Settlement = serde_json::from_slice(&value)
            .map_err(|error| ControlError::Corrupt(format!("settlement record: {error}")))?;
        out.push(record);
    }
    Ok(out)
}

impl Ledger {
    /// Reconciles the closed business date `date` against itself (see the module
    /// documentation for the checks). Reads every journal once; writes nothing.
    ///
    /// # Errors
    /// [`ControlError::DateNotClosed`] for a date still open; a failed or corrupt read.
    pub fn reconcile(&self, date: BusinessDate) -> Result<Reconciliation, ControlError> {
        let closed_through = self.closed_through();
        if date > closed_through {
            return Err(ControlError::DateNotClosed { date, closed_through });
        }
        let store = self.store();
        let view = store.db().snapshot();
        let scan = scan(store, &view, date)?;
        let (all_fen, cards_fen, pool_fen, merchant_balances) = balances(store, &view)?;

        let mut trial = CheckOutcome::new("trial_balance");
        if all_fen != 0 {
            trial.fail(Discrepancy {
                subject: "balances".to_owned(),
                expected_fen: 0,
                found_fen: all_fen,
                note: "every stored balance should sum to zero".to_owned(),
            });
        }

        let mut pool = CheckOutcome::new("card_pool");
        if cards_fen != pool_fen {
            pool.fail(Discrepancy {
                subject: "card_pool".to_owned(),
                expected_fen: pool_fen,
                found_fen: cards_fen,
                note: "the sum of card balances differs from the card-liability total".to_owned(),
            });
        }

        let mut flow = scan.flow;
        flow.closing_fen = flow.opening_fen + flow.net();
        let mut flow_check = CheckOutcome::new("card_flow");
        if flow.other_fen != 0 {
            flow_check.fail(Discrepancy {
                subject: "card_flow.other".to_owned(),
                expected_fen: 0,
                found_fen: flow.other_fen,
                note: "cards moved for a reason the day's flow does not name".to_owned(),
            });
        }
        if flow.closing_fen + scan.later_fen != pool_fen {
            flow_check.fail(Discrepancy {
                subject: "card_pool".to_owned(),
                expected_fen: flow.closing_fen + scan.later_fen,
                found_fen: pool_fen,
                note: "the day's closing pool and every later movement do not make today's pool"
                    .to_owned(),
            });
        }

        let mut merchants = CheckOutcome::new("merchants");
        let records = settlements(store, &view)?;
        let settled: Vec<BusinessDate> = records.iter().filter_map(Settlement::date).collect();
        let mut ids: Vec<u32> =
            merchant_balances.keys().chain(scan.merchant_days.keys()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for merchant in ids {
            let days = scan.merchant_days.get(&merchant);
            let unsettled: i64 = days.map_or(0, |days| {
                days.iter()
                    .filter(|(day, _)| {
                        BusinessDate::from_yyyymmdd(**day)
                            .is_none_or(|day| settled.binary_search(&day).is_err())
                    })
                    .map(|(_, fen)| fen)
                    .sum()
            });
            let balance = merchant_balances.get(&merchant).copied().unwrap_or(0);
            if balance != unsettled {
                merchants.fail(Discrepancy {
                    subject: AccountId::merchant(merchant).to_string(),
                    expected_fen: unsettled,
                    found_fen: balance,
                    note: "the merchant's account is not its unsettled sales".to_owned(),
                });
            }
        }
        for (day, record) in settled.iter().zip(&records) {
            for row in &record.merchants {
                let journal = scan
                    .merchant_days
                    .get(&row.merchant_id)
                    .and_then(|days| days.get(&day.to_yyyymmdd()))
                    .copied()
                    .unwrap_or(0);
                if journal != row.sales.net_fen {
                    merchants.fail(Discrepancy {
                        subject: format!("settlement:{}:merchant:{}", day, row.merchant_id),
                        expected_fen: journal,
                        found_fen: row.sales.net_fen,
                        note: "the settled net sales differ from the journal".to_owned(),
                    });
                }
            }
        }

        let mut sequences = CheckOutcome::new("terminal_sequences");
        let mut summary = SequenceSummary::default();
        for (terminal, seen) in &scan.sequences {
            summary.terminals += 1;
            for pair in seen.windows(2) {
                let ((before, offline_before), (after, offline_after)) = (pair[0], pair[1]);
                // An offline upload journals one entry per record under one sequence.
                if after == before && offline_before && offline_after {
                    continue;
                }
                summary.requests += 1;
                if after <= before {
                    sequences.fail(Discrepancy {
                        subject: format!("terminal:{terminal}"),
                        expected_fen: 0,
                        found_fen: 0,
                        note: format!("sequence {after} journaled after {before}"),
                    });
                } else {
                    summary.unjournaled_sequences += after - before - 1;
                }
            }
            summary.requests += u64::from(!seen.is_empty());
        }
        for (journal, id) in &scan.orphans {
            sequences.fail(Discrepancy {
                subject: format!("transfer:{id}"),
                expected_fen: 0,
                found_fen: 0,
                note: format!("journal {journal} holds a transfer no request made"),
            });
        }

        let checks = vec![trial, pool, flow_check, merchants, sequences];
        Ok(Reconciliation {
            business_date: date.to_yyyymmdd(),
            passed: checks.iter().all(|check| check.passed),
            checks,
            card_flow: flow,
            sequences: summary,
            card_pool_fen: pool_fen,
        })
    }
}
