//! Feeds arbitrary bytes to the frame decoder the way a socket would, in chunks of
//! arbitrary size, and parses everything it yields. The decoder must never panic, never
//! hold more than one partial frame, and never yield a frame that re-encodes
//! differently once it has parsed and verified.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::limits::FRAME_BYTES_MAX;
use onecard_protocol::{Answer, FrameCodec, MacAlgorithm, MacKey, Request, TerminalKey};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let key = MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([7; 32])).unwrap();
    let mut codec = FrameCodec;
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(&frame, &key),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() < FRAME_BYTES_MAX);
    }
    let _ = codec.decode_eof(&mut buf);
});

fn check(frame: &onecard_protocol::Frame, key: &MacKey) {
    let header = *frame.header();
    let verified = frame.verify(key).is_ok();
    let Ok(message_type) = header.message_type() else { return };
    let body = frame.body();
    let envelope = Envelope {
        terminal_id: header.terminal_id,
        sequence: header.sequence,
        timestamp_ms: header.timestamp_ms,
    };
    let mut out = BytesMut::new();
    if let Ok(request) = Request::decode(message_type, &body) {
        frame::encode(envelope, &request, Some(key), &mut out).unwrap();
    } else if let Ok(answer) = Answer::decode(message_type, &body) {
        frame::encode(envelope, &answer, Some(key), &mut out).unwrap();
    } else {
        return;
    }
    // A frame that parsed re-encodes to the same body; one that also verified re-encodes
    // to the very same bytes.
    assert_eq!(&out[28..out.len() - 16], &body[..]);
    if verified {
        assert_eq!(&out[..], &frame.as_bytes()[..]);
    }
}
