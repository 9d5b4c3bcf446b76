//! The journal chain: every batch a journal writes is sealed together with the one
//! before it, so its history cannot be rewritten without the master key.
//!
//! A batch record of version 2 ends in a 32-byte seal, HMAC-SHA256 under the chain key
//! of the journal's number, the previous batch's seal (32 zero bytes, [`Seal::GENESIS`],
//! before a journal's first sealed batch) and the record's bytes before the seal. The
//! chain key is derived from the master key ([`crate::sealing::MasterKey::chain_key`]),
//! which is never in the store or its backups: whoever can write the data directory can
//! change a batch and every balance it touched consistently, but cannot seal the
//! changed batch, nor the one after it. `verify` walks each journal's chain from its
//! first batch and names the first batch whose seal does not follow; a batch removed
//! from the middle, one moved from another journal and one forged from nothing break
//! it alike. What the chain cannot show alone is the loss of a journal's newest batches
//! together with their balances; the balances of cards that terminals can see are the
//! check on that.
//!
//! A shard's writer thread holds its journal's last seal and the control plane holds
//! the control journal's, each read back from the journal's last batch when the ledger
//! opens. Records of version 1, written before the chain, carry no seal; they may
//! begin a journal, and its chain starts at its first sealed batch.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

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

/// The key that seals journal batches, derived from the master key. Never printed.
#[derive(Clone)]
pub struct ChainKey {
    /// The HMAC state with the key already absorbed; cloned for each seal.
    keyed: Hmac<Sha256>,
}

impl ChainKey {
    /// A chain key from 32 derived bytes.
    pub(crate) fn from_derived(bytes: &[u8; SEAL_BYTES]) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::MasterKey;

    fn key(byte: u8) -> ChainKey {
        MasterKey::new([byte; 32]).chain_key()
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
        let plain = ChainKey::from_derived(&master).seal(0, &Seal::GENESIS, b"");
        assert_ne!(derived, plain, "the chain key is derived, not the master key itself");
        assert_eq!(format!("{:?}", key(7)), "ChainKey(..)");
    }
}
