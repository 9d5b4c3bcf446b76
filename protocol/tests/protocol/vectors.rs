//! docs/PROTOCOL.md's test vectors are the code's: the section matches what the code
//! generates, and every frame printed there decodes, verifies and parses back to its
//! message.

use bytes::BytesMut;
use onecard_protocol::vectors::{self, Message};
use onecard_protocol::{Answer, FrameCodec, MessageType, Request};
use tokio_util::codec::Decoder;

const BEGIN: &str = "<!-- vectors:begin -->\n";
const END: &str = "<!-- vectors:end -->";

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable")
}

fn vectors_section(doc: &str) -> &str {
    let start = doc.find(BEGIN).expect("PROTOCOL.md has a vectors:begin marker") + BEGIN.len();
    let end = doc.find(END).expect("PROTOCOL.md has a vectors:end marker");
    &doc[start..end]
}

#[test]
fn protocol_md_carries_the_vectors_the_code_generates() {
    let doc = protocol_md();
    let section = vectors_section(&doc);
    assert!(
        section == vectors::markdown(),
        "docs/PROTOCOL.md's vectors are stale: regenerate them with \
         `cargo run -p onecard-protocol --example vectors`"
    );
}

#[test]
fn every_message_type_has_a_vector() {
    let covered: Vec<MessageType> = vectors::all()
        .iter()
        .map(|v| match &v.message {
            Message::Request(r) => onecard_protocol::Body::message_type(r),
            Message::Answer(a) => onecard_protocol::Body::message_type(a),
        })
        .collect();
    for message_type in MessageType::ALL {
        assert!(covered.contains(message_type), "no vector for {message_type:?}");
    }
}

#[test]
fn every_frame_in_protocol_md_decodes_verifies_and_parses_to_its_message() {
    let doc = protocol_md();
    let frames: Vec<Vec<u8>> = vectors_section(&doc)
        .lines()
        .filter_map(|line| line.strip_prefix("frame: `")?.strip_suffix('`'))
        .map(|hex| hex::decode(hex).expect("hex"))
        .collect();
    let expected = vectors::all();
    assert_eq!(frames.len(), expected.len(), "one frame line per vector");
    for (bytes, vector) in frames.iter().zip(&expected) {
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = FrameCodec.decode(&mut buf).expect("cuts").expect("whole");
        assert!(buf.is_empty(), "{}: exactly one frame", vector.name);
        match vector.mac_key() {
            Some(key) => frame.verify(&key).unwrap_or_else(|e| panic!("{}: {e}", vector.name)),
            None => assert!(frame.is_unauthenticated(), "{}: unsigned", vector.name),
        }
        let message_type = frame.header().message_type().expect("known type");
        let decoded = if message_type.is_answer() {
            Message::Answer(Answer::decode(message_type, &frame.body()).expect("parses"))
        } else {
            Message::Request(Request::decode(message_type, &frame.body()).expect("parses"))
        };
        assert_eq!(decoded, vector.message, "{}", vector.name);
        assert_eq!(frame.header().sequence, vector.envelope.sequence, "{}", vector.name);
    }
}

#[test]
fn the_pin_vector_opens_to_its_pin() {
    use onecard_protocol::pin::{PIN_KEY_LABEL, PinContext};
    let vector = vectors::all()
        .into_iter()
        .find(|v| v.name.starts_with("purchase with PIN"))
        .expect("a PIN vector");
    let Message::Request(Request::Purchase(purchase)) = vector.message else {
        panic!("a purchase");
    };
    let pin_key = vector.mac_key().expect("signed").derive(PIN_KEY_LABEL);
    let context = PinContext {
        terminal_id: vector.envelope.terminal_id,
        sequence: vector.envelope.sequence,
        card_number: purchase.card_number,
    };
    let pin = purchase.pin_block.expect("has a PIN block").open(&pin_key, context).expect("opens");
    assert_eq!(&*pin.as_ascii(), b"123456");
}
