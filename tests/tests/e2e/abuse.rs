//! Bad actors on the terminal port: forged MACs, replays, idle crowds and a client
//! that never reads. The server keeps serving everyone else, its memory stays
//! bounded, and every refusal is counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use onecard_protocol::frame::{self, Envelope};
use onecard_protocol::message::{Heartbeat, SignOn};
use onecard_protocol::{AnswerCode, MacAlgorithm, MacKey, Request, TerminalKey};
use onecard_tests::metric;

use crate::support::{Campus, FUNDED_FEN, balance_fen, outcome, purchase};

/// One frame from `terminal` signed with `key`.
fn signed(terminal: u32, sequence: u64, key: &TerminalKey, request: &Request) -> Vec<u8> {
    let key = MacKey::new(MacAlgorithm::HmacSha256, key).expect("key");
    let mut out = BytesMut::new();
    let envelope = Envelope {
        terminal_id: terminal,
        sequence,
        timestamp_ms: onecard_protocol::client::now_ms(),
    };
    frame::encode(envelope, request, Some(&key), &mut out).expect("fits");
    out.to_vec()
}

fn sign_on() -> Request {
    Request::SignOn(SignOn { blacklist_version: 0, software_version: 1 })
}

/// Reads `count` answer frames and returns each one's (message type, code).
fn read_answers(stream: &mut TcpStream, count: usize) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for _ in 0..count {
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).expect("an answer");
        let mut rest = vec![0u8; usize::try_from(u32::from_be_bytes(length)).expect("fits")];
        stream.read_exact(&mut rest).expect("the rest of it");
        let message_type = u16::from_be_bytes([rest[2], rest[3]]);
        let code = u16::from_be_bytes([rest[24], rest[25]]);
        out.push((message_type, code));
    }
    out
}

fn connect(campus: &Campus) -> TcpStream {
    let stream = TcpStream::connect(campus.server.terminal_addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
}

const REJECT: u16 = 0xFFFF;
const fn code(code: AnswerCode) -> u16 {
    code.to_wire()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_macs_and_replays_change_nothing_and_are_counted() {
    let campus = Campus::build("forged", 1, &[]).await;
    let card = campus.cards[0];
    let canteen = &campus.canteen;

    // A purchase as a real terminal sends it, captured on the wire.
    let mut stream = connect(&campus);
    let captured_sign_on = signed(canteen.id, 1, &canteen.key, &sign_on());
    let captured_purchase = signed(canteen.id, 2, &canteen.key, &purchase(card, 500));
    stream.write_all(&captured_sign_on).expect("write");
    stream.write_all(&captured_purchase).expect("write");
    let answers = read_answers(&mut stream, 2);
    assert_eq!(
        answers,
        [(0x8001, code(AnswerCode::Approved)), (0x8003, code(AnswerCode::Approved))]
    );

    // Replayed on the same connection: the original answer, nothing moves.
    stream.write_all(&captured_purchase).expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(0x8003, code(AnswerCode::Duplicate))]);
    // A forged MAC: refused, the connection lives.
    let mut forged = signed(canteen.id, 3, &canteen.key, &purchase(card, 500));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    stream.write_all(&forged).expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(REJECT, code(AnswerCode::BadMac))]);
    // A frame signed with another key.
    let wrong = signed(canteen.id, 4, &TerminalKey::new([9; 32]), &purchase(card, 500));
    stream.write_all(&wrong).expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(REJECT, code(AnswerCode::BadMac))]);
    // A stale heartbeat.
    stream
        .write_all(&signed(
            canteen.id,
            2,
            &canteen.key,
            &Request::Heartbeat(Heartbeat { blacklist_version: 0 }),
        ))
        .expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(REJECT, code(AnswerCode::StaleSequence))]);

    // Replayed by someone else on a new connection: the sign-on is stale, the
    // purchase is refused before sign-on.
    let mut thief = connect(&campus);
    thief.write_all(&captured_sign_on).expect("write");
    thief.write_all(&captured_purchase).expect("write");
    let answers = read_answers(&mut thief, 2);
    assert_eq!(answers[0], (0x8001, code(AnswerCode::StaleSequence)));
    assert_eq!(answers[1], (REJECT, code(AnswerCode::NotSignedOn)));
    // An unknown terminal id.
    thief.write_all(&signed(999_999, 1, &canteen.key, &sign_on())).expect("write");
    assert_eq!(read_answers(&mut thief, 1), [(REJECT, code(AnswerCode::UnknownTerminal))]);

    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 500, "one purchase, once");
    let metrics = campus.server.metrics();
    for (reason, at_least) in [
        ("bad_mac", 2.0),
        ("stale_sequence", 1.0),
        ("not_signed_on", 1.0),
        ("unknown_terminal", 1.0),
    ] {
        let series = format!("onecard_terminal_frames_refused_total{{reason=\"{reason}\"}}");
        assert!(metric(&metrics, &series).unwrap_or(0.0) >= at_least, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_and_a_client_that_never_reads_do_not_stop_the_others() {
    let campus = Campus::build("crowd", 1, &["--terminal-write-timeout-secs", "2"]).await;
    let card = campus.cards[0];
    let rss_before = campus.server.rss_bytes();

    let idle: Vec<TcpStream> = (0..1_000).map(|_| connect(&campus)).collect();

    // A terminal that pipelines heartbeats and never reads its answers.
    let mut deaf = connect(&campus);
    deaf.write_all(&signed(campus.other_canteen.id, 1, &campus.other_canteen.key, &sign_on()))
        .expect("write");
    deaf.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let key = campus.other_canteen.key.clone();
    let id = campus.other_canteen.id;
    let flood = std::thread::spawn(move || {
        let heartbeat = Request::Heartbeat(Heartbeat { blacklist_version: 0 });
        let mut sent = 0u64;
        for chunk in 0..400u64 {
            let mut bytes = Vec::with_capacity(1_000 * 64);
            for i in 0..1_000u64 {
                bytes.extend_from_slice(&signed(id, 2 + chunk * 1_000 + i, &key, &heartbeat));
            }
            if deaf.write_all(&bytes).is_err() {
                break;
            }
            sent += 1_000;
        }
        (deaf, sent)
    });

    // Meanwhile an honest terminal is served as usual.
    let canteen = campus.canteen.connect(&campus.server).await;
    for _ in 0..20 {
        let answer = canteen.call(purchase(card, 100)).await.expect("answered");
        assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    }
    let (_deaf, sent) = flood.join().expect("the flood thread");
    assert!(sent > 0);
    let closed = |metrics: &str| {
        metric(metrics, r#"onecard_terminal_connections_closed_total{reason="slow_reader"}"#)
            .unwrap_or(0.0)
    };
    let mut metrics = campus.server.metrics();
    for _ in 0..100 {
        if closed(&metrics) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        metrics = campus.server.metrics();
    }
    assert!(closed(&metrics) >= 1.0, "the deaf client is cut off");
    assert!(metric(&metrics, "onecard_terminal_connections_open").unwrap_or(0.0) >= 1_000.0);
    let rss_after = campus.server.rss_bytes();
    assert!(
        rss_after < rss_before + 256 * 1024 * 1024,
        "memory stays bounded: {rss_before} -> {rss_after}"
    );
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 2_000);
    drop(idle);
}
