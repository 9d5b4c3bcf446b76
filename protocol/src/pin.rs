//! PIN blocks: how a cardholder's PIN crosses the wire for a purchase above the no-PIN
//! limit (小额免密).
//!
//! The clear block is ISO 9564 format 0 without the PAN: the nibble `0`, the number of
//! digits, the digits, and `F` to fill 16 nibbles. It is sealed by XOR with a one-time
//! keystream: the first 8 bytes of the terminal's keyed hash, under a key derived from
//! the terminal key with the label `onecard pin key v1`, of
//! `"onecard-pin-v1" || terminal id (u32) || sequence (u64) || card number (u64)`,
//! all big-endian. A terminal never reuses a sequence, so no keystream is used twice;
//! the frame MAC protects the sealed block from tampering, and the card number in the
//! keystream binds the block to the card it was typed for.

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::PinError;
use crate::limits::{PIN_DIGITS_MAX, PIN_DIGITS_MIN};
use crate::mac::MacKey;

/// Bytes of a PIN block on the wire.
pub const PIN_BLOCK_BYTES: usize = 8;

/// Label of the key derived from a terminal key for PIN blocks.
pub const PIN_KEY_LABEL: &[u8] = b"onecard pin key v1";

/// Domain label that opens every keystream input.
const KEYSTREAM_LABEL: &[u8] = b"onecard-pin-v1";

/// A sealed PIN block as it travels in a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PinBlock(pub [u8; PIN_BLOCK_BYTES]);

/// A cardholder's PIN in the clear: digits only, wiped when dropped, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Pin {
    digits: Vec<u8>,
}

impl Pin {
    /// Checks and wraps a PIN typed as text.
    ///
    /// # Errors
    /// [`PinError::Length`] or [`PinError::NotDigits`].
    pub fn new(text: &str) -> Result<Self, PinError> {
        let digits = text.as_bytes();
        if !(PIN_DIGITS_MIN..=PIN_DIGITS_MAX).contains(&digits.len()) {
            return Err(PinError::Length {
                digits: digits.len(),
                min: PIN_DIGITS_MIN,
                max: PIN_DIGITS_MAX,
            });
        }
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(PinError::NotDigits);
        }
        Ok(Self { digits: digits.iter().map(|d| d - b'0').collect() })
    }

    /// The PIN as ASCII digits, for hashing against the stored salted hash; wiped
    /// when dropped.
    #[must_use]
    pub fn as_ascii(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.digits.iter().map(|d| d + b'0').collect())
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(..)")
    }
}

/// What binds a PIN block to one request: whose terminal, which sequence, which card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinContext {
    /// The terminal sending the purchase.
    pub terminal_id: u32,
    /// The purchase's sequence.
    pub sequence: u64,
    /// The card the PIN was typed for.
    pub card_number: u64,
}

impl PinBlock {
    /// Seals `pin` for one request.
    #[must_use]
    pub fn seal(pin_key: &MacKey, context: PinContext, pin: &Pin) -> Self {
        let mut clear = [0xFFu8; PIN_BLOCK_BYTES];
        // Nibble 0 is the format (0), nibble 1 the digit count; digits follow.
        let count = u8::try_from(pin.digits.len()).expect("a PIN has at most 12 digits");
        let mut nibbles = [0x0F_u8; PIN_BLOCK_BYTES * 2];
        nibbles[0] = 0;
        nibbles[1] = count;
        nibbles[2..2 + pin.digits.len()].copy_from_slice(&pin.digits);
        for (byte, pair) in clear.iter_mut().zip(nibbles.chunks_exact(2)) {
            *byte = (pair[0] << 4) | pair[1];
        }
        let stream = keystream(pin_key, context);
        for (byte, key) in clear.iter_mut().zip(stream) {
            *byte ^= key;
        }
        nibbles.zeroize();
        Self(clear)
    }

    /// Opens the block sealed for `context`.
    ///
    /// # Errors
    /// [`PinError::BadBlock`] if the opened block is not a well-formed format-0 block.
    pub fn open(&self, pin_key: &MacKey, context: PinContext) -> Result<Pin, PinError> {
        let stream = keystream(pin_key, context);
        let mut nibbles = [0u8; PIN_BLOCK_BYTES * 2];
        for (i, (byte, key)) in self.0.iter().zip(stream).enumerate() {
            let clear = byte ^ key;
            nibbles[2 * i] = clear >> 4;
            nibbles[2 * i + 1] = clear & 0x0F;
        }
        let count = usize::from(nibbles[1]);
        let well_formed = nibbles[0] == 0
            && (PIN_DIGITS_MIN..=PIN_DIGITS_MAX).contains(&count)
            && nibbles[2..2 + count].iter().all(|d| *d <= 9)
            && nibbles[2 + count..].iter().all(|f| *f == 0x0F);
        let result = if well_formed {
            Ok(Pin { digits: nibbles[2..2 + count].to_vec() })
        } else {
            Err(PinError::BadBlock)
        };
        nibbles.zeroize();
        result
    }
}

fn keystream(pin_key: &MacKey, context: PinContext) -> [u8; PIN_BLOCK_BYTES] {
    let full = pin_key.prf(&[
        KEYSTREAM_LABEL,
        &context.terminal_id.to_be_bytes(),
        &context.sequence.to_be_bytes(),
        &context.card_number.to_be_bytes(),
    ]);
    let mut stream = [0u8; PIN_BLOCK_BYTES];
    stream.copy_from_slice(&full[..PIN_BLOCK_BYTES]);
    stream
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::{MacAlgorithm, TerminalKey};

    fn pin_key() -> MacKey {
        MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([3u8; 32]))
            .expect("supported")
            .derive(PIN_KEY_LABEL)
    }

    const CONTEXT: PinContext = PinContext { terminal_id: 7, sequence: 42, card_number: 20260001 };

    #[test]
    fn a_sealed_pin_opens_to_itself_and_only_for_its_request() {
        let key = pin_key();
        let pin = Pin::new("123456").expect("valid");
        let block = PinBlock::seal(&key, CONTEXT, &pin);
        assert_eq!(&*block.open(&key, CONTEXT).expect("opens").as_ascii(), b"123456");
        let other = PinContext { sequence: 43, ..CONTEXT };
        // Another request's keystream opens to garbage, refused, or (rarely) a different PIN.
        assert!(block.open(&key, other).map(|p| *p.as_ascii() != b"123456").unwrap_or(true));
        let card = PinContext { card_number: 20260002, ..CONTEXT };
        assert!(block.open(&key, card).map(|p| *p.as_ascii() != b"123456").unwrap_or(true));
    }

    #[test]
    fn the_same_pin_seals_differently_per_sequence() {
        let key = pin_key();
        let pin = Pin::new("0000").expect("valid");
        let a = PinBlock::seal(&key, CONTEXT, &pin);
        let b = PinBlock::seal(&key, PinContext { sequence: 43, ..CONTEXT }, &pin);
        assert_ne!(a, b);
    }

    #[test]
    fn pins_are_checked() {
        assert_eq!(Pin::new("123").err(), Some(PinError::Length { digits: 3, min: 4, max: 12 }));
        assert!(matches!(Pin::new("1234567890123"), Err(PinError::Length { .. })));
        assert_eq!(Pin::new("12a4").err(), Some(PinError::NotDigits));
        assert_eq!(format!("{:?}", Pin::new("1234").expect("valid")), "Pin(..)");
    }

    #[test]
    fn a_tampered_block_is_refused() {
        let key = pin_key();
        let pin = Pin::new("1234").expect("valid");
        let mut block = PinBlock::seal(&key, CONTEXT, &pin);
        // Flip the format nibble: never a well-formed block.
        block.0[0] ^= 0x10;
        assert_eq!(block.open(&key, CONTEXT).err(), Some(PinError::BadBlock));
    }
}
