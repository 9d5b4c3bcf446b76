//! `TerminalClient`: an async terminal, for the loadtest, the end-to-end tests, and
//! anyone writing a terminal in Rust.
//!
//! It signs on, pipelines requests over one connection (at most
//! [`PIPELINE_REQUESTS_MAX`] unanswered), matches answers to requests by sequence,
//! resends a request with the *same* sequence when its answer is late (the server then
//! answers a decided request with `Duplicate` and the original answer), and, when told
//! to give up on a transaction, sends a reversal for it.
//!
//! ```text
//! caller ──encode──▶ writer task ──▶ socket ──▶ reader task ──verify MAC──▶ pending[seq]
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::code::AnswerCode;
use crate::codec::FrameCodec;
use crate::error::{DecodeError, EncodeError, MacError};
use crate::frame::{self, Envelope, Frame};
use crate::limits::PIPELINE_REQUESTS_MAX;
use crate::mac::{MacAlgorithm, MacKey, TerminalKey};
use crate::message::{
    Answer, Body, MessageType, Purchase, Request, Reversal, SignOn, SignOnAnswer,
};
use crate::pin::{PIN_KEY_LABEL, Pin, PinBlock, PinContext};

/// How a terminal behaves on the wire.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long to wait for an answer before resending the request.
    pub answer_timeout: Duration,
    /// Sends of one request, the first included, before giving up on it.
    pub attempts_max: u32,
    /// How long to wait for the TCP connection.
    pub connect_timeout: Duration,
    /// The MAC algorithm the terminal's key is set up for.
    pub mac_algorithm: MacAlgorithm,
    /// Reported at sign-on.
    pub software_version: u32,
    /// The blacklist version the terminal holds, reported at sign-on.
    pub blacklist_version: u64,
    /// Whether giving up on a purchase or top-up sends a reversal for it at once.
    pub reverse_on_give_up: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            answer_timeout: Duration::from_secs(3),
            attempts_max: 3,
            connect_timeout: Duration::from_secs(5),
            mac_algorithm: MacAlgorithm::HmacSha256,
            software_version: 1,
            blacklist_version: 0,
            reverse_on_give_up: true,
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made in time.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The message does not fit the protocol.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The key cannot be used with the configured algorithm.
    #[error(transparent)]
    Key(#[from] MacError),
    /// The server refused the sign-on.
    #[error("sign-on refused: {0}")]
    SignOnRefused(AnswerCode),
    /// The node does not lead its cell; it named the leader's terminal address (empty
    /// while the cell elects one) and closed the connection. Nothing happened.
    #[error("not the cell's leader; the leader is {leader:?}")]
    Redirected {
        /// The leader's terminal address, `host:port`, or empty.
        leader: String,
    },
    /// The connection is gone; requests still pending got no answer.
    #[error("connection closed: {reason}")]
    Disconnected {
        /// What closed it.
        reason: String,
    },
    /// No answer came after every attempt. For a transaction, the outcome is unknown
    /// until a retry with the same sequence or a reversal settles it.
    #[error("no answer to sequence {sequence} after {attempts} attempts")]
    NoAnswer {
        /// The request's sequence.
        sequence: u64,
        /// Sends made.
        attempts: u32,
    },
    /// No answer came, and the transaction was reversed; the reversal's answer says
    /// whether it is settled (`Approved`, or `AlreadyReversed`).
    #[error("gave up on sequence {sequence}; reversal answered {reversal}")]
    GaveUp {
        /// The abandoned request's sequence.
        sequence: u64,
        /// The reversal's answer code.
        reversal: AnswerCode,
    },
    /// The server answered with a message of the wrong type.
    #[error("sequence {sequence}: expected a {expected:?} answer, got type {got:#06x}")]
    UnexpectedAnswer {
        /// The request's sequence.
        sequence: u64,
        /// The answer type the request calls for.
        expected: MessageType,
        /// The type received.
        got: u16,
    },
}

/// A connected, signed-on terminal. Cheap to share: every method takes `&self`, and
/// many requests may be in flight at once.
pub struct TerminalClient {
    terminal_id: u32,
    mac_key: MacKey,
    pin_key: MacKey,
    config: ClientConfig,
    next_sequence: AtomicU64,
    outbound: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    in_flight: Semaphore,
    /// Held while a sequence is chosen and its frame queued, so frames leave in
    /// sequence order.
    order: tokio::sync::Mutex<()>,
    sign_on: SignOnAnswer,
}

/// State the reader task shares with callers.
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    closed: Mutex<Option<String>>,
    /// Answers that matched no pending request: late copies after a retry was
    /// answered, or the server answering a request twice.
    unmatched_answers: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self, reason: String) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        closed.get_or_insert(reason);
        drop(closed);
        // Dropping the senders wakes every waiter with "disconnected".
        self.pending().clear();
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl TerminalClient {
    /// Connects over TCP and signs on, starting sequences after `last_sequence` (the
    /// highest the terminal has used; the server's record wins if it is higher).
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the connection fails, [`ClientError::SignOnRefused`]
    /// if the server refuses the terminal, or any error of [`TerminalClient::call`].
    pub async fn connect(
        addr: impl ToSocketAddrs,
        terminal_id: u32,
        key: &TerminalKey,
        last_sequence: u64,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Connect(std::io::ErrorKind::TimedOut.into()))?
            .map_err(ClientError::Connect)?;
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        Self::sign_on(stream, terminal_id, key, last_sequence, config).await
    }

    /// Signs on over an established stream (TCP, or an in-memory pipe in tests).
    ///
    /// # Errors
    /// As [`TerminalClient::connect`].
    pub async fn sign_on<S>(
        stream: S,
        terminal_id: u32,
        key: &TerminalKey,
        last_sequence: u64,
        config: ClientConfig,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mac_key = MacKey::new(config.mac_algorithm, key)?;
        let pin_key = mac_key.derive(PIN_KEY_LABEL);
        let (read, write) = tokio::io::split(stream);
        let (outbound, outbound_rx) = mpsc::channel(PIPELINE_REQUESTS_MAX);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            unmatched_answers: AtomicU64::new(0),
        });
        tokio::spawn(write_frames(write, outbound_rx, Arc::clone(&shared)));
        tokio::spawn(read_answers(read, mac_key.clone(), Arc::clone(&shared)));
        let placeholder = SignOnAnswer {
            code: AnswerCode::Approved,
            server_time_ms: 0,
            business_date: 0,
            blacklist_version: 0,
            last_sequence,
        };
        let mut client = Self {
            terminal_id,
            mac_key,
            pin_key,
            next_sequence: AtomicU64::new(last_sequence.saturating_add(1)),
            outbound,
            shared,
            in_flight: Semaphore::new(PIPELINE_REQUESTS_MAX),
            order: tokio::sync::Mutex::new(()),
            sign_on: placeholder,
            config,
        };
        let request = Request::SignOn(SignOn {
            blacklist_version: client.config.blacklist_version,
            software_version: client.config.software_version,
        });
        // A terminal that lost its counter (or whose counter leapt too far ahead) is
        // told the server's last sequence in the refusal; it signs on once more just
        // above it.
        for _ in 0..2 {
            let answer = match client.call(request.clone()).await? {
                Answer::SignOn(answer) => answer,
                Answer::Redirect(redirect) => {
                    return Err(ClientError::Redirected { leader: redirect.leader });
                }
                other => return Err(ClientError::SignOnRefused(other.code())),
            };
            match answer.code {
                AnswerCode::Approved => {
                    client.sign_on = answer;
                    return Ok(client);
                }
                AnswerCode::StaleSequence | AnswerCode::SequenceJump => {
                    client.next_sequence.store(answer.last_sequence + 1, Ordering::Relaxed);
                }
                code => return Err(ClientError::SignOnRefused(code)),
            }
        }
        Err(ClientError::SignOnRefused(AnswerCode::StaleSequence))
    }

    /// The server's answer to sign-on: its clock, business date and blacklist version.
    #[must_use]
    pub const fn sign_on_answer(&self) -> &SignOnAnswer {
        &self.sign_on
    }

    /// This terminal's id.
    #[must_use]
    pub const fn terminal_id(&self) -> u32 {
        self.terminal_id
    }

    /// The highest sequence used so far.
    #[must_use]
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed) - 1
    }

    /// Answers that arrived for no pending request (late duplicates).
    #[must_use]
    pub fn unmatched_answers(&self) -> u64 {
        self.shared.unmatched_answers.load(Ordering::Relaxed)
    }

    /// Takes the next sequence number.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `request` under a new sequence and waits for its answer, resending on
    /// timeout. A transaction given up on is reversed if the config says so.
    ///
    /// # Errors
    /// [`ClientError::NoAnswer`] or [`ClientError::GaveUp`] after the last attempt,
    /// [`ClientError::Disconnected`] if the connection drops,
    /// [`ClientError::UnexpectedAnswer`] for an answer of the wrong type.
    pub async fn call(&self, request: Request) -> Result<Answer, ClientError> {
        self.call_numbered(|_| request).await.1
    }

    /// Sends the request `build` makes for the next sequence, and says which sequence
    /// it went under (to retry or reverse it later). Choosing the sequence and queueing
    /// the frame happen under one lock, so pipelined calls leave in sequence order: the
    /// server would take a transaction that overtook a later one as a stale retry.
    ///
    /// # Errors
    /// As [`TerminalClient::call`], beside the sequence.
    pub async fn call_numbered(
        &self,
        build: impl FnOnce(u64) -> Request,
    ) -> (u64, Result<Answer, ClientError>) {
        self.call_at(None, build).await
    }

    /// As [`TerminalClient::call`], with a sequence the caller chose: a retry after
    /// reconnecting, or a test of the server's stale-sequence handling.
    ///
    /// # Errors
    /// As [`TerminalClient::call`].
    pub async fn call_with_sequence(
        &self,
        sequence: u64,
        request: Request,
    ) -> Result<Answer, ClientError> {
        self.call_at(Some(sequence), |_| request).await.1
    }

    /// One call: the sequence given, or the next one chosen under the order lock
    /// together with queueing the frame; then the answer, and the give-up rule.
    async fn call_at(
        &self,
        sequence: Option<u64>,
        build: impl FnOnce(u64) -> Request,
    ) -> (u64, Result<Answer, ClientError>) {
        let Ok(permit) = self.in_flight.acquire().await else {
            return (sequence.unwrap_or(0), Err(self.disconnected()));
        };
        let order = self.order.lock().await;
        let sequence = sequence.unwrap_or_else(|| self.next_sequence());
        let request = build(sequence);
        let sent = self.send_first(sequence, &request).await;
        drop(order);
        let result = match sent {
            Ok((frame, rx)) => self.await_answer(sequence, &request, frame, rx).await,
            Err(error) => Err(error),
        };
        drop(permit);
        (sequence, self.settle(&request, result).await)
    }

    /// A request that got no answer after every attempt is reversed, if the config
    /// says so and the request moves money. (Called without an in-flight permit: the
    /// reversal needs one of its own.)
    async fn settle(
        &self,
        request: &Request,
        result: Result<Answer, ClientError>,
    ) -> Result<Answer, ClientError> {
        match result {
            Err(ClientError::NoAnswer { sequence, attempts }) if self.config.reverse_on_give_up => {
                match reversal_for(request, sequence) {
                    Some(reversal) => {
                        let answer = Box::pin(self.call(Request::Reversal(reversal))).await?;
                        Err(ClientError::GaveUp { sequence, reversal: answer.code() })
                    }
                    None => Err(ClientError::NoAnswer { sequence, attempts }),
                }
            }
            result => result,
        }
    }

    /// A purchase, sealing `pin` into a PIN block when given.
    ///
    /// # Errors
    /// As [`TerminalClient::call`].
    pub async fn purchase(
        &self,
        mut purchase: Purchase,
        pin: Option<&Pin>,
    ) -> Result<Answer, ClientError> {
        let terminal_id = self.terminal_id;
        self.call_numbered(|sequence| {
            if let Some(pin) = pin {
                let context =
                    PinContext { terminal_id, sequence, card_number: purchase.card_number };
                purchase.pin_block = Some(PinBlock::seal(&self.pin_key, context, pin));
            }
            Request::Purchase(purchase)
        })
        .await
        .1
    }

    /// Cancels this terminal's request `original_sequence` (a reversal, 冲正).
    ///
    /// # Errors
    /// As [`TerminalClient::call`].
    pub async fn reverse(
        &self,
        original_sequence: u64,
        card_number: u64,
        amount_fen: u32,
    ) -> Result<Answer, ClientError> {
        self.call(Request::Reversal(Reversal { original_sequence, card_number, amount_fen })).await
    }

    /// Signs off and closes the connection.
    ///
    /// # Errors
    /// As [`TerminalClient::call`].
    pub async fn sign_off(self) -> Result<Answer, ClientError> {
        let answer = self.call(Request::SignOff).await;
        self.shared.close("signed off".to_owned());
        answer
    }

    /// Encodes `request` under `sequence`, registers for its answer and queues the
    /// first copy of the frame.
    async fn send_first(
        &self,
        sequence: u64,
        request: &Request,
    ) -> Result<(Bytes, oneshot::Receiver<Answer>), ClientError> {
        let envelope = Envelope { terminal_id: self.terminal_id, sequence, timestamp_ms: now_ms() };
        let mut buf = BytesMut::new();
        frame::encode(envelope, request, Some(&self.mac_key), &mut buf)?;
        let frame = buf.freeze();
        let (tx, rx) = oneshot::channel();
        if let Some(reason) = self.shared.closed_reason() {
            return Err(ClientError::Disconnected { reason });
        }
        self.shared.pending().insert(sequence, tx);
        if self.outbound.send(frame.clone()).await.is_err() {
            self.shared.pending().remove(&sequence);
            return Err(self.disconnected());
        }
        Ok((frame, rx))
    }

    /// Waits for the answer to a frame already sent once, resending it with the same
    /// sequence when the answer is late, up to the configured attempts.
    async fn await_answer(
        &self,
        sequence: u64,
        request: &Request,
        frame: Bytes,
        mut rx: oneshot::Receiver<Answer>,
    ) -> Result<Answer, ClientError> {
        let mut attempts = 1;
        let answer = loop {
            match tokio::time::timeout(self.config.answer_timeout, &mut rx).await {
                Ok(Ok(answer)) => break answer,
                Ok(Err(_)) => return Err(self.disconnected()),
                Err(_) => {} // late: resend with the same sequence
            }
            if attempts == self.config.attempts_max {
                self.shared.pending().remove(&sequence);
                return Err(ClientError::NoAnswer { sequence, attempts });
            }
            attempts += 1;
            if self.outbound.send(frame.clone()).await.is_err() {
                self.shared.pending().remove(&sequence);
                return Err(self.disconnected());
            }
        };
        let expected = answer_type(request.message_type());
        let got = answer.message_type();
        if let Answer::Redirect(redirect) = answer {
            return Err(ClientError::Redirected { leader: redirect.leader });
        }
        if got != expected && got != MessageType::Reject {
            return Err(ClientError::UnexpectedAnswer { sequence, expected, got: got.to_wire() });
        }
        Ok(answer)
    }

    fn disconnected(&self) -> ClientError {
        ClientError::Disconnected {
            reason: self.shared.closed_reason().unwrap_or_else(|| "closed".to_owned()),
        }
    }
}

impl Drop for TerminalClient {
    fn drop(&mut self) {
        self.shared.close("client dropped".to_owned());
    }
}

/// The reversal that cancels `request`, if it moves money.
fn reversal_for(request: &Request, sequence: u64) -> Option<Reversal> {
    let (card_number, amount_fen) = match request {
        Request::Purchase(p) => (p.card_number, p.amount_fen),
        Request::TopUp(t) => (t.card_number, t.amount_fen),
        Request::Refund(r) => (r.card_number, r.amount_fen),
        _ => return None,
    };
    Some(Reversal { original_sequence: sequence, card_number, amount_fen })
}

fn answer_type(request: MessageType) -> MessageType {
    MessageType::from_wire(request.to_wire() | crate::message::ANSWER_BIT)
        .expect("every request type has an answer type")
}

/// Milliseconds since the Unix epoch by this machine's clock.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes queued frames, flushing whenever the queue runs dry so pipelined requests
/// share a syscall.
async fn write_frames<W: AsyncWrite>(
    write: W,
    mut outbound: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut write = std::pin::pin!(BufWriter::new(write));
    while let Some(frame) = outbound.recv().await {
        let mut result = write.write_all(&frame).await;
        while result.is_ok() {
            match outbound.try_recv() {
                Ok(frame) => result = write.write_all(&frame).await,
                Err(_) => break,
            }
        }
        if let Err(error) = result.and(write.flush().await) {
            shared.close(format!("write failed: {error}"));
            return;
        }
    }
}

/// Reads answers, checks each MAC, and hands each to the request waiting for it.
async fn read_answers<R: AsyncRead + Unpin>(read: R, key: MacKey, shared: Arc<Shared>) {
    let mut frames = FramedRead::new(read, FrameCodec);
    let reason = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => break format!("bad frame from server: {error}"),
            None => break "server closed the connection".to_owned(),
        };
        match decode_answer(&frame, &key) {
            Ok(answer) => {
                let waiter = shared.pending().remove(&frame.header().sequence);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(answer);
                    }
                    None => {
                        shared.unmatched_answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(error) => break format!("bad answer from server: {error}"),
        }
    };
    shared.close(reason);
}

/// Authenticates and parses one answer frame.
fn decode_answer(frame: &Frame, key: &MacKey) -> Result<Answer, AnswerError> {
    let message_type = frame.header().message_type()?;
    if !message_type.is_answer() {
        return Err(AnswerError::NotAnAnswer(message_type));
    }
    // Only a Reject or a Redirect may come unsigned: neither can make a terminal
    // believe in money.
    let may_be_unsigned = matches!(message_type, MessageType::Reject | MessageType::Redirect);
    if !(may_be_unsigned && frame.is_unauthenticated()) {
        frame.verify(key)?;
    }
    Ok(Answer::decode(message_type, &frame.body())?)
}

#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Mac(#[from] MacError),
    #[error("frame of request type {0:?} sent to a terminal")]
    NotAnAnswer(MessageType),
}
