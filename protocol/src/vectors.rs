//! The test vectors of docs/PROTOCOL.md: one or more complete frames for every message
//! type, with the key that signs them.
//!
//! docs/PROTOCOL.md holds [`markdown`]'s output between `<!-- vectors:begin -->` and
//! `<!-- vectors:end -->`; a test fails if the two drift apart, and another decodes
//! every frame printed there. Regenerate the section with
//! `cargo run -p onecard-protocol --example vectors`.

use std::fmt::Write as _;

use bytes::BytesMut;

use crate::code::{AnswerCode, CardState, Channel, MealPeriod};
use crate::frame::{self, Envelope};
use crate::limits::{HEADER_BYTES, LENGTH_PREFIX_BYTES, MAC_BYTES};
use crate::mac::{MacAlgorithm, MacKey, TerminalKey};
use crate::message::{
    Answer, BalanceAnswer, BalanceInquiry, BlacklistAnswer, BlacklistDownload, BlacklistEntry,
    Body, Heartbeat, HeartbeatAnswer, OfflineRecord, OfflineResult, OfflineUpload,
    OfflineUploadAnswer, Purchase, Redirect, Reference, Refund, Reject, Request, Reversal,
    SignOffAnswer, SignOn, SignOnAnswer, TopUp, TransferAnswer,
};
use crate::pin::{PIN_KEY_LABEL, Pin, PinBlock, PinContext};

/// The key every vector is signed with: the bytes 0x00, 0x01, ... 0x1f.
pub const KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    let mut i: u8 = 0;
    while i < 32 {
        key[i as usize] = i;
        i += 1;
    }
    key
};

/// The terminal every vector is from or for.
pub const TERMINAL_ID: u32 = 1001;

/// 2026-09-01 11:50:00 China Standard Time, the lunch peak of the first day of term.
pub const TIMESTAMP_MS: u64 = 1_788_234_600_000;

/// A request or an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Terminal to server.
    Request(Request),
    /// Server to terminal.
    Answer(Answer),
}

impl Message {
    fn body(&self) -> &dyn Body {
        match self {
            Self::Request(request) => request,
            Self::Answer(answer) => answer,
        }
    }
}

/// One test vector.
#[derive(Debug, Clone)]
pub struct Vector {
    /// A short name, unique among the vectors.
    pub name: &'static str,
    /// The MAC algorithm; `None` for an unsigned `Reject`.
    pub algorithm: MacAlgorithm,
    /// Terminal id, sequence and timestamp.
    pub envelope: Envelope,
    /// What the frame carries.
    pub message: Message,
}

impl Vector {
    /// The MAC key the vector is signed with, if any.
    #[must_use]
    pub fn mac_key(&self) -> Option<MacKey> {
        MacKey::new(self.algorithm, &TerminalKey::new(KEY)).ok()
    }

    /// The frame's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        frame::encode(self.envelope, self.message.body(), self.mac_key().as_ref(), &mut buf)
            .expect("every vector fits a frame");
        buf.to_vec()
    }
}

fn envelope(sequence: u64) -> Envelope {
    Envelope { terminal_id: TERMINAL_ID, sequence, timestamp_ms: TIMESTAMP_MS }
}

fn vector(name: &'static str, sequence: u64, message: Message) -> Vector {
    Vector { name, algorithm: MacAlgorithm::HmacSha256, envelope: envelope(sequence), message }
}

/// Every vector, in the order docs/PROTOCOL.md lists them.
#[must_use]
pub fn all() -> Vec<Vector> {
    use Message::{Answer as A, Request as R};
    let card = 2_026_000_001;
    let transfer = |code, transfer_id, balance_fen| TransferAnswer {
        duplicate: false,
        code,
        transfer_id,
        balance_fen,
        restricted_balance_fen: 1_500,
    };
    let pin_key = MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new(KEY))
        .expect("HMAC-SHA256 is supported")
        .derive(PIN_KEY_LABEL);
    let pin = Pin::new("123456").expect("a valid PIN");
    let pin_block = PinBlock::seal(
        &pin_key,
        PinContext { terminal_id: TERMINAL_ID, sequence: 8, card_number: card },
        &pin,
    );
    let purchase = Purchase {
        card_number: card,
        amount_fen: 1_250,
        meal_period: MealPeriod::Lunch,
        item_code: 0,
        pin_block: None,
    };
    let mut vectors = vec![
        vector(
            "sign-on",
            1,
            R(Request::SignOn(SignOn { blacklist_version: 41, software_version: 3 })),
        ),
        vector(
            "sign-on answer",
            1,
            A(Answer::SignOn(SignOnAnswer {
                code: AnswerCode::Approved,
                server_time_ms: TIMESTAMP_MS + 12,
                business_date: 20_260_901,
                blacklist_version: 42,
                last_sequence: 0,
            })),
        ),
        vector("heartbeat", 2, R(Request::Heartbeat(Heartbeat { blacklist_version: 42 }))),
        vector(
            "heartbeat answer",
            2,
            A(Answer::Heartbeat(HeartbeatAnswer {
                code: AnswerCode::Approved,
                server_time_ms: TIMESTAMP_MS + 9,
                business_date: 20_260_901,
                blacklist_version: 42,
            })),
        ),
        vector("purchase", 7, R(Request::Purchase(purchase))),
        vector(
            "purchase answer",
            7,
            A(Answer::Purchase(transfer(AnswerCode::Approved, 90_000_017, 3_750))),
        ),
        vector(
            "purchase with PIN 123456",
            8,
            R(Request::Purchase(Purchase {
                amount_fen: 8_800,
                pin_block: Some(pin_block),
                ..purchase
            })),
        ),
        vector(
            "purchase answer, insufficient funds",
            8,
            A(Answer::Purchase(transfer(AnswerCode::InsufficientFunds, 0, 3_750))),
        ),
        vector(
            "purchase answer to a retry (duplicate)",
            7,
            A(Answer::Purchase(TransferAnswer {
                duplicate: true,
                ..transfer(AnswerCode::Approved, 90_000_017, 3_750)
            })),
        ),
        vector(
            "top-up",
            9,
            R(Request::TopUp(TopUp {
                card_number: card,
                amount_fen: 10_000,
                channel: Channel::App,
                reference: Reference::new(b"APP20260901115000042").expect("fits"),
            })),
        ),
        vector(
            "top-up answer",
            9,
            A(Answer::TopUp(transfer(AnswerCode::Approved, 90_000_018, 13_750))),
        ),
        vector(
            "balance inquiry",
            10,
            R(Request::BalanceInquiry(BalanceInquiry { card_number: card })),
        ),
        vector(
            "balance inquiry answer",
            10,
            A(Answer::BalanceInquiry(BalanceAnswer {
                code: AnswerCode::Approved,
                card_state: CardState::Active,
                balance_fen: 13_750,
                restricted_balance_fen: 1_500,
                expiry_date: 20_300_731,
            })),
        ),
        vector(
            "refund",
            11,
            R(Request::Refund(Refund {
                card_number: card,
                purchase_transfer_id: 90_000_017,
                amount_fen: 500,
            })),
        ),
        vector(
            "refund answer",
            11,
            A(Answer::Refund(transfer(AnswerCode::Approved, 90_000_019, 14_250))),
        ),
        vector(
            "reversal",
            13,
            R(Request::Reversal(Reversal {
                original_sequence: 12,
                card_number: card,
                amount_fen: 600,
            })),
        ),
        vector(
            "reversal answer",
            13,
            A(Answer::Reversal(transfer(AnswerCode::Approved, 0, 14_250))),
        ),
        vector(
            "offline upload",
            20,
            R(Request::OfflineUpload(OfflineUpload {
                records: vec![
                    OfflineRecord {
                        sequence: 14,
                        card_number: card,
                        amount_fen: 700,
                        taken_at_ms: TIMESTAMP_MS - 60_000,
                        meal_period: MealPeriod::Lunch,
                        item_code: 3,
                    },
                    OfflineRecord {
                        sequence: 15,
                        card_number: 2_026_000_002,
                        amount_fen: 900,
                        taken_at_ms: TIMESTAMP_MS - 30_000,
                        meal_period: MealPeriod::Lunch,
                        item_code: 0,
                    },
                ],
            })),
        ),
        vector(
            "offline upload answer",
            20,
            A(Answer::OfflineUpload(OfflineUploadAnswer {
                duplicate: false,
                code: AnswerCode::Approved,
                results: vec![
                    OfflineResult {
                        sequence: 14,
                        code: AnswerCode::Approved,
                        transfer_id: 90_000_020,
                        balance_fen: 13_550,
                    },
                    OfflineResult {
                        sequence: 15,
                        code: AnswerCode::CardLost,
                        transfer_id: 0,
                        balance_fen: 0,
                    },
                ],
            })),
        ),
        vector(
            "blacklist download",
            21,
            R(Request::BlacklistDownload(BlacklistDownload {
                since_version: 40,
                entries_max: 256,
            })),
        ),
        vector(
            "blacklist download answer",
            21,
            A(Answer::BlacklistDownload(BlacklistAnswer {
                code: AnswerCode::Approved,
                current_version: 42,
                entries: vec![
                    BlacklistEntry { version: 41, card_number: 2_026_000_002, listed: true },
                    BlacklistEntry { version: 42, card_number: 2_025_004_711, listed: false },
                ],
            })),
        ),
        vector("sign-off", 22, R(Request::SignOff)),
        vector(
            "sign-off answer",
            22,
            A(Answer::SignOff(SignOffAnswer { code: AnswerCode::Approved })),
        ),
        vector(
            "reject, not signed on",
            5,
            A(Answer::Reject(Reject { code: AnswerCode::NotSignedOn, refused_type: 0x0003 })),
        ),
    ];
    vectors.push(Vector {
        name: "unsigned reject, unknown terminal",
        algorithm: MacAlgorithm::None,
        envelope: Envelope { terminal_id: 77_777, sequence: 1, timestamp_ms: TIMESTAMP_MS },
        message: A(Answer::Reject(Reject {
            code: AnswerCode::UnknownTerminal,
            refused_type: 0x0001,
        })),
    });
    vectors.push(Vector {
        name: "sign-on under HMAC-SM3",
        algorithm: MacAlgorithm::HmacSm3,
        envelope: envelope(1),
        message: R(Request::SignOn(SignOn { blacklist_version: 41, software_version: 3 })),
    });
    vectors.push(Vector {
        name: "unsigned redirect to the cell's leader",
        algorithm: MacAlgorithm::None,
        envelope: envelope(1),
        message: A(Answer::Redirect(
            Redirect::new(0x0001, "10.20.0.12:7700").expect("a short ASCII address"),
        )),
    });
    vectors
}

/// The vectors as they appear in docs/PROTOCOL.md.
#[must_use]
pub fn markdown() -> String {
    let mut out = String::new();
    let key = TerminalKey::new(KEY).to_hex();
    let _ =
        writeln!(out, "Every vector is from or for terminal {TERMINAL_ID}, signed with the key");
    let _ = writeln!(out, "`{key}`");
    let _ = writeln!(
        out,
        "unless it says otherwise. Timestamps are {TIMESTAMP_MS} (2026-09-01 11:50 CST)."
    );
    for (index, vector) in all().iter().enumerate() {
        let bytes = vector.encode();
        let message_type = vector.message.body().message_type();
        let body_end = bytes.len() - MAC_BYTES;
        let body_start = LENGTH_PREFIX_BYTES + HEADER_BYTES;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "#### V{} {} — {:?} `{:#06x}`",
            index + 1,
            vector.name,
            message_type,
            message_type.to_wire()
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "MAC algorithm {} ({:?}), {} bytes.",
            vector.algorithm.to_wire(),
            vector.algorithm,
            bytes.len()
        );
        let _ = writeln!(out, "Carries `{:?}`.", vector.message);
        let _ = writeln!(out);
        let _ = writeln!(out, "```text");
        let _ = writeln!(out, "length     {}", hex(&bytes[0..4]));
        let _ = writeln!(out, "version    {}", hex(&bytes[4..5]));
        let _ = writeln!(out, "algorithm  {}", hex(&bytes[5..6]));
        let _ = writeln!(out, "type       {}", hex(&bytes[6..8]));
        let _ = writeln!(out, "terminal   {}", hex(&bytes[8..12]));
        let _ = writeln!(out, "sequence   {}", hex(&bytes[12..20]));
        let _ = writeln!(out, "timestamp  {}", hex(&bytes[20..28]));
        for (i, chunk) in bytes[body_start..body_end].chunks(32).enumerate() {
            let label = if i == 0 { "body" } else { "" };
            let _ = writeln!(out, "{label:<10} {}", hex(chunk));
        }
        let _ = writeln!(out, "mac        {}", hex(&bytes[body_end..]));
        let _ = writeln!(out, "```");
        let _ = writeln!(out);
        let _ = writeln!(out, "frame: `{}`", hex(&bytes));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
