//! The audit log: an append-only record of every change an operator made, and of
//! every attempt that was refused, with who, what, when and from where.
//!
//! Records live in the `audit` column family under their sequence number (8 bytes,
//! big-endian), so they read back in the order they were written and a backup of the
//! store carries them. Nothing updates or deletes a record; the only writes are
//! [`AuditLog::append`]s. A change's record is synced before the change is answered;
//! a refused attempt's record is written unsynced and becomes durable with the next
//! synced write, so refusals cannot be turned into a flood of fsyncs.
//!
//! Each record is sealed to the one before it with the journal chain's key, as a
//! journal's batches are ([`crate::chain`]), under its own chain id
//! ([`AUDIT_CHAIN`]): the seal is HMAC-SHA256 of the chain id, the previous record's
//! seal and the record's JSON without its seal. A record changed or removed by hand is
//! named by `verify`. Records are therefore written one at a time, in sequence order;
//! a sequence is used only once its record is written, so the log has no gaps.

use std::sync::{Mutex, PoisonError};

use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};

use crate::chain::{ChainKey, SEAL_BYTES, Seal};
use crate::journal::CONTROL_JOURNAL;
use crate::storage::StorageError;
use crate::store::{CF_AUDIT, Store};

pub use crate::chain::AUDIT_CHAIN;

/// Records one audit page returns at most.
pub const AUDIT_PAGE_MAX: usize = 500;

/// Bytes one record's free-text fields may take together; longer details are cut.
pub const AUDIT_DETAIL_BYTES_MAX: usize = 4096;

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused before anything changed: authentication, permission, validation.
    Refused,
    /// Tried and failed (a storage fault); nothing changed.
    Failed,
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub sequence: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The operator, or `-` when nobody was authenticated.
    pub actor: String,
    /// What was asked: `card.report_lost`, `auth.login`, ...
    pub action: String,
    /// What it was asked of: `card:8800000001`, `operator:alice`, ...
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The client's address.
    pub from: String,
    /// Why refused, or what changed; never a secret.
    pub detail: String,
    /// The record's seal, hex; absent on records written before the audit chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl AuditRecord {
    /// The bytes a seal covers: the record's JSON without its seal.
    #[must_use]
    pub fn sealed_bytes(&self) -> Vec<u8> {
        let unsealed = Self { seal: None, ..self.clone() };
        serde_json::to_vec(&unsealed).expect("an audit record always serialises")
    }

    /// The seal the record carries; `None` if it has none, or one that is not 32
    /// bytes of hex.
    #[must_use]
    pub fn carried_seal(&self) -> Option<Seal> {
        let mut bytes = [0u8; SEAL_BYTES];
        hex::decode_to_slice(self.seal.as_deref()?, &mut bytes).ok()?;
        Some(Seal(bytes))
    }
}

/// What a caller supplies; the log adds the sequence and the time.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// See [`AuditRecord::actor`].
    pub actor: &'a str,
    /// See [`AuditRecord::action`].
    pub action: &'a str,
    /// See [`AuditRecord::target`].
    pub target: &'a str,
    /// See [`AuditRecord::outcome`].
    pub outcome: Outcome,
    /// See [`AuditRecord::from`].
    pub from: &'a str,
    /// See [`AuditRecord::detail`].
    pub detail: &'a str,
}

/// Hands out sequence numbers and writes records, sealed in order.
#[derive(Debug)]
pub struct AuditLog {
    chain: ChainKey,
    /// The next sequence and the last record's seal; held while a record is written.
    tail: Mutex<Tail>,
}

#[derive(Debug)]
struct Tail {
    next_sequence: u64,
    last_seal: Seal,
}

fn key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl AuditLog {
    /// Finds where the log in `store` ends, and the seal its next record follows.
    ///
    /// A last record that does not parse does not stop the ledger: the log goes on
    /// after its key, chained from the zero seal, and `verify` names both places.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn open(store: &Store, chain: ChainKey) -> Result<Self, rocksdb::Error> {
        let mut iter = store.db().raw_iterator_cf(store.cf(CF_AUDIT));
        iter.seek_to_last();
        iter.status()?;
        let last_sequence =
            iter.key().and_then(|key| <[u8; 8]>::try_from(key).ok()).map_or(0, u64::from_be_bytes);
        let last_seal = match iter.value().map(serde_json::from_slice::<AuditRecord>) {
            None => Seal::GENESIS,
            Some(Ok(record)) => record.carried_seal().unwrap_or(Seal::GENESIS),
            Some(Err(error)) => {
                tracing::error!(
                    sequence = last_sequence,
                    %error,
                    "the audit log's last record does not parse; the log goes on after it"
                );
                Seal::GENESIS
            }
        };
        let tail = Tail { next_sequence: last_sequence + 1, last_seal };
        Ok(Self { chain, tail: Mutex::new(tail) })
    }

    /// Appends a record and returns it: synced for a change, into the log's next
    /// sync for a refusal.
    ///
    /// # Errors
    /// If the write fails; the caller must then not carry out (or must report) the
    /// action, since it would go unaudited.
    pub fn append(
        &self,
        store: &Store,
        entry: &AuditEntry<'_>,
    ) -> Result<AuditRecord, StorageError> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let mut record = AuditRecord {
            sequence: tail.next_sequence,
            at_ms: crate::date::now_ms(),
            actor: cut(entry.actor, crate::limits::NAME_BYTES_MAX),
            action: cut(entry.action, crate::limits::NAME_BYTES_MAX),
            target: cut(entry.target, crate::limits::NAME_BYTES_MAX),
            outcome: entry.outcome,
            from: cut(entry.from, crate::limits::NAME_BYTES_MAX),
            detail: cut(entry.detail, AUDIT_DETAIL_BYTES_MAX),
            seal: None,
        };
        let seal = self.chain.seal(AUDIT_CHAIN, &tail.last_seal, &record.sealed_bytes());
        record.seal = Some(hex::encode(seal.0));
        let value = serde_json::to_vec(&record).expect("an audit record always serialises");
        // A change's record is synced before the change is answered. A refusal's
        // record goes to the write-ahead log unsynced and rides the next sync (every
        // shard batch syncs the shared log): a flood of refused requests then cannot
        // turn into a flood of fsyncs competing with the lunch peak.
        let sync = match record.outcome {
            Outcome::Refused => false,
            Outcome::Ok | Outcome::Failed => true,
        };
        let mut write = rocksdb::WriteBatch::default();
        write.put_cf(store.cf(CF_AUDIT), key(record.sequence), value);
        store.write(CONTROL_JOURNAL, write, sync)?;
        tail.next_sequence += 1;
        tail.last_seal = seal;
        Ok(record)
    }

    /// Records newest first, starting below `before` (all when `None`), at most
    /// `limit` (and at most [`AUDIT_PAGE_MAX`]).
    ///
    /// # Errors
    /// If the store cannot be read. A record this build cannot parse is skipped and
    /// logged.
    pub fn page(
        store: &Store,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, rocksdb::Error> {
        let limit = limit.clamp(1, AUDIT_PAGE_MAX);
        let start = key(before.unwrap_or(u64::MAX).saturating_sub(1));
        let mut out = Vec::with_capacity(limit.min(64));
        let mode = IteratorMode::From(&start, Direction::Reverse);
        for item in store.db().iterator_cf(store.cf(CF_AUDIT), mode) {
            let (key, value) = item?;
            match serde_json::from_slice::<AuditRecord>(&value) {
                Ok(record) => out.push(record),
                Err(error) => {
                    tracing::error!(key = %hex::encode(&key), %error, "unreadable audit record")
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting_keeps_whole_characters() {
        assert_eq!(cut("饭卡充值", 7), "饭卡");
        assert_eq!(cut("abc", 10), "abc");
    }
}
