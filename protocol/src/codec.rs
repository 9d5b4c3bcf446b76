//! The frame codec for `tokio_util::codec::Framed`.
//!
//! Decoding yields checked [`Frame`]s (length and version), their bodies as zero-copy
//! slices of the read buffer; MAC verification and body parsing are left to the caller,
//! which knows the terminal's key. Encoding writes header, body and MAC straight into
//! the write buffer, with no intermediate allocation.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{FrameError, SendError};
use crate::frame::{self, Envelope, Frame};
use crate::limits::{FRAME_BYTES_MAX, LENGTH_PREFIX_BYTES};
use crate::mac::MacKey;
use crate::message::Body;

/// Cuts a byte stream into [`Frame`]s and writes [`Outgoing`] messages as frames.
///
/// Its read buffer never grows past one frame of [`FRAME_BYTES_MAX`] plus what the
/// socket delivered beyond it in one read.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match frame::check(src)? {
            Some(len) => Frame::parse(src.split_to(len).freeze()).map(Some),
            None => {
                // The declared length is known and within bounds: reserve for the rest
                // of this frame once, instead of growing the buffer read by read.
                if let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_BYTES>() {
                    let declared = u32::from_be_bytes(*prefix) as usize + LENGTH_PREFIX_BYTES;
                    debug_assert!(declared <= FRAME_BYTES_MAX);
                    src.reserve(declared.saturating_sub(src.len()));
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::TruncatedAtClose { buffered: src.len() }),
        }
    }
}

/// A message on its way out: the header fields, the body, and the key to sign it with
/// (`None` only for a `Reject` to a terminal that cannot be authenticated, or a
/// follower's `Redirect`).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'k, B> {
    /// Terminal id, sequence and timestamp.
    pub envelope: Envelope,
    /// The message.
    pub body: B,
    /// The terminal's MAC key.
    pub key: Option<&'k MacKey>,
}

impl<B: Body> Encoder<Outgoing<'_, B>> for FrameCodec {
    type Error = SendError;

    fn encode(&mut self, item: Outgoing<'_, B>, dst: &mut BytesMut) -> Result<(), SendError> {
        frame::encode(item.envelope, &item.body, item.key, dst)?;
        Ok(())
    }
}
