//! Property tests: every message survives encode -> decode -> verify unchanged, and no
//! byte string makes the decoder panic or over-allocate.

use bytes::BytesMut;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::limits::{FRAME_BYTES_MAX, FRAME_BYTES_MIN};
use onecard_protocol::{Answer, Body, FrameCodec, MacAlgorithm, MacKey, Request, TerminalKey};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use crate::strategies::{answer, request};

fn mac_key(key: [u8; 32], sm3: bool) -> MacKey {
    let algorithm = if sm3 { MacAlgorithm::HmacSm3 } else { MacAlgorithm::HmacSha256 };
    MacKey::new(algorithm, &TerminalKey::new(key)).expect("supported")
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(terminal_id, sequence, timestamp_ms)| {
        Envelope { terminal_id, sequence, timestamp_ms }
    })
}

/// Encodes, decodes through the codec, verifies, and returns the frame's body type and bytes.
fn through_codec(envelope: Envelope, body: &dyn Body, key: &MacKey) -> onecard_protocol::Frame {
    let mut buf = BytesMut::new();
    frame::encode(envelope, body, Some(key), &mut buf).expect("fits");
    assert_eq!(buf.len(), FRAME_BYTES_MIN + body.encoded_len(), "encoded_len is exact");
    let frame = FrameCodec.decode(&mut buf).expect("decodes").expect("whole");
    assert!(buf.is_empty(), "the codec consumed exactly one frame");
    frame.verify(key).expect("MAC verifies");
    let header = frame.header();
    assert_eq!(
        (header.terminal_id, header.sequence, header.timestamp_ms),
        (envelope.terminal_id, envelope.sequence, envelope.timestamp_ms)
    );
    frame
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_request_round_trips(
        request in request(), envelope in envelope(), key in any::<[u8; 32]>(), sm3 in any::<bool>()
    ) {
        let key = mac_key(key, sm3);
        let frame = through_codec(envelope, &request, &key);
        let message_type = frame.header().message_type().expect("known type");
        prop_assert_eq!(Request::decode(message_type, &frame.body()).expect("parses"), request);
    }

    #[test]
    fn every_answer_round_trips(
        answer in answer(), envelope in envelope(), key in any::<[u8; 32]>(), sm3 in any::<bool>()
    ) {
        let key = mac_key(key, sm3);
        let frame = through_codec(envelope, &answer, &key);
        let message_type = frame.header().message_type().expect("known type");
        prop_assert_eq!(Answer::decode(message_type, &frame.body()).expect("parses"), answer);
    }

    #[test]
    fn any_flipped_bit_is_caught(
        request in request(), envelope in envelope(), key in any::<[u8; 32]>(), bit in any::<usize>()
    ) {
        let key = mac_key(key, false);
        let mut buf = BytesMut::new();
        frame::encode(envelope, &request, Some(&key), &mut buf).expect("fits");
        // Flip one bit after the length prefix and version: the frame still cuts, and
        // the MAC must fail.
        let index = 5 + (bit / 8) % (buf.len() - 5);
        buf[index] ^= 1 << (bit % 8);
        let frame = FrameCodec.decode(&mut buf).expect("cuts").expect("whole");
        prop_assert!(frame.verify(&key).is_err());
    }

    #[test]
    fn garbage_never_panics_and_never_buffers_past_the_limit(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..40)
    ) {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        'feed: for chunk in chunks {
            buf.extend_from_slice(&chunk);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        // Anything the codec yields parses to a header; bodies may not.
                        if let Ok(message_type) = frame.header().message_type() {
                            let _ = Request::decode(message_type, &frame.body());
                            let _ = Answer::decode(message_type, &frame.body());
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            // Whole frames are taken out; what stays is at most one partial frame.
            prop_assert!(buf.len() < FRAME_BYTES_MAX);
        }
    }

    #[test]
    fn every_body_decodes_or_errors_on_any_bytes(
        message_type in proptest::sample::select(onecard_protocol::MessageType::ALL),
        body in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        // Typed result, never a panic.
        let _ = Request::decode(message_type, &body);
        let _ = Answer::decode(message_type, &body);
    }
}
