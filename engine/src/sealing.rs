//! Terminal keys at rest: sealed with the master key before they reach the store.
//!
//! The master key (32 bytes, from `master_key_file` or `ONECARD_MASTER_KEY`; never in
//! the store or its backups) seals each terminal's key with XChaCha20-Poly1305 under a
//! fresh random 24-byte nonce, the terminal id bound in as associated data. A copy of
//! the data directory or a backup therefore holds no usable key, a sealed key moved
//! to another terminal's record does not open, and a store opened with the wrong
//! master key is refused by name rather than refusing every terminal's MAC.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use onecard_protocol::TerminalKey;
use onecard_protocol::mac::TERMINAL_KEY_BYTES;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of the master key.
pub const MASTER_KEY_BYTES: usize = 32;

/// Bytes of a sealing nonce.
const NONCE_BYTES: usize = 24;

/// Bytes of the Poly1305 tag.
const TAG_BYTES: usize = 16;

/// Bytes of a sealed terminal key: nonce, ciphertext, tag.
pub const SEALED_KEY_BYTES: usize = NONCE_BYTES + TERMINAL_KEY_BYTES + TAG_BYTES;

/// What binds a sealed key to its purpose and its terminal.
const CONTEXT: &[u8] = b"onecard terminal key v1";

/// Why a master key or a sealed key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The master key is not 64 hex digits.
    #[error(
        "a master key is 64 hex digits ({MASTER_KEY_BYTES} bytes); this has {len} characters or a non-hex one"
    )]
    MasterKeyForm {
        /// Characters given.
        len: usize,
    },
    /// A sealed key is not the hex of nonce, ciphertext and tag.
    #[error("a sealed terminal key is {} hex digits; this has {len} characters or a non-hex one", SEALED_KEY_BYTES * 2)]
    SealedForm {
        /// Characters found.
        len: usize,
    },
    /// The tag does not verify: another master key sealed it, it belongs to another
    /// terminal, or it was changed.
    #[error(
        "terminal {terminal_id}'s key does not open with this master key (was the store sealed with another master key, or the record changed?)"
    )]
    WrongKey {
        /// The terminal whose key did not open.
        terminal_id: u32,
    },
    /// The store's journal chain key does not open: another master key sealed it, or
    /// it was changed.
    #[error(
        "the journal chain's key does not open with this master key (was the store sealed with another master key?)"
    )]
    WrongChainKey,
    /// No randomness for a nonce or a new master key.
    #[error("no randomness: {0}")]
    Random(String),
}

/// The key that seals terminal keys. Wiped from memory when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; MASTER_KEY_BYTES]);

impl MasterKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn new(bytes: [u8; MASTER_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// A new random key.
    ///
    /// # Errors
    /// [`SealError::Random`] if the system has no randomness to give.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Parses 64 hex digits (surrounding whitespace, such as a file's last newline,
    /// ignored).
    ///
    /// # Errors
    /// [`SealError::MasterKeyForm`] otherwise; the message never repeats the text.
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let mut bytes = [0u8; MASTER_KEY_BYTES];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| SealError::MasterKeyForm { len: text.len() })?;
        Ok(Self(bytes))
    }

    /// The key as 64 lowercase hex digits, the form of the master key file.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Seals `key` for `terminal_id`: hex of nonce, ciphertext and tag.
    ///
    /// # Errors
    /// [`SealError::Random`] if no nonce can be drawn.
    pub fn seal(&self, terminal_id: u32, key: &TerminalKey) -> Result<String, SealError> {
        self.seal_secret(&associated_data(terminal_id), key.as_bytes())
    }

    /// Opens a key [`MasterKey::seal`] sealed for `terminal_id`.
    ///
    /// # Errors
    /// [`SealError::SealedForm`] if the text is not a sealed key;
    /// [`SealError::WrongKey`] if it does not open with this key for this terminal.
    pub fn open(&self, terminal_id: u32, sealed: &str) -> Result<TerminalKey, SealError> {
        let mut opened = self
            .open_secret(&associated_data(terminal_id), sealed)?
            .ok_or(SealError::WrongKey { terminal_id })?;
        let key = TerminalKey::new(opened);
        opened.zeroize();
        Ok(key)
    }

    /// HMAC-SHA256 of `context` under the master key: a key derived for one purpose,
    /// which never equals the master key nor one derived for another context.
    pub(crate) fn derive(&self, context: &[u8]) -> [u8; 32] {
        let mut derive = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts 32-byte keys");
        derive.update(context);
        derive.finalize().into_bytes().into()
    }

    /// Seals a 32-byte secret bound to `aad`: hex of nonce, ciphertext and tag.
    pub(crate) fn seal_secret(&self, aad: &[u8], secret: &[u8; 32]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: secret, aad })
            .map_err(|_| SealError::Random("the cipher refused to seal".to_owned()))?;
        let mut out = Vec::with_capacity(SEALED_KEY_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(hex::encode(out))
    }

    /// Opens what [`MasterKey::seal_secret`] sealed with `aad`; `None` if the tag does
    /// not verify (another master key, another `aad`, or a changed byte).
    pub(crate) fn open_secret(
        &self,
        aad: &[u8],
        sealed: &str,
    ) -> Result<Option<[u8; 32]>, SealError> {
        let mut bytes = [0u8; SEALED_KEY_BYTES];
        hex::decode_to_slice(sealed, &mut bytes)
            .map_err(|_| SealError::SealedForm { len: sealed.len() })?;
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::SealedForm { len: 0 })?;
        let Ok(mut opened) = self.cipher().decrypt(&nonce, Payload { msg: sealed, aad }) else {
            return Ok(None);
        };
        let secret = <[u8; 32]>::try_from(opened.as_slice()).ok();
        opened.zeroize();
        Ok(secret)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn associated_data(terminal_id: u32) -> [u8; CONTEXT.len() + 4] {
    let mut aad = [0u8; CONTEXT.len() + 4];
    aad[..CONTEXT.len()].copy_from_slice(CONTEXT);
    aad[CONTEXT.len()..].copy_from_slice(&terminal_id.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal_key() -> TerminalKey {
        TerminalKey::new([0x5a; TERMINAL_KEY_BYTES])
    }

    #[test]
    fn a_sealed_key_opens_for_its_terminal_and_holds_no_trace_of_the_key() {
        let master = MasterKey::generate().expect("random");
        let sealed = master.seal(7, &terminal_key()).expect("seals");
        assert_eq!(sealed.len(), SEALED_KEY_BYTES * 2);
        assert!(!sealed.contains(&terminal_key().to_hex()));
        assert_eq!(master.open(7, &sealed).expect("opens"), terminal_key());
        let again = master.seal(7, &terminal_key()).expect("seals");
        assert_ne!(sealed, again, "a fresh nonce each time");
    }

    #[test]
    fn another_master_key_another_terminal_or_a_changed_byte_is_refused() {
        let master = MasterKey::generate().expect("random");
        let sealed = master.seal(7, &terminal_key()).expect("seals");
        let other = MasterKey::generate().expect("random");
        assert_eq!(other.open(7, &sealed), Err(SealError::WrongKey { terminal_id: 7 }));
        assert_eq!(master.open(8, &sealed), Err(SealError::WrongKey { terminal_id: 8 }));
        let mut changed = sealed.into_bytes();
        changed[60] = if changed[60] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).expect("hex");
        assert_eq!(master.open(7, &changed), Err(SealError::WrongKey { terminal_id: 7 }));
        assert_eq!(master.open(7, "abc"), Err(SealError::SealedForm { len: 3 }));
    }

    #[test]
    fn a_master_key_round_trips_as_hex_and_its_errors_never_echo_it() {
        let master = MasterKey::generate().expect("random");
        let text = format!("{}\n", master.to_hex());
        let parsed = MasterKey::from_hex(&text).expect("parses");
        assert_eq!(parsed.to_hex(), master.to_hex());
        assert_eq!(format!("{parsed:?}"), "MasterKey(..)");
        let bad = "zz".repeat(32);
        let error = MasterKey::from_hex(&bad).expect_err("not hex").to_string();
        assert!(!error.contains(&bad), "{error}");
        assert!(MasterKey::from_hex(&"ab".repeat(31)).is_err());
    }
}
