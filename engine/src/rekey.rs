//! Rotating the master key: every secret it seals, sealed again under a new one in a
//! single synced write.
//!
//! The master key seals each terminal's key and the journal chain key
//! ([`crate::sealing`], [`crate::chain`]). A rotation opens each with the old master
//! key and seals it with the new one; the chain key itself does not change, so every
//! seal already in the journals still checks. The write is all or nothing: after it,
//! the store opens with the new master key alone; before it, with the old one alone.
//! A write that failed may have reached the disk or not (a failed sync), so the new
//! key must be kept until [`opens_with`] tells which key the store opens with. The
//! ledger must be closed: it runs on a [`Store`] opened by itself.

use rocksdb::{IteratorMode, WriteBatch};

use crate::chain::KEY_CHAIN_KEY;
use crate::directory::TerminalRecord;
use crate::journal::CONTROL_JOURNAL;
use crate::ledger::LedgerError;
use crate::sealing::MasterKey;
use crate::store::{CF_CONTROL, CF_META, Store, control_key};

/// What a rotation sealed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Terminal keys sealed under the new master key.
    pub terminal_keys: usize,
}

/// Every terminal record in the store, with its key in `control`.
fn terminal_records(store: &Store) -> Result<Vec<(Vec<u8>, TerminalRecord)>, LedgerError> {
    let prefix = [control_key::TERMINAL];
    let mut records = Vec::new();
    for item in store
        .db()
        .iterator_cf(store.cf(CF_CONTROL), IteratorMode::From(&prefix, rocksdb::Direction::Forward))
    {
        let (key, value) = item?;
        if key.first() != Some(&control_key::TERMINAL) {
            break;
        }
        let record: TerminalRecord = serde_json::from_slice(&value)
            .map_err(|e| LedgerError::Corrupt { what: "terminal", detail: e.to_string() })?;
        records.push((key.to_vec(), record));
    }
    Ok(records)
}

/// Proves that `master` opens every secret the store holds sealed.
///
/// # Errors
/// [`LedgerError::Sealing`] naming the first terminal (or the chain key) it does not
/// open; a read error.
pub fn opens_with(store: &Store, master: &MasterKey) -> Result<(), LedgerError> {
    crate::chain::load(store, master)?;
    for (_, record) in terminal_records(store)? {
        if record.clear_key.is_none() {
            master.open(record.id, &record.sealed_key)?;
        }
    }
    Ok(())
}

/// Seals every terminal key and the chain key under `new` instead of `old`, in one
/// synced write. A key still stored in the clear (from before sealing) is sealed too.
///
/// # Errors
/// [`LedgerError::Sealing`] if `old` does not open a secret (nothing is written);
/// [`LedgerError::Write`] if the write fails (nothing changed); a read error.
pub fn rotate(store: &Store, old: &MasterKey, new: &MasterKey) -> Result<Rotation, LedgerError> {
    let mut write = WriteBatch::default();
    let (sealed, starts) = match crate::chain::stored(store)? {
        Some(stored) => stored,
        // The journals were sealed with the key the old master key derives.
        None => {
            let starts = crate::chain::ChainStarts::default();
            (old.new_chain_key(&starts)?.1, starts)
        }
    };
    let resealed = old.reseal_chain_key(&sealed, &starts, new)?;
    write.put_cf(store.cf(CF_META), KEY_CHAIN_KEY, crate::chain::stored_value(resealed, starts));
    let records = terminal_records(store)?;
    let control = store.cf(CF_CONTROL);
    for (key, record) in &records {
        let terminal_key = match &record.clear_key {
            Some(clear) => onecard_protocol::TerminalKey::from_hex(clear).map_err(|e| {
                LedgerError::Corrupt { what: "terminal key", detail: e.to_string() }
            })?,
            None => old.open(record.id, &record.sealed_key)?,
        };
        let resealed = TerminalRecord {
            sealed_key: new.seal(record.id, &terminal_key)?,
            clear_key: None,
            ..record.clone()
        };
        let value = serde_json::to_vec(&resealed)
            .map_err(|e| LedgerError::Corrupt { what: "terminal", detail: e.to_string() })?;
        write.put_cf(control, key, value);
    }
    store.write_synced(CONTROL_JOURNAL, write)?;
    Ok(Rotation { terminal_keys: records.len() })
}
