//! The frame: a length prefix, a fixed header, a body, a MAC.
//!
//! ```text
//! offset  bytes  field
//!      0      4  length         u32, bytes after this field
//!      4      1  version        1
//!      5      1  mac algorithm  see MacAlgorithm
//!      6      2  message type   see MessageType
//!      8      4  terminal id    u32
//!     12      8  sequence       u64, the terminal's request number
//!     20      8  timestamp      u64, sender's clock, ms since the Unix epoch (UTC)
//!     28      n  body           per message type
//!   28+n     16  MAC            over bytes 0 .. 28+n
//! ```
//! All integers are big-endian. Decoding is check-then-parse: [`check`] finds where a
//! frame ends without allocating, refusing a declared length above the limit before any
//! memory is reserved for it; [`Frame::parse`] then reads the header of a complete frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError, FrameError, MacError};
use crate::limits::{
    BODY_BYTES_MAX, FRAME_BYTES_MAX, FRAME_BYTES_MIN, HEADER_BYTES, LENGTH_PREFIX_BYTES, MAC_BYTES,
};
use crate::mac::{MacAlgorithm, MacKey};
use crate::message::{Body, MessageType};

/// The frame format this build speaks.
pub const VERSION: u8 = 1;

/// Offset of the body: the end of the header.
const BODY_OFFSET: usize = LENGTH_PREFIX_BYTES + HEADER_BYTES;

/// The header fields every frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The MAC algorithm byte as received; see [`Header::mac_algorithm`].
    pub mac_algorithm_raw: u8,
    /// The message type as received; see [`Header::message_type`].
    pub message_type_raw: u16,
    /// The terminal the frame is from, or (in an answer) for.
    pub terminal_id: u32,
    /// The terminal's request number; an answer carries its request's.
    pub sequence: u64,
    /// The sender's clock in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Header {
    /// The MAC algorithm the frame names.
    ///
    /// # Errors
    /// [`MacError::UnknownAlgorithm`] for an undefined byte.
    pub const fn mac_algorithm(&self) -> Result<MacAlgorithm, MacError> {
        MacAlgorithm::from_wire(self.mac_algorithm_raw)
    }

    /// The message type the frame names.
    ///
    /// # Errors
    /// [`DecodeError::UnknownMessageType`] for an undefined number.
    pub const fn message_type(&self) -> Result<MessageType, DecodeError> {
        MessageType::from_wire(self.message_type_raw)
    }
}

/// Where the next frame in `src` ends, without allocating or copying.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some(len))` when the first `len`
/// bytes of `src` are one whole frame.
///
/// # Errors
/// [`FrameError::Oversize`] or [`FrameError::Undersize`] as soon as the length prefix is
/// readable, and [`FrameError::UnsupportedVersion`] as soon as the version byte is.
pub fn check(src: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let declared = u64::from(u32::from_be_bytes(*prefix)) + LENGTH_PREFIX_BYTES as u64;
    if declared > FRAME_BYTES_MAX as u64 {
        return Err(FrameError::Oversize { declared, max: FRAME_BYTES_MAX });
    }
    if declared < FRAME_BYTES_MIN as u64 {
        return Err(FrameError::Undersize { declared, min: FRAME_BYTES_MIN });
    }
    if let Some(&version) = src.get(LENGTH_PREFIX_BYTES)
        && version != VERSION
    {
        return Err(FrameError::UnsupportedVersion { version });
    }
    // Bounded by FRAME_BYTES_MAX above, so it fits usize on every platform.
    let len = usize::try_from(declared).expect("declared <= FRAME_BYTES_MAX");
    Ok((src.len() >= len).then_some(len))
}

/// One complete frame, checked for length and version, its MAC not yet verified.
///
/// It owns the frame's bytes (a reference-counted slice of the read buffer, so nothing
/// is copied); the body and MAC are views into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    header: Header,
    bytes: Bytes,
}

impl Frame {
    /// Reads the header of one whole frame, as cut by [`check`].
    ///
    /// # Errors
    /// [`FrameError`] if `bytes` is not a frame [`check`] accepts whole.
    pub fn parse(bytes: Bytes) -> Result<Self, FrameError> {
        if check(&bytes)? != Some(bytes.len()) {
            return Err(FrameError::TruncatedAtClose { buffered: bytes.len() });
        }
        let field = |at: usize| -> [u8; 8] {
            let mut out = [0u8; 8];
            out.copy_from_slice(&bytes[at..at + 8]);
            out
        };
        let header = Header {
            mac_algorithm_raw: bytes[5],
            message_type_raw: u16::from_be_bytes([bytes[6], bytes[7]]),
            terminal_id: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            sequence: u64::from_be_bytes(field(12)),
            timestamp_ms: u64::from_be_bytes(field(20)),
        };
        Ok(Self { header, bytes })
    }

    /// The header.
    #[must_use]
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// The body, zero-copy.
    #[must_use]
    pub fn body(&self) -> Bytes {
        self.bytes.slice(BODY_OFFSET..self.bytes.len() - MAC_BYTES)
    }

    /// The MAC the sender put on the frame.
    #[must_use]
    pub fn mac(&self) -> &[u8; MAC_BYTES] {
        self.bytes[self.bytes.len() - MAC_BYTES..]
            .first_chunk::<MAC_BYTES>()
            .expect("a checked frame ends in a MAC")
    }

    /// The bytes the MAC covers: everything before it.
    #[must_use]
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - MAC_BYTES]
    }

    /// The whole frame as it was on the wire.
    #[must_use]
    pub const fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Checks the MAC under `key`.
    ///
    /// # Errors
    /// [`MacError::UnknownAlgorithm`] for an undefined algorithm byte,
    /// [`MacError::AlgorithmMismatch`] if it differs from the key's, and
    /// [`MacError::Mismatch`] if the MAC is wrong.
    pub fn verify(&self, key: &MacKey) -> Result<(), MacError> {
        let algorithm = self.header.mac_algorithm()?;
        if algorithm != key.algorithm() {
            return Err(MacError::AlgorithmMismatch {
                frame: algorithm.to_wire(),
                key: key.algorithm().to_wire(),
            });
        }
        key.verify(self.signed_bytes(), self.mac())
    }

    /// Whether this frame carries no MAC (algorithm `None`, all-zero MAC bytes). Only a
    /// `Reject` or a `Redirect` may; see [`MacAlgorithm::None`].
    #[must_use]
    pub fn is_unauthenticated(&self) -> bool {
        self.header.mac_algorithm_raw == MacAlgorithm::None.to_wire()
            && self.mac().iter().all(|b| *b == 0)
    }
}

/// The fields a sender chooses for a frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// The terminal the frame is from, or for.
    pub terminal_id: u32,
    /// The request number.
    pub sequence: u64,
    /// The sender's clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Appends one whole frame carrying `body` to `dst`, signed with `key`, or with no MAC
/// when `key` is `None` (only for a `Reject` or a `Redirect`).
///
/// # Errors
/// [`EncodeError`] if the body does not fit a frame or breaks a limit; `dst` is then
/// left as it was.
pub fn encode<B: Body + ?Sized>(
    envelope: Envelope,
    body: &B,
    key: Option<&MacKey>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = dst.len();
    let algorithm = key.map_or(MacAlgorithm::None, MacKey::algorithm);
    dst.reserve(FRAME_BYTES_MIN + body.encoded_len());
    dst.put_u32(0); // patched below once the body's length is known
    dst.put_u8(VERSION);
    dst.put_u8(algorithm.to_wire());
    dst.put_u16(body.message_type().to_wire());
    dst.put_u32(envelope.terminal_id);
    dst.put_u64(envelope.sequence);
    dst.put_u64(envelope.timestamp_ms);
    if let Err(error) = body.encode_body(dst) {
        dst.truncate(start);
        return Err(error);
    }
    let body_len = dst.len() - start - BODY_OFFSET;
    if body_len > BODY_BYTES_MAX {
        dst.truncate(start);
        return Err(EncodeError::BodyTooLarge { bytes: body_len, max: BODY_BYTES_MAX });
    }
    let length = u32::try_from(dst.len() - start - LENGTH_PREFIX_BYTES + MAC_BYTES)
        .expect("bounded by FRAME_BYTES_MAX");
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    let mac = key.map_or([0u8; MAC_BYTES], |key| key.sign(&dst[start..]));
    dst.put_slice(&mac);
    debug_assert_eq!(check(&dst[start..]).ok().flatten(), Some(dst.len() - start));
    Ok(())
}
