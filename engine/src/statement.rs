//! External reconciliation of one top-up channel's statement against our top-ups of
//! one business date, by the channel's own reference.
//!
//! Our side is small and read first: the date's top-ups of the channel that carried a
//! reference (their `0xF5` keys, one prefix per shard journal), less those reversed
//! that day, plus the references of the days either side for timing differences. The
//! channel's side streams past one line at a time, each classified as it comes, so a
//! statement of a million lines needs memory for our day and a set of 8-byte hashes,
//! never for the file.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use onecard_protocol::Channel;
use serde::Serialize;

use crate::account::AccountId;
use crate::date::BusinessDate;
use crate::journal::TransferKind;
use crate::ledger::{ControlError, Ledger};
use crate::limits::RECONCILIATION_DISCREPANCIES_MAX;
use crate::settlement::for_each_batch_of_day;
use crate::shard::decode_top_up_reference;
use crate::store::{journal_cf, shard_key};

/// One line of a channel's statement, as its adapter read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    /// The line number in the file (1 = the first line).
    pub line: u64,
    /// The channel's reference (order number) of the top-up.
    pub reference: String,
    /// The amount the channel says it took, fen.
    pub amount_fen: i64,
    /// The date the channel puts the line on, if the statement says.
    pub date: Option<BusinessDate>,
}

/// A statement line the adapter could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MalformedLine {
    /// The line number.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// How one line (or one of our top-ups) came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineClass {
    /// Same reference, same amount.
    Matched,
    /// Same reference, another amount.
    AmountDiffers,
    /// At the channel, not here (长款): money the channel took that no card got.
    Surplus,
    /// Here, not at the channel (短款): a card got money the channel does not show.
    Shortfall,
    /// A reference the statement already listed.
    Duplicate,
    /// At the channel, and here on the day before or after, or dated for another day
    /// by the channel: a timing difference, not a loss.
    OtherDate,
    /// At the channel, and here, but reversed here that day.
    ReversedHere,
    /// A line the adapter could not read.
    Malformed,
}

impl LineClass {
    /// Every class, in report order.
    pub const ALL: [Self; 8] = [
        Self::Matched,
        Self::AmountDiffers,
        Self::Surplus,
        Self::Shortfall,
        Self::Duplicate,
        Self::OtherDate,
        Self::ReversedHere,
        Self::Malformed,
    ];

    /// The class's name in reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::AmountDiffers => "amount_differs",
            Self::Surplus => "surplus",
            Self::Shortfall => "shortfall",
            Self::Duplicate => "duplicate",
            Self::OtherDate => "other_date",
            Self::ReversedHere => "reversed_here",
            Self::Malformed => "malformed",
        }
    }
}

/// One classified line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassifiedLine {
    /// The statement line, or `None` for one of our top-ups the statement lacks.
    pub line: Option<u64>,
    /// How it came out.
    pub class: LineClass,
    /// The reference.
    pub reference: String,
    /// The channel's amount, fen.
    pub channel_fen: Option<i64>,
    /// Our amount, fen.
    pub our_fen: Option<i64>,
    /// Our top-up's transfer id.
    pub transfer_id: Option<u64>,
    /// Anything more, in words.
    pub note: String,
}

/// Counts and amounts of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassTotals {
    /// Lines.
    pub count: u64,
    /// The channel's amounts, fen.
    pub channel_fen: i64,
    /// Our amounts, fen.
    pub our_fen: i64,
}

/// A channel statement's reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelReconciliation {
    /// The date, `yyyymmdd`.
    pub business_date: u32,
    /// The channel.
    pub channel: String,
    /// Statement lines read (data lines, not the header).
    pub statement_lines: u64,
    /// Our top-ups of the channel that day with a reference.
    pub our_top_ups: u64,
    /// By class name.
    pub classes: Vec<(String, ClassTotals)>,
    /// Whether everything matched and every line was readable.
    pub passed: bool,
    /// The statement had no data lines.
    pub empty_statement: bool,
    /// Every dated line was for another day: the wrong file for this date.
    pub wrong_date_statement: bool,
    /// Lines that were not matched, at most [`RECONCILIATION_DISCREPANCIES_MAX`].
    pub discrepancies: Vec<ClassifiedLine>,
    /// Discrepancies in all.
    pub discrepancy_count: u64,
}

/// One of our top-ups.
#[derive(Debug, Clone, Copy)]
struct OurTopUp {
    transfer_id: u64,
    fen: i64,
}

fn hash_of(reference: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    reference.hash(&mut hasher);
    hasher.finish()
}

impl Ledger {
    /// The top-ups of `channel` on `date` that carried a reference, by reference.
    fn channel_top_ups(
        &self,
        date: BusinessDate,
        channel: Channel,
    ) -> Result<HashMap<String, Vec<OurTopUp>>, ControlError> {
        let store = self.store();
        let mut out: HashMap<String, Vec<OurTopUp>> = HashMap::new();
        let mut prefix = vec![shard_key::TOP_UP_REFERENCE];
        prefix.extend_from_slice(&date.to_yyyymmdd().to_be_bytes());
        for shard in 0..self.shards() {
            let cf = store.cf(&journal_cf(shard));
            let mut iter = store.db().raw_iterator_cf(cf);
            iter.seek(&prefix);
            while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                if !key.starts_with(&prefix) || key.len() != 13 {
                    break;
                }
                let transfer_id = u64::from_be_bytes(key[5..].try_into().unwrap_or([0; 8]));
                let (found, fen, reference) = decode_top_up_reference(value).ok_or_else(|| {
                    ControlError::Corrupt(format!("top-up reference of transfer {transfer_id}"))
                })?;
                if found == channel {
                    let reference = String::from_utf8_lossy(reference).into_owned();
                    out.entry(reference).or_default().push(OurTopUp { transfer_id, fen });
                }
                iter.next();
            }
            iter.status()?;
        }
        Ok(out)
    }

    /// Reconciles a channel's statement for `date`: `lines` are the statement's
    /// lines as its adapter read them (an `Err` is a line it could not read); `sink`
    /// gets every classified line, statement lines first in file order, then our
    /// top-ups the statement lacks. Writes nothing to the ledger: a discrepancy is
    /// resolved only by an approved adjustment.
    ///
    /// # Errors
    /// [`ControlError::DateNotClosed`] for an open date; a failed or corrupt read; an
    /// error `sink` returns.
    pub fn reconcile_channel<E: std::fmt::Display>(
        &self,
        date: BusinessDate,
        channel: Channel,
        lines: impl Iterator<Item = Result<StatementLine, MalformedLine>>,
        mut sink: impl FnMut(&ClassifiedLine) -> Result<(), E>,
    ) -> Result<ChannelReconciliation, ControlError> {
        let closed_through = self.closed_through();
        if date > closed_through {
            return Err(ControlError::DateNotClosed { date, closed_through });
        }
        let mut ours = self.channel_top_ups(date, channel)?;
        let our_top_ups = ours.values().map(|v| v.len() as u64).sum();
        // Top-ups reversed that day are not owed to the channel.
        let clearing = AccountId::channel(channel);
        let mut reversed_ids = HashSet::new();
        for shard in 0..self.shards() {
            for_each_batch_of_day(self.store(), shard, date, |batch| {
                for transfer in &batch.transfers {
                    if transfer.kind == TransferKind::Reversal && transfer.credit == clearing {
                        reversed_ids.insert(transfer.corrects);
                    }
                }
            })?;
        }
        let mut reversed: HashMap<String, OurTopUp> = HashMap::new();
        for (reference, top_ups) in &mut ours {
            top_ups.retain(|top_up| {
                let keep = !reversed_ids.contains(&top_up.transfer_id);
                if !keep {
                    reversed.insert(reference.clone(), *top_up);
                }
                keep
            });
        }
        let mut neighbours: HashMap<String, BusinessDate> = HashMap::new();
        for day in [date.previous(), date.next()] {
            for reference in self.channel_top_ups(day, channel)?.into_keys() {
                neighbours.insert(reference, day);
            }
        }

        let mut report = ChannelReconciliation {
            business_date: date.to_yyyymmdd(),
            channel: onecard_protocol::snake_case(channel),
            statement_lines: 0,
            our_top_ups,
            classes: Vec::new(),
            passed: true,
            empty_statement: false,
            wrong_date_statement: false,
            discrepancies: Vec::new(),
            discrepancy_count: 0,
        };
        let mut totals: HashMap<LineClass, ClassTotals> = HashMap::new();
        let mut matched: HashSet<u64> = HashSet::new();
        let mut surplus: HashSet<u64> = HashSet::new();
        let (mut dated, mut dated_elsewhere) = (0u64, 0u64);
        let mut emit = |classified: ClassifiedLine,
                        report: &mut ChannelReconciliation|
         -> Result<(), ControlError> {
            let entry = totals.entry(classified.class).or_default();
            entry.count += 1;
            entry.channel_fen += classified.channel_fen.unwrap_or(0);
            entry.our_fen += classified.our_fen.unwrap_or(0);
            if classified.class != LineClass::Matched {
                report.passed = false;
                report.discrepancy_count += 1;
                if report.discrepancies.len() < RECONCILIATION_DISCREPANCIES_MAX {
                    report.discrepancies.push(classified.clone());
                }
            }
            sink(&classified).map_err(|error| ControlError::Corrupt(format!("report: {error}")))
        };
        for line in lines {
            report.statement_lines += 1;
            let line = match line {
                Ok(line) => line,
                Err(bad) => {
                    let classified = ClassifiedLine {
                        line: Some(bad.line),
                        class: LineClass::Malformed,
                        reference: String::new(),
                        channel_fen: None,
                        our_fen: None,
                        transfer_id: None,
                        note: bad.reason,
                    };
                    emit(classified, &mut report)?;
                    continue;
                }
            };
            if let Some(day) = line.date {
                dated += 1;
                dated_elsewhere += u64::from(day != date);
            }
            let hash = hash_of(&line.reference);
            let mut classified = ClassifiedLine {
                line: Some(line.line),
                class: LineClass::Surplus,
                reference: line.reference.clone(),
                channel_fen: Some(line.amount_fen),
                our_fen: None,
                transfer_id: None,
                note: String::new(),
            };
            if let Some(top_up) = ours.get_mut(&line.reference).and_then(Vec::pop) {
                matched.insert(hash);
                classified.our_fen = Some(top_up.fen);
                classified.transfer_id = Some(top_up.transfer_id);
                classified.class = if top_up.fen == line.amount_fen {
                    LineClass::Matched
                } else {
                    LineClass::AmountDiffers
                };
            } else if matched.contains(&hash) || !surplus.insert(hash) {
                classified.class = LineClass::Duplicate;
                classified.note = "the statement lists this reference again".to_owned();
            } else if let Some(top_up) = reversed.get(&line.reference) {
                classified.class = LineClass::ReversedHere;
                classified.our_fen = Some(top_up.fen);
                classified.transfer_id = Some(top_up.transfer_id);
                classified.note = "the top-up was reversed here".to_owned();
            } else if let Some(day) = neighbours.get(&line.reference) {
                classified.class = LineClass::OtherDate;
                classified.note = format!("ours on {day}");
            } else if let Some(day) = line.date.filter(|day| *day != date) {
                classified.class = LineClass::OtherDate;
                classified.note = format!("the channel dates it {day}");
            }
            emit(classified, &mut report)?;
        }
        report.empty_statement = report.statement_lines == 0;
        report.wrong_date_statement = dated > 0 && dated == dated_elsewhere;
        let mut left: Vec<(String, OurTopUp)> = ours
            .into_iter()
            .flat_map(|(reference, top_ups)| {
                top_ups.into_iter().map(move |t| (reference.clone(), t))
            })
            .collect();
        left.sort_by_key(|(_, top_up)| top_up.transfer_id);
        for (reference, top_up) in left {
            let classified = ClassifiedLine {
                line: None,
                class: LineClass::Shortfall,
                reference,
                channel_fen: None,
                our_fen: Some(top_up.fen),
                transfer_id: Some(top_up.transfer_id),
                note: "not on the channel's statement".to_owned(),
            };
            emit(classified, &mut report)?;
        }
        report.classes = LineClass::ALL
            .iter()
            .map(|class| (class.name().to_owned(), totals.get(class).copied().unwrap_or_default()))
            .collect();
        Ok(report)
    }
}
