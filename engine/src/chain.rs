//! The journal chain: every batch a journal writes is sealed together with the one
//! before it, so its history cannot be rewritten without the master key.
//!
//! A batch record of version 2 ends in a 32-byte seal, HMAC-SHA256 under the chain key
//! of the journal's number, the previous batch's seal (32 zero bytes, [`Seal::GENESIS`],
//! before a journal's first sealed batch) and the record's bytes before the seal. The
//! chain key is kept in `meta` sealed with the master key, which is never in the store
//! or its backups ([`crate::sealing::MasterKey::new_chain_key`]): whoever can write the
//! data directory can change a batch and every balance it touched consistently, but
//! cannot seal the changed batch, nor the one after it. Rotating the master key seals
//! the same chain key again ([`crate::rekey`]), so history stays checkable. `verify`
//! walks each journal's chain from its first batch and names the first batch whose
//! seal does not follow; a batch removed from the middle, one moved from another
//! journal and one forged from nothing break it alike. What the chain cannot show alone is the loss of a journal's newest batches
//! together with their balances; the balances of cards that terminals can see are the
//! check on that.
//!
//! A shard's writer thread holds its journal's last seal and the control plane holds
//! the control journal's, each read back from the journal's last batch when the ledger
//! opens. Records of version 1, written before the chain, carry no seal; they may
//! begin a journal, and its chain starts at its first sealed batch.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::sealing::{MasterKey, SealError};
use crate::storage::{CONTROL_JOURNAL, StorageError};
use crate::store::{CF_META, Store};

/// The `meta` key of the journal chain key, sealed with the master key, and where the
/// chains begin (JSON).
pub const KEY_CHAIN_KEY: &[u8] = b"chain_key";

/// The audit log's id in the chain's seals: one no journal has (shards are 0–63, the
/// control journal 255).
pub const AUDIT_CHAIN: u8 = 254;

/// Bytes of a seal.
pub const SEAL_BYTES: usize = 32;

/// What the chain key is derived for, so it never equals a key used elsewhere.
pub(crate) const CONTEXT: &[u8] = b"onecard journal chain v1";

/// A batch's seal: the HMAC that links it to its journal's history.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seal(pub [u8; SEAL_BYTES]);

impl Seal {
    /// The seal before a journal's first sealed batch.
    pub const GENESIS: Self = Self([0; SEAL_BYTES]);

    /// Whether two seals are equal, compared in constant time.
    #[must_use]
    pub fn matches(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seal({})", hex::encode(&self.0[..8]))
    }
}

/// The key that seals journal batches, kept in the store sealed with the master key.
/// Never printed.
#[derive(Clone)]
pub struct ChainKey {
    /// The HMAC state with the key already absorbed; cloned for each seal.
    keyed: Hmac<Sha256>,
}

impl ChainKey {
    /// A chain key from its 32 bytes.
    pub(crate) fn from_bytes(bytes: &[u8; SEAL_BYTES]) -> Self {
        Self {
            keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(bytes)
                .expect("HMAC accepts 32-byte keys"),
        }
    }

    /// The seal of `record` (its bytes before the seal) as the batch after `previous`
    /// in journal `journal`.
    #[must_use]
    pub fn seal(&self, journal: u8, previous: &Seal, record: &[u8]) -> Seal {
        let mut mac = self.keyed.clone();
        mac.update(&[journal]);
        mac.update(&previous.0);
        mac.update(record);
        Seal(mac.finalize().into_bytes().into())
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// Where each chain begins: the first batch number of each journal, and the first
/// audit sequence, from which every link must carry a seal. Stored beside the sealed
/// chain key and bound into its seal as associated data, so that stripping the seals
/// from a whole chain (which would make it read as one from before the chain) is seen.
/// Empty when unknown (a store whose key was stored without them): nothing enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStarts {
    /// Journal number → its first sealed batch number.
    pub journals: BTreeMap<u8, u64>,
    /// The first sealed audit sequence; 0 when unknown.
    pub audit: u64,
}

impl ChainStarts {
    /// What the sealed chain key is bound to: the context, then each start.
    #[must_use]
    pub fn associated_data(&self) -> Vec<u8> {
        let mut aad = CONTEXT.to_vec();
        for (journal, start) in &self.journals {
            aad.push(*journal);
            aad.extend_from_slice(&start.to_be_bytes());
        }
        if self.audit > 0 {
            aad.push(AUDIT_CHAIN);
            aad.extend_from_slice(&self.audit.to_be_bytes());
        }
        aad
    }

    /// The first batch of `journal` that must be sealed; 0 when unknown.
    #[must_use]
    pub fn journal(&self, journal: u8) -> u64 {
        self.journals.get(&journal).copied().unwrap_or(0)
    }
}

/// Why the store's chain key could not be read, opened or stored.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// `meta` could not be read.
    #[error("reading the journal chain key: {0}")]
    Read(#[from] rocksdb::Error),
    /// The derived key could not be stored.
    #[error("storing the journal chain key: {0}")]
    Write(#[from] StorageError),
    /// The stored value is not what this build writes.
    #[error("the stored journal chain key is unreadable: {0}")]
    Corrupt(String),
    /// The key does not open with the master key, or its starts were changed.
    #[error(transparent)]
    Sealing(#[from] SealError),
}

/// The chain key as `meta` holds it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredChainKey {
    /// The key sealed with the master key, `starts` as associated data (hex).
    sealed: String,
    starts: ChainStarts,
}

/// The store's chain key, opened, and where its chains begin.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The key.
    pub key: ChainKey,
    /// Where each chain begins.
    pub starts: ChainStarts,
}

/// The store's sealed chain key and its chains' starts, if it holds them.
///
/// # Errors
/// If `meta` cannot be read, or the value is not what this build writes.
pub fn stored(store: &Store) -> Result<Option<(String, ChainStarts)>, ChainError> {
    let Some(value) = store.db().get_cf(store.cf(CF_META), KEY_CHAIN_KEY)? else {
        return Ok(None);
    };
    let stored: StoredChainKey =
        serde_json::from_slice(&value).map_err(|e| ChainError::Corrupt(e.to_string()))?;
    Ok(Some((stored.sealed, stored.starts)))
}

/// The value `meta` holds for a chain key sealed as `sealed` with `starts`.
pub(crate) fn stored_value(sealed: String, starts: ChainStarts) -> Vec<u8> {
    serde_json::to_vec(&StoredChainKey { sealed, starts }).expect("a chain key serialises")
}

/// The store's chain, opened with `master`: what `verify` checks the journals with. A
/// store that holds none yet (its ledger has not opened under a build that stores it)
/// is given the key `master` derives, the one [`load_or_store`] would store, with no
/// starts.
///
/// # Errors
/// [`SealError::WrongChainKey`] (as [`ChainError::Sealing`]) if
/// `master` is not the key that sealed it, or its starts were changed; a read error.
pub fn load(store: &Store, master: &MasterKey) -> Result<Chain, ChainError> {
    match stored(store)? {
        Some((sealed, starts)) => {
            Ok(Chain { key: master.open_chain_key(&sealed, &starts)?, starts })
        }
        None => {
            let starts = ChainStarts::default();
            Ok(Chain { key: master.new_chain_key(&starts)?.0, starts })
        }
    }
}

/// As [`load`]; if the store holds no chain key, stores the derived one, sealed with
/// the starts `starts` gives, synced.
pub(crate) fn load_or_store<E: From<ChainError>>(
    store: &Store,
    master: &MasterKey,
    starts: impl FnOnce() -> Result<ChainStarts, E>,
) -> Result<Chain, E> {
    if let Some((sealed, starts)) = stored(store)? {
        let key = master.open_chain_key(&sealed, &starts).map_err(ChainError::from)?;
        return Ok(Chain { key, starts });
    }
    let starts = starts()?;
    let (key, sealed) = master.new_chain_key(&starts).map_err(ChainError::from)?;
    let mut write = WriteBatch::default();
    write.put_cf(store.cf(CF_META), KEY_CHAIN_KEY, stored_value(sealed, starts.clone()));
    store.write_synced(CONTROL_JOURNAL, write).map_err(ChainError::from)?;
    Ok(Chain { key, starts })
}

/// The chain key sealed under the master key: made, opened and sealed again under
/// another (a rotation).
impl MasterKey {
    /// A new store's journal chain key, and the same sealed for the
    /// store. The key is HMAC-SHA256 of the chain's context under this master key, so
    /// the two never coincide and one reveals nothing of the other; it is stored
    /// sealed so that it outlives a rotation of the master key.
    ///
    /// # Errors
    /// [`SealError::Random`] if no nonce can be drawn.
    pub fn new_chain_key(&self, starts: &ChainStarts) -> Result<(ChainKey, String), SealError> {
        let mut bytes = self.derive(CONTEXT);
        let sealed = self.seal_secret(&starts.associated_data(), &bytes);
        let key = ChainKey::from_bytes(&bytes);
        bytes.zeroize();
        Ok((key, sealed?))
    }

    /// Opens a chain key [`MasterKey::new_chain_key`] or [`MasterKey::reseal_chain_key`]
    /// sealed.
    ///
    /// # Errors
    /// [`SealError::SealedForm`] if the text is not a sealed key;
    /// [`SealError::WrongChainKey`] if it does not open with this master key.
    pub fn open_chain_key(
        &self,
        sealed: &str,
        starts: &ChainStarts,
    ) -> Result<ChainKey, SealError> {
        let mut opened =
            self.open_secret(&starts.associated_data(), sealed)?.ok_or(SealError::WrongChainKey)?;
        let key = ChainKey::from_bytes(&opened);
        opened.zeroize();
        Ok(key)
    }

    /// The sealed chain key `sealed`, opened with this master key and sealed again
    /// with `new`.
    ///
    /// # Errors
    /// As [`MasterKey::open_chain_key`], or [`SealError::Random`].
    pub fn reseal_chain_key(
        &self,
        sealed: &str,
        starts: &ChainStarts,
        new: &Self,
    ) -> Result<String, SealError> {
        let aad = starts.associated_data();
        let mut opened = self.open_secret(&aad, sealed)?.ok_or(SealError::WrongChainKey)?;
        let resealed = new.seal_secret(&aad, &opened);
        opened.zeroize();
        resealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ChainKey {
        MasterKey::new([byte; 32]).new_chain_key(&ChainStarts::default()).expect("seals").0
    }

    #[test]
    fn a_seal_depends_on_the_key_the_journal_the_previous_seal_and_every_byte() {
        let record = b"a batch record";
        let sealed = key(7).seal(3, &Seal::GENESIS, record);
        assert_eq!(sealed, key(7).seal(3, &Seal::GENESIS, record), "deterministic");
        assert_ne!(sealed, key(8).seal(3, &Seal::GENESIS, record), "another master key");
        assert_ne!(sealed, key(7).seal(4, &Seal::GENESIS, record), "another journal");
        assert_ne!(sealed, key(7).seal(3, &sealed, record), "another previous batch");
        assert_ne!(sealed, key(7).seal(3, &Seal::GENESIS, b"a batch recorD"), "a changed byte");
        assert!(sealed.matches(&key(7).seal(3, &Seal::GENESIS, record)));
        assert!(!sealed.matches(&Seal::GENESIS));
    }

    #[test]
    fn the_chain_key_is_not_the_master_key_and_never_prints() {
        let master = [7u8; 32];
        let derived = key(7).seal(0, &Seal::GENESIS, b"");
        let plain = ChainKey::from_bytes(&master).seal(0, &Seal::GENESIS, b"");
        assert_ne!(derived, plain, "the chain key is derived, not the master key itself");
        assert_eq!(format!("{:?}", key(7)), "ChainKey(..)");
    }

    #[test]
    fn a_sealed_chain_key_opens_with_its_master_key_alone_and_survives_a_reseal() {
        let old = MasterKey::new([7; 32]);
        let new = MasterKey::new([8; 32]);
        let starts = ChainStarts { journals: BTreeMap::from([(0, 1), (255, 7)]), audit: 3 };
        let (chain, sealed) = old.new_chain_key(&starts).expect("seals");
        let seal = |key: &ChainKey| key.seal(1, &Seal::GENESIS, b"record");
        assert_eq!(seal(&old.open_chain_key(&sealed, &starts).expect("opens")), seal(&chain));
        assert!(matches!(new.open_chain_key(&sealed, &starts), Err(SealError::WrongChainKey)));
        let moved = ChainStarts { audit: 9, ..starts.clone() };
        assert!(
            matches!(old.open_chain_key(&sealed, &moved), Err(SealError::WrongChainKey)),
            "a changed start does not open"
        );
        let resealed = old.reseal_chain_key(&sealed, &starts, &new).expect("reseals");
        assert_eq!(seal(&new.open_chain_key(&resealed, &starts).expect("opens")), seal(&chain));
        assert!(old.open_chain_key(&resealed, &starts).is_err(), "the old key no longer opens it");
        assert_eq!(
            old.reseal_chain_key(&resealed, &starts, &new).map(|_| ()),
            Err(SealError::WrongChainKey)
        );
    }
}
