//! The messages: what a terminal asks and what the server answers.
//!
//! Every request type has one answer type, numbered `0x8000 | request type`; `Reject`
//! (`0xFFFF`) answers a frame the server could not take as the request it claims to be,
//! and `Redirect` (`0xFFFE`) any frame sent to a node of a cell that does not lead it.
//! Every answer body opens with its [`AnswerCode`]. Bodies have fixed layouts: a refused
//! answer carries the same fields as an approved one, zero where nothing applies.
//!
//! A retry of a transaction the server already decided is answered with the original
//! answer's body behind a `Duplicate` code: `[0x000B][original body]`.

use bytes::{BufMut, BytesMut};

use crate::code::{AnswerCode, CardState, Channel, MealPeriod};
use crate::error::{DecodeError, EncodeError};
use crate::limits::{
    BLACKLIST_ENTRIES_MAX, BODY_BYTES_MAX, EXTERNAL_REFERENCE_BYTES_MAX, OFFLINE_RECORDS_MAX,
    REDIRECT_ADDRESS_BYTES_MAX,
};
use crate::pin::{PIN_BLOCK_BYTES, PinBlock};
use crate::wire::Reader;

/// The bit that marks an answer's message type.
pub const ANSWER_BIT: u16 = 0x8000;

/// The message type number of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// Terminal proves it holds its key; answer carries server time, business date and
    /// blacklist version.
    SignOn = 0x0001,
    /// Terminal reports its clock and blacklist version.
    Heartbeat = 0x0002,
    /// Card pays the terminal's merchant.
    Purchase = 0x0003,
    /// Money into a card from a channel.
    TopUp = 0x0004,
    /// Card's balances and state.
    BalanceInquiry = 0x0005,
    /// Merchant returns all or part of a purchase.
    Refund = 0x0006,
    /// Cancel a request whose answer never came.
    Reversal = 0x0007,
    /// Transactions taken while the terminal was offline.
    OfflineUpload = 0x0008,
    /// Blacklist changes since a version.
    BlacklistDownload = 0x0009,
    /// Terminal leaves.
    SignOff = 0x000A,
    /// Answer to [`MessageType::SignOn`].
    SignOnAnswer = 0x8001,
    /// Answer to [`MessageType::Heartbeat`].
    HeartbeatAnswer = 0x8002,
    /// Answer to [`MessageType::Purchase`].
    PurchaseAnswer = 0x8003,
    /// Answer to [`MessageType::TopUp`].
    TopUpAnswer = 0x8004,
    /// Answer to [`MessageType::BalanceInquiry`].
    BalanceInquiryAnswer = 0x8005,
    /// Answer to [`MessageType::Refund`].
    RefundAnswer = 0x8006,
    /// Answer to [`MessageType::Reversal`].
    ReversalAnswer = 0x8007,
    /// Answer to [`MessageType::OfflineUpload`].
    OfflineUploadAnswer = 0x8008,
    /// Answer to [`MessageType::BlacklistDownload`].
    BlacklistDownloadAnswer = 0x8009,
    /// Answer to [`MessageType::SignOff`].
    SignOffAnswer = 0x800A,
    /// A frame sent to a node that does not lead its cell: go to the leader.
    Redirect = 0xFFFE,
    /// A frame refused before it could be taken as its request.
    Reject = 0xFFFF,
}

impl MessageType {
    /// Every type, in wire order.
    pub const ALL: &'static [Self] = &[
        Self::SignOn,
        Self::Heartbeat,
        Self::Purchase,
        Self::TopUp,
        Self::BalanceInquiry,
        Self::Refund,
        Self::Reversal,
        Self::OfflineUpload,
        Self::BlacklistDownload,
        Self::SignOff,
        Self::SignOnAnswer,
        Self::HeartbeatAnswer,
        Self::PurchaseAnswer,
        Self::TopUpAnswer,
        Self::BalanceInquiryAnswer,
        Self::RefundAnswer,
        Self::ReversalAnswer,
        Self::OfflineUploadAnswer,
        Self::BlacklistDownloadAnswer,
        Self::SignOffAnswer,
        Self::Redirect,
        Self::Reject,
    ];

    /// The type's number on the wire.
    #[must_use]
    pub const fn to_wire(self) -> u16 {
        self as u16
    }

    /// The type a wire number names.
    ///
    /// # Errors
    /// [`DecodeError::UnknownMessageType`] for an undefined number.
    pub const fn from_wire(value: u16) -> Result<Self, DecodeError> {
        Ok(match value {
            0x0001 => Self::SignOn,
            0x0002 => Self::Heartbeat,
            0x0003 => Self::Purchase,
            0x0004 => Self::TopUp,
            0x0005 => Self::BalanceInquiry,
            0x0006 => Self::Refund,
            0x0007 => Self::Reversal,
            0x0008 => Self::OfflineUpload,
            0x0009 => Self::BlacklistDownload,
            0x000A => Self::SignOff,
            0x8001 => Self::SignOnAnswer,
            0x8002 => Self::HeartbeatAnswer,
            0x8003 => Self::PurchaseAnswer,
            0x8004 => Self::TopUpAnswer,
            0x8005 => Self::BalanceInquiryAnswer,
            0x8006 => Self::RefundAnswer,
            0x8007 => Self::ReversalAnswer,
            0x8008 => Self::OfflineUploadAnswer,
            0x8009 => Self::BlacklistDownloadAnswer,
            0x800A => Self::SignOffAnswer,
            0xFFFE => Self::Redirect,
            0xFFFF => Self::Reject,
            other => return Err(DecodeError::UnknownMessageType(other)),
        })
    }

    /// Whether frames of this type travel from the server to a terminal.
    #[must_use]
    pub const fn is_answer(self) -> bool {
        self.to_wire() & ANSWER_BIT != 0
    }

    /// Whether a request of this type changes money and so is kept for retries: a
    /// retry with the same sequence gets the original answer.
    #[must_use]
    pub const fn is_transaction(self) -> bool {
        matches!(
            self,
            Self::Purchase | Self::TopUp | Self::Refund | Self::Reversal | Self::OfflineUpload
        )
    }
}

/// A message body: something that can be put in a frame.
pub trait Body {
    /// The message type the frame header names.
    fn message_type(&self) -> MessageType;
    /// Bytes [`Body::encode_body`] will write; used to reserve once.
    fn encoded_len(&self) -> usize;
    /// Appends the body's bytes.
    ///
    /// # Errors
    /// [`EncodeError`] if a list or field breaks a protocol limit.
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;
}

/// Sign-on: the first request on every connection. The frame's MAC proves the
/// terminal holds its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOn {
    /// The blacklist version the terminal holds.
    pub blacklist_version: u64,
    /// The terminal's software version, for the card centre's fleet view.
    pub software_version: u32,
}

/// Heartbeat: the terminal's clock is the header timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The blacklist version the terminal holds.
    pub blacklist_version: u64,
}

/// A purchase (消费): the card pays the terminal's merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purchase {
    /// The card presented.
    pub card_number: u64,
    /// Amount in fen.
    pub amount_fen: u32,
    /// The meal, where the terminal knows it.
    pub meal_period: MealPeriod,
    /// The merchant's item code, 0 for none.
    pub item_code: u32,
    /// The sealed PIN, where the amount is above the card's no-PIN limit.
    pub pin_block: Option<PinBlock>,
}

/// A top-up's external reference: the channel's own order number, up to 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reference {
    len: u8,
    bytes: [u8; EXTERNAL_REFERENCE_BYTES_MAX],
}

impl Reference {
    /// An empty reference.
    pub const EMPTY: Self = Self { len: 0, bytes: [0; EXTERNAL_REFERENCE_BYTES_MAX] };

    /// Wraps up to 32 bytes.
    ///
    /// # Errors
    /// [`EncodeError::InvalidValue`] if `bytes` is longer.
    pub fn new(bytes: &[u8]) -> Result<Self, EncodeError> {
        let len = u8::try_from(bytes.len())
            .ok()
            .filter(|len| usize::from(*len) <= EXTERNAL_REFERENCE_BYTES_MAX)
            .ok_or(EncodeError::InvalidValue {
                field: "reference",
                reason: "longer than 32 bytes",
            })?;
        let mut out = Self::EMPTY;
        out.len = len;
        out.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(out)
    }

    /// The reference bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reference({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A top-up (充值): money into the card from a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUp {
    /// The card credited.
    pub card_number: u64,
    /// Amount in fen.
    pub amount_fen: u32,
    /// Where the money came from.
    pub channel: Channel,
    /// The channel's order number, matched in reconciliation.
    pub reference: Reference,
}

/// A balance inquiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceInquiry {
    /// The card asked about.
    pub card_number: u64,
}

/// A refund (退款) of all or part of an earlier purchase at the same merchant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// The card refunded; must be the purchase's card.
    pub card_number: u64,
    /// The transfer id the purchase's answer carried.
    pub purchase_transfer_id: u64,
    /// Amount returned, in fen; at most what the purchase has left unrefunded.
    pub amount_fen: u32,
}

/// A reversal (冲正): cancel this terminal's request whose answer never came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reversal {
    /// The sequence of the request to cancel.
    pub original_sequence: u64,
    /// The card of that request; checked against it.
    pub card_number: u64,
    /// The amount of that request; checked against it.
    pub amount_fen: u32,
}

/// One purchase a terminal took while it was offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineRecord {
    /// The terminal sequence the purchase was taken under; idempotency key.
    pub sequence: u64,
    /// The card.
    pub card_number: u64,
    /// Amount in fen.
    pub amount_fen: u32,
    /// When the purchase was taken, by the terminal's clock, ms since the Unix epoch.
    pub taken_at_ms: u64,
    /// The meal, where known.
    pub meal_period: MealPeriod,
    /// The merchant's item code, 0 for none.
    pub item_code: u32,
}

/// An upload of offline purchases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineUpload {
    /// At most [`OFFLINE_RECORDS_MAX`].
    pub records: Vec<OfflineRecord>,
}

/// A request for blacklist changes after a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlacklistDownload {
    /// The version the terminal holds; entries after it are sent.
    pub since_version: u64,
    /// Entries the terminal can take in one answer; the server sends at most
    /// [`BLACKLIST_ENTRIES_MAX`] whatever is asked.
    pub entries_max: u16,
}

/// A terminal's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// See [`SignOn`].
    SignOn(SignOn),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Purchase`].
    Purchase(Purchase),
    /// See [`TopUp`].
    TopUp(TopUp),
    /// See [`BalanceInquiry`].
    BalanceInquiry(BalanceInquiry),
    /// See [`Refund`].
    Refund(Refund),
    /// See [`Reversal`].
    Reversal(Reversal),
    /// See [`OfflineUpload`].
    OfflineUpload(OfflineUpload),
    /// See [`BlacklistDownload`].
    BlacklistDownload(BlacklistDownload),
    /// The terminal leaves; the server answers and closes.
    SignOff,
}

/// The answer to a sign-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOnAnswer {
    /// `Approved`, or why not.
    pub code: AnswerCode,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// The business date, as `yyyymmdd` (20260901).
    pub business_date: u32,
    /// The newest blacklist version.
    pub blacklist_version: u64,
    /// The highest sequence the server has seen from this terminal, so a terminal that
    /// lost its counter resumes above it. Sent even when sign-on is refused as stale.
    pub last_sequence: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// `Approved`, or why not.
    pub code: AnswerCode,
    /// The server's clock, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// The business date, as `yyyymmdd`.
    pub business_date: u32,
    /// The newest blacklist version.
    pub blacklist_version: u64,
}

/// The answer to a purchase, top-up, refund or reversal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferAnswer {
    /// Whether this is a retry's copy of the original answer (sent behind a `Duplicate`
    /// code).
    pub duplicate: bool,
    /// `Approved`, or why not.
    pub code: AnswerCode,
    /// The committed transfer's id, 0 if none was committed.
    pub transfer_id: u64,
    /// The card's main purse after the request, in fen (the current balance when
    /// refused, 0 when unknown).
    pub balance_fen: i64,
    /// The card's restricted purse after the request, in fen.
    pub restricted_balance_fen: i64,
}

/// The answer to a balance inquiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceAnswer {
    /// `Approved`, or why not (`UnknownCard`).
    pub code: AnswerCode,
    /// The card's state; `Active` when refused.
    pub card_state: CardState,
    /// The main purse, in fen.
    pub balance_fen: i64,
    /// The restricted purse, in fen.
    pub restricted_balance_fen: i64,
    /// The card's expiry date as `yyyymmdd`, 0 when refused.
    pub expiry_date: u32,
}

/// The outcome of one offline record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineResult {
    /// The record's sequence.
    pub sequence: u64,
    /// `Approved`, `Duplicate` (already recorded), or why it was refused.
    pub code: AnswerCode,
    /// The transfer id, 0 if none.
    pub transfer_id: u64,
    /// The card's main purse after it, in fen.
    pub balance_fen: i64,
}

/// The answer to an offline upload: one result per record, in the upload's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineUploadAnswer {
    /// Whether this is a retry's copy of the original answer.
    pub duplicate: bool,
    /// `Approved` when the records were decided (each has its own code), or why the
    /// upload as a whole was refused (then `results` is empty).
    pub code: AnswerCode,
    /// At most [`OFFLINE_RECORDS_MAX`].
    pub results: Vec<OfflineResult>,
}

/// One blacklist change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlacklistEntry {
    /// The version this change made.
    pub version: u64,
    /// The card.
    pub card_number: u64,
    /// `true`: refuse this card; `false`: taken off the list.
    pub listed: bool,
}

/// The answer to a blacklist download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlacklistAnswer {
    /// `Approved`, or why not.
    pub code: AnswerCode,
    /// The newest version; when the last entry's version is below it, ask again.
    pub current_version: u64,
    /// Changes in version order, at most [`BLACKLIST_ENTRIES_MAX`].
    pub entries: Vec<BlacklistEntry>,
}

/// The answer to a sign-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOffAnswer {
    /// `Approved`.
    pub code: AnswerCode,
}

/// A frame refused before it could be taken as its request: unknown terminal, bad MAC,
/// unknown type, malformed body, not signed on, server busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub code: AnswerCode,
    /// The message type number the refused frame carried.
    pub refused_type: u16,
}

/// The answer of a node that does not lead its cell, to any frame: where the leader's
/// terminal port is, if this node knows. Unsigned (a follower does not hold the
/// terminal directory open): a terminal takes it as a hint, connects only to an
/// address it was configured with, and trusts nothing until the leader's signed
/// sign-on answer. The node closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `NotLeader`.
    pub code: AnswerCode,
    /// The message type number the redirected frame carried.
    pub refused_type: u16,
    /// The leader's terminal address, `host:port` in printable ASCII; empty while the
    /// cell has no leader (an election is under way: try another node, or wait).
    pub leader: String,
}

impl Redirect {
    /// A redirect to `leader` (empty if none is known).
    ///
    /// # Errors
    /// [`EncodeError::InvalidValue`] if the address is longer than
    /// [`REDIRECT_ADDRESS_BYTES_MAX`] or not printable ASCII.
    pub fn new(refused_type: u16, leader: &str) -> Result<Self, EncodeError> {
        check_address(leader.as_bytes())
            .map_err(|reason| EncodeError::InvalidValue { field: "leader", reason })?;
        Ok(Self { code: AnswerCode::NotLeader, refused_type, leader: leader.to_owned() })
    }

    /// A redirect naming no leader: this node does not know which node leads now.
    #[must_use]
    pub const fn nowhere(refused_type: u16) -> Self {
        Self { code: AnswerCode::NotLeader, refused_type, leader: String::new() }
    }
}

/// Whether `address` may be a redirect's leader address.
fn check_address(address: &[u8]) -> Result<(), &'static str> {
    if address.len() > REDIRECT_ADDRESS_BYTES_MAX {
        return Err("longer than 64 bytes");
    }
    if !address.iter().all(|b| b.is_ascii_graphic()) {
        return Err("not printable ASCII");
    }
    Ok(())
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// See [`SignOnAnswer`].
    SignOn(SignOnAnswer),
    /// See [`HeartbeatAnswer`].
    Heartbeat(HeartbeatAnswer),
    /// See [`TransferAnswer`].
    Purchase(TransferAnswer),
    /// See [`TransferAnswer`].
    TopUp(TransferAnswer),
    /// See [`BalanceAnswer`].
    BalanceInquiry(BalanceAnswer),
    /// See [`TransferAnswer`].
    Refund(TransferAnswer),
    /// See [`TransferAnswer`].
    Reversal(TransferAnswer),
    /// See [`OfflineUploadAnswer`].
    OfflineUpload(OfflineUploadAnswer),
    /// See [`BlacklistAnswer`].
    BlacklistDownload(BlacklistAnswer),
    /// See [`SignOffAnswer`].
    SignOff(SignOffAnswer),
    /// See [`Reject`].
    Reject(Reject),
    /// See [`Redirect`].
    Redirect(Redirect),
}

impl Answer {
    /// The decision, whatever the type.
    #[must_use]
    pub fn code(&self) -> AnswerCode {
        match self {
            Self::SignOn(a) => a.code,
            Self::Heartbeat(a) => a.code,
            Self::Purchase(a) | Self::TopUp(a) | Self::Refund(a) | Self::Reversal(a) => a.code,
            Self::BalanceInquiry(a) => a.code,
            Self::OfflineUpload(a) => a.code,
            Self::BlacklistDownload(a) => a.code,
            Self::SignOff(a) => a.code,
            Self::Reject(a) => a.code,
            Self::Redirect(a) => a.code,
        }
    }

    /// Whether this answer is a retry's copy of an earlier one.
    #[must_use]
    pub fn is_duplicate(&self) -> bool {
        match self {
            Self::Purchase(a) | Self::TopUp(a) | Self::Refund(a) | Self::Reversal(a) => a.duplicate,
            Self::OfflineUpload(a) => a.duplicate,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Body sizes. Each constant is the exact or largest encoding; the assertions at the end of
// the file prove every message fits a frame.

const SIGN_ON_BYTES: usize = 8 + 4;
const HEARTBEAT_BYTES: usize = 8;
const PURCHASE_BYTES_MIN: usize = 8 + 4 + 1 + 4 + 1;
const PURCHASE_BYTES_MAX: usize = PURCHASE_BYTES_MIN + PIN_BLOCK_BYTES;
const TOP_UP_BYTES_MIN: usize = 8 + 4 + 1 + 1;
const TOP_UP_BYTES_MAX: usize = TOP_UP_BYTES_MIN + EXTERNAL_REFERENCE_BYTES_MAX;
const BALANCE_INQUIRY_BYTES: usize = 8;
const REFUND_BYTES: usize = 8 + 8 + 4;
const REVERSAL_BYTES: usize = 8 + 8 + 4;
const OFFLINE_RECORD_BYTES: usize = 8 + 8 + 4 + 8 + 1 + 4;
const OFFLINE_UPLOAD_BYTES_MAX: usize = 2 + OFFLINE_RECORDS_MAX * OFFLINE_RECORD_BYTES;
const BLACKLIST_DOWNLOAD_BYTES: usize = 8 + 2;
const CODE_BYTES: usize = 2;
const SIGN_ON_ANSWER_BYTES: usize = CODE_BYTES + 8 + 4 + 8 + 8;
const HEARTBEAT_ANSWER_BYTES: usize = CODE_BYTES + 8 + 4 + 8;
const TRANSFER_ANSWER_BYTES: usize = CODE_BYTES + 8 + 8 + 8;
const BALANCE_ANSWER_BYTES: usize = CODE_BYTES + 1 + 8 + 8 + 4;
const OFFLINE_RESULT_BYTES: usize = 8 + 2 + 8 + 8;
const OFFLINE_ANSWER_BYTES_MAX: usize =
    CODE_BYTES + CODE_BYTES + 2 + OFFLINE_RECORDS_MAX * OFFLINE_RESULT_BYTES;
const BLACKLIST_ENTRY_BYTES: usize = 8 + 8 + 1;
const BLACKLIST_ANSWER_BYTES_MAX: usize =
    CODE_BYTES + 8 + 2 + BLACKLIST_ENTRIES_MAX * BLACKLIST_ENTRY_BYTES;
const REJECT_BYTES: usize = CODE_BYTES + 2;
const REDIRECT_BYTES_MAX: usize = CODE_BYTES + 2 + 1 + REDIRECT_ADDRESS_BYTES_MAX;

const _: () = assert!(PURCHASE_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(TOP_UP_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(OFFLINE_UPLOAD_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(OFFLINE_ANSWER_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(BLACKLIST_ANSWER_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(SIGN_ON_ANSWER_BYTES <= BODY_BYTES_MAX);
const _: () = assert!(REDIRECT_BYTES_MAX <= BODY_BYTES_MAX);
const _: () = assert!(CODE_BYTES + TRANSFER_ANSWER_BYTES <= BODY_BYTES_MAX);

// ---------------------------------------------------------------------------------------
// Requests.

impl Request {
    /// Decodes the body of a request of type `message_type`.
    ///
    /// # Errors
    /// [`DecodeError`] if the type is not a request type or the body does not parse.
    pub fn decode(message_type: MessageType, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let request = match message_type {
            MessageType::SignOn => Self::SignOn(SignOn {
                blacklist_version: r.u64("blacklist_version")?,
                software_version: r.u32("software_version")?,
            }),
            MessageType::Heartbeat => {
                Self::Heartbeat(Heartbeat { blacklist_version: r.u64("blacklist_version")? })
            }
            MessageType::Purchase => Self::Purchase(Purchase {
                card_number: r.u64("card_number")?,
                amount_fen: r.u32("amount_fen")?,
                meal_period: MealPeriod::from_wire(r.u8("meal_period")?)?,
                item_code: r.u32("item_code")?,
                pin_block: match r.u8("pin_present")? {
                    0 => None,
                    1 => Some(PinBlock(r.array("pin_block")?)),
                    other => {
                        return Err(DecodeError::InvalidValue {
                            field: "pin_present",
                            value: u64::from(other),
                        });
                    }
                },
            }),
            MessageType::TopUp => {
                let card_number = r.u64("card_number")?;
                let amount_fen = r.u32("amount_fen")?;
                let channel = Channel::from_wire(r.u8("channel")?)?;
                let len = r.u8("reference_len")?;
                if usize::from(len) > EXTERNAL_REFERENCE_BYTES_MAX {
                    return Err(DecodeError::InvalidValue {
                        field: "reference_len",
                        value: u64::from(len),
                    });
                }
                let reference = Reference::new(r.slice(usize::from(len), "reference")?)
                    .expect("length checked above");
                Self::TopUp(TopUp { card_number, amount_fen, channel, reference })
            }
            MessageType::BalanceInquiry => {
                Self::BalanceInquiry(BalanceInquiry { card_number: r.u64("card_number")? })
            }
            MessageType::Refund => Self::Refund(Refund {
                card_number: r.u64("card_number")?,
                purchase_transfer_id: r.u64("purchase_transfer_id")?,
                amount_fen: r.u32("amount_fen")?,
            }),
            MessageType::Reversal => Self::Reversal(Reversal {
                original_sequence: r.u64("original_sequence")?,
                card_number: r.u64("card_number")?,
                amount_fen: r.u32("amount_fen")?,
            }),
            MessageType::OfflineUpload => {
                let count =
                    count(&mut r, "record_count", OFFLINE_RECORDS_MAX, OFFLINE_RECORD_BYTES)?;
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    records.push(OfflineRecord {
                        sequence: r.u64("record.sequence")?,
                        card_number: r.u64("record.card_number")?,
                        amount_fen: r.u32("record.amount_fen")?,
                        taken_at_ms: r.u64("record.taken_at_ms")?,
                        meal_period: MealPeriod::from_wire(r.u8("record.meal_period")?)?,
                        item_code: r.u32("record.item_code")?,
                    });
                }
                Self::OfflineUpload(OfflineUpload { records })
            }
            MessageType::BlacklistDownload => Self::BlacklistDownload(BlacklistDownload {
                since_version: r.u64("since_version")?,
                entries_max: r.u16("entries_max")?,
            }),
            MessageType::SignOff => Self::SignOff,
            other => return Err(DecodeError::UnknownMessageType(other.to_wire())),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Body for Request {
    fn message_type(&self) -> MessageType {
        match self {
            Self::SignOn(_) => MessageType::SignOn,
            Self::Heartbeat(_) => MessageType::Heartbeat,
            Self::Purchase(_) => MessageType::Purchase,
            Self::TopUp(_) => MessageType::TopUp,
            Self::BalanceInquiry(_) => MessageType::BalanceInquiry,
            Self::Refund(_) => MessageType::Refund,
            Self::Reversal(_) => MessageType::Reversal,
            Self::OfflineUpload(_) => MessageType::OfflineUpload,
            Self::BlacklistDownload(_) => MessageType::BlacklistDownload,
            Self::SignOff => MessageType::SignOff,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::SignOn(_) => SIGN_ON_BYTES,
            Self::Heartbeat(_) => HEARTBEAT_BYTES,
            Self::Purchase(p) => PURCHASE_BYTES_MIN + p.pin_block.map_or(0, |_| PIN_BLOCK_BYTES),
            Self::TopUp(t) => TOP_UP_BYTES_MIN + t.reference.as_bytes().len(),
            Self::BalanceInquiry(_) => BALANCE_INQUIRY_BYTES,
            Self::Refund(_) => REFUND_BYTES,
            Self::Reversal(_) => REVERSAL_BYTES,
            Self::OfflineUpload(u) => 2 + u.records.len() * OFFLINE_RECORD_BYTES,
            Self::BlacklistDownload(_) => BLACKLIST_DOWNLOAD_BYTES,
            Self::SignOff => 0,
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::SignOn(s) => {
                dst.put_u64(s.blacklist_version);
                dst.put_u32(s.software_version);
            }
            Self::Heartbeat(h) => dst.put_u64(h.blacklist_version),
            Self::Purchase(p) => {
                dst.put_u64(p.card_number);
                dst.put_u32(p.amount_fen);
                dst.put_u8(p.meal_period.to_wire());
                dst.put_u32(p.item_code);
                match p.pin_block {
                    None => dst.put_u8(0),
                    Some(block) => {
                        dst.put_u8(1);
                        dst.put_slice(&block.0);
                    }
                }
            }
            Self::TopUp(t) => {
                dst.put_u64(t.card_number);
                dst.put_u32(t.amount_fen);
                dst.put_u8(t.channel.to_wire());
                dst.put_u8(t.reference.len);
                dst.put_slice(t.reference.as_bytes());
            }
            Self::BalanceInquiry(b) => dst.put_u64(b.card_number),
            Self::Refund(r) => {
                dst.put_u64(r.card_number);
                dst.put_u64(r.purchase_transfer_id);
                dst.put_u32(r.amount_fen);
            }
            Self::Reversal(r) => {
                dst.put_u64(r.original_sequence);
                dst.put_u64(r.card_number);
                dst.put_u32(r.amount_fen);
            }
            Self::OfflineUpload(u) => {
                put_count(dst, "records", u.records.len(), OFFLINE_RECORDS_MAX)?;
                for record in &u.records {
                    dst.put_u64(record.sequence);
                    dst.put_u64(record.card_number);
                    dst.put_u32(record.amount_fen);
                    dst.put_u64(record.taken_at_ms);
                    dst.put_u8(record.meal_period.to_wire());
                    dst.put_u32(record.item_code);
                }
            }
            Self::BlacklistDownload(b) => {
                dst.put_u64(b.since_version);
                dst.put_u16(b.entries_max);
            }
            Self::SignOff => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Answers.

impl Answer {
    /// Decodes the body of an answer of type `message_type`.
    ///
    /// # Errors
    /// [`DecodeError`] if the type is not an answer type or the body does not parse.
    pub fn decode(message_type: MessageType, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let answer = match message_type {
            MessageType::SignOnAnswer => Self::SignOn(SignOnAnswer {
                code: code(&mut r)?,
                server_time_ms: r.u64("server_time_ms")?,
                business_date: r.u32("business_date")?,
                blacklist_version: r.u64("blacklist_version")?,
                last_sequence: r.u64("last_sequence")?,
            }),
            MessageType::HeartbeatAnswer => Self::Heartbeat(HeartbeatAnswer {
                code: code(&mut r)?,
                server_time_ms: r.u64("server_time_ms")?,
                business_date: r.u32("business_date")?,
                blacklist_version: r.u64("blacklist_version")?,
            }),
            MessageType::PurchaseAnswer => Self::Purchase(transfer_answer(&mut r)?),
            MessageType::TopUpAnswer => Self::TopUp(transfer_answer(&mut r)?),
            MessageType::RefundAnswer => Self::Refund(transfer_answer(&mut r)?),
            MessageType::ReversalAnswer => Self::Reversal(transfer_answer(&mut r)?),
            MessageType::BalanceInquiryAnswer => Self::BalanceInquiry(BalanceAnswer {
                code: code(&mut r)?,
                card_state: CardState::from_wire(r.u8("card_state")?)?,
                balance_fen: r.i64("balance_fen")?,
                restricted_balance_fen: r.i64("restricted_balance_fen")?,
                expiry_date: r.u32("expiry_date")?,
            }),
            MessageType::OfflineUploadAnswer => {
                let duplicate = duplicate_prefix(&mut r)?;
                let code = code(&mut r)?;
                let count =
                    count(&mut r, "result_count", OFFLINE_RECORDS_MAX, OFFLINE_RESULT_BYTES)?;
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    results.push(OfflineResult {
                        sequence: r.u64("result.sequence")?,
                        code: code_field(&mut r, "result.code")?,
                        transfer_id: r.u64("result.transfer_id")?,
                        balance_fen: r.i64("result.balance_fen")?,
                    });
                }
                Self::OfflineUpload(OfflineUploadAnswer { duplicate, code, results })
            }
            MessageType::BlacklistDownloadAnswer => {
                let code = code(&mut r)?;
                let current_version = r.u64("current_version")?;
                let count =
                    count(&mut r, "entry_count", BLACKLIST_ENTRIES_MAX, BLACKLIST_ENTRY_BYTES)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(BlacklistEntry {
                        version: r.u64("entry.version")?,
                        card_number: r.u64("entry.card_number")?,
                        listed: match r.u8("entry.listed")? {
                            0 => false,
                            1 => true,
                            other => {
                                return Err(DecodeError::InvalidValue {
                                    field: "entry.listed",
                                    value: u64::from(other),
                                });
                            }
                        },
                    });
                }
                Self::BlacklistDownload(BlacklistAnswer { code, current_version, entries })
            }
            MessageType::SignOffAnswer => Self::SignOff(SignOffAnswer { code: code(&mut r)? }),
            MessageType::Reject => {
                Self::Reject(Reject { code: code(&mut r)?, refused_type: r.u16("refused_type")? })
            }
            MessageType::Redirect => {
                let code = code(&mut r)?;
                let refused_type = r.u16("refused_type")?;
                let len = r.u8("leader_len")?;
                let address = r.slice(usize::from(len), "leader")?;
                check_address(address).map_err(|_| DecodeError::InvalidValue {
                    field: "leader",
                    value: u64::from(len),
                })?;
                let leader = String::from_utf8(address.to_vec())
                    .expect("printable ASCII is UTF-8, checked above");
                Self::Redirect(Redirect { code, refused_type, leader })
            }
            other => return Err(DecodeError::UnknownMessageType(other.to_wire())),
        };
        r.finish()?;
        Ok(answer)
    }
}

impl Body for Answer {
    fn message_type(&self) -> MessageType {
        match self {
            Self::SignOn(_) => MessageType::SignOnAnswer,
            Self::Heartbeat(_) => MessageType::HeartbeatAnswer,
            Self::Purchase(_) => MessageType::PurchaseAnswer,
            Self::TopUp(_) => MessageType::TopUpAnswer,
            Self::BalanceInquiry(_) => MessageType::BalanceInquiryAnswer,
            Self::Refund(_) => MessageType::RefundAnswer,
            Self::Reversal(_) => MessageType::ReversalAnswer,
            Self::OfflineUpload(_) => MessageType::OfflineUploadAnswer,
            Self::BlacklistDownload(_) => MessageType::BlacklistDownloadAnswer,
            Self::SignOff(_) => MessageType::SignOffAnswer,
            Self::Reject(_) => MessageType::Reject,
            Self::Redirect(_) => MessageType::Redirect,
        }
    }

    fn encoded_len(&self) -> usize {
        let prefix = if self.is_duplicate() { CODE_BYTES } else { 0 };
        prefix
            + match self {
                Self::SignOn(_) => SIGN_ON_ANSWER_BYTES,
                Self::Heartbeat(_) => HEARTBEAT_ANSWER_BYTES,
                Self::Purchase(_) | Self::TopUp(_) | Self::Refund(_) | Self::Reversal(_) => {
                    TRANSFER_ANSWER_BYTES
                }
                Self::BalanceInquiry(_) => BALANCE_ANSWER_BYTES,
                Self::OfflineUpload(a) => 2 * CODE_BYTES + a.results.len() * OFFLINE_RESULT_BYTES,
                Self::BlacklistDownload(a) => {
                    CODE_BYTES + 8 + 2 + a.entries.len() * BLACKLIST_ENTRY_BYTES
                }
                Self::SignOff(_) => CODE_BYTES,
                Self::Reject(_) => REJECT_BYTES,
                Self::Redirect(a) => CODE_BYTES + 2 + 1 + a.leader.len(),
            }
    }

    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self.is_duplicate() {
            dst.put_u16(AnswerCode::Duplicate.to_wire());
        }
        match self {
            Self::SignOn(a) => {
                put_code(dst, a.code)?;
                dst.put_u64(a.server_time_ms);
                dst.put_u32(a.business_date);
                dst.put_u64(a.blacklist_version);
                dst.put_u64(a.last_sequence);
            }
            Self::Heartbeat(a) => {
                put_code(dst, a.code)?;
                dst.put_u64(a.server_time_ms);
                dst.put_u32(a.business_date);
                dst.put_u64(a.blacklist_version);
            }
            Self::Purchase(a) | Self::TopUp(a) | Self::Refund(a) | Self::Reversal(a) => {
                put_code(dst, a.code)?;
                dst.put_u64(a.transfer_id);
                dst.put_i64(a.balance_fen);
                dst.put_i64(a.restricted_balance_fen);
            }
            Self::BalanceInquiry(a) => {
                put_code(dst, a.code)?;
                dst.put_u8(a.card_state.to_wire());
                dst.put_i64(a.balance_fen);
                dst.put_i64(a.restricted_balance_fen);
                dst.put_u32(a.expiry_date);
            }
            Self::OfflineUpload(a) => {
                put_code(dst, a.code)?;
                put_count(dst, "results", a.results.len(), OFFLINE_RECORDS_MAX)?;
                for result in &a.results {
                    dst.put_u64(result.sequence);
                    dst.put_u16(result.code.to_wire());
                    dst.put_u64(result.transfer_id);
                    dst.put_i64(result.balance_fen);
                }
            }
            Self::BlacklistDownload(a) => {
                put_code(dst, a.code)?;
                dst.put_u64(a.current_version);
                put_count(dst, "entries", a.entries.len(), BLACKLIST_ENTRIES_MAX)?;
                for entry in &a.entries {
                    dst.put_u64(entry.version);
                    dst.put_u64(entry.card_number);
                    dst.put_u8(u8::from(entry.listed));
                }
            }
            Self::SignOff(a) => put_code(dst, a.code)?,
            Self::Reject(a) => {
                put_code(dst, a.code)?;
                dst.put_u16(a.refused_type);
            }
            Self::Redirect(a) => {
                check_address(a.leader.as_bytes())
                    .map_err(|reason| EncodeError::InvalidValue { field: "leader", reason })?;
                put_code(dst, a.code)?;
                dst.put_u16(a.refused_type);
                dst.put_u8(u8::try_from(a.leader.len()).expect("checked above: at most 64"));
                dst.put_slice(a.leader.as_bytes());
            }
        }
        Ok(())
    }
}

/// Reads an answer code; `Duplicate` is only valid as the prefix, never as the code.
fn code(r: &mut Reader<'_>) -> Result<AnswerCode, DecodeError> {
    code_field(r, "code").and_then(|code| match code {
        AnswerCode::Duplicate => {
            Err(DecodeError::InvalidValue { field: "code", value: u64::from(code.to_wire()) })
        }
        code => Ok(code),
    })
}

fn code_field(r: &mut Reader<'_>, field: &'static str) -> Result<AnswerCode, DecodeError> {
    let value = r.u16(field)?;
    AnswerCode::from_wire(value)
        .map_err(|_| DecodeError::InvalidValue { field, value: u64::from(value) })
}

/// Consumes the `Duplicate` prefix if present.
fn duplicate_prefix(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    if r.peek_u16() == Some(AnswerCode::Duplicate.to_wire()) {
        r.u16("duplicate")?;
        return Ok(true);
    }
    Ok(false)
}

fn transfer_answer(r: &mut Reader<'_>) -> Result<TransferAnswer, DecodeError> {
    Ok(TransferAnswer {
        duplicate: duplicate_prefix(r)?,
        code: code(r)?,
        transfer_id: r.u64("transfer_id")?,
        balance_fen: r.i64("balance_fen")?,
        restricted_balance_fen: r.i64("restricted_balance_fen")?,
    })
}

/// Reads a `u16` list count and checks it against the limit and the bytes left, so a
/// lying count cannot make us reserve memory.
fn count(
    r: &mut Reader<'_>,
    field: &'static str,
    max: usize,
    entry_bytes: usize,
) -> Result<usize, DecodeError> {
    let count = usize::from(r.u16(field)?);
    if count > max {
        return Err(DecodeError::TooMany { field, count, max });
    }
    if count * entry_bytes > r.remaining() {
        return Err(DecodeError::Truncated { field });
    }
    Ok(count)
}

fn put_count(
    dst: &mut BytesMut,
    field: &'static str,
    count: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if count > max {
        return Err(EncodeError::TooMany { field, count, max });
    }
    dst.put_u16(u16::try_from(count).expect("max fits u16"));
    Ok(())
}

fn put_code(dst: &mut BytesMut, code: AnswerCode) -> Result<(), EncodeError> {
    if code == AnswerCode::Duplicate {
        return Err(EncodeError::InvalidValue {
            field: "code",
            reason: "Duplicate is sent as a prefix: set `duplicate` and the original code",
        });
    }
    dst.put_u16(code.to_wire());
    Ok(())
}
