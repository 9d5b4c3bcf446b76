//! The terminal entry point: session messages answered at once, transactions queued
//! to the terminal's shard.

use onecard_protocol::MessageType;
use onecard_protocol::message::{BlacklistDownload, Heartbeat, SignOn};

use super::*;
use crate::shard::{Transaction, not_leading, refusal_of};

/// A session message: answered at once from memory, never queued to a shard.
enum Session {
    SignOn(SignOn),
    Heartbeat(Heartbeat),
    BlacklistDownload(BlacklistDownload),
    SignOff,
}

impl Session {
    const fn message_type(&self) -> MessageType {
        match self {
            Self::SignOn(_) => MessageType::SignOn,
            Self::Heartbeat(_) => MessageType::Heartbeat,
            Self::BlacklistDownload(_) => MessageType::BlacklistDownload,
            Self::SignOff => MessageType::SignOff,
        }
    }
}

/// What the ledger does with a request. The one place that says which messages are
/// session messages, answered at once, and which are transactions, queued to the
/// terminal's shard and decided in a batch: a message added to the protocol does
/// not compile until it is placed here.
enum Routed {
    Session(Session),
    Transaction(Transaction),
}

impl From<Request> for Routed {
    fn from(request: Request) -> Self {
        match request {
            Request::SignOn(sign_on) => Self::Session(Session::SignOn(sign_on)),
            Request::Heartbeat(heartbeat) => Self::Session(Session::Heartbeat(heartbeat)),
            Request::BlacklistDownload(download) => {
                Self::Session(Session::BlacklistDownload(download))
            }
            Request::SignOff => Self::Session(Session::SignOff),
            Request::Purchase(purchase) => Self::Transaction(Transaction::Purchase(purchase)),
            Request::TopUp(top_up) => Self::Transaction(Transaction::TopUp(top_up)),
            Request::BalanceInquiry(inquiry) => {
                Self::Transaction(Transaction::BalanceInquiry(inquiry))
            }
            Request::Refund(refund) => Self::Transaction(Transaction::Refund(refund)),
            Request::Reversal(reversal) => Self::Transaction(Transaction::Reversal(reversal)),
            Request::OfflineUpload(upload) => Self::Transaction(Transaction::OfflineUpload(upload)),
        }
    }
}

impl Ledger {
    /// Answers a session message at once, from memory, or hands a transaction to its
    /// terminal's shard ([`Routed`] says which is which). A transaction's answer
    /// arrives on the returned channel once the batch holding it is durable, or at
    /// once if it is refused before any shard sees it (unknown terminal, queue full).
    #[must_use]
    pub fn submit(&self, submission: Submission) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        let Some(terminal) = self.shared.directory.terminal(submission.terminal_id) else {
            let _ = reply.send(refusal(&submission.request, AnswerCode::UnknownTerminal));
            return answer;
        };
        let Submission { terminal_id, sequence, mac_algorithm, request } = submission;
        let transaction = match Routed::from(request) {
            Routed::Session(session) => {
                let answer_now = if self.shared.store.holds_lease() {
                    self.answer_session(&terminal, sequence, session)
                } else {
                    not_leading(session.message_type())
                };
                let _ = reply.send(answer_now);
                return answer;
            }
            Routed::Transaction(transaction) => transaction,
        };
        let submission = Submission { terminal_id, sequence, mac_algorithm, request: transaction };
        let Some(queue) = self.queues.get(usize::from(terminal.shard)) else {
            let message_type = submission.request.message_type();
            let _ = reply.send(refusal_of(message_type, AnswerCode::ServiceUnavailable));
            return answer;
        };
        match queue.try_send(Command { submission, terminal, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(command) | TrySendError::Disconnected(command)) => {
                let code =
                    if queue.is_full() { AnswerCode::ServerBusy } else { AnswerCode::ShuttingDown };
                let message_type = command.submission.request.message_type();
                let _ = command.reply.send(refusal_of(message_type, code));
            }
        }
        answer
    }

    /// The answer to a session message, from memory: nothing is written and no shard
    /// sees it.
    fn answer_session(&self, terminal: &Terminal, sequence: u64, session: Session) -> Answer {
        match session {
            Session::SignOn(sign_on) => {
                terminal.blacklist_version.store(sign_on.blacklist_version, Ordering::Release);
                terminal.software_version.store(sign_on.software_version, Ordering::Relaxed);
                let last_sequence = terminal.last_sequence.load(Ordering::Acquire);
                let code = if !terminal.is_enabled() {
                    AnswerCode::TerminalDisabled
                } else if sequence <= last_sequence {
                    // A terminal that lost its counter: the answer tells it where to
                    // resume, and it signs on again above that.
                    AnswerCode::StaleSequence
                } else if sequence > last_sequence.saturating_add(SEQUENCE_JUMP_MAX) {
                    // Nor may it leap to the top of its sequence space.
                    AnswerCode::SequenceJump
                } else {
                    AnswerCode::Approved
                };
                Answer::SignOn(SignOnAnswer {
                    code,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                    last_sequence,
                })
            }
            Session::Heartbeat(heartbeat) => {
                terminal.blacklist_version.store(heartbeat.blacklist_version, Ordering::Release);
                Answer::Heartbeat(HeartbeatAnswer {
                    code: AnswerCode::Approved,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                })
            }
            Session::BlacklistDownload(download) => {
                let answer_now = match self
                    .blacklist_since(download.since_version, usize::from(download.entries_max))
                {
                    Ok((current_version, entries)) => {
                        BlacklistAnswer { code: AnswerCode::Approved, current_version, entries }
                    }
                    Err(_) => BlacklistAnswer {
                        code: AnswerCode::ServiceUnavailable,
                        current_version: 0,
                        entries: Vec::new(),
                    },
                };
                Answer::BlacklistDownload(answer_now)
            }
            Session::SignOff => Answer::SignOff(SignOffAnswer { code: AnswerCode::Approved }),
        }
    }

    /// [`Ledger::submit`], waiting for the answer on this thread. Not for use inside
    /// an async runtime.
    #[must_use]
    pub fn submit_wait(&self, submission: Submission) -> Answer {
        let request_type = submission.request.message_type();
        self.submit(submission)
            .blocking_recv()
            .unwrap_or_else(|_| crate::shard::refusal_of(request_type, AnswerCode::ShuttingDown))
    }
}
