//! The journal: what a shard commits, one record per batch.
//!
//! A shard writes each batch it decides as one journal record under one key. The
//! record holds the batch's transfers (the ledger's postings) and its entries (what
//! each terminal request was answered), so a retry after a restart finds the original
//! answer in the same place as the money it moved. Balances, indexes and terminal
//! state are derived from the journal and written in the same RocksDB write batch.
//!
//! Encoding (little-endian, fixed width; `docs/ARCHITECTURE.md` has the byte table):
//! a 48-byte header, then `transfer_count` transfers of 70 bytes, then
//! `entry_count` entries of 68 bytes, then (record version 2) the 32-byte seal that
//! links the batch to the one before it in its journal ([`crate::chain`]). The header
//! carries the sum of the transfers' amounts, and decoding checks it along with every
//! transfer's own invariants, so a record that lost or changed a posting is refused
//! when read back.

use onecard_protocol::{AnswerCode, MealPeriod, MessageType};

use rocksdb::{ColumnFamily, WriteBatch};

use crate::account::AccountId;
use crate::chain::{ChainKey, SEAL_BYTES, Seal};
use crate::date::BusinessDate;
pub use crate::storage::{CHECKPOINT_JOURNAL, CONTROL_JOURNAL};
pub use crate::store::{
    TRANSFER_SEQUENCE_BITS, batch_key, first_transfer_id, journal_of, seek_key,
};
use crate::store::{prefixed_key, shard_key};

/// Record format written by this build.
pub const RECORD_VERSION: u8 = 2;
/// The record version written before the journal chain: the same layout, no seal.
pub const UNSEALED_RECORD_VERSION: u8 = 1;
const MAGIC: u8 = b'J';
const HEADER_BYTES: usize = 48;
const TRANSFER_BYTES: usize = 70;
const ENTRY_BYTES: usize = 68;

/// What a transfer is, by fixed code (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TransferKind {
    /// A card pays a merchant at a terminal.
    Purchase = 1,
    /// Money into a card from a channel.
    TopUp = 2,
    /// A merchant returns part or all of a purchase.
    Refund = 3,
    /// A terminal cancels a request it never got the answer to.
    Reversal = 4,
    /// A purchase taken offline, posted on upload.
    OfflinePurchase = 5,
    /// An offline purchase held for review: suspense pays the merchant until the card
    /// centre recovers it from the card or writes it off.
    OfflineQuarantine = 6,
    /// A deposit taken when a card is opened.
    Deposit = 7,
    /// A card fee for a replacement card.
    CardFee = 8,
    /// A closed card's balance moved to refund payable.
    CloseBalance = 9,
    /// A closed card's deposit moved to refund payable.
    CloseDeposit = 10,
    /// A subsidy credited to a card.
    Subsidy = 11,
    /// An approved correcting transfer.
    Adjustment = 12,
    /// A merchant's payout at settlement.
    SettlementPayout = 13,
    /// The university's commission at settlement.
    Commission = 14,
    /// What was left in a restricted purse at term end (清零), back to subsidy funding.
    SubsidyExpiry = 15,
}

impl TransferKind {
    /// Every kind, in code order.
    pub const ALL: [Self; 15] = [
        Self::Purchase,
        Self::TopUp,
        Self::Refund,
        Self::Reversal,
        Self::OfflinePurchase,
        Self::OfflineQuarantine,
        Self::Deposit,
        Self::CardFee,
        Self::CloseBalance,
        Self::CloseDeposit,
        Self::Subsidy,
        Self::Adjustment,
        Self::SettlementPayout,
        Self::Commission,
        Self::SubsidyExpiry,
    ];

    /// The kind coded `byte`.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// The kind's name in snake case: metric labels and API fields.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::TopUp => "top_up",
            Self::Refund => "refund",
            Self::Reversal => "reversal",
            Self::OfflinePurchase => "offline_purchase",
            Self::OfflineQuarantine => "offline_quarantine",
            Self::Deposit => "deposit",
            Self::CardFee => "card_fee",
            Self::CloseBalance => "close_balance",
            Self::CloseDeposit => "close_deposit",
            Self::Subsidy => "subsidy",
            Self::Adjustment => "adjustment",
            Self::SettlementPayout => "settlement_payout",
            Self::Commission => "commission",
            Self::SubsidyExpiry => "subsidy_expiry",
        }
    }

    /// Whether a refund may point at a transfer of this kind.
    #[must_use]
    pub const fn is_sale(self) -> bool {
        matches!(self, Self::Purchase | Self::OfflinePurchase)
    }
}

/// One immutable posting: `amount_fen` from `debit` to `credit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Unique id: journal number in the top byte, then a dense per-journal sequence.
    pub id: u64,
    /// The account debited.
    pub debit: AccountId,
    /// The account credited.
    pub credit: AccountId,
    /// Always positive.
    pub amount_fen: i64,
    /// What the transfer is.
    pub kind: TransferKind,
    /// The business date it counts for.
    pub business_date: BusinessDate,
    /// When it happened, ms since the Unix epoch: the commit time, or the terminal's
    /// time for an offline purchase.
    pub timestamp_ms: u64,
    /// The terminal it came from, 0 for none.
    pub terminal_id: u32,
    /// The terminal sequence it came under, 0 for none.
    pub sequence: u64,
    /// The transfer it corrects (refunds, reversals, adjustments), 0 for none.
    pub corrects: u64,
    /// The card number presented, 0 for none.
    pub card_number: u64,
    /// The meal, for purchases.
    pub meal_period: MealPeriod,
    /// Whether this transfer continues the one before it for the same request (a
    /// purchase paid from two purses).
    pub continues: bool,
}

/// What became of one terminal request, as recorded for retries and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The terminal.
    pub terminal_id: u32,
    /// The request's sequence.
    pub sequence: u64,
    /// The request's message type.
    pub message_type: MessageType,
    /// The answer given.
    pub code: AnswerCode,
    /// Index in the batch of the entry's first transfer.
    pub transfer_index: u32,
    /// How many transfers the entry made (0 to 2).
    pub transfer_count: u8,
    /// The card.
    pub card_number: u64,
    /// The amount asked for, in fen.
    pub amount_fen: u32,
    /// The card's main purse after the request.
    pub balance_fen: i64,
    /// The card's restricted purse after the request.
    pub restricted_balance_fen: i64,
    /// Reversals: the original sequence. Offline records: the record's own sequence.
    /// Balance inquiries: the card's expiry date.
    pub aux: u64,
    /// A transfer the entry refers to without making it: a refund's purchase, the
    /// original posting of a duplicate offline record; 0 for none. Balance inquiries:
    /// the card state's wire number.
    pub reference: u64,
    /// [`Entry::TOMBSTONE`] and friends.
    pub flags: u8,
}

impl Entry {
    /// A reversal that found no original and left a tombstone at `aux`.
    pub const TOMBSTONE: u8 = 1;
    /// An offline record that went to quarantine.
    pub const QUARANTINED: u8 = 2;
    /// An offline record that was a duplicate of one already posted.
    pub const DUPLICATE: u8 = 4;
    /// A reversal of a purchase of the same business date: the purchase's amount no
    /// longer counts against the card's daily limit (`postings::Postings::of`).
    pub const SPENT_BACK: u8 = 8;
}

/// A decoded batch record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The shard's batch number, from 1.
    pub number: u64,
    /// The business date every transfer counts for.
    pub business_date: BusinessDate,
    /// Commit time.
    pub committed_at_ms: u64,
    /// The id of the first transfer; the rest follow densely.
    pub first_transfer_id: u64,
    /// The postings.
    pub transfers: Vec<Transfer>,
    /// The answers.
    pub entries: Vec<Entry>,
    /// The seal the record ends in ([`crate::chain`]); `None` for a record written
    /// before the chain (version 1).
    pub seal: Option<Seal>,
}

/// Why a journal record cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than its header says, or with trailing bytes.
    #[error("journal record has {found} bytes, its header says {expected}")]
    Length {
        /// Bytes the header implies.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// Not a journal record of a version this build reads.
    #[error("journal record has magic {magic:#04x} version {version}")]
    Format {
        /// The first byte.
        magic: u8,
        /// The second byte.
        version: u8,
    },
    /// A field holds a value no writer writes.
    #[error("journal record field {field} holds {value}")]
    Field {
        /// Which field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// The postings do not add up to the totals in the header.
    #[error("journal record totals differ: header {header}, postings {postings} ({what})")]
    Totals {
        /// Which total.
        what: &'static str,
        /// The header's figure.
        header: i64,
        /// The figure the postings give.
        postings: i64,
    },
}

/// The sum a record's header carries and decoding checks.
fn amount_total(transfers: &[Transfer]) -> i64 {
    transfers.iter().map(|transfer| transfer.amount_fen).sum()
}

/// Checks what every transfer must be: positive, between two different accounts,
/// numbered densely from `first_id`.
fn check_transfer(transfer: &Transfer, expected_id: u64) -> Result<(), RecordError> {
    if transfer.id != expected_id {
        return Err(RecordError::Field { field: "transfer.id", value: transfer.id });
    }
    if transfer.amount_fen <= 0 {
        return Err(RecordError::Field {
            field: "transfer.amount",
            value: transfer.amount_fen.unsigned_abs(),
        });
    }
    if transfer.debit == transfer.credit {
        return Err(RecordError::Field {
            field: "transfer.credit",
            value: transfer.credit.to_u64(),
        });
    }
    Ok(())
}

impl Batch {
    /// The batch as a record to write (its `seal` is computed then, not taken).
    #[must_use]
    pub fn view(&self) -> BatchView<'_> {
        BatchView {
            number: self.number,
            business_date: self.business_date,
            committed_at_ms: self.committed_at_ms,
            first_transfer_id: self.first_transfer_id,
            transfers: &self.transfers,
            entries: &self.entries,
        }
    }

    /// Decodes a record and checks it: dense ids, positive amounts, and the header's
    /// totals equal to the postings'. Whether its seal follows its journal's chain is
    /// `verify`'s to check ([`Batch::sealed_bytes`]).
    ///
    /// # Errors
    /// [`RecordError`] naming what does not hold.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Cursor { bytes, at: 0 };
        let head = r.take::<4>()?;
        let seal_bytes = match (head[0], head[1]) {
            (MAGIC, RECORD_VERSION) => SEAL_BYTES,
            (MAGIC, UNSEALED_RECORD_VERSION) => 0,
            _ => return Err(RecordError::Format { magic: head[0], version: head[1] }),
        };
        let date = r.u32()?;
        let business_date = BusinessDate::from_yyyymmdd(date)
            .ok_or(RecordError::Field { field: "business_date", value: date.into() })?;
        let number = r.u64()?;
        let committed_at_ms = r.u64()?;
        let first_transfer_id = r.u64()?;
        let transfer_count = r.u32()? as usize;
        let entry_count = r.u32()? as usize;
        let header_total = r.i64()?;
        let expected =
            HEADER_BYTES + transfer_count * TRANSFER_BYTES + entry_count * ENTRY_BYTES + seal_bytes;
        if bytes.len() != expected {
            return Err(RecordError::Length { expected, found: bytes.len() });
        }
        let mut transfers = Vec::with_capacity(transfer_count);
        for offset in 0..transfer_count as u64 {
            transfers.push(decode_transfer(&mut r, first_transfer_id + offset)?);
        }
        let mut entries = Vec::with_capacity(entry_count);
        for _ in 0..entry_count {
            let terminal_id = r.u32()?;
            let sequence = r.u64()?;
            let message_type = r.u16()?;
            let code = r.u16()?;
            let transfer_index = r.u32()?;
            let pair = r.take::<2>()?;
            let entry = Entry {
                terminal_id,
                sequence,
                message_type: MessageType::from_wire(message_type).map_err(|_| {
                    RecordError::Field { field: "entry.message_type", value: message_type.into() }
                })?,
                code: AnswerCode::from_wire(code)
                    .map_err(|_| RecordError::Field { field: "entry.code", value: code.into() })?,
                transfer_index,
                transfer_count: pair[0],
                flags: pair[1],
                card_number: r.u64()?,
                amount_fen: r.u32()?,
                balance_fen: r.i64()?,
                restricted_balance_fen: r.i64()?,
                aux: r.u64()?,
                reference: r.u64()?,
            };
            r.take::<2>()?;
            let end = u64::from(entry.transfer_index) + u64::from(entry.transfer_count);
            if end > transfer_count as u64 {
                return Err(RecordError::Field { field: "entry.transfer_index", value: end });
            }
            entries.push(entry);
        }
        let postings = amount_total(&transfers);
        if postings != header_total {
            return Err(RecordError::Totals { what: "amount", header: header_total, postings });
        }
        let seal = (seal_bytes > 0).then(|| Seal(r.take::<SEAL_BYTES>().expect("length checked")));
        Ok(Self {
            number,
            business_date,
            committed_at_ms,
            first_transfer_id,
            transfers,
            entries,
            seal,
        })
    }

    /// The bytes of a sealed record its seal covers: all but the seal itself. Call it
    /// on a record [`Batch::decode`] read with a seal.
    #[must_use]
    pub fn sealed_bytes(record: &[u8]) -> &[u8] {
        &record[..record.len().saturating_sub(SEAL_BYTES)]
    }

    /// The id one past the last transfer.
    #[must_use]
    pub fn next_transfer_id(&self) -> u64 {
        self.first_transfer_id + self.transfers.len() as u64
    }

    /// The transfer id an entry's answer carries: its first transfer, else the one it
    /// refers to, else 0.
    #[must_use]
    pub fn answer_transfer_id(&self, entry: &Entry) -> u64 {
        if entry.transfer_count > 0 {
            self.first_transfer_id + u64::from(entry.transfer_index)
        } else {
            entry.reference
        }
    }
}

/// Where a journal stands after its last durable batch: the id its next transfer
/// takes, its next batch's number, the business date of its last batch and that
/// batch's seal. A shard's writer and the control plane each keep one for their
/// journal and put every batch into a write through [`Tail::append`], the one place a
/// batch is numbered, sealed and marked as its day's first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    journal: u8,
    next_transfer_id: u64,
    next_batch: u64,
    /// `yyyymmdd` of the last batch; 0 before the first.
    last_date: u32,
    /// [`Seal::GENESIS`] before the first sealed batch.
    last_seal: Seal,
}

impl Tail {
    /// The tail of `journal` whose last batch on disk is `last` (`None`: the journal
    /// is empty).
    #[must_use]
    pub fn after(journal: u8, last: Option<&Batch>) -> Self {
        match last {
            Some(batch) => Self {
                journal,
                next_transfer_id: batch.next_transfer_id(),
                next_batch: batch.number + 1,
                last_date: batch.business_date.to_yyyymmdd(),
                last_seal: batch.seal.unwrap_or(Seal::GENESIS),
            },
            None => Self {
                journal,
                next_transfer_id: first_transfer_id(journal),
                next_batch: 1,
                last_date: 0,
                last_seal: Seal::GENESIS,
            },
        }
    }

    /// The id the next batch's first transfer takes.
    #[must_use]
    pub fn next_transfer_id(&self) -> u64 {
        self.next_transfer_id
    }

    /// The next batch's number, from 1.
    #[must_use]
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// The next batch's key in the journal's column family.
    #[must_use]
    pub fn key(&self) -> [u8; 16] {
        batch_key(self.next_transfer_id, self.next_batch)
    }

    /// The business date of the last batch, if there is one.
    #[must_use]
    pub fn last_date(&self) -> Option<BusinessDate> {
        BusinessDate::from_yyyymmdd(self.last_date)
    }

    /// The date the next batch counts for when `open` is the ledger's: never before
    /// the last batch's, so a journal's dates never go back.
    #[must_use]
    pub fn date_for(&self, open: BusinessDate) -> BusinessDate {
        self.last_date().map_or(open, |last| open.max(last))
    }

    /// Puts `batch`, this journal's next, into `write` in `journal`, its column
    /// family: the record sealed after the last batch, and the day-start mark
    /// (`0xF4` ++ date → the batch's key) if it is the first batch of its date.
    /// Returns the tail after it, for the caller to take once `write` is durable and
    /// not before: a write that fails leaves the journal where it was.
    ///
    /// # Panics
    /// If `batch` does not follow this tail (its number or first transfer id is not
    /// the next), or breaks a record invariant ([`BatchView::encode_sealed`]).
    #[must_use]
    pub fn append(
        &self,
        chain: &ChainKey,
        batch: &BatchView<'_>,
        write: &mut WriteBatch,
        journal: &ColumnFamily,
    ) -> Self {
        assert_eq!(batch.number, self.next_batch, "journal {}: a batch out of turn", self.journal);
        assert_eq!(
            batch.first_transfer_id, self.next_transfer_id,
            "journal {}: a batch whose transfer ids do not follow",
            self.journal
        );
        let key = self.key();
        let (record, seal) = batch.encode_sealed(chain, self.journal, &self.last_seal);
        write.put_cf(journal, key, record);
        let date = batch.business_date.to_yyyymmdd();
        if self.last_date != date {
            write.put_cf(journal, prefixed_key(shard_key::DAY_START, &date.to_be_bytes()), key);
        }
        Self {
            journal: self.journal,
            next_transfer_id: batch.first_transfer_id + batch.transfers.len() as u64,
            next_batch: self.next_batch + 1,
            last_date: date,
            last_seal: seal,
        }
    }
}

/// A batch record to write, borrowing what the shard decided.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// The shard's batch number, from 1.
    pub number: u64,
    /// The business date every transfer counts for.
    pub business_date: BusinessDate,
    /// Commit time.
    pub committed_at_ms: u64,
    /// The id of the first transfer.
    pub first_transfer_id: u64,
    /// The postings.
    pub transfers: &'a [Transfer],
    /// The answers.
    pub entries: &'a [Entry],
}

impl BatchView<'_> {
    /// Encodes the record as journal `journal`'s batch after the one sealed
    /// `previous`, and seals it; returns the record and its seal, which the journal's
    /// next batch follows.
    ///
    /// # Panics
    /// If a transfer breaks an invariant (non-positive amount, debit equal to credit,
    /// ids not dense): the shard decided a batch it must never write.
    #[must_use]
    pub fn encode_sealed(&self, chain: &ChainKey, journal: u8, previous: &Seal) -> (Vec<u8>, Seal) {
        let mut out = self.encode_unsealed(RECORD_VERSION, SEAL_BYTES);
        let seal = chain.seal(journal, previous, &out);
        out.extend_from_slice(&seal.0);
        (out, seal)
    }

    /// Encodes the record's header and body under `version`, leaving room for `spare`
    /// bytes more.
    fn encode_unsealed(&self, version: u8, spare: usize) -> Vec<u8> {
        for (offset, transfer) in (0u64..).zip(self.transfers) {
            if let Err(broken) = check_transfer(transfer, self.first_transfer_id + offset) {
                panic!("refusing to write an unbalanced or malformed batch: {broken}");
            }
        }
        let amount_total = amount_total(self.transfers);
        let transfer_count = u32::try_from(self.transfers.len()).expect("batch size is bounded");
        let entry_count = u32::try_from(self.entries.len()).expect("batch size is bounded");
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + self.transfers.len() * TRANSFER_BYTES
                + self.entries.len() * ENTRY_BYTES
                + spare,
        );
        out.extend_from_slice(&[MAGIC, version, 0, 0]);
        out.extend_from_slice(&self.business_date.to_yyyymmdd().to_le_bytes());
        out.extend_from_slice(&self.number.to_le_bytes());
        out.extend_from_slice(&self.committed_at_ms.to_le_bytes());
        out.extend_from_slice(&self.first_transfer_id.to_le_bytes());
        out.extend_from_slice(&transfer_count.to_le_bytes());
        out.extend_from_slice(&entry_count.to_le_bytes());
        out.extend_from_slice(&amount_total.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        for t in self.transfers {
            out.extend_from_slice(&t.debit.to_u64().to_le_bytes());
            out.extend_from_slice(&t.credit.to_u64().to_le_bytes());
            out.extend_from_slice(&t.amount_fen.to_le_bytes());
            out.extend_from_slice(&t.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&t.terminal_id.to_le_bytes());
            out.extend_from_slice(&t.sequence.to_le_bytes());
            out.extend_from_slice(&t.corrects.to_le_bytes());
            out.extend_from_slice(&t.card_number.to_le_bytes());
            out.extend_from_slice(&t.business_date.to_yyyymmdd().to_le_bytes());
            out.push(t.kind as u8);
            out.push(t.meal_period.to_wire());
            out.push(u8::from(t.continues));
            out.push(0);
            out.extend_from_slice(&[0, 0]);
        }
        for e in self.entries {
            out.extend_from_slice(&e.terminal_id.to_le_bytes());
            out.extend_from_slice(&e.sequence.to_le_bytes());
            out.extend_from_slice(&e.message_type.to_wire().to_le_bytes());
            out.extend_from_slice(&e.code.to_wire().to_le_bytes());
            out.extend_from_slice(&e.transfer_index.to_le_bytes());
            out.push(e.transfer_count);
            out.push(e.flags);
            out.extend_from_slice(&e.card_number.to_le_bytes());
            out.extend_from_slice(&e.amount_fen.to_le_bytes());
            out.extend_from_slice(&e.balance_fen.to_le_bytes());
            out.extend_from_slice(&e.restricted_balance_fen.to_le_bytes());
            out.extend_from_slice(&e.aux.to_le_bytes());
            out.extend_from_slice(&e.reference.to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        }
        out
    }
}

/// Reads one transfer record at the cursor and checks it.
fn decode_transfer(r: &mut Cursor<'_>, id: u64) -> Result<Transfer, RecordError> {
    let account = |raw| {
        AccountId::from_u64(raw).map_err(|value| RecordError::Field { field: "account", value })
    };
    let debit = account(r.u64()?)?;
    let credit = account(r.u64()?)?;
    let amount_fen = r.i64()?;
    let timestamp_ms = r.u64()?;
    let terminal_id = r.u32()?;
    let sequence = r.u64()?;
    let corrects = r.u64()?;
    let card_number = r.u64()?;
    let date = r.u32()?;
    let tail = r.take::<6>()?;
    let transfer = Transfer {
        id,
        debit,
        credit,
        amount_fen,
        kind: TransferKind::from_byte(tail[0])
            .ok_or(RecordError::Field { field: "transfer.kind", value: tail[0].into() })?,
        business_date: BusinessDate::from_yyyymmdd(date)
            .ok_or(RecordError::Field { field: "transfer.date", value: date.into() })?,
        timestamp_ms,
        terminal_id,
        sequence,
        corrects,
        card_number,
        meal_period: MealPeriod::from_wire(tail[1])
            .map_err(|_| RecordError::Field { field: "meal_period", value: tail[1].into() })?,
        continues: tail[2] != 0,
    };
    check_transfer(&transfer, id)?;
    Ok(transfer)
}

/// Reads transfer `id` and, if the next one continues it (a purchase paid from two
/// purses), that one too, straight from a stored record without decoding the rest:
/// the point read that refunds, reversals and statements make.
///
/// # Errors
/// [`RecordError`] if the record is not a batch or the transfers are malformed.
pub fn read_transfer(
    bytes: &[u8],
    id: u64,
) -> Result<Option<(Transfer, Option<Transfer>)>, RecordError> {
    let header = bytes
        .get(..HEADER_BYTES)
        .ok_or(RecordError::Length { expected: HEADER_BYTES, found: bytes.len() })?;
    if header[0] != MAGIC || (header[1] != RECORD_VERSION && header[1] != UNSEALED_RECORD_VERSION) {
        return Err(RecordError::Format { magic: header[0], version: header[1] });
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let first = word(24);
    let count = u64::from(u32::from_le_bytes(header[32..36].try_into().expect("4 bytes")));
    let Some(index) = id.checked_sub(first).filter(|index| *index < count) else {
        return Ok(None);
    };
    let at = |index: u64| {
        HEADER_BYTES + usize::try_from(index).unwrap_or(usize::MAX / 2) * TRANSFER_BYTES
    };
    let transfer = decode_transfer(&mut Cursor { bytes, at: at(index) }, id)?;
    let next = if index + 1 < count {
        Some(decode_transfer(&mut Cursor { bytes, at: at(index + 1) }, id + 1)?)
            .filter(|t| t.continues)
    } else {
        None
    };
    Ok(Some((transfer, next)))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let end = self.at + N;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(RecordError::Length { expected: end, found: self.bytes.len() })?;
        self.at = end;
        Ok(slice.try_into().expect("slice has N bytes"))
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        self.take().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::AccountKind;

    fn sample() -> Batch {
        let date = BusinessDate::from_yyyymmdd(20_260_901).expect("date");
        let first = first_transfer_id(3);
        let transfer = |offset, debit, credit, amount_fen| Transfer {
            id: first + offset,
            debit,
            credit,
            amount_fen,
            kind: TransferKind::Purchase,
            business_date: date,
            timestamp_ms: 1_788_278_399_000,
            terminal_id: 42,
            sequence: 7,
            corrects: 0,
            card_number: 2_026_000_001,
            meal_period: MealPeriod::Lunch,
            continues: offset == 1,
        };
        Batch {
            number: 9,
            business_date: date,
            committed_at_ms: 1_788_278_399_001,
            first_transfer_id: first,
            transfers: vec![
                transfer(0, AccountId::card_restricted(5), AccountId::merchant(2), 300),
                transfer(1, AccountId::card(5), AccountId::merchant(2), 1_250),
            ],
            entries: vec![Entry {
                terminal_id: 42,
                sequence: 7,
                message_type: MessageType::Purchase,
                code: AnswerCode::Approved,
                transfer_index: 0,
                transfer_count: 2,
                card_number: 2_026_000_001,
                amount_fen: 1_550,
                balance_fen: 10_000,
                restricted_balance_fen: 0,
                aux: 0,
                reference: 0,
                flags: 0,
            }],
            seal: None,
        }
    }

    fn chain() -> ChainKey {
        ChainKey::from_bytes(&[7; 32])
    }

    fn sealed(batch: &Batch) -> Vec<u8> {
        batch.view().encode_sealed(&chain(), 3, &Seal::GENESIS).0
    }

    #[test]
    fn a_tail_numbers_seals_and_marks_each_batch_and_moves_only_when_taken() {
        let dir = onecard_tests::TempDir::new("journal-tail");
        let store = crate::store::Store::open(dir.path(), 4).expect("opens");
        let cf = store.cf(&crate::store::journal_cf(3));
        let empty = Tail::after(3, None);
        assert_eq!((empty.next_transfer_id(), empty.next_batch()), (first_transfer_id(3), 1));
        let first = Batch { number: 1, ..sample() };
        let mut write = WriteBatch::default();
        let tail = empty.append(&chain(), &first.view(), &mut write, cf);
        assert_eq!(write.len(), 2, "the record and its day's start");
        assert_eq!(empty, Tail::after(3, None), "the tail a caller holds moves when taken");
        assert_eq!(tail.next_transfer_id(), first.next_transfer_id());
        assert_eq!((tail.next_batch(), tail.last_date()), (2, Some(first.business_date)));
        store.write_synced(3, write).expect("writes");
        let record = store.db().get_cf(cf, empty.key()).expect("reads").expect("written");
        let decoded = Batch::decode(&record).expect("decodes");
        assert_eq!(decoded.seal.map(|seal| seal.matches(&tail.last_seal)), Some(true));
        assert_eq!(Tail::after(3, Some(&decoded)), tail, "the tail a restart reads back");
        let second = Batch {
            number: 2,
            first_transfer_id: tail.next_transfer_id(),
            transfers: Vec::new(),
            ..first.clone()
        };
        let mut write = WriteBatch::default();
        let after = tail.append(&chain(), &second.view(), &mut write, cf);
        assert_eq!(write.len(), 1, "the same date starts no new day");
        assert_eq!(after.next_transfer_id(), tail.next_transfer_id(), "no transfers, no ids");
        let earlier = first.business_date.previous();
        assert_eq!(tail.date_for(earlier), first.business_date, "a journal's dates never go back");
        let later = first.business_date.next();
        assert_eq!(tail.date_for(later), later);
    }

    #[test]
    #[should_panic(expected = "out of turn")]
    fn a_tail_refuses_a_batch_out_of_turn() {
        let dir = onecard_tests::TempDir::new("journal-tail-turn");
        let store = crate::store::Store::open(dir.path(), 4).expect("opens");
        let cf = store.cf(&crate::store::journal_cf(3));
        let _ =
            Tail::after(3, None).append(&chain(), &sample().view(), &mut WriteBatch::default(), cf);
    }

    #[test]
    fn a_batch_round_trips_with_its_seal() {
        let batch = sample();
        let (bytes, seal) = batch.view().encode_sealed(&chain(), 3, &Seal::GENESIS);
        assert_eq!(bytes.len(), HEADER_BYTES + 2 * TRANSFER_BYTES + ENTRY_BYTES + SEAL_BYTES);
        let decoded = Batch::decode(&bytes).expect("decodes");
        assert_eq!(decoded.seal, Some(seal));
        assert_eq!(seal, chain().seal(3, &Seal::GENESIS, Batch::sealed_bytes(&bytes)));
        assert_eq!(Batch { seal: None, ..decoded }, batch);
        let (transfer, next) = read_transfer(&bytes, batch.first_transfer_id)
            .expect("reads")
            .expect("holds the transfer");
        assert_eq!(transfer, batch.transfers[0]);
        assert_eq!(next, Some(batch.transfers[1]), "the second purse's part continues it");
    }

    #[test]
    fn a_record_from_before_the_chain_still_reads_without_a_seal() {
        let batch = sample();
        let bytes = batch.view().encode_unsealed(UNSEALED_RECORD_VERSION, 0);
        assert_eq!(bytes.len(), HEADER_BYTES + 2 * TRANSFER_BYTES + ENTRY_BYTES);
        assert_eq!(Batch::decode(&bytes), Ok(batch.clone()));
        assert!(read_transfer(&bytes, batch.first_transfer_id).expect("reads").is_some());
        let mut future = bytes.clone();
        future[1] = RECORD_VERSION + 1;
        assert_eq!(Batch::decode(&future), Err(RecordError::Format { magic: MAGIC, version: 3 }));
    }

    #[test]
    fn the_seal_follows_the_previous_one() {
        let batch = sample();
        let (_, first) = batch.view().encode_sealed(&chain(), 3, &Seal::GENESIS);
        let (_, second) = batch.view().encode_sealed(&chain(), 3, &first);
        assert_ne!(first, second, "the same record after another batch seals otherwise");
    }

    #[test]
    fn a_record_whose_postings_changed_is_refused() {
        let mut bytes = sealed(&sample());
        // The second transfer's amount, low byte.
        bytes[HEADER_BYTES + TRANSFER_BYTES + 16] ^= 1;
        assert!(matches!(Batch::decode(&bytes), Err(RecordError::Totals { .. })));
        let bytes = sealed(&sample());
        assert!(matches!(
            Batch::decode(&bytes[..bytes.len() - 1]),
            Err(RecordError::Length { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "refusing to write")]
    fn a_transfer_to_itself_is_never_written() {
        let mut batch = sample();
        batch.transfers[0].credit = batch.transfers[0].debit;
        let _ = sealed(&batch);
    }

    #[test]
    fn batch_keys_sort_by_first_transfer_then_number() {
        assert!(batch_key(5, 9) < batch_key(6, 1));
        assert!(batch_key(5, 9) < seek_key(5));
        assert_eq!(journal_of(first_transfer_id(3)), 3);
        assert_eq!(AccountId::merchant(2).kind(), AccountKind::Merchant);
    }
}
