//! A terminal's persisted retry state: `F1` · terminal id in its shard's journal.
//!
//! The value names the journal batches holding the answers the terminal's retries
//! are served from, so a restart can rebuild its retry window. Each batch that
//! answers the terminal *merges* a small operand — the terminal's counters and that
//! one batch — instead of rewriting the whole list. At the lunch peak a terminal's
//! window spans up to [`TERMINAL_HISTORY_BATCHES_MAX`] batches, and rewriting that
//! list (about a kilobyte) for every terminal in every batch was most of the bytes a
//! shard wrote.
//!
//! Value and operand share one layout, so the merge is associative and RocksDB may
//! fold operands together before it meets the base value (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | last sequence |
//! | 8 | floor: sequences at or below it that are not retained are stale |
//! | 8 | blacklist version the terminal holds |
//! | 16 | keep-from: the batch of the oldest retained answer; older batches are dropped |
//! | 2 | count |
//! | 16 × count | batch keys, in commit order |

use rocksdb::MergeOperands;

use crate::limits::TERMINAL_HISTORY_BATCHES_MAX;

const HEADER_LEN: usize = 8 * 3 + 16 + 2;

/// A terminal's persisted state, or one batch's operand for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TerminalState {
    pub last_sequence: u64,
    pub floor: u64,
    pub blacklist_version: u64,
    /// Batches before this one hold no answer the terminal can still retry.
    pub keep_from: [u8; 16],
    /// Journal batch keys, oldest first. A shard's batch keys sort in commit order.
    pub batches: Vec<[u8; 16]>,
}

impl TerminalState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.batches.len() * 16);
        out.extend_from_slice(&self.last_sequence.to_le_bytes());
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&self.blacklist_version.to_le_bytes());
        out.extend_from_slice(&self.keep_from);
        let count = u16::try_from(self.batches.len()).expect("a terminal names few batches");
        out.extend_from_slice(&count.to_le_bytes());
        for key in &self.batches {
            out.extend_from_slice(key);
        }
        out
    }

    /// `None` unless `bytes` is exactly one state.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |at: usize| bytes.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes);
        let keep_from = bytes.get(24..40)?.try_into().ok()?;
        let count = usize::from(u16::from_le_bytes(bytes.get(40..HEADER_LEN)?.try_into().ok()?));
        if bytes.len() != HEADER_LEN + count * 16 {
            return None;
        }
        let batches = bytes[HEADER_LEN..]
            .chunks_exact(16)
            .map(|chunk| chunk.try_into().expect("16 bytes"))
            .collect();
        Some(Self {
            last_sequence: word(0)?,
            floor: word(8)?,
            blacklist_version: word(16)?,
            keep_from,
            batches,
        })
    }

    /// Folds a newer state into this one: counters only move forward, new batches are
    /// appended, and batches before the newest keep-from are dropped.
    fn absorb(&mut self, newer: Self) {
        self.last_sequence = self.last_sequence.max(newer.last_sequence);
        self.floor = self.floor.max(newer.floor);
        self.blacklist_version = self.blacklist_version.max(newer.blacklist_version);
        self.keep_from = self.keep_from.max(newer.keep_from);
        for key in newer.batches {
            if self.batches.last().is_none_or(|last| key > *last) {
                self.batches.push(key);
            }
        }
        let keep_from = self.keep_from;
        self.batches.retain(|key| *key >= keep_from);
        // Retained answers bound the list already; this keeps a value bounded even if a
        // writer ever failed to move keep-from.
        let excess = self.batches.len().saturating_sub(TERMINAL_HISTORY_BATCHES_MAX);
        self.batches.drain(..excess);
    }
}

/// The journal column families' merge operator; only `F1` keys are ever merged.
/// An unreadable value or operand fails the merge, which RocksDB reports as
/// corruption on the read that meets it (and `verify` names the key).
#[must_use]
pub fn merge_terminal_state(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let mut state = match existing {
        Some(bytes) => TerminalState::decode(bytes)?,
        None => TerminalState::default(),
    };
    for operand in operands {
        state.absorb(TerminalState::decode(operand)?);
    }
    Some(state.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[15] = n;
        key
    }

    fn operand(last_sequence: u64, keep_from: u8, batch: u8) -> TerminalState {
        TerminalState {
            last_sequence,
            floor: 0,
            blacklist_version: 1,
            keep_from: key(keep_from),
            batches: vec![key(batch)],
        }
    }

    fn fold(mut base: TerminalState, operands: Vec<TerminalState>) -> TerminalState {
        for operand in operands {
            base.absorb(operand);
        }
        base
    }

    #[test]
    fn a_state_round_trips_and_truncated_bytes_are_refused() {
        let state = TerminalState {
            last_sequence: 9,
            floor: 3,
            blacklist_version: 7,
            keep_from: key(2),
            batches: vec![key(2), key(5)],
        };
        let bytes = state.encode();
        assert_eq!(TerminalState::decode(&bytes), Some(state));
        assert_eq!(TerminalState::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(TerminalState::decode(&bytes[..10]), None);
    }

    #[test]
    fn operands_append_batches_and_drop_those_before_keep_from() {
        let state = fold(
            TerminalState::default(),
            vec![operand(1, 1, 1), operand(2, 1, 2), operand(3, 1, 2), operand(4, 2, 4)],
        );
        assert_eq!(state.batches, vec![key(2), key(4)]);
        assert_eq!(state.last_sequence, 4);
        assert_eq!(state.keep_from, key(2));
    }

    #[test]
    fn folding_is_associative() {
        let ops = vec![operand(1, 1, 1), operand(2, 1, 3), operand(5, 3, 6), operand(6, 6, 7)];
        let all_at_once = fold(TerminalState::default(), ops.clone());
        let left = fold(TerminalState::default(), ops[..2].to_vec());
        let right = fold(TerminalState::default(), ops[2..].to_vec());
        assert_eq!(fold(left, vec![right]), all_at_once);
        assert_eq!(all_at_once.batches, vec![key(6), key(7)]);
    }

    #[test]
    fn the_list_stays_bounded_even_if_keep_from_never_moves() {
        let ops = (0..=u8::MAX).map(|n| operand(u64::from(n), 0, n)).collect();
        let state = fold(TerminalState::default(), ops);
        assert_eq!(state.batches.len(), TERMINAL_HISTORY_BATCHES_MAX);
        assert_eq!(state.batches.last(), Some(&key(u8::MAX)));
    }
}
