//! The terminal front door of a real server: framing, refusals, and bad input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use onecard_protocol::{AnswerCode, ClientConfig, ClientError, TerminalClient, TerminalKey};
use onecard_tests::{Server, TempDir};

/// Connects, sends `bytes`, and returns everything the server sends until it closes.
fn send_until_closed(server: &Server, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.terminal_addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the server answers and closes");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_terminal_is_refused_at_sign_on_with_a_typed_code() {
    let dir = TempDir::new("unknown-terminal");
    let server = Server::start(dir.path());
    let key = TerminalKey::new([1; 32]);
    let error =
        TerminalClient::connect(server.terminal_addr(), 1001, &key, 0, ClientConfig::default())
            .await
            .err()
            .expect("refused");
    assert!(matches!(error, ClientError::SignOnRefused(AnswerCode::UnknownTerminal)), "{error:?}");
    assert!(server.stop().success(), "a clean exit on SIGTERM");
}

#[test]
fn an_oversize_length_gets_a_malformed_reject_and_a_close_before_any_body_is_sent() {
    let dir = TempDir::new("oversize");
    let server = Server::start(dir.path());
    // Declare a 4 GiB frame and send nothing more.
    let answer = send_until_closed(&server, &u32::MAX.to_be_bytes());
    // One unsigned Reject frame: 44 bytes of frame plus a 4-byte body.
    assert_eq!(answer.len(), 48, "{answer:02x?}");
    assert_eq!(&answer[6..8], &0xFFFFu16.to_be_bytes(), "a Reject");
    assert_eq!(&answer[28..30], &AnswerCode::Malformed.to_wire().to_be_bytes());
    drop(server);
}

#[test]
fn garbage_bytes_are_refused_and_the_server_keeps_serving_others() {
    let dir = TempDir::new("garbage");
    let server = Server::start(dir.path());
    let answer = send_until_closed(&server, b"GET / HTTP/1.1\r\nHost: onecard\r\n\r\n");
    // "GET " read as a length is far above the limit: refused, closed.
    assert_eq!(&answer[28..30], &AnswerCode::Malformed.to_wire().to_be_bytes());
    // A second client is served as usual.
    let answer = send_until_closed(&server, &[0, 0, 0, 1]);
    assert_eq!(&answer[28..30], &AnswerCode::Malformed.to_wire().to_be_bytes(), "undersize");
}

#[test]
fn a_restart_reopens_the_same_store() {
    let dir = TempDir::new("restart");
    let server = Server::start(dir.path());
    assert!(server.stop().success());
    let server = Server::start(dir.path());
    assert!(server.data_dir().join("CURRENT").exists(), "a RocksDB store");
    assert!(server.stop().success());
}

#[test]
fn a_bad_length_after_a_refused_frame_gets_one_reject_not_a_repeat_of_the_last() {
    use onecard_protocol::frame::{self, Envelope};
    use onecard_protocol::message::{Heartbeat, Request};
    use onecard_protocol::{MacAlgorithm, MacKey};
    let dir = TempDir::new("reject-buffer");
    let server = Server::start(dir.path());
    let key = MacKey::new(MacAlgorithm::HmacSha256, &TerminalKey::new([1; 32])).expect("key");
    let mut buf = bytes::BytesMut::new();
    let envelope = Envelope { terminal_id: 4242, sequence: 1, timestamp_ms: 0 };
    let request = Request::Heartbeat(Heartbeat { blacklist_version: 0 });
    frame::encode(envelope, &request, Some(&key), &mut buf).expect("fits");
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    let answer = send_until_closed(&server, &buf);
    assert_eq!(answer.len(), 2 * 48, "exactly two Rejects: {answer:02x?}");
    assert_eq!(&answer[28..30], &AnswerCode::UnknownTerminal.to_wire().to_be_bytes());
    assert_eq!(&answer[48 + 28..48 + 30], &AnswerCode::Malformed.to_wire().to_be_bytes());
}
