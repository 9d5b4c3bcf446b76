//! Typed errors for everything the network can send us.
//!
//! Three layers, three enums: [`FrameError`] when the byte stream cannot be cut into
//! frames (the connection must close), [`DecodeError`] when a well-framed body does not
//! parse (the request is answered `Malformed` and the connection lives on), and
//! [`MacError`] when a frame is not authentic.

use crate::code::AnswerCode;

/// The byte stream cannot be cut into frames. After one of these the stream is out of
/// step and the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix declares more bytes than any frame may hold. Refused before a
    /// byte of it is buffered.
    #[error("declared frame length {declared} exceeds the maximum of {max} bytes")]
    Oversize {
        /// Bytes the prefix declared, the prefix itself included.
        declared: u64,
        /// [`crate::limits::FRAME_BYTES_MAX`].
        max: usize,
    },
    /// The length prefix declares fewer bytes than a header and a MAC need.
    #[error("declared frame length {declared} is below the minimum of {min} bytes")]
    Undersize {
        /// Bytes the prefix declared, the prefix itself included.
        declared: u64,
        /// [`crate::limits::FRAME_BYTES_MIN`].
        min: usize,
    },
    /// The version byte names a frame format this build does not speak.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed with {buffered} bytes of an unfinished frame")]
    TruncatedAtClose {
        /// Bytes of the partial frame that were buffered.
        buffered: usize,
    },
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The answer code a server sends before closing, where one applies.
    #[must_use]
    pub fn answer_code(&self) -> Option<AnswerCode> {
        match self {
            Self::Oversize { .. } | Self::Undersize { .. } => Some(AnswerCode::Malformed),
            Self::UnsupportedVersion { .. } => Some(AnswerCode::UnsupportedVersion),
            Self::TruncatedAtClose { .. } | Self::Io(_) => None,
        }
    }
}

/// A well-framed body that does not parse as the message its type names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message type is not one this version defines.
    #[error("unknown message type {0:#06x}")]
    UnknownMessageType(u16),
    /// The body ended before the named field.
    #[error("body truncated at field `{field}`")]
    Truncated {
        /// The field that did not fit.
        field: &'static str,
    },
    /// The body has bytes after its last field.
    #[error("{count} unexpected bytes after the body")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A field holds a value outside its domain.
    #[error("field `{field}` has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value received.
        value: u64,
    },
    /// A list declares more entries than the protocol allows.
    #[error("field `{field}` declares {count} entries, more than the maximum {max}")]
    TooMany {
        /// The list's count field.
        field: &'static str,
        /// Entries declared.
        count: usize,
        /// The limit from [`crate::limits`].
        max: usize,
    },
}

impl DecodeError {
    /// The answer code a server sends for this error.
    #[must_use]
    pub fn answer_code(&self) -> AnswerCode {
        match self {
            Self::UnknownMessageType(_) => AnswerCode::UnknownMessageType,
            _ => AnswerCode::Malformed,
        }
    }
}

/// A message that cannot be put in a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded body would not fit in a frame.
    #[error("body of {bytes} bytes exceeds the maximum of {max}")]
    BodyTooLarge {
        /// Bytes the body would take.
        bytes: usize,
        /// [`crate::limits::BODY_BYTES_MAX`].
        max: usize,
    },
    /// A list holds more entries than the protocol allows.
    #[error("`{field}` holds {count} entries, more than the maximum {max}")]
    TooMany {
        /// The list.
        field: &'static str,
        /// Entries given.
        count: usize,
        /// The limit from [`crate::limits`].
        max: usize,
    },
    /// A field holds a value the wire cannot carry.
    #[error("`{field}` cannot be encoded: {reason}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// A frame that could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message does not fit the protocol.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame is not authentic, or cannot be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MacError {
    /// The MAC does not match the frame under the terminal's key.
    #[error("MAC does not match")]
    Mismatch,
    /// The algorithm byte names no algorithm this build knows.
    #[error("unknown MAC algorithm {0}")]
    UnknownAlgorithm(u8),
    /// The algorithm is defined but not available in this build.
    #[error("MAC algorithm {0} is not supported")]
    UnsupportedAlgorithm(u8),
    /// The frame's algorithm differs from the one configured for the terminal's key.
    #[error("frame uses MAC algorithm {frame}, the terminal's key is for {key}")]
    AlgorithmMismatch {
        /// Algorithm byte in the frame.
        frame: u8,
        /// Algorithm of the key.
        key: u8,
    },
}

impl MacError {
    /// The answer code a server sends for this error.
    #[must_use]
    pub fn answer_code(&self) -> AnswerCode {
        match self {
            Self::Mismatch | Self::AlgorithmMismatch { .. } => AnswerCode::BadMac,
            Self::UnknownAlgorithm(_) | Self::UnsupportedAlgorithm(_) => {
                AnswerCode::UnsupportedMacAlgorithm
            }
        }
    }
}

/// A PIN that cannot be put in a PIN block, or a PIN block that does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// Fewer or more digits than the protocol allows.
    #[error("a PIN has {min} to {max} digits, this one has {digits}")]
    Length {
        /// Digits given.
        digits: usize,
        /// [`crate::limits::PIN_DIGITS_MIN`].
        min: usize,
        /// [`crate::limits::PIN_DIGITS_MAX`].
        max: usize,
    },
    /// Something other than `0`-`9`.
    #[error("a PIN holds only the digits 0-9")]
    NotDigits,
    /// The block, once opened, is not a well-formed PIN block: a wrong key, a block
    /// sealed for another request, or tampering.
    #[error("the PIN block does not open to a well-formed PIN")]
    BadBlock,
}
