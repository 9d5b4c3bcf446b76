//! Decoder error tests: each kind of bad input gets its typed error, never a panic, and
//! never a buffer larger than one frame.

use bytes::{BufMut, BytesMut};
use onecard_protocol::error::{DecodeError, FrameError, MacError};
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::limits::{FRAME_BYTES_MAX, FRAME_BYTES_MIN};
use onecard_protocol::message::{BalanceInquiry, Heartbeat};
use onecard_protocol::{FrameCodec, MacAlgorithm, MacKey, MessageType, Request, TerminalKey};
use tokio_util::codec::Decoder;

fn key() -> MacKey {
    MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([5; 32])).expect("supported")
}

fn envelope(sequence: u64) -> Envelope {
    Envelope { terminal_id: 9, sequence, timestamp_ms: 1_788_234_600_000 }
}

fn heartbeat_frame(sequence: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    let request = Request::Heartbeat(Heartbeat { blacklist_version: 3 });
    frame::encode(envelope(sequence), &request, Some(&key()), &mut buf).expect("fits");
    buf
}

#[test]
fn a_frame_fed_one_byte_at_a_time_needs_more_bytes_until_whole() {
    let whole = heartbeat_frame(1);
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec;
    for (i, byte) in whole.iter().enumerate() {
        buf.put_u8(*byte);
        let decoded = codec.decode(&mut buf).expect("never an error");
        if i + 1 < whole.len() {
            assert!(decoded.is_none(), "no frame before byte {}", whole.len());
        } else {
            let frame = decoded.expect("whole frame");
            frame.verify(&key()).expect("authentic");
            assert_eq!(frame.header().sequence, 1);
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn pipelined_frames_in_one_read_come_out_in_order() {
    let mut buf = BytesMut::new();
    for sequence in 1..=5 {
        buf.extend_from_slice(&heartbeat_frame(sequence));
    }
    let mut codec = FrameCodec;
    for sequence in 1..=5 {
        let frame = codec.decode(&mut buf).expect("ok").expect("whole");
        assert_eq!(frame.header().sequence, sequence);
    }
    assert!(codec.decode(&mut buf).expect("ok").is_none());
}

#[test]
fn an_oversize_length_is_refused_before_any_memory_is_reserved() {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_u32(u32::MAX);
    let error = FrameCodec.decode(&mut buf).expect_err("refused");
    assert!(
        matches!(error, FrameError::Oversize { declared, max } if declared == u64::from(u32::MAX) + 4 && max == FRAME_BYTES_MAX),
        "{error:?}"
    );
    assert!(buf.capacity() < 64, "nothing reserved for the declared length");
    // One byte over the limit is refused too; exactly the limit is accepted as a length.
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(FRAME_BYTES_MAX - 4 + 1).expect("fits"));
    assert!(matches!(FrameCodec.decode(&mut buf), Err(FrameError::Oversize { .. })));
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(FRAME_BYTES_MAX - 4).expect("fits"));
    buf.put_u8(1);
    assert!(FrameCodec.decode(&mut buf).expect("a legal length").is_none());
    assert!(buf.capacity() >= FRAME_BYTES_MAX, "reserved once for the declared frame");
}

#[test]
fn an_undersize_length_is_refused() {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(FRAME_BYTES_MIN - 4 - 1).expect("fits"));
    let error = FrameCodec.decode(&mut buf).expect_err("refused");
    assert!(matches!(error, FrameError::Undersize { min: FRAME_BYTES_MIN, .. }), "{error:?}");
}

#[test]
fn an_unknown_version_is_refused_as_soon_as_its_byte_arrives() {
    let mut buf = heartbeat_frame(1);
    buf[4] = 2;
    buf.truncate(5);
    let error = FrameCodec.decode(&mut buf).expect_err("refused");
    assert!(matches!(error, FrameError::UnsupportedVersion { version: 2 }), "{error:?}");
    assert_eq!(error.answer_code(), Some(onecard_protocol::AnswerCode::UnsupportedVersion));
}

#[test]
fn a_connection_closed_mid_frame_is_a_typed_error() {
    let mut buf = heartbeat_frame(1);
    buf.truncate(30);
    let error = FrameCodec.decode_eof(&mut buf).expect_err("truncated");
    assert!(matches!(error, FrameError::TruncatedAtClose { buffered: 30 }), "{error:?}");
    let mut empty = BytesMut::new();
    assert!(FrameCodec.decode_eof(&mut empty).expect("clean close").is_none());
}

#[test]
fn an_unknown_message_type_still_cuts_and_is_refused_at_parse() {
    let mut buf = heartbeat_frame(1);
    buf[6..8].copy_from_slice(&0x0777u16.to_be_bytes());
    let frame = FrameCodec.decode(&mut buf).expect("cuts").expect("whole");
    assert_eq!(frame.header().message_type(), Err(DecodeError::UnknownMessageType(0x0777)));
    assert_eq!(frame.verify(&key()), Err(MacError::Mismatch), "the type is under the MAC");
}

#[test]
fn a_bad_mac_and_a_wrong_key_and_a_wrong_algorithm_are_refused() {
    let mut buf = heartbeat_frame(1);
    let last = buf.len() - 1;
    buf[last] ^= 0x80;
    let frame = FrameCodec.decode(&mut buf).expect("cuts").expect("whole");
    assert_eq!(frame.verify(&key()), Err(MacError::Mismatch));

    let frame = FrameCodec.decode(&mut heartbeat_frame(2)).expect("cuts").expect("whole");
    let other = MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([6; 32])).expect("ok");
    assert_eq!(frame.verify(&other), Err(MacError::Mismatch));
    let sm3 = MacKey::new(MacAlgorithm::HmacSm3, &TerminalKey::new([5; 32])).expect("ok");
    assert_eq!(frame.verify(&sm3), Err(MacError::AlgorithmMismatch { frame: 1, key: 2 }));

    let mut buf = heartbeat_frame(3);
    buf[5] = 9;
    let frame = FrameCodec.decode(&mut buf).expect("cuts").expect("whole");
    assert_eq!(frame.verify(&key()), Err(MacError::UnknownAlgorithm(9)));
}

#[test]
fn bodies_that_are_short_long_or_out_of_domain_are_malformed() {
    let inquiry = |body: &[u8]| Request::decode(MessageType::BalanceInquiry, body);
    assert_eq!(inquiry(&[0; 7]), Err(DecodeError::Truncated { field: "card_number" }));
    assert_eq!(inquiry(&[0; 9]), Err(DecodeError::TrailingBytes { count: 1 }));
    assert_eq!(
        inquiry(&7u64.to_be_bytes()),
        Ok(Request::BalanceInquiry(BalanceInquiry { card_number: 7 }))
    );
    // A purchase whose meal period is 9.
    let mut purchase = vec![0; 8 + 4];
    purchase.push(9);
    purchase.extend_from_slice(&[0; 5]);
    assert_eq!(
        Request::decode(MessageType::Purchase, &purchase),
        Err(DecodeError::InvalidValue { field: "meal_period", value: 9 })
    );
    // An offline upload that claims 65,535 records in 2 bytes.
    assert!(matches!(
        Request::decode(MessageType::OfflineUpload, &u16::MAX.to_be_bytes()),
        Err(DecodeError::TooMany { .. })
    ));
    // One that claims 3 records and carries one.
    let mut upload = 3u16.to_be_bytes().to_vec();
    upload.extend_from_slice(&[0; 33]);
    assert_eq!(
        Request::decode(MessageType::OfflineUpload, &upload),
        Err(DecodeError::Truncated { field: "record_count" })
    );
    // A top-up whose reference claims 200 bytes.
    let mut top_up = vec![0; 12];
    top_up.extend_from_slice(&[1, 200]);
    assert_eq!(
        Request::decode(MessageType::TopUp, &top_up),
        Err(DecodeError::InvalidValue { field: "reference_len", value: 200 })
    );
    // An answer type is not a request.
    assert_eq!(
        Request::decode(MessageType::Reject, &[]),
        Err(DecodeError::UnknownMessageType(0xFFFF))
    );
    assert_eq!(
        DecodeError::UnknownMessageType(1).answer_code(),
        onecard_protocol::AnswerCode::UnknownMessageType
    );
}

#[test]
fn a_duplicate_code_alone_is_not_an_answer() {
    // `Duplicate` is only a prefix: Duplicate, Duplicate, ... is malformed.
    let mut body = Vec::new();
    body.extend_from_slice(&11u16.to_be_bytes());
    body.extend_from_slice(&11u16.to_be_bytes());
    body.extend_from_slice(&[0; 24]);
    assert!(onecard_protocol::Answer::decode(MessageType::PurchaseAnswer, &body).is_err());
}

#[test]
fn a_body_too_large_for_a_frame_is_refused_at_encode_and_leaves_the_buffer_alone() {
    use onecard_protocol::message::{OfflineRecord, OfflineUpload};
    let record = OfflineRecord {
        sequence: 1,
        card_number: 1,
        amount_fen: 1,
        taken_at_ms: 1,
        meal_period: onecard_protocol::MealPeriod::Lunch,
        item_code: 0,
    };
    let request = Request::OfflineUpload(OfflineUpload { records: vec![record; 65] });
    let mut buf = BytesMut::from(&b"kept"[..]);
    let error = frame::encode(envelope(1), &request, Some(&key()), &mut buf).expect_err("refused");
    assert!(matches!(error, onecard_protocol::EncodeError::TooMany { count: 65, .. }), "{error:?}");
    assert_eq!(&buf[..], b"kept");
}
