//! One terminal connection: read frames, check them, hand requests to the ledger,
//! write the signed answers back.
//!
//! Every frame goes through the same gate, in order, and the first check that fails
//! answers a `Reject` (counted by reason) without looking further:
//!
//! 1. the terminal id names a terminal (else an *unsigned* `UnknownTerminal`, and the
//!    connection closes after a few);
//! 2. its MAC algorithm is enabled and the MAC verifies under the terminal's key;
//! 3. the message type and body parse;
//! 4. the terminal is signed on on this connection (only sign-on may come first);
//! 5. a non-transaction's sequence is above the highest seen (transactions at or
//!    below it are retries, which their shard answers from its retry window);
//! 6. fewer than the protocol's pipeline depth are waiting for an answer.
//!
//! Transactions go to their shard and wait there for a durable batch; the task keeps
//! reading meanwhile and writes answers in the order they become durable. Answers
//! ready at the same moment go out in one write. A write that does not finish within
//! the write timeout closes the connection, so a client that never reads holds at most
//! one pipeline's answers.
//!
//! On a cell's leader that can no longer be sure it leads, whatever the ledger would
//! answer from memory comes back as an unsigned `Redirect` naming no leader (as a
//! follower's would); the connection closes once it is written.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use onecard_protocol::frame::{self, Envelope, Frame, Header};
use onecard_protocol::limits::{PIPELINE_REQUESTS_MAX, SEQUENCE_JUMP_MAX};
use onecard_protocol::message::Reject;
use onecard_protocol::{
    Answer, AnswerCode, Body as _, FrameCodec, FrameError, MacKey, MessageType, Request,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};
use tokio_util::codec::FramedRead;

use super::FrontDoorConfig;
use crate::date::now_ms;
use crate::directory::Terminal;
use crate::limits::UNKNOWN_TERMINAL_FRAMES_MAX;
use crate::metrics::{CloseReason, Metrics};
use crate::shard::refusal_of;
use crate::{Ledger, Submission};

/// A terminal signed on on this connection.
struct Session {
    terminal: Arc<Terminal>,
    mac_key: MacKey,
    /// The terminal's key generation at sign-on; a rotation or disable bumps it and
    /// ends the session.
    key_generation: u32,
    /// The highest sequence seen on this connection.
    highest_sequence: u64,
    metrics: Arc<Metrics>,
}

impl Session {
    fn new(terminal: Arc<Terminal>, mac_key: MacKey, sequence: u64, metrics: Arc<Metrics>) -> Self {
        if terminal.sessions.fetch_add(1, Ordering::AcqRel) == 0 {
            metrics.terminals_signed_on.inc();
        }
        Self {
            key_generation: terminal.key_generation.load(Ordering::Acquire),
            terminal,
            mac_key,
            highest_sequence: sequence,
            metrics,
        }
    }

    fn is_revoked(&self) -> bool {
        self.terminal.key_generation.load(Ordering::Acquire) != self.key_generation
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.terminal.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.metrics.terminals_signed_on.dec();
        }
    }
}

/// A request in its shard, waiting for its batch to become durable.
struct Waiting {
    answer: oneshot::Receiver<Answer>,
    sequence: u64,
    kind: MessageType,
    arrived: Instant,
}

/// A request whose answer is ready (`None`: the ledger shut down without answering).
struct Done {
    answer: Option<Answer>,
    sequence: u64,
    kind: MessageType,
    arrived: Instant,
}

impl Future for Waiting {
    type Output = Done;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        Pin::new(&mut self.answer).poll(cx).map(|answer| Done {
            answer: answer.ok(),
            sequence: self.sequence,
            kind: self.kind,
            arrived: self.arrived,
        })
    }
}

/// Why the write side gave up.
enum WriteEnd {
    Timeout,
    Io,
}

/// One connection's state.
pub(super) struct Connection {
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    config: Arc<FrontDoorConfig>,
    peer: SocketAddr,
    session: Option<Session>,
    unknown_frames: u32,
    /// Encoded answers not yet written.
    out: BytesMut,
    /// Requests in their shards, at most [`PIPELINE_REQUESTS_MAX`].
    pending: FuturesUnordered<Waiting>,
    /// A redirect was written: the connection closes.
    redirected: bool,
}

impl Connection {
    pub(super) fn new(ledger: Arc<Ledger>, config: Arc<FrontDoorConfig>, peer: SocketAddr) -> Self {
        Self {
            metrics: Arc::clone(ledger.metrics()),
            ledger,
            config,
            peer,
            session: None,
            unknown_frames: 0,
            out: BytesMut::with_capacity(1024),
            pending: FuturesUnordered::new(),
            redirected: false,
        }
    }

    /// Serves the connection until the terminal leaves, a limit is broken, or the
    /// server shuts down; returns why it ended.
    pub(super) async fn run(
        mut self,
        stream: TcpStream,
        mut shutdown: watch::Receiver<bool>,
    ) -> CloseReason {
        if stream.set_nodelay(true).is_err() {
            return CloseReason::Io;
        }
        let (read, mut write) = stream.into_split();
        let mut frames = FramedRead::new(read, FrameCodec);
        // One timer per connection, ticking at the frame read timeout: it finds a
        // frame that has been partial for a whole tick with no frame finishing, and a
        // connection idle past the idle timeout.
        let every = self.config.frame_read_timeout;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame_at = Instant::now();
        let mut frame_since_tick = false;
        let mut partial_at_tick = false;
        let reason = loop {
            while let Some(Some(done)) = self.pending.next().now_or_never() {
                self.answer(done);
            }
            if let Err(end) = self.flush(&mut write).await {
                break end.reason();
            }
            if self.session.as_ref().is_some_and(Session::is_revoked) {
                break CloseReason::Revoked;
            }
            if self.redirected {
                break CloseReason::NotLeader;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break CloseReason::Shutdown,
                Some(done) = self.pending.next(), if !self.pending.is_empty() => self.answer(done),
                next = frames.next() => match next {
                    None => break CloseReason::Client,
                    Some(Ok(frame)) => {
                        last_frame_at = Instant::now();
                        frame_since_tick = true;
                        if let Some(reason) = self.on_frame(&frame) {
                            break reason;
                        }
                    }
                    Some(Err(error)) => break self.framing_error(&error),
                },
                _ = tick.tick() => {
                    let partial = !frames.read_buffer().is_empty();
                    if partial && partial_at_tick && !frame_since_tick {
                        break CloseReason::SlowFrame;
                    }
                    if !partial && last_frame_at.elapsed() >= self.config.idle_timeout {
                        break CloseReason::Idle;
                    }
                    partial_at_tick = partial;
                    frame_since_tick = false;
                }
            }
        };
        // What was handed to the ledger is answered if the terminal can still hear it:
        // at shutdown and after sign-off (after a framing error the answers still go
        // out; the stream's next frame is lost, not the ones before it).
        if matches!(reason, CloseReason::Shutdown | CloseReason::Client | CloseReason::Framing) {
            self.drain(&mut write).await;
        } else if !matches!(reason, CloseReason::Io | CloseReason::SlowReader) {
            // The refusal that ended it (the last unknown-terminal frame's, say) goes
            // out before the close, so the client learns why.
            let _ = self.flush(&mut write).await;
        }
        let _ = write.shutdown().await;
        reason
    }

    /// Waits (bounded) for every answer still in the ledger and writes them.
    async fn drain(&mut self, write: &mut OwnedWriteHalf) {
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(done)) => self.answer(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(peer = %self.peer, left = self.pending.len(), "answers not ready at close");
                    break;
                }
            }
        }
        let _ = self.flush(write).await;
    }

    /// Writes what is buffered, within the write timeout.
    async fn flush(&mut self, write: &mut OwnedWriteHalf) -> Result<(), WriteEnd> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written =
            tokio::time::timeout(self.config.write_timeout, write.write_all(&self.out)).await;
        self.out.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteEnd::Io),
            Err(_) => Err(WriteEnd::Timeout),
        }
    }

    /// Answers a framing error where the protocol has an answer for it, and says how
    /// the connection ends.
    fn framing_error(&mut self, error: &FrameError) -> CloseReason {
        if let Some(code) = error.answer_code() {
            let envelope = Envelope { terminal_id: 0, sequence: 0, timestamp_ms: now_ms() };
            self.reject(envelope, None, code, 0, None, Instant::now());
        }
        match error {
            FrameError::Io(_) => CloseReason::Io,
            FrameError::TruncatedAtClose { .. } => CloseReason::Client,
            _ => CloseReason::Framing,
        }
    }

    /// Takes one whole frame through the gate; returns why to close, if it must.
    fn on_frame(&mut self, frame: &Frame) -> Option<CloseReason> {
        if self.session.as_ref().is_some_and(Session::is_revoked) {
            return Some(CloseReason::Revoked);
        }
        let header = *frame.header();
        let arrived = Instant::now();
        let kind = header.message_type().ok();
        let envelope = Envelope {
            terminal_id: header.terminal_id,
            sequence: header.sequence,
            timestamp_ms: now_ms(),
        };
        let refused_type = header.message_type_raw;
        let Some(terminal) = self.ledger.terminal(header.terminal_id) else {
            self.reject(envelope, None, AnswerCode::UnknownTerminal, refused_type, kind, arrived);
            self.unknown_frames += 1;
            return (self.unknown_frames >= UNKNOWN_TERMINAL_FRAMES_MAX)
                .then_some(CloseReason::UnknownTerminal);
        };
        let algorithm = match header.mac_algorithm() {
            Ok(algorithm) => algorithm,
            Err(error) => {
                self.reject(envelope, None, error.answer_code(), refused_type, kind, arrived);
                return None;
            }
        };
        // The session's prepared key for its own terminal; a fresh one otherwise.
        let key = match self
            .session
            .as_ref()
            .filter(|s| s.terminal.id == terminal.id && s.mac_key.algorithm() == algorithm)
        {
            Some(session) => session.mac_key.clone(),
            None => match MacKey::new(algorithm, &terminal.key()) {
                Ok(key) => key,
                Err(error) => {
                    self.reject(envelope, None, error.answer_code(), refused_type, kind, arrived);
                    return None;
                }
            },
        };
        if let Err(error) = frame.verify(&key) {
            self.reject(envelope, Some(&key), error.answer_code(), refused_type, kind, arrived);
            return None;
        }
        // From here the frame is the terminal's own.
        terminal.last_seen_ms.store(envelope.timestamp_ms, Ordering::Relaxed);
        let request = match header
            .message_type()
            .map_err(|e| e.answer_code())
            .and_then(|t| Request::decode(t, &frame.body()).map_err(|e| e.answer_code()))
        {
            Ok(request) => request,
            Err(code) => {
                self.reject(envelope, Some(&key), code, refused_type, kind, arrived);
                return None;
            }
        };
        let kind = request.message_type();
        if let Request::SignOn(_) = request {
            self.sign_on(terminal, key, &header, request, arrived);
            return None;
        }
        let Some(session_highest) = self
            .session
            .as_ref()
            .filter(|s| s.terminal.id == terminal.id)
            .map(|s| s.highest_sequence)
        else {
            self.reject(
                envelope,
                Some(&key),
                AnswerCode::NotSignedOn,
                refused_type,
                Some(kind),
                arrived,
            );
            return None;
        };
        let highest = session_highest.max(terminal.last_sequence.load(Ordering::Acquire));
        if header.sequence > highest.saturating_add(SEQUENCE_JUMP_MAX) {
            self.reject(
                envelope,
                Some(&key),
                AnswerCode::SequenceJump,
                refused_type,
                Some(kind),
                arrived,
            );
            return None;
        }
        match request {
            Request::Heartbeat(_) | Request::BlacklistDownload(_) | Request::SignOff => {
                // No money moves, so no retries: a sequence not above the highest is
                // stale, and the terminal asks again under a new one.
                if header.sequence <= highest {
                    self.reject(
                        envelope,
                        Some(&key),
                        AnswerCode::StaleSequence,
                        refused_type,
                        Some(kind),
                        arrived,
                    );
                    return None;
                }
                self.seen(header.sequence);
                if let Request::Heartbeat(_) = request {
                    record_skew(&terminal, &header, envelope.timestamp_ms);
                }
                let sign_off = matches!(request, Request::SignOff);
                let answer = self.submit_now(&header, algorithm, request);
                self.write_answer(envelope, &key, &answer, kind, arrived);
                sign_off.then_some(CloseReason::Client)
            }
            request => {
                if self.pending.len() >= PIPELINE_REQUESTS_MAX {
                    self.reject(
                        envelope,
                        Some(&key),
                        AnswerCode::ServerBusy,
                        refused_type,
                        Some(kind),
                        arrived,
                    );
                    return None;
                }
                self.seen(header.sequence);
                let answer = self.ledger.submit(Submission {
                    terminal_id: header.terminal_id,
                    sequence: header.sequence,
                    mac_algorithm: algorithm,
                    request,
                });
                self.pending.push(Waiting { answer, sequence: header.sequence, kind, arrived });
                None
            }
        }
    }

    /// Raises the session's highest sequence to `sequence`.
    fn seen(&mut self, sequence: u64) {
        if let Some(session) = self.session.as_mut() {
            session.highest_sequence = session.highest_sequence.max(sequence);
        }
    }

    /// Sign-on: the ledger decides (enabled, sequence); an approval opens the session.
    fn sign_on(
        &mut self,
        terminal: Arc<Terminal>,
        key: MacKey,
        header: &Header,
        request: Request,
        arrived: Instant,
    ) {
        let now = now_ms();
        let envelope = Envelope {
            terminal_id: header.terminal_id,
            sequence: header.sequence,
            timestamp_ms: now,
        };
        if self.session.as_ref().is_some_and(|s| s.terminal.id != terminal.id) {
            // A connection serves one terminal; another must open its own.
            self.reject(
                envelope,
                Some(&key),
                AnswerCode::NotSignedOn,
                header.message_type_raw,
                Some(MessageType::SignOn),
                arrived,
            );
            return;
        }
        if self.session.as_ref().is_some_and(|s| header.sequence <= s.highest_sequence) {
            self.reject(
                envelope,
                Some(&key),
                AnswerCode::StaleSequence,
                header.message_type_raw,
                Some(MessageType::SignOn),
                arrived,
            );
            return;
        }
        let answer = self.submit_now(header, key.algorithm(), request);
        if answer.code().is_approved() {
            record_skew(&terminal, header, now);
            self.session = Some(Session::new(
                Arc::clone(&terminal),
                key.clone(),
                header.sequence,
                Arc::clone(&self.metrics),
            ));
        }
        self.write_answer(envelope, &key, &answer, MessageType::SignOn, arrived);
    }

    /// Submits a request the ledger answers at once (sign-on, heartbeat, blacklist,
    /// sign-off) and takes its answer.
    fn submit_now(
        &self,
        header: &Header,
        mac_algorithm: onecard_protocol::MacAlgorithm,
        request: Request,
    ) -> Answer {
        let kind = request.message_type();
        let mut answer = self.ledger.submit(Submission {
            terminal_id: header.terminal_id,
            sequence: header.sequence,
            mac_algorithm,
            request,
        });
        answer.try_recv().unwrap_or_else(|_| refusal_of(kind, AnswerCode::ServiceUnavailable))
    }

    /// Writes the answer to a request that waited in its shard.
    fn answer(&mut self, done: Done) {
        let Some(session) = &self.session else { return };
        let key = session.mac_key.clone();
        let envelope = Envelope {
            terminal_id: session.terminal.id,
            sequence: done.sequence,
            timestamp_ms: now_ms(),
        };
        let answer = done.answer.unwrap_or_else(|| refusal_of(done.kind, AnswerCode::ShuttingDown));
        self.write_answer(envelope, &key, &answer, done.kind, done.arrived);
    }

    fn write_answer(
        &mut self,
        envelope: Envelope,
        key: &MacKey,
        answer: &Answer,
        kind: MessageType,
        arrived: Instant,
    ) {
        // A redirect goes unsigned, whoever sends it (docs/PROTOCOL.md §5.13).
        let redirect = matches!(answer, Answer::Redirect(_));
        self.redirected |= redirect;
        let key = (!redirect).then_some(key);
        if let Err(error) = frame::encode(envelope, answer, key, &mut self.out) {
            // Every answer the engine builds fits a frame; this is a bug, not input.
            tracing::error!(%error, ?answer, "an answer did not encode");
            return;
        }
        let code = if answer.is_duplicate() { AnswerCode::Duplicate } else { answer.code() };
        self.metrics.answered(Some(kind), code, arrived.elapsed().as_secs_f64());
    }

    /// Writes a `Reject` (signed when `key` is given) and counts it.
    fn reject(
        &mut self,
        envelope: Envelope,
        key: Option<&MacKey>,
        code: AnswerCode,
        refused_type: u16,
        kind: Option<MessageType>,
        arrived: Instant,
    ) {
        let answer = Answer::Reject(Reject { code, refused_type });
        if let Err(error) = frame::encode(envelope, &answer, key, &mut self.out) {
            tracing::error!(%error, "a Reject did not encode");
        }
        self.metrics.refused(code);
        self.metrics.answered(kind, code, arrived.elapsed().as_secs_f64());
    }
}

impl WriteEnd {
    const fn reason(&self) -> CloseReason {
        match self {
            Self::Timeout => CloseReason::SlowReader,
            Self::Io => CloseReason::Io,
        }
    }
}

/// Records the terminal's clock against the server's, from a signed frame.
fn record_skew(terminal: &Terminal, header: &Header, now_ms: u64) {
    let theirs = i64::try_from(header.timestamp_ms).unwrap_or(i64::MAX);
    let ours = i64::try_from(now_ms).unwrap_or(i64::MAX);
    terminal.clock_skew_ms.store(theirs.saturating_sub(ours), Ordering::Relaxed);
}
