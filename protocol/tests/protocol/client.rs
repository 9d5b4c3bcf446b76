//! `TerminalClient` against a scripted server on loopback TCP: pipelining, answers out
//! of order, retries under the same sequence, reversal on giving up, sequence resync,
//! refusals, and a server that lies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use onecard_protocol::frame::{self, Envelope, Header};
use onecard_protocol::message::{Purchase, Reject, SignOnAnswer, TransferAnswer};
use onecard_protocol::{
    Answer, AnswerCode, ClientConfig, ClientError, FrameCodec, MacAlgorithm, MacKey, MealPeriod,
    Request, TerminalClient, TerminalKey,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

const TERMINAL: u32 = 1001;
const CARD: u64 = 2_026_000_001;

fn terminal_key() -> TerminalKey {
    TerminalKey::new([0x42; 32])
}

/// What the scripted server does after a request.
enum Out {
    /// Answer this sequence, signed.
    Signed(u64, Answer),
    /// Answer unsigned (a Reject to an unknown terminal).
    Unsigned(u64, Answer),
    /// Answer with a corrupted MAC.
    Forged(u64, Answer),
    /// Close the connection.
    Close,
}

type Seen = Arc<Mutex<Vec<(u64, Request)>>>;

/// Serves one connection, calling `script` for every request; returns the address and
/// the requests it saw.
async fn serve<F>(mut script: F) -> (std::net::SocketAddr, Seen)
where
    F: FnMut(&Header, &Request) -> Vec<Out> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, mut write) = stream.into_split();
        let key = MacKey::new(MacAlgorithm::HmacSha256, &terminal_key()).expect("key");
        let mut frames = FramedRead::new(read, FrameCodec);
        while let Some(Ok(frame)) = frames.next().await {
            frame.verify(&key).expect("the client signs every frame");
            let message_type = frame.header().message_type().expect("known");
            let request = Request::decode(message_type, &frame.body()).expect("parses");
            record.lock().expect("lock").push((frame.header().sequence, request.clone()));
            for out in script(frame.header(), &request) {
                let mut buf = BytesMut::new();
                let envelope =
                    |sequence| Envelope { terminal_id: TERMINAL, sequence, timestamp_ms: 0 };
                match out {
                    Out::Signed(seq, answer) => {
                        frame::encode(envelope(seq), &answer, Some(&key), &mut buf).expect("fits");
                    }
                    Out::Unsigned(seq, answer) => {
                        frame::encode(envelope(seq), &answer, None, &mut buf).expect("fits");
                    }
                    Out::Forged(seq, answer) => {
                        frame::encode(envelope(seq), &answer, Some(&key), &mut buf).expect("fits");
                        let last = buf.len() - 1;
                        buf[last] ^= 1;
                    }
                    Out::Close => return,
                }
                if write.write_all(&buf).await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, seen)
}

fn approved_sign_on(last_sequence: u64) -> Answer {
    Answer::SignOn(SignOnAnswer {
        code: AnswerCode::Approved,
        server_time_ms: 1,
        business_date: 20_260_901,
        blacklist_version: 7,
        last_sequence,
    })
}

fn transfer(code: AnswerCode, transfer_id: u64, balance_fen: i64) -> TransferAnswer {
    TransferAnswer { duplicate: false, code, transfer_id, balance_fen, restricted_balance_fen: 0 }
}

fn purchase(amount_fen: u32) -> Request {
    Request::Purchase(Purchase {
        card_number: CARD,
        amount_fen,
        meal_period: MealPeriod::Lunch,
        item_code: 0,
        pin_block: None,
    })
}

fn fast() -> ClientConfig {
    ClientConfig { answer_timeout: Duration::from_millis(200), ..ClientConfig::default() }
}

async fn connect(
    addr: std::net::SocketAddr,
    config: ClientConfig,
) -> Result<TerminalClient, ClientError> {
    TerminalClient::connect(addr, TERMINAL, &terminal_key(), 0, config).await
}

#[tokio::test]
async fn pipelined_requests_get_their_own_answers_when_the_server_answers_in_reverse() {
    let mut held = Vec::new();
    let (addr, _) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        Request::Purchase(p) => {
            // The transfer id and balance encode the amount, so a mismatch shows.
            held.push((header.sequence, p.amount_fen));
            if held.len() < 3 {
                return vec![];
            }
            held.drain(..)
                .rev()
                .map(|(seq, amount)| {
                    let answer =
                        transfer(AnswerCode::Approved, u64::from(amount), i64::from(amount));
                    Out::Signed(seq, Answer::Purchase(answer))
                })
                .collect()
        }
        _ => vec![],
    })
    .await;
    let client = connect(addr, fast()).await.expect("signs on");
    assert_eq!(client.sign_on_answer().business_date, 20_260_901);
    let (a, b, c) = tokio::join!(
        client.call(purchase(100)),
        client.call(purchase(200)),
        client.call(purchase(300))
    );
    for (answer, amount) in [(a, 100), (b, 200), (c, 300)] {
        let Answer::Purchase(answer) = answer.expect("answered") else {
            panic!("a purchase answer")
        };
        assert_eq!(answer.transfer_id, amount);
        assert_eq!(answer.balance_fen, i64::try_from(amount).expect("small"));
    }
}

#[tokio::test]
async fn a_lost_answer_is_retried_under_the_same_sequence_and_the_duplicate_is_accepted() {
    let mut sends = 0;
    let (addr, seen) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        Request::Purchase(_) => {
            sends += 1;
            if sends == 1 {
                return vec![]; // the first answer is "lost"
            }
            let answer =
                TransferAnswer { duplicate: true, ..transfer(AnswerCode::Approved, 9, 50) };
            vec![Out::Signed(header.sequence, Answer::Purchase(answer))]
        }
        _ => vec![],
    })
    .await;
    let client = connect(addr, fast()).await.expect("signs on");
    let answer = client.call(purchase(100)).await.expect("answered on retry");
    assert!(answer.is_duplicate());
    assert_eq!(answer.code(), AnswerCode::Approved);
    let seen = seen.lock().expect("lock");
    let purchases: Vec<u64> =
        seen.iter().filter(|(_, r)| matches!(r, Request::Purchase(_))).map(|(s, _)| *s).collect();
    assert_eq!(purchases.len(), 2, "sent twice");
    assert_eq!(purchases[0], purchases[1], "under the same sequence");
}

#[tokio::test]
async fn giving_up_on_a_purchase_sends_a_reversal_for_it() {
    let (addr, seen) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        Request::Purchase(_) => vec![], // never answered
        Request::Reversal(_) => {
            vec![Out::Signed(
                header.sequence,
                Answer::Reversal(transfer(AnswerCode::Approved, 0, 0)),
            )]
        }
        _ => vec![],
    })
    .await;
    let client = connect(addr, ClientConfig { attempts_max: 2, ..fast() }).await.expect("signs on");
    let error = client.call(purchase(1_250)).await.expect_err("gives up");
    let ClientError::GaveUp { sequence, reversal } = error else { panic!("{error:?}") };
    assert_eq!(reversal, AnswerCode::Approved);
    let seen = seen.lock().expect("lock");
    let reversal = seen
        .iter()
        .find_map(|(_, r)| match r {
            Request::Reversal(r) => Some(*r),
            _ => None,
        })
        .expect("a reversal was sent");
    assert_eq!(reversal.original_sequence, sequence);
    assert_eq!((reversal.card_number, reversal.amount_fen), (CARD, 1_250));
    let purchase_sends = seen.iter().filter(|(_, r)| matches!(r, Request::Purchase(_))).count();
    assert_eq!(purchase_sends, 2, "attempts_max sends before giving up");
}

#[tokio::test]
async fn without_reverse_on_give_up_the_outcome_is_reported_unknown() {
    let (addr, seen) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        _ => vec![],
    })
    .await;
    let config = ClientConfig { attempts_max: 1, reverse_on_give_up: false, ..fast() };
    let client = connect(addr, config).await.expect("signs on");
    let error = client.call(purchase(10)).await.expect_err("no answer");
    assert!(matches!(error, ClientError::NoAnswer { attempts: 1, .. }), "{error:?}");
    assert!(!seen.lock().expect("lock").iter().any(|(_, r)| matches!(r, Request::Reversal(_))));
}

#[tokio::test]
async fn a_terminal_that_lost_its_counter_resumes_above_the_servers_last_sequence() {
    let (addr, _) = serve(move |header, request| match request {
        Request::SignOn(_) if header.sequence <= 500 => {
            let answer = SignOnAnswer { code: AnswerCode::StaleSequence, ..sign_on_fields(500) };
            vec![Out::Signed(header.sequence, Answer::SignOn(answer))]
        }
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(500))],
        _ => vec![],
    })
    .await;
    let client = connect(addr, fast()).await.expect("signs on at the second try");
    assert_eq!(client.last_sequence(), 501);
    assert_eq!(client.next_sequence(), 502);
}

fn sign_on_fields(last_sequence: u64) -> SignOnAnswer {
    let Answer::SignOn(answer) = approved_sign_on(last_sequence) else { unreachable!() };
    answer
}

#[tokio::test]
async fn an_unknown_terminal_gets_an_unsigned_reject_and_sign_on_fails() {
    let (addr, _) = serve(move |header, _| {
        let reject = Reject { code: AnswerCode::UnknownTerminal, refused_type: 1 };
        vec![Out::Unsigned(header.sequence, Answer::Reject(reject))]
    })
    .await;
    let error = connect(addr, fast()).await.err().expect("refused");
    assert!(matches!(error, ClientError::SignOnRefused(AnswerCode::UnknownTerminal)), "{error:?}");
}

#[tokio::test]
async fn an_answer_with_a_forged_mac_closes_the_connection_instead_of_being_believed() {
    let (addr, _) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        _ => vec![Out::Forged(
            header.sequence,
            Answer::Purchase(transfer(AnswerCode::Approved, 1, 1)),
        )],
    })
    .await;
    let client = connect(addr, fast()).await.expect("signs on");
    let error = client.call(purchase(10)).await.expect_err("not believed");
    let ClientError::Disconnected { reason } = error else { panic!("{error:?}") };
    assert!(reason.contains("MAC"), "{reason}");
}

#[tokio::test]
async fn a_server_that_closes_fails_pending_requests_at_once() {
    let (addr, _) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        _ => vec![Out::Close],
    })
    .await;
    let config =
        ClientConfig { answer_timeout: Duration::from_secs(30), ..ClientConfig::default() };
    let client = connect(addr, config).await.expect("signs on");
    let error = client.call(purchase(10)).await.expect_err("closed");
    assert!(matches!(error, ClientError::Disconnected { .. }), "{error:?}");
}

#[tokio::test]
async fn a_purchase_with_a_pin_carries_a_block_the_server_can_open() {
    use onecard_protocol::pin::{PIN_KEY_LABEL, Pin, PinContext};
    let (addr, seen) = serve(move |header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        _ => vec![Out::Signed(
            header.sequence,
            Answer::Purchase(transfer(AnswerCode::Approved, 1, 1)),
        )],
    })
    .await;
    let client = connect(addr, fast()).await.expect("signs on");
    let Request::Purchase(p) = purchase(9_900) else { unreachable!() };
    client.purchase(p, Some(&Pin::new("2468").expect("valid"))).await.expect("answered");
    let seen = seen.lock().expect("lock");
    let (sequence, Request::Purchase(sent)) = seen.last().expect("sent").clone() else {
        panic!("a purchase")
    };
    let pin_key =
        MacKey::new(MacAlgorithm::HmacSha256, &terminal_key()).expect("key").derive(PIN_KEY_LABEL);
    let context = PinContext { terminal_id: TERMINAL, sequence, card_number: CARD };
    let pin = sent.pin_block.expect("a PIN block").open(&pin_key, context).expect("opens");
    assert_eq!(&*pin.as_ascii(), b"2468");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_from_many_tasks_leave_in_sequence_order() {
    let (addr, seen) = serve(|header, request| match request {
        Request::SignOn(_) => vec![Out::Signed(header.sequence, approved_sign_on(0))],
        Request::Purchase(p) => {
            let answer = transfer(AnswerCode::Approved, header.sequence, i64::from(p.amount_fen));
            vec![Out::Signed(header.sequence, Answer::Purchase(answer))]
        }
        _ => vec![],
    })
    .await;
    let client = Arc::new(connect(addr, fast()).await.expect("signs on"));
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.call_numbered(|_| purchase(i + 1)).await })
        })
        .collect();
    let mut numbered = Vec::new();
    for call in calls {
        let (sequence, answer) = call.await.expect("a task");
        let Answer::Purchase(answer) = answer.expect("answered") else { panic!("a purchase") };
        assert_eq!(answer.transfer_id, sequence, "the answer to the sequence it went under");
        numbered.push(sequence);
    }
    let sequences: Vec<u64> = seen.lock().expect("lock").iter().map(|(s, _)| *s).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "frames in sequence order: {sequences:?}");
    numbered.sort_unstable();
    numbered.dedup();
    assert_eq!(numbered.len(), 200, "every call its own sequence");
}
