//! The terminal entry point: session messages answered at once, transactions queued
//! to the terminal's shard.

use super::*;

impl Ledger {
    /// Hands a terminal request to its shard. The answer arrives on the returned
    /// channel once the batch holding it is durable, or at once if the request is
    /// refused before any shard sees it (unknown terminal, queue full).
    #[must_use]
    pub fn submit(&self, submission: Submission) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        let Some(terminal) = self.shared.directory.terminal(submission.terminal_id) else {
            let _ = reply.send(refusal(&submission.request, AnswerCode::UnknownTerminal));
            return answer;
        };
        match &submission.request {
            Request::SignOn(sign_on) => {
                terminal.blacklist_version.store(sign_on.blacklist_version, Ordering::Release);
                terminal.software_version.store(sign_on.software_version, Ordering::Relaxed);
                let last_sequence = terminal.last_sequence.load(Ordering::Acquire);
                let code = if !terminal.is_enabled() {
                    AnswerCode::TerminalDisabled
                } else if submission.sequence <= last_sequence {
                    // A terminal that lost its counter: the answer tells it where to
                    // resume, and it signs on again above that.
                    AnswerCode::StaleSequence
                } else if submission.sequence > last_sequence.saturating_add(SEQUENCE_JUMP_MAX) {
                    // Nor may it leap to the top of its sequence space.
                    AnswerCode::SequenceJump
                } else {
                    AnswerCode::Approved
                };
                let _ = reply.send(Answer::SignOn(SignOnAnswer {
                    code,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                    last_sequence,
                }));
                return answer;
            }
            Request::Heartbeat(heartbeat) => {
                terminal.blacklist_version.store(heartbeat.blacklist_version, Ordering::Release);
                let _ = reply.send(Answer::Heartbeat(HeartbeatAnswer {
                    code: AnswerCode::Approved,
                    server_time_ms: now_ms(),
                    business_date: self.shared.business_date().to_yyyymmdd(),
                    blacklist_version: self.blacklist_version(),
                }));
                return answer;
            }
            Request::BlacklistDownload(download) => {
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
                let _ = reply.send(Answer::BlacklistDownload(answer_now));
                return answer;
            }
            Request::SignOff => {
                let _ = reply.send(Answer::SignOff(SignOffAnswer { code: AnswerCode::Approved }));
                return answer;
            }
            _ => {}
        }
        let Some(queue) = self.queues.get(usize::from(terminal.shard)) else {
            let _ = reply.send(refusal(&submission.request, AnswerCode::ServiceUnavailable));
            return answer;
        };
        match queue.try_send(Command { submission, terminal, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(command) | TrySendError::Disconnected(command)) => {
                let code =
                    if queue.is_full() { AnswerCode::ServerBusy } else { AnswerCode::ShuttingDown };
                let _ = command.reply.send(refusal(&command.submission.request, code));
            }
        }
        answer
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
