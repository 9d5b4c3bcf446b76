//! `CellClient`: a terminal of a cell. It is configured with the terminal address of
//! every node, signs on at whichever leads (following a follower's `Redirect`), and
//! when the leader goes away it finds the new one and sends the unanswered request
//! again under its *original* sequence, so the new leader answers it from its retry
//! window (`Duplicate` and the original answer) if the old leader committed it, and
//! `StaleSequence` (nothing happened) if it did not. Nothing is ever charged twice and
//! nothing is reversed behind the cardholder's back.
//!
//! ```text
//! call ─▶ leader? ─no─▶ connect to each address in turn ─▶ Redirect ─▶ the named node
//!           │                                             └▶ signed sign-on answer
//!           └─yes─▶ TerminalClient::call_with_sequence ─▶ answer
//!                        └─ disconnected / no answer / Redirect / ShuttingDown ─▶ again
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClientConfig, ClientError, TerminalClient};
use crate::code::AnswerCode;
use crate::mac::TerminalKey;
use crate::message::{Answer, Request};

/// Pause between rounds of trying every node while the cell has no leader.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// A terminal configured with every node of its cell.
pub struct CellClient {
    addresses: Vec<String>,
    terminal_id: u32,
    key: TerminalKey,
    config: ClientConfig,
    failover_max: Duration,
    /// The highest sequence this terminal has used, across connections.
    last_sequence: AtomicU64,
    current: tokio::sync::Mutex<Option<Arc<TerminalClient>>>,
    /// Which address signed on last: tried first next time.
    leader_hint: std::sync::Mutex<usize>,
    failovers: AtomicU64,
}

impl std::fmt::Debug for CellClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellClient")
            .field("terminal_id", &self.terminal_id)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl CellClient {
    /// A terminal of the cell whose nodes' terminal ports are `addresses`, signing on
    /// above `last_sequence`. It connects at the first call. A request may take up to
    /// `failover_max` to find a leader before it fails; the inner connection never
    /// reverses on its own (`config.reverse_on_give_up` is ignored).
    ///
    /// # Panics
    /// If `addresses` is empty.
    #[must_use]
    pub fn new(
        addresses: Vec<String>,
        terminal_id: u32,
        key: TerminalKey,
        last_sequence: u64,
        config: ClientConfig,
        failover_max: Duration,
    ) -> Self {
        assert!(!addresses.is_empty(), "a cell has at least one node");
        Self {
            addresses,
            terminal_id,
            key,
            config: ClientConfig { reverse_on_give_up: false, ..config },
            failover_max,
            last_sequence: AtomicU64::new(last_sequence),
            current: tokio::sync::Mutex::new(None),
            leader_hint: std::sync::Mutex::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// Takes the next sequence: a request sent under it is retried under it alone.
    pub fn next_sequence(&self) -> u64 {
        self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The highest sequence used so far.
    #[must_use]
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Relaxed)
    }

    /// Connections made after the first: how often this terminal failed over.
    #[must_use]
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Sends `request` under a new sequence; see [`CellClient::call_with_sequence`].
    ///
    /// # Errors
    /// As [`CellClient::call_with_sequence`].
    pub async fn call(&self, request: Request) -> (u64, Result<Answer, ClientError>) {
        let sequence = self.next_sequence();
        (sequence, self.call_with_sequence(sequence, request).await)
    }

    /// Sends `request` under `sequence` to the leader and returns its answer; on a
    /// lost connection, a missing answer, a redirect, `ShuttingDown` or
    /// `ServiceUnavailable` (neither retained: the same sequence may be sent again), it
    /// finds the leader and sends it again under the same sequence, until
    /// `failover_max` has passed.
    ///
    /// Sequences are best taken and sent one request at a time (as a till does): a
    /// sequence taken while another call reconnects may fall below that sign-on's and
    /// come back `StaleSequence` (nothing happened; send it under a new one).
    ///
    /// # Errors
    /// The last [`ClientError`] once `failover_max` has passed (or the last answer
    /// that asked to be sent again); the request's outcome is then unknown until it is
    /// sent again under the same sequence.
    pub async fn call_with_sequence(
        &self,
        sequence: u64,
        request: Request,
    ) -> Result<Answer, ClientError> {
        self.last_sequence.fetch_max(sequence, Ordering::Relaxed);
        let deadline = Instant::now() + self.failover_max;
        loop {
            let outcome = match self.client(deadline).await {
                Ok(client) => client.call_with_sequence(sequence, request.clone()).await,
                Err(error) => Err(error),
            };
            if let Ok(answer) = &outcome
                && !again(answer.code())
            {
                return outcome;
            }
            self.drop_connection().await;
            if Instant::now() >= deadline {
                return outcome;
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// Forgets the connection, so the next call finds the leader afresh.
    async fn drop_connection(&self) {
        if let Some(client) = self.current.lock().await.take() {
            self.last_sequence.fetch_max(client.last_sequence(), Ordering::Relaxed);
        }
    }

    /// The connection to the leader, made if there is none.
    async fn client(&self, deadline: Instant) -> Result<Arc<TerminalClient>, ClientError> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref() {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(self.find_leader(deadline).await?);
        self.failovers.fetch_add(1, Ordering::Relaxed);
        *current = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Tries every node, the last leader first, following redirects to configured
    /// addresses, round after round until one signs the terminal on or `deadline`.
    async fn find_leader(&self, deadline: Instant) -> Result<TerminalClient, ClientError> {
        let start = *self.leader_hint.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let mut last_error = None;
            let mut order: Vec<usize> =
                (0..self.addresses.len()).map(|i| (start + i) % self.addresses.len()).collect();
            let mut tried = 0;
            while tried < order.len() {
                let index = order[tried];
                tried += 1;
                match self.sign_on(&self.addresses[index]).await {
                    Ok(client) => {
                        *self
                            .leader_hint
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = index;
                        return Ok(client);
                    }
                    Err(ClientError::Redirected { leader }) => {
                        // Go to the named node next, if it is one of ours and not tried yet.
                        if let Some(named) = self.addresses.iter().position(|a| *a == leader)
                            && let Some(at) = order[tried..].iter().position(|i| *i == named)
                        {
                            order.swap(tried, tried + at);
                        }
                        last_error = Some(ClientError::Redirected { leader });
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            if Instant::now() >= deadline {
                return Err(last_error.unwrap_or(ClientError::Disconnected {
                    reason: "no node of the cell answered".to_owned(),
                }));
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    async fn sign_on(&self, address: &str) -> Result<TerminalClient, ClientError> {
        TerminalClient::connect(
            address,
            self.terminal_id,
            &self.key,
            self.last_sequence(),
            self.config.clone(),
        )
        .await
        .inspect(|client| {
            // The sign-on itself took a sequence.
            self.last_sequence.fetch_max(client.last_sequence(), Ordering::Relaxed);
        })
    }
}

/// Whether an answer says to send the same request again (elsewhere, or later).
const fn again(code: AnswerCode) -> bool {
    matches!(
        code,
        AnswerCode::ShuttingDown | AnswerCode::ServiceUnavailable | AnswerCode::NotLeader
    )
}
