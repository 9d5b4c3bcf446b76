//! Bad actors on the terminal port: forged MACs, replays, idle crowds and a client
//! that never reads. The server keeps serving everyone else, its memory stays
//! bounded, and every refusal is counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use onecard_engine::limits::{BLOCK_CACHE_BYTES, MEMTABLE_BYTES_MAX};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_that_jump_or_wrap_are_refused_counted_and_the_terminal_goes_on() {
    use onecard_protocol::limits::SEQUENCE_JUMP_MAX;
    let campus = Campus::build("sequence-jump", 1, &[]).await;
    let card = campus.cards[0];
    let canteen = &campus.canteen;
    let mut stream = connect(&campus);
    stream.write_all(&signed(canteen.id, 1, &canteen.key, &sign_on())).expect("write");
    stream.write_all(&signed(canteen.id, 2, &canteen.key, &purchase(card, 100))).expect("write");
    assert_eq!(
        read_answers(&mut stream, 2),
        [(0x8001, code(AnswerCode::Approved)), (0x8003, code(AnswerCode::Approved))]
    );
    // A leap past the bound, and one to the very top: refused, nothing spent.
    for sequence in [2 + SEQUENCE_JUMP_MAX + 1, u64::MAX] {
        let frame = signed(canteen.id, sequence, &canteen.key, &purchase(card, 100));
        stream.write_all(&frame).expect("write");
        assert_eq!(read_answers(&mut stream, 1), [(REJECT, code(AnswerCode::SequenceJump))]);
    }
    // Wrapped round to zero: below the highest, never seen, so stale.
    stream.write_all(&signed(canteen.id, 0, &canteen.key, &purchase(card, 100))).expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(0x8003, code(AnswerCode::StaleSequence))]);
    // A gap within the bound is a gap: the terminal goes on above it.
    let next = 2 + SEQUENCE_JUMP_MAX;
    stream.write_all(&signed(canteen.id, next, &canteen.key, &purchase(card, 100))).expect("write");
    assert_eq!(read_answers(&mut stream, 1), [(0x8003, code(AnswerCode::Approved))]);
    // A sign-on at the top of the space is told where to resume, and resumes there.
    let mut again = connect(&campus);
    again.write_all(&signed(canteen.id, u64::MAX, &canteen.key, &sign_on())).expect("write");
    assert_eq!(read_answers(&mut again, 1), [(0x8001, code(AnswerCode::SequenceJump))]);
    let client = canteen.connect_with(&campus.server, crate::support::one_attempt()).await;
    let answer = client.call(purchase(card, 100)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);

    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 300, "three purchases, once each");
    let metrics = campus.server.metrics();
    let jumps = r#"onecard_terminal_frames_refused_total{reason="sequence_jump"}"#;
    assert_eq!(metric(&metrics, jumps), Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_terminal_key_on_two_connections_at_once_moves_each_purchase_once() {
    let campus = Campus::build("two-connections", 1, &[]).await;
    let card = campus.cards[0];
    let canteen = &campus.canteen;
    let (mut first, mut second) = (connect(&campus), connect(&campus));
    first.write_all(&signed(canteen.id, 1, &canteen.key, &sign_on())).expect("write");
    assert_eq!(read_answers(&mut first, 1), [(0x8001, code(AnswerCode::Approved))]);
    second.write_all(&signed(canteen.id, 2, &canteen.key, &sign_on())).expect("write");
    assert_eq!(read_answers(&mut second, 1), [(0x8001, code(AnswerCode::Approved))]);
    // Purchases from both, interleaved under one sequence space.
    let purchases: Vec<Vec<u8>> = (3..9)
        .map(|sequence| signed(canteen.id, sequence, &canteen.key, &purchase(card, 100)))
        .collect();
    for (n, frame) in purchases.iter().enumerate() {
        let stream = if n % 2 == 0 { &mut first } else { &mut second };
        stream.write_all(frame).expect("write");
        assert_eq!(read_answers(stream, 1), [(0x8003, code(AnswerCode::Approved))], "#{n}");
    }
    // Each one sent again on the other connection: its original answer, nothing moves.
    for (n, frame) in purchases.iter().enumerate() {
        let stream = if n % 2 == 0 { &mut second } else { &mut first };
        stream.write_all(frame).expect("write");
        assert_eq!(read_answers(stream, 1), [(0x8003, code(AnswerCode::Duplicate))], "#{n}");
    }
    // Both send the same new sequence at once: one decides it, the other is a duplicate.
    let racing = signed(canteen.id, 9, &canteen.key, &purchase(card, 100));
    first.write_all(&racing).expect("write");
    second.write_all(&racing).expect("write");
    let mut codes = [read_answers(&mut first, 1)[0].1, read_answers(&mut second, 1)[0].1];
    codes.sort_unstable();
    assert_eq!(codes, [code(AnswerCode::Approved), code(AnswerCode::Duplicate)]);
    assert_eq!(balance_fen(&campus.admin, card), FUNDED_FEN - 700, "seven purchases, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_storm_on_one_card_from_every_shard_spends_it_exactly_once() {
    let campus = Campus::build("storm", 1, &["--shards", "2"]).await;
    let card = campus.cards[0];
    let windows = campus.windows(6, 40);
    let mut storms = Vec::new();
    for window in &windows {
        let client = window.connect_with(&campus.server, crate::support::one_attempt()).await;
        storms.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..20 {
                let answer = client.call(purchase(card, 100)).await.expect("answered");
                codes.push(outcome(&answer).0);
            }
            codes
        }));
    }
    let mut approved = 0;
    for storm in storms {
        for answer in storm.await.expect("a storm") {
            match answer {
                AnswerCode::Approved => approved += 1,
                AnswerCode::InsufficientFunds => {}
                other => panic!("{other:?}"),
            }
        }
    }
    // 160 purchases of one yuan at a card holding one hundred: exactly one hundred.
    assert_eq!(approved, FUNDED_FEN / 100);
    assert_eq!(balance_fen(&campus.admin, card), 0);
    let (status, report) = campus.admin.get("/api/verify");
    assert_eq!((status, &report["clean"]), (200, &serde_json::json!(true)), "{report}");
    assert_eq!(report["chain_checked"], serde_json::json!(true), "{report}");
    assert_eq!(report["sealed_batches"], report["batches"], "every batch sealed: {report}");
    assert!(report["audit_records"].as_u64() > Some(0), "the admin's changes: {report}");
    assert_eq!(report["sealed_audit_records"], report["audit_records"], "all sealed: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_cut_off_and_a_flood_beyond_the_cap_waits_its_turn() {
    let extra = [
        "--terminal-connections-max",
        "20",
        "--terminal-idle-timeout-secs",
        "2",
        "--frame-read-timeout-secs",
        "1",
    ];
    let campus = Campus::build("flood", 1, &extra).await;
    let card = campus.cards[0];
    let closed = |reason: &str| {
        let series = format!("onecard_terminal_connections_closed_total{{reason=\"{reason}\"}}");
        metric(&campus.server.metrics(), &series).unwrap_or(0.0)
    };
    // Slowloris: a frame begun and fed a byte at a time, slower than the read timeout.
    let mut slow = connect(&campus);
    let frame = signed(campus.canteen.id, 1, &campus.canteen.key, &sign_on());
    slow.write_all(&frame[..6]).expect("write");
    let mut cut_off = false;
    for byte in &frame[6..] {
        std::thread::sleep(Duration::from_millis(400));
        if slow.write_all(std::slice::from_ref(byte)).is_err() {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 1];
        slow.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
        if matches!(slow.read(&mut probe), Ok(0)) {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the slow writer is closed before its frame is whole");
    assert!(closed("slow_frame") >= 1.0);

    // Three times the cap in silent connections: the server holds the cap, the rest
    // wait in the kernel's backlog, and each is closed when idle.
    let rss_before = campus.server.rss_bytes();
    let flood: Vec<TcpStream> = (0..60).map(|_| connect(&campus)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = campus.server.metrics();
    assert_eq!(metric(&metrics, "onecard_terminal_connections_open"), Some(20.0), "the cap holds");
    assert_eq!(metric(&metrics, "onecard_terminal_connections_max"), Some(20.0));
    let at_cap = metric(&metrics, "onecard_terminal_connections_at_cap_total");
    assert!(at_cap >= Some(1.0), "the full door is counted: {at_cap:?}");
    // An honest terminal queued behind them is served once the idle ones are closed.
    let client = campus.canteen.connect_with(&campus.server, crate::support::one_attempt()).await;
    let answer = client.call(purchase(card, 100)).await.expect("answered");
    assert_eq!(outcome(&answer).0, AnswerCode::Approved);
    assert!(closed("idle") >= 40.0, "the flood was closed as idle, and counted");
    let rss_after = campus.server.rss_bytes();
    assert!(rss_after < rss_before + 64 * 1024 * 1024, "{rss_before} -> {rss_after}");
    drop(flood);
}

/// What the attackers of the mixed run saw refused or closed, by metric reason.
#[derive(Debug, Default)]
struct Refusals {
    bad_mac: u64,
    unknown_terminal: u64,
    unknown_terminal_closes: u64,
    sequence_jump: u64,
    framing_closes: u64,
    slow_frame_closes: u64,
    idle_connections: u64,
}

/// Whether the server closes `stream` (EOF or reset) within `wait`; answers sent
/// before the close are read and dropped.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) => return !matches!(error.kind(), WouldBlock | TimedOut),
        }
    }
}

/// Runs one attacker until `deadline`, counting what it was refused.
fn attack(
    kind: u8,
    campus_addr: std::net::SocketAddr,
    victim: (u32, TerminalKey),
    stolen: (u32, TerminalKey),
    deadline: std::time::Instant,
) -> Refusals {
    use onecard_protocol::limits::SEQUENCE_JUMP_MAX;
    let dial = || {
        let stream = TcpStream::connect(campus_addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream
    };
    let mut seen = Refusals::default();
    match kind {
        // Frames in the name of a real terminal, signed with a guessed key.
        0 => {
            let mut stream = dial();
            let guess = TerminalKey::new([0x5c; 32]);
            let mut sequence = 1;
            while std::time::Instant::now() < deadline {
                stream
                    .write_all(&signed(victim.0, sequence, &guess, &purchase(7_000_001, 100)))
                    .expect("write");
                assert_eq!(read_answers(&mut stream, 1), [(REJECT, code(AnswerCode::BadMac))]);
                seen.bad_mac += 1;
                sequence += 1;
            }
        }
        // A terminal id nobody has: three tries, then the door closes.
        1 => {
            while std::time::Instant::now() < deadline {
                let mut stream = dial();
                for sequence in 1..=3 {
                    stream
                        .write_all(&signed(999_999, sequence, &victim.1, &sign_on()))
                        .expect("write");
                }
                assert_eq!(
                    read_answers(&mut stream, 3),
                    [(REJECT, code(AnswerCode::UnknownTerminal)); 3]
                );
                seen.unknown_terminal += 3;
                assert!(closed_within(&mut stream, Duration::from_secs(5)), "closed after three");
                seen.unknown_terminal_closes += 1;
            }
        }
        // A stolen key: signed on, then leaps past the sequence bound, again and again.
        2 => {
            let mut stream = dial();
            stream.write_all(&signed(stolen.0, 1, &stolen.1, &sign_on())).expect("write");
            assert_eq!(read_answers(&mut stream, 1), [(0x8001, code(AnswerCode::Approved))]);
            let mut leap = 2 + SEQUENCE_JUMP_MAX;
            while std::time::Instant::now() < deadline {
                leap += 1;
                stream
                    .write_all(&signed(stolen.0, leap, &stolen.1, &purchase(7_000_001, 100)))
                    .expect("write");
                assert_eq!(
                    read_answers(&mut stream, 1),
                    [(REJECT, code(AnswerCode::SequenceJump))]
                );
                seen.sequence_jump += 1;
            }
        }
        // Garbage: a length prefix far beyond any frame.
        3 => {
            while std::time::Instant::now() < deadline {
                let mut stream = dial();
                let mut junk = vec![0x7f, 0xff, 0xff, 0xff];
                junk.extend((0..60u8).map(|b| b.wrapping_mul(37)));
                stream.write_all(&junk).expect("write");
                assert!(closed_within(&mut stream, Duration::from_secs(5)), "framing lost, closed");
                seen.framing_closes += 1;
            }
        }
        // Slowloris: a frame begun and never finished.
        4 => {
            while std::time::Instant::now() < deadline {
                let mut stream = dial();
                let frame = signed(victim.0, 1, &victim.1, &sign_on());
                stream.write_all(&frame[..10]).expect("write");
                assert!(closed_within(&mut stream, Duration::from_secs(5)), "cut off");
                seen.slow_frame_closes += 1;
            }
        }
        // A crowd of silent connections, held until the idle timeout closes them.
        _ => {
            while std::time::Instant::now() < deadline {
                let mut crowd: Vec<TcpStream> = (0..100).map(|_| dial()).collect();
                for stream in &mut crowd {
                    assert!(closed_within(stream, Duration::from_secs(10)), "closed idle");
                }
                seen.idle_connections += 100;
            }
        }
    }
    seen
}

/// How long the mixed attack lasts: `ONECARD_ABUSE_SECS`, 5 by default (CI).
fn abuse_secs() -> u64 {
    std::env::var("ONECARD_ABUSE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_mixed_attack_honest_terminals_lose_nothing_and_every_refusal_is_counted() {
    let secs = abuse_secs();
    let cards = if secs > 60 { 400 } else { 40 };
    let extra = ["--terminal-idle-timeout-secs", "2", "--frame-read-timeout-secs", "1"];
    let campus = Campus::build("abuse-mix", cards, &extra).await;
    let stolen = crate::support::terminal(&campus.admin, campus.canteen.merchant_id, 90);
    let windows = campus.windows(2, 60);
    let rss_before = campus.server.rss_bytes();
    let before = campus.server.metrics();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);

    let addr = campus.server.terminal_addr();
    let attackers: Vec<_> = (0..6u8)
        .map(|kind| {
            let victim = (campus.canteen.id, campus.canteen.key.clone());
            let stolen = (stolen.id, stolen.key.clone());
            std::thread::spawn(move || attack(kind, addr, victim, stolen, deadline))
        })
        .collect();
    let mut honest = Vec::new();
    for (n, window) in windows.iter().enumerate() {
        let client = window.connect_with(&campus.server, crate::support::one_attempt()).await;
        let numbers = campus.cards.clone();
        honest.push(tokio::spawn(async move {
            let mut spent: std::collections::BTreeMap<u64, i64> = Default::default();
            let mut approved = 0usize;
            let mut seed = 0x9e37_79b9_u64 + n as u64;
            while std::time::Instant::now() < deadline {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let card = numbers[usize::try_from(seed >> 33).expect("fits") % numbers.len()];
                let fen = 1 + (seed >> 20) % 3;
                let answer = client.call(purchase(card, u32::try_from(fen).expect("small"))).await;
                match outcome(&answer.expect("answered")) {
                    (AnswerCode::Approved, _) => {
                        *spent.entry(card).or_default() += i64::try_from(fen).expect("small");
                        approved += 1;
                    }
                    other => panic!("an honest purchase refused: {other:?}"),
                }
            }
            (spent, approved)
        }));
    }
    let mut spent: std::collections::BTreeMap<u64, i64> = Default::default();
    let mut approved = 0usize;
    for window in honest {
        let (window_spent, window_approved) = window.await.expect("an honest window");
        for (card, fen) in window_spent {
            *spent.entry(card).or_default() += fen;
        }
        approved += window_approved;
    }
    let mut seen = Refusals::default();
    for attacker in attackers {
        let one = attacker.join().expect("an attacker");
        seen.bad_mac += one.bad_mac;
        seen.unknown_terminal += one.unknown_terminal;
        seen.unknown_terminal_closes += one.unknown_terminal_closes;
        seen.sequence_jump += one.sequence_jump;
        seen.framing_closes += one.framing_closes;
        seen.slow_frame_closes += one.slow_frame_closes;
        seen.idle_connections += one.idle_connections;
    }

    // Nothing lost or added: each card spent exactly what its windows were told.
    for card in &campus.cards {
        let expected = FUNDED_FEN - spent.get(card).copied().unwrap_or(0);
        assert_eq!(balance_fen(&campus.admin, *card), expected, "card {card}");
    }
    let (status, report) = campus.admin.get("/api/verify");
    assert_eq!((status, &report["clean"]), (200, &serde_json::json!(true)), "{report}");
    // Every refusal the attackers saw is counted, exactly where it can be.
    let after = campus.server.metrics();
    let delta = |series: &str| {
        metric(&after, series).unwrap_or(0.0) - metric(&before, series).unwrap_or(0.0)
    };
    let refused = |reason: &str| {
        delta(&format!("onecard_terminal_frames_refused_total{{reason=\"{reason}\"}}"))
    };
    let closed = |reason: &str| {
        delta(&format!("onecard_terminal_connections_closed_total{{reason=\"{reason}\"}}"))
    };
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let exact = [
        ("bad_mac", refused("bad_mac"), seen.bad_mac as f64),
        ("unknown_terminal", refused("unknown_terminal"), seen.unknown_terminal as f64),
        ("sequence_jump", refused("sequence_jump"), seen.sequence_jump as f64),
        (
            "closed unknown_terminal",
            closed("unknown_terminal"),
            seen.unknown_terminal_closes as f64,
        ),
        ("closed framing", closed("framing"), seen.framing_closes as f64),
        ("closed slow_frame", closed("slow_frame"), seen.slow_frame_closes as f64),
    ];
    for (what, counted, observed) in exact {
        assert_eq!(counted, observed, "{what}: the metric against what the attackers saw");
    }
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let idle = seen.idle_connections as f64;
    assert!(closed("idle") >= idle, "{} idle closes for {idle}", closed("idle"));
    let rss_after = campus.server.rss_bytes();
    println!(
        "mixed attack, {secs} s: {approved} honest purchases approved, nothing lost; refused \
         {} forged, {} unknown-terminal, {} sequence-jump frames; closed {} unknown-terminal, \
         {} framing, {} slow-frame, {} idle connections; rss {} -> {} MiB",
        seen.bad_mac,
        seen.unknown_terminal,
        seen.sequence_jump,
        seen.unknown_terminal_closes,
        seen.framing_closes,
        seen.slow_frame_closes,
        seen.idle_connections,
        rss_before >> 20,
        rss_after >> 20,
    );
    // The attack costs no memory of its own: what the server gains is the store's
    // budgets filling with the honest purchases (memtables, block cache), and little
    // more.
    let budgets = MEMTABLE_BYTES_MAX + BLOCK_CACHE_BYTES + (64 << 20);
    let budgets = u64::try_from(budgets).expect("fits");
    assert!(rss_after < rss_before + budgets, "{rss_before} -> {rss_after}");
}
