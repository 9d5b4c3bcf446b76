//! A shard's writer: one thread that takes terminal requests from a bounded queue,
//! decides a whole batch, commits it as one synced RocksDB write, and only then
//! releases the answers.
//!
//! # A batch
//! 1. Block for the first request, then take whatever else is queued, up to
//!    [`BATCH_REQUESTS_MAX`]: a lone request is not kept waiting, and under load the
//!    batch grows while the previous one syncs.
//! 2. Decide each request in order. Debits are taken from the card's in-memory
//!    balance at once (under the account's mutex, the one authority across shards);
//!    credits are held back until the batch is durable, so no shard can spend money
//!    that might yet be lost.
//! 3. Write the journal record, with what a retry or a refund must find at once (the
//!    sale and offline marks, top-up references and every touched terminal's state),
//!    in one `WriteBatch`, synced. Nothing per card or per movement is written here:
//!    balances and the statement index are derived from the record
//!    ([`crate::postings::Postings::of`]) and written by the checkpointer.
//! 4. On success apply the held credits and the batch's postings to memory, hand the
//!    postings to the checkpointer, and answer. On failure give the debits back,
//!    poison the shard (it answers `ServiceUnavailable` from then on) and answer
//!    every request in the batch `ServiceUnavailable`: nothing was approved.
//!
//! # Layout
//! - this file — the queue and the batch loop: decide, commit, apply, answer.
//! - `rules` — the card rules under the account's lock: state, limits, PIN, purses.
//! - `purchase`, `top_up` (and inquiries), `refund` (and reversals), `offline` — one
//!   module per message kind's decision.
//! - `window` — the retry window and its rebuilding at open.
//! - `marks` — what a batch writes beside its record for a retry or a refund.

mod marks;
mod offline;
mod purchase;
mod refund;
mod rules;
mod top_up;
mod window;

use marks::{SaleMark, offline_key, offline_value, top_up_reference_value};
pub use marks::{decode_top_up_reference, top_up_reference_key};
use rules::{Debit, debit_purchase, state_code, take, usable};
use window::WindowEntry;
pub(crate) use window::{TerminalWindow, rebuild_window};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crossbeam::channel::Receiver;
use onecard_protocol::message::{
    BalanceAnswer, BalanceInquiry, OfflineRecord, OfflineResult, OfflineUpload,
    OfflineUploadAnswer, Purchase, Redirect, Refund, Reject, Reversal, TopUp, TransferAnswer,
};
use onecard_protocol::pin::PIN_KEY_LABEL;
use onecard_protocol::{
    Answer, AnswerCode, Body, CardState, Channel, MacAlgorithm, MacKey, MealPeriod, MessageType,
    PinContext, Request,
};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::account::AccountId;
use crate::cards::{AccountState, CardAccount, CardEntry};
use crate::checkpoint::Committed;
use crate::date::BusinessDate;
use crate::directory::{MerchantCategory, Terminal};
use crate::journal::{
    Batch, BatchView, Entry, Tail, Transfer, TransferKind, journal_of, read_transfer,
};
use crate::limits::{
    BATCH_REQUESTS_MAX, PIN_FAILURES_MAX, RECENT_BATCHES_MAX, RETRY_WINDOW_REQUESTS,
};
use crate::postings::Postings;
use crate::shared::Shared;
use crate::storage::StorageError;
use crate::store::{journal_cf, prefixed_key, shard_key};
pub(crate) use crate::terminal_state::TerminalState;

/// A terminal request as the front door hands it to the ledger (`R` = [`Request`]),
/// or as the ledger hands a transaction to its shard (`R` = [`Transaction`]).
#[derive(Debug, Clone)]
pub struct Submission<R = Request> {
    /// The terminal, from the frame header (its MAC already verified).
    pub terminal_id: u32,
    /// The request's terminal sequence, from the frame header.
    pub sequence: u64,
    /// The MAC algorithm of the frame, which also keys the PIN block.
    pub mac_algorithm: MacAlgorithm,
    /// The request.
    pub request: R,
}

/// A request a shard decides in a batch: one that moves money or reads a purse under
/// its card's lock, and is retained in the terminal's retry window. Session messages
/// (sign-on, heartbeat, blacklist download, sign-off) are never one: the ledger
/// answers them at once from memory ([`crate::Ledger::submit`]), and this type keeps
/// them out of every shard's queue.
#[derive(Debug, Clone)]
pub enum Transaction {
    /// A sale.
    Purchase(Purchase),
    /// Money onto a card at a top-up point.
    TopUp(TopUp),
    /// A card's purses and state, read at the terminal.
    BalanceInquiry(BalanceInquiry),
    /// A sale given back, whole or in part.
    Refund(Refund),
    /// A terminal's own request taken back.
    Reversal(Reversal),
    /// Sales made while the terminal was offline.
    OfflineUpload(OfflineUpload),
}

impl Transaction {
    /// The request's message type.
    #[must_use]
    pub fn message_type(&self) -> MessageType {
        match self {
            Self::Purchase(_) => MessageType::Purchase,
            Self::TopUp(_) => MessageType::TopUp,
            Self::BalanceInquiry(_) => MessageType::BalanceInquiry,
            Self::Refund(_) => MessageType::Refund,
            Self::Reversal(_) => MessageType::Reversal,
            Self::OfflineUpload(_) => MessageType::OfflineUpload,
        }
    }
}

/// A transaction on its way to its shard, with where its answer goes.
pub(crate) struct Command {
    pub submission: Submission<Transaction>,
    /// The submitting terminal, as looked up once when the request was routed.
    pub terminal: Arc<Terminal>,
    pub reply: oneshot::Sender<Answer>,
}

/// Counters a shard keeps about itself.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Transfers committed.
    pub transfers: AtomicU64,
    /// Time spent in RocksDB writes, µs.
    pub commit_us_total: AtomicU64,
    /// Held by the writer while it decides and writes a batch; the day cutover takes
    /// it once to know that no batch stamped with the old date is still in flight.
    pub batch_gate: Mutex<()>,
}

/// Money held back or taken, to apply or give back when the batch's fate is known.
struct Movement {
    account: Arc<CardAccount>,
    main_fen: i64,
    restricted_fen: i64,
    spent_fen: i64,
}

/// A batch being decided.
struct Work {
    date: BusinessDate,
    now_ms: u64,
    key: [u8; 16],
    first_transfer_id: u64,
    transfers: Vec<Transfer>,
    entries: Vec<Entry>,
    replies: Vec<(oneshot::Sender<Answer>, MessageType, Answer)>,
    /// Debits taken from memory; given back if the write fails.
    taken: Vec<Movement>,
    /// Credits held back; applied once the write is durable.
    held: Vec<Movement>,
    touched: HashSet<u32>,
    sale_marks: HashMap<u64, SaleMark>,
    offline_records: HashMap<(u32, u64), (AnswerCode, u64)>,
    /// Approved top-ups that carried the channel's reference: (transfer, value of
    /// their reference key).
    top_up_references: Vec<(u64, Vec<u8>)>,
}

impl Work {
    fn next_id(&self) -> u64 {
        self.first_transfer_id + self.transfers.len() as u64
    }

    /// Appends one transfer of the request `origin` to the batch and returns its id.
    fn transfer(&mut self, origin: Origin, leg: Leg) -> u64 {
        let id = self.next_id();
        let transfer = Transfer {
            id,
            debit: leg.debit,
            credit: leg.credit,
            amount_fen: leg.amount_fen,
            kind: leg.kind,
            business_date: self.date,
            timestamp_ms: leg.timestamp_ms,
            terminal_id: origin.terminal_id,
            sequence: origin.sequence,
            corrects: leg.corrects,
            card_number: origin.card_number,
            meal_period: leg.meal_period,
            continues: leg.continues,
        };
        self.transfers.push(transfer);
        id
    }
}

/// The request a transfer comes from: shared by every transfer it makes.
#[derive(Debug, Clone, Copy)]
struct Origin {
    terminal_id: u32,
    sequence: u64,
    card_number: u64,
}

/// One posting a request makes, before the batch gives it an id and a date.
#[derive(Debug, Clone, Copy)]
struct Leg {
    debit: AccountId,
    credit: AccountId,
    amount_fen: i64,
    kind: TransferKind,
    corrects: u64,
    meal_period: MealPeriod,
    timestamp_ms: u64,
    continues: bool,
}

/// One shard's writer thread.
pub(crate) struct ShardWriter {
    id: u8,
    shared: Arc<Shared>,
    queue: Receiver<Command>,
    /// Where the shard's journal stands after its last durable batch.
    tail: Tail,
    windows: HashMap<u32, TerminalWindow>,
    stats: Arc<ShardStats>,
    /// First transfer id → key of the batches committed since the ledger opened (at
    /// most [`RECENT_BATCHES_MAX`]), so refunds and reversals read their original with
    /// a point lookup instead of a seek.
    recent_batches: BTreeMap<u64, [u8; 16]>,
    /// The name of this shard's journal column family.
    journal: String,
}

impl ShardWriter {
    pub fn new(
        id: u8,
        shared: Arc<Shared>,
        queue: Receiver<Command>,
        stats: Arc<ShardStats>,
        recovered: RecoveredShard,
    ) -> Self {
        Self {
            id,
            shared,
            queue,
            tail: recovered.tail,
            windows: recovered.windows,
            stats,
            recent_batches: BTreeMap::new(),
            journal: journal_cf(id),
        }
    }

    /// Runs until every sender is gone and the queue is drained.
    pub fn run(mut self) {
        let mut commands = Vec::with_capacity(BATCH_REQUESTS_MAX);
        while let Ok(first) = self.queue.recv() {
            commands.push(first);
            while commands.len() < BATCH_REQUESTS_MAX {
                match self.queue.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            self.batch(&mut commands);
        }
    }

    fn batch(&mut self, commands: &mut Vec<Command>) {
        let requests = commands.len() as u64;
        if self.shared.store.is_poisoned(self.id) {
            for command in commands.drain(..) {
                let message_type = command.submission.request.message_type();
                let answer = refusal_of(message_type, AnswerCode::ServiceUnavailable);
                let _ = command.reply.send(answer);
            }
            return;
        }
        // Held while the batch is decided and written: the cutover waits for it once
        // after it moves the open date, so no batch of a closed date is still coming.
        let gate = Arc::clone(&self.stats);
        let _deciding = gate.batch_gate.lock().unwrap_or_else(PoisonError::into_inner);
        let now_ms = self.shared.config.clock.now_ms();
        let date = self.tail.date_for(self.shared.date_at(now_ms));
        let mut work = Work {
            date,
            now_ms,
            key: self.tail.key(),
            first_transfer_id: self.tail.next_transfer_id(),
            transfers: Vec::with_capacity(commands.len() * 2),
            entries: Vec::with_capacity(commands.len()),
            replies: Vec::with_capacity(commands.len()),
            taken: Vec::new(),
            held: Vec::new(),
            touched: HashSet::new(),
            sale_marks: HashMap::new(),
            offline_records: HashMap::new(),
            top_up_references: Vec::new(),
        };
        for command in commands.drain(..) {
            let answer = self.decide(&mut work, &command.terminal, &command.submission);
            let message_type = command.submission.request.message_type();
            work.replies.push((command.reply, message_type, answer));
        }
        // The one apply, computed before the write so that a batch that does not
        // balance is never written (it panics: a bug, not an operating error).
        let postings = Postings::of(date, &work.transfers, &work.entries);
        let committed =
            if work.entries.is_empty() { Ok(None) } else { self.commit(&work).map(Some) };
        if matches!(committed, Ok(None)) && !self.shared.store.holds_lease() {
            // Nothing to write: every answer is a retry's or a refusal from memory,
            // and a node that may have been deposed gives none of them. Nothing
            // decided here changed any state (those answers return before it does).
            for (reply, message_type, _) in work.replies {
                let _ = reply.send(not_leading(message_type));
            }
            return;
        }
        match committed {
            Ok(tail) => {
                if let Some(tail) = tail {
                    self.tail = tail;
                }
                self.shared.totals().apply(&postings);
                for movement in &work.held {
                    let mut state = movement.account.lock();
                    state.balance_fen += movement.main_fen;
                    state.restricted_fen += movement.restricted_fen;
                    state.add_spent(date, movement.spent_fen);
                }
                if !work.transfers.is_empty() {
                    self.recent_batches.insert(work.first_transfer_id, work.key);
                    if self.recent_batches.len() > RECENT_BATCHES_MAX {
                        self.recent_batches.pop_first();
                    }
                }
                self.count_committed(&work, requests);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.transfers.fetch_add(work.transfers.len() as u64, Ordering::Relaxed);
                self.stats.requests.fetch_add(requests, Ordering::Relaxed);
                // Queued for the checkpointer before anyone is answered, so that a flush
                // asked for after an answer includes its batch.
                if tail.is_some() {
                    self.shared.checkpoint(Committed { journal: self.id, key: work.key, postings });
                }
                for (reply, _, answer) in work.replies {
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                tracing::error!(shard = self.id, %error, "commit failed; the shard is poisoned");
                for movement in &work.taken {
                    let mut state = movement.account.lock();
                    state.balance_fen += movement.main_fen;
                    state.restricted_fen += movement.restricted_fen;
                    state.add_spent(date, -movement.spent_fen);
                }
                // The batch may be on disk all the same (a failed sync): every card it
                // moved is in doubt until the restart, so that the other shards and the
                // control plane do not decide on the money just given back.
                for movement in work.taken.iter().chain(&work.held) {
                    self.shared.cards.put_account_in_doubt(&movement.account);
                }
                for (reply, message_type, _) in work.replies {
                    let _ = reply.send(refusal_of(message_type, AnswerCode::ServiceUnavailable));
                }
            }
        }
    }

    /// Writes the batch and everything it changes in one write; returns the journal's
    /// tail after it.
    fn commit(&self, work: &Work) -> Result<Tail, StorageError> {
        let started = Instant::now();
        let store = &self.shared.store;
        let journal = store.cf(&self.journal);
        let batch = BatchView {
            number: self.tail.next_batch(),
            business_date: work.date,
            committed_at_ms: work.now_ms,
            first_transfer_id: work.first_transfer_id,
            transfers: &work.transfers,
            entries: &work.entries,
        };
        let mut write = WriteBatch::default();
        let tail = self.tail.append(&self.shared.chain.key, &batch, &mut write, journal);
        for (id, mark) in &work.sale_marks {
            let key = prefixed_key(shard_key::SALE_MARK, &id.to_be_bytes());
            write.put_cf(journal, key, mark.encode());
        }
        for ((terminal, sequence), (code, transfer_id)) in &work.offline_records {
            write.put_cf(
                journal,
                offline_key(*terminal, *sequence),
                offline_value(*code, *transfer_id),
            );
        }
        for (transfer_id, value) in &work.top_up_references {
            write.put_cf(journal, top_up_reference_key(work.date, *transfer_id), value);
        }
        for terminal in &work.touched {
            if let Some(window) = self.windows.get(terminal) {
                let key = prefixed_key(shard_key::TERMINAL_STATE, &terminal.to_be_bytes());
                write.merge_cf(journal, key, window.operand(work.key).encode());
            }
        }
        store.write(self.id, write, self.shared.config.sync)?;
        let elapsed = started.elapsed();
        self.shared.metrics.commit_seconds.observe(elapsed.as_secs_f64());
        let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.stats.commit_us_total.fetch_add(elapsed_us, Ordering::Relaxed);
        Ok(tail)
    }

    /// Records a committed batch in the metrics: its size and its transfers by kind.
    fn count_committed(&self, work: &Work, requests: u64) {
        let metrics = &self.shared.metrics;
        #[allow(clippy::cast_precision_loss, reason = "a batch holds at most 4,096 requests")]
        metrics.batch_requests.observe(requests as f64);
        let mut by_kind = [0u64; TransferKind::ALL.len()];
        for transfer in &work.transfers {
            if let Some(slot) = TransferKind::ALL.iter().position(|k| *k == transfer.kind) {
                by_kind[slot] += 1;
            }
        }
        for (kind, count) in TransferKind::ALL.iter().zip(by_kind) {
            if count > 0 {
                metrics.committed(*kind, count);
            }
        }
    }

    fn decide(
        &mut self,
        work: &mut Work,
        terminal: &Terminal,
        submission: &Submission<Transaction>,
    ) -> Answer {
        let request = &submission.request;
        let refusal = |code| refusal_of(request.message_type(), code);
        if terminal.shard != self.id {
            return refusal(AnswerCode::ServiceUnavailable);
        }
        if !terminal.is_enabled() {
            return refusal(AnswerCode::TerminalDisabled);
        }
        let sequence = submission.sequence;
        let window = self.windows.entry(terminal.id).or_default();
        if sequence <= window.last_sequence {
            return match window.find(sequence) {
                Some(entry) if entry.tombstone => refusal(AnswerCode::AlreadyReversed),
                Some(entry) => entry.answer(true),
                None => refusal(AnswerCode::StaleSequence),
            };
        }
        if self.names_card_in_doubt(request) {
            // Not retained: once a restart has read the account back, the same
            // sequence is decided afresh. A debit that was already waiting for the
            // account's lock when a failed write marked it is refused under
            // the lock instead, and that refusal is retained.
            return refusal(AnswerCode::ServiceUnavailable);
        }
        let entries_before = work.entries.len();
        let mut retained = match request {
            Transaction::Purchase(purchase) => self.purchase(work, terminal, submission, purchase),
            Transaction::TopUp(top_up) => self.top_up(work, terminal, sequence, top_up),
            Transaction::BalanceInquiry(inquiry) => {
                self.inquiry(work, terminal, sequence, inquiry.card_number)
            }
            Transaction::Refund(refund) => self.refund(work, terminal, sequence, refund),
            Transaction::Reversal(reversal) => self.reversal(work, terminal, sequence, reversal),
            Transaction::OfflineUpload(upload) => {
                self.offline(work, terminal, sequence, &upload.records)
            }
        };
        if work.entries.len() > entries_before {
            retained.batch = Some(work.key);
            work.touched.insert(terminal.id);
        }
        let answer = retained.answer(false);
        let window = self.windows.entry(terminal.id).or_default();
        window.push(retained);
        terminal.last_sequence.store(window.last_sequence, Ordering::Release);
        answer
    }

    /// Whether the request names a card whose account a failed write left in
    /// doubt ([`crate::cards::CardAccount::in_doubt`]). One atomic load while none is.
    fn names_card_in_doubt(&self, request: &Transaction) -> bool {
        let cards = &self.shared.cards;
        match request {
            Transaction::Purchase(purchase) => cards.card_in_doubt(purchase.card_number),
            Transaction::TopUp(top_up) => cards.card_in_doubt(top_up.card_number),
            Transaction::BalanceInquiry(inquiry) => cards.card_in_doubt(inquiry.card_number),
            Transaction::Refund(refund) => cards.card_in_doubt(refund.card_number),
            Transaction::Reversal(reversal) => cards.card_in_doubt(reversal.card_number),
            Transaction::OfflineUpload(upload) => {
                upload.records.iter().any(|record| cards.card_in_doubt(record.card_number))
            }
        }
    }

    /// Records an entry in the batch and returns the window entry for it.
    fn record(
        work: &mut Work,
        origin: Origin,
        message_type: MessageType,
        code: AnswerCode,
        first_transfer: Option<u64>,
        amount_fen: u32,
        balances: (i64, i64),
    ) -> WindowEntry {
        let Origin { terminal_id, sequence, card_number } = origin;
        let transfer_count = first_transfer.map_or(0, |first| work.next_id() - first);
        let transfer_index = first_transfer.map_or(0, |first| first - work.first_transfer_id);
        work.entries.push(Entry {
            terminal_id,
            sequence,
            message_type,
            code,
            transfer_index: u32::try_from(transfer_index).expect("batch transfers fit u32"),
            transfer_count: u8::try_from(transfer_count)
                .expect("a request makes at most two transfers"),
            card_number,
            amount_fen,
            balance_fen: balances.0,
            restricted_balance_fen: balances.1,
            aux: 0,
            reference: 0,
            flags: 0,
        });
        let mut entry = WindowEntry::new(sequence, message_type, code);
        entry.transfer_id = first_transfer.unwrap_or(0);
        entry.card_number = card_number;
        entry.amount_fen = amount_fen;
        entry.balance_fen = balances.0;
        entry.restricted_fen = balances.1;
        entry
    }
}

/// The answer that refuses `request` with `code` before anything was decided.
pub(crate) fn refusal(request: &Request, code: AnswerCode) -> Answer {
    refusal_of(request.message_type(), code)
}

/// The answer of a node of a cell that cannot be sure it still leads
/// ([`crate::store::Store::holds_lease`]) to a request it would answer from memory: a
/// redirect naming no leader, as a follower's would while the cell elects one.
/// Nothing happened; the terminal finds the leader and sends it again there.
pub(crate) const fn not_leading(message_type: MessageType) -> Answer {
    Answer::Redirect(Redirect::nowhere(message_type.to_wire()))
}

/// The answer of type `message_type` that refuses with `code`.
pub(crate) fn refusal_of(message_type: MessageType, code: AnswerCode) -> Answer {
    let transfer = TransferAnswer {
        duplicate: false,
        code,
        transfer_id: 0,
        balance_fen: 0,
        restricted_balance_fen: 0,
    };
    match message_type {
        MessageType::Purchase => Answer::Purchase(transfer),
        MessageType::TopUp => Answer::TopUp(transfer),
        MessageType::Refund => Answer::Refund(transfer),
        MessageType::Reversal => Answer::Reversal(transfer),
        MessageType::BalanceInquiry => Answer::BalanceInquiry(BalanceAnswer {
            code,
            card_state: CardState::Closed,
            balance_fen: 0,
            restricted_balance_fen: 0,
            expiry_date: 0,
        }),
        MessageType::OfflineUpload => Answer::OfflineUpload(OfflineUploadAnswer {
            duplicate: false,
            code,
            results: Vec::new(),
        }),
        other => Answer::Reject(Reject { code, refused_type: other.to_wire() }),
    }
}

/// What opening a shard recovered from disk.
pub(crate) struct RecoveredShard {
    /// Where the journal stands after its last batch on disk.
    pub tail: Tail,
    pub windows: HashMap<u32, TerminalWindow>,
}
