//! Message authentication: per-terminal keys and the algorithms a frame can name.
//!
//! Every frame ends in a 16-byte MAC over every byte before it, the length prefix
//! included. The algorithm is a byte in the header, so a campus that must use China's
//! national algorithms names HMAC-SM3 (or, later, SM4-CMAC) in the same frame format.
//! Keys never travel in frames: the card centre loads each terminal's key once.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sm3::Sm3;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::MacError;
use crate::limits::MAC_BYTES;

/// Bytes of a terminal's secret key.
pub const TERMINAL_KEY_BYTES: usize = 32;

/// The algorithm byte in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MacAlgorithm {
    /// No MAC: the 16 MAC bytes are zero. Only a server's `Reject` answer to a
    /// terminal it cannot authenticate (unknown id) and a follower's `Redirect` carry
    /// it; it is refused on every other message.
    None = 0,
    /// HMAC-SHA256 truncated to its first 16 bytes.
    HmacSha256 = 1,
    /// HMAC-SM3 (GB/T 32905) truncated to its first 16 bytes.
    HmacSm3 = 2,
    /// SM4-CMAC (GB/T 32907), 16 bytes. Reserved: the number is taken, the algorithm is
    /// not yet built, and frames naming it are refused with `UnsupportedMacAlgorithm`.
    Sm4Cmac = 3,
}

impl MacAlgorithm {
    /// The algorithm a header byte names.
    ///
    /// # Errors
    /// [`MacError::UnknownAlgorithm`] for a byte that names none.
    pub const fn from_wire(byte: u8) -> Result<Self, MacError> {
        match byte {
            0 => Ok(Self::None),
            1 => Ok(Self::HmacSha256),
            2 => Ok(Self::HmacSm3),
            3 => Ok(Self::Sm4Cmac),
            other => Err(MacError::UnknownAlgorithm(other)),
        }
    }

    /// The header byte.
    #[must_use]
    pub const fn to_wire(self) -> u8 {
        self as u8
    }
}

/// A terminal's 32-byte secret. Wiped from memory when dropped; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TerminalKey([u8; TERMINAL_KEY_BYTES]);

impl TerminalKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub const fn new(bytes: [u8; TERMINAL_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits, the form keys take in files.
    ///
    /// # Errors
    /// [`KeyParseError`] if the text is not exactly 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        let text = text.trim();
        if text.len() != TERMINAL_KEY_BYTES * 2 {
            return Err(KeyParseError { len: text.len() });
        }
        let mut bytes = [0u8; TERMINAL_KEY_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or(KeyParseError { len: text.len() })?;
            let low = hex_digit(pair[1]).ok_or(KeyParseError { len: text.len() })?;
            *byte = (high << 4) | low;
        }
        Ok(Self(bytes))
    }

    /// The key as 64 lowercase hex digits, for the card centre's key files.
    #[must_use]
    pub fn to_hex(&self) -> String {
        use std::fmt::Write as _;
        self.0.iter().fold(String::with_capacity(TERMINAL_KEY_BYTES * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }

    /// The raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; TERMINAL_KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for TerminalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalKey(..)")
    }
}

const fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A terminal key text that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a terminal key is 64 hex digits; got {len} characters or a non-hex digit")]
pub struct KeyParseError {
    len: usize,
}

/// A terminal key made ready for one algorithm: the keyed hash state is computed once
/// and cloned per frame, so a MAC costs only the hashing of the frame itself.
#[derive(Clone)]
pub struct MacKey {
    keyed: Keyed,
}

#[derive(Clone)]
enum Keyed {
    HmacSha256(Hmac<Sha256>),
    HmacSm3(Hmac<Sm3>),
}

impl MacKey {
    /// Prepares `key` for `algorithm`.
    ///
    /// # Errors
    /// [`MacError::UnsupportedAlgorithm`] for `None` and for algorithms not yet built.
    pub fn new(algorithm: MacAlgorithm, key: &TerminalKey) -> Result<Self, MacError> {
        let keyed = match algorithm {
            MacAlgorithm::HmacSha256 => Keyed::HmacSha256(keyed(key.as_bytes())),
            MacAlgorithm::HmacSm3 => Keyed::HmacSm3(keyed(key.as_bytes())),
            MacAlgorithm::None | MacAlgorithm::Sm4Cmac => {
                return Err(MacError::UnsupportedAlgorithm(algorithm.to_wire()));
            }
        };
        Ok(Self { keyed })
    }

    /// The algorithm this key computes.
    #[must_use]
    pub const fn algorithm(&self) -> MacAlgorithm {
        match self.keyed {
            Keyed::HmacSha256(_) => MacAlgorithm::HmacSha256,
            Keyed::HmacSm3(_) => MacAlgorithm::HmacSm3,
        }
    }

    /// The full 32-byte keyed hash of the concatenation of `parts`.
    #[must_use]
    pub fn prf(&self, parts: &[&[u8]]) -> [u8; 32] {
        match &self.keyed {
            Keyed::HmacSha256(state) => finish(state, parts),
            Keyed::HmacSm3(state) => finish(state, parts),
        }
    }

    /// The frame MAC of `signed`: the keyed hash truncated to its first 16 bytes.
    #[must_use]
    pub fn sign(&self, signed: &[u8]) -> [u8; MAC_BYTES] {
        let full = self.prf(&[signed]);
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&full[..MAC_BYTES]);
        mac
    }

    /// Checks `mac` against `signed` in constant time.
    ///
    /// # Errors
    /// [`MacError::Mismatch`] if it does not match.
    pub fn verify(&self, signed: &[u8], mac: &[u8; MAC_BYTES]) -> Result<(), MacError> {
        let ok = match &self.keyed {
            Keyed::HmacSha256(state) => verify(state, signed, mac),
            Keyed::HmacSm3(state) => verify(state, signed, mac),
        };
        if ok { Ok(()) } else { Err(MacError::Mismatch) }
    }

    /// A key for another purpose derived from this one, so that one secret per terminal
    /// serves both frame MACs and PIN blocks without one use weakening the other.
    #[must_use]
    pub fn derive(&self, label: &[u8]) -> Self {
        let derived = TerminalKey::new(self.prf(&[label]));
        Self::new(self.algorithm(), &derived).expect("an existing key's algorithm is supported")
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKey").field("algorithm", &self.algorithm()).finish_non_exhaustive()
    }
}

fn keyed<M: KeyInit>(key: &[u8; TERMINAL_KEY_BYTES]) -> M {
    // HMAC takes a key of any length; a 32-byte key is never refused.
    <M as KeyInit>::new_from_slice(key).expect("HMAC accepts 32-byte keys")
}

fn finish<M: Mac + Clone>(state: &M, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = state.clone();
    for part in parts {
        mac.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes()[..32]);
    out
}

fn verify<M: Mac + Clone>(state: &M, signed: &[u8], tag: &[u8; MAC_BYTES]) -> bool {
    let mut mac = state.clone();
    mac.update(signed);
    mac.verify_truncated_left(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2_truncated() {
        // RFC 4231 test case 2 uses the key "Jefe", which is not 32 bytes; check the
        // primitive directly, then that MacKey truncates the same primitive.
        let mut reference = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").expect("key");
        reference.update(b"what do ya want for nothing?");
        let full = reference.finalize().into_bytes();
        assert_eq!(
            hex::encode(full),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = TerminalKey::new([7u8; 32]);
        let mac_key = MacKey::new(MacAlgorithm::HmacSha256, &key).expect("supported");
        let mut direct = <Hmac<Sha256> as KeyInit>::new_from_slice(&[7u8; 32]).expect("key");
        direct.update(b"frame");
        assert_eq!(mac_key.sign(b"frame")[..], direct.finalize().into_bytes()[..16]);
    }

    #[test]
    fn verify_refuses_a_flipped_bit_and_another_algorithm() {
        let key = TerminalKey::new([9u8; 32]);
        for algorithm in [MacAlgorithm::HmacSha256, MacAlgorithm::HmacSm3] {
            let mac_key = MacKey::new(algorithm, &key).expect("supported");
            let mut mac = mac_key.sign(b"hello");
            assert_eq!(mac_key.verify(b"hello", &mac), Ok(()));
            mac[15] ^= 1;
            assert_eq!(mac_key.verify(b"hello", &mac), Err(MacError::Mismatch));
        }
        let sha = MacKey::new(MacAlgorithm::HmacSha256, &key).expect("supported");
        let sm3 = MacKey::new(MacAlgorithm::HmacSm3, &key).expect("supported");
        assert_ne!(sha.sign(b"x"), sm3.sign(b"x"));
    }

    #[test]
    fn reserved_and_none_algorithms_have_no_key() {
        let key = TerminalKey::new([1u8; 32]);
        assert_eq!(
            MacKey::new(MacAlgorithm::Sm4Cmac, &key).err(),
            Some(MacError::UnsupportedAlgorithm(3))
        );
        assert_eq!(
            MacKey::new(MacAlgorithm::None, &key).err(),
            Some(MacError::UnsupportedAlgorithm(0))
        );
        assert_eq!(MacAlgorithm::from_wire(4), Err(MacError::UnknownAlgorithm(4)));
    }

    #[test]
    fn keys_parse_from_hex_and_never_print() {
        let text = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let key = TerminalKey::from_hex(text).expect("valid");
        assert_eq!(key.as_bytes()[31], 0x1f);
        assert_eq!(key.to_hex(), text);
        assert_eq!(format!("{key:?}"), "TerminalKey(..)");
        assert!(TerminalKey::from_hex(&text[1..]).is_err());
        assert!(TerminalKey::from_hex(&text.replace('0', "g")).is_err());
    }
}
