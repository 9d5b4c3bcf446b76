//! What a shard writes beside its batch record for a retry or a refund to find at
//! once: top-up channel references, refund and reversal marks of sales, offline records.

use super::*;

/// The key of a top-up's channel reference: `0xF5` ++ business date (4, BE) ++
/// transfer id (8, BE), so one date's references are one prefix.
#[must_use]
pub fn top_up_reference_key(date: BusinessDate, transfer_id: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = crate::store::shard_key::TOP_UP_REFERENCE;
    key[1..5].copy_from_slice(&date.to_yyyymmdd().to_be_bytes());
    key[5..].copy_from_slice(&transfer_id.to_be_bytes());
    key
}

/// Its value: channel (1) ++ amount fen (8, LE) ++ reference length (1) ++ reference.
pub(super) fn top_up_reference_value(channel: Channel, fen: i64, reference: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(10 + reference.len());
    value.push(channel.to_wire());
    value.extend_from_slice(&fen.to_le_bytes());
    value.push(u8::try_from(reference.len()).unwrap_or(u8::MAX));
    value.extend_from_slice(reference);
    value
}

/// A stored top-up reference: (channel, fen, reference), or `None` if malformed.
#[must_use]
pub fn decode_top_up_reference(value: &[u8]) -> Option<(Channel, i64, &[u8])> {
    let channel = Channel::from_wire(*value.first()?).ok()?;
    let fen = i64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    let len = usize::from(*value.get(9)?);
    let reference = value.get(10..10 + len)?;
    (value.len() == 10 + len).then_some((channel, fen, reference))
}

/// Refunds and reversal of one sale (a purchase's transfers).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SaleMark {
    pub(super) refunded_fen: i64,
    pub(super) reversed: bool,
}

impl SaleMark {
    pub(super) fn encode(self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[..8].copy_from_slice(&self.refunded_fen.to_le_bytes());
        out[8] = u8::from(self.reversed);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 9] = bytes.try_into().ok()?;
        Some(Self {
            refunded_fen: i64::from_le_bytes(bytes[..8].try_into().ok()?),
            reversed: bytes[8] != 0,
        })
    }
}

pub(super) fn offline_key(terminal_id: u32, sequence: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = shard_key::OFFLINE_RECORD;
    key[1..5].copy_from_slice(&terminal_id.to_be_bytes());
    key[5..].copy_from_slice(&sequence.to_be_bytes());
    key
}

pub(super) fn offline_value(code: AnswerCode, transfer_id: u64) -> [u8; 10] {
    let mut value = [0u8; 10];
    value[..2].copy_from_slice(&code.to_wire().to_le_bytes());
    value[2..].copy_from_slice(&transfer_id.to_le_bytes());
    value
}
