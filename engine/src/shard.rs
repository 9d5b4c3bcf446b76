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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crossbeam::channel::Receiver;
use onecard_protocol::message::{
    BalanceAnswer, OfflineRecord, OfflineResult, OfflineUploadAnswer, Purchase, Refund, Reject,
    Reversal, TopUp, TransferAnswer,
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
use crate::chain::Seal;
use crate::checkpoint::Committed;
use crate::date::BusinessDate;
use crate::directory::{MerchantCategory, Terminal};
use crate::journal::{
    Batch, BatchView, Entry, Transfer, TransferKind, batch_key, journal_of, read_transfer,
};
use crate::ledger::Shared;
use crate::limits::{
    BATCH_REQUESTS_MAX, PIN_FAILURES_MAX, RECENT_BATCHES_MAX, RETRY_WINDOW_REQUESTS,
};
use crate::postings::Postings;
use crate::storage::StorageError;
use crate::store::{journal_cf, prefixed_key, shard_key};
pub(crate) use crate::terminal_state::TerminalState;

/// A terminal request as the front door hands it to the ledger.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The terminal, from the frame header (its MAC already verified).
    pub terminal_id: u32,
    /// The request's terminal sequence, from the frame header.
    pub sequence: u64,
    /// The MAC algorithm of the frame, which also keys the PIN block.
    pub mac_algorithm: MacAlgorithm,
    /// The request.
    pub request: Request,
}

/// A request on its way to a shard, with where its answer goes.
pub(crate) struct Command {
    pub submission: Submission,
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

/// The key of a top-up's channel reference: `0xF5` ++ business date (4, BE) ++
/// transfer id (8, BE), so one date's references are one prefix.
#[must_use]
pub fn top_up_reference_key(date: BusinessDate, transfer_id: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = crate::store::shard_key::TOP_UP_REFERENCE;
    key[1..5].copy_from_slice(&date.to_yyyymmdd().to_be_bytes());
    key[5..].copy_from_slice(&transfer_id.to_be_bytes());
    key
}

/// Its value: channel (1) ++ amount fen (8, LE) ++ reference length (1) ++ reference.
fn top_up_reference_value(channel: Channel, fen: i64, reference: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(10 + reference.len());
    value.push(channel.to_wire());
    value.extend_from_slice(&fen.to_le_bytes());
    value.push(u8::try_from(reference.len()).unwrap_or(u8::MAX));
    value.extend_from_slice(reference);
    value
}

/// A stored top-up reference: (channel, fen, reference), or `None` if malformed.
#[must_use]
pub fn decode_top_up_reference(value: &[u8]) -> Option<(Channel, i64, &[u8])> {
    let channel = Channel::from_wire(*value.first()?).ok()?;
    let fen = i64::from_le_bytes(value.get(1..9)?.try_into().ok()?);
    let len = usize::from(*value.get(9)?);
    let reference = value.get(10..10 + len)?;
    (value.len() == 10 + len).then_some((channel, fen, reference))
}

/// One retained answer of a terminal.
#[derive(Debug, Clone)]
struct WindowEntry {
    sequence: u64,
    message_type: MessageType,
    code: AnswerCode,
    transfer_id: u64,
    card_number: u64,
    amount_fen: u32,
    balance_fen: i64,
    restricted_fen: i64,
    /// The journal batch holding it; `None` for answers that wrote nothing.
    batch: Option<[u8; 16]>,
    /// A reversal arrived before this sequence did: the original is refused.
    tombstone: bool,
    /// The request was reversed.
    reversed: bool,
    /// Balance inquiries: card state and expiry.
    card_state: CardState,
    expiry_date: u32,
    /// Offline uploads: what became of each record.
    offline: Option<Box<[OfflineResult]>>,
}

impl WindowEntry {
    fn new(sequence: u64, message_type: MessageType, code: AnswerCode) -> Self {
        Self {
            sequence,
            message_type,
            code,
            transfer_id: 0,
            card_number: 0,
            amount_fen: 0,
            balance_fen: 0,
            restricted_fen: 0,
            batch: None,
            tombstone: false,
            reversed: false,
            card_state: CardState::Active,
            expiry_date: 0,
            offline: None,
        }
    }

    /// The answer this entry gave, as a retry receives it.
    fn answer(&self, duplicate: bool) -> Answer {
        let transfer = TransferAnswer {
            duplicate,
            code: self.code,
            transfer_id: self.transfer_id,
            balance_fen: self.balance_fen,
            restricted_balance_fen: self.restricted_fen,
        };
        match self.message_type {
            MessageType::Purchase => Answer::Purchase(transfer),
            MessageType::TopUp => Answer::TopUp(transfer),
            MessageType::Refund => Answer::Refund(transfer),
            MessageType::Reversal => Answer::Reversal(transfer),
            MessageType::BalanceInquiry => Answer::BalanceInquiry(BalanceAnswer {
                code: self.code,
                card_state: self.card_state,
                balance_fen: self.balance_fen,
                restricted_balance_fen: self.restricted_fen,
                expiry_date: self.expiry_date,
            }),
            _ => Answer::OfflineUpload(OfflineUploadAnswer {
                duplicate,
                code: self.code,
                results: self.offline.as_deref().unwrap_or_default().to_vec(),
            }),
        }
    }
}

/// The answers a terminal's retries are served from.
#[derive(Debug, Default)]
pub(crate) struct TerminalWindow {
    last_sequence: u64,
    /// Every sequence at or below this that is not retained is stale.
    floor: u64,
    blacklist_version: u64,
    entries: VecDeque<WindowEntry>,
}

impl TerminalWindow {
    fn find(&self, sequence: u64) -> Option<&WindowEntry> {
        self.entries.iter().rev().find(|entry| entry.sequence == sequence)
    }

    fn find_mut(&mut self, sequence: u64) -> Option<&mut WindowEntry> {
        self.entries.iter_mut().rev().find(|entry| entry.sequence == sequence)
    }

    fn push(&mut self, entry: WindowEntry) {
        self.last_sequence = self.last_sequence.max(entry.sequence);
        self.entries.push_back(entry);
        while self.entries.len() > RETRY_WINDOW_REQUESTS {
            if let Some(old) = self.entries.pop_front() {
                self.floor = self.floor.max(old.sequence);
            }
        }
    }

    /// The operand a batch holding this terminal's newest answers merges into its
    /// persisted state (see [`crate::terminal_state`]).
    fn operand(&self, batch: [u8; 16]) -> TerminalState {
        let keep_from = self.entries.iter().find_map(|entry| entry.batch).unwrap_or(batch);
        TerminalState {
            last_sequence: self.last_sequence,
            floor: self.floor,
            blacklist_version: self.blacklist_version,
            keep_from,
            batches: vec![batch],
        }
    }
}

/// Rebuilds a terminal's window from its persisted state and the batches it names.
pub(crate) fn rebuild_window(
    terminal_id: u32,
    state: &TerminalState,
    batches: &HashMap<[u8; 16], Batch>,
) -> TerminalWindow {
    let mut window = TerminalWindow {
        last_sequence: 0,
        floor: state.floor,
        blacklist_version: state.blacklist_version,
        entries: VecDeque::new(),
    };
    let mut keys = state.batches.clone();
    keys.sort_unstable();
    for key in keys {
        let Some(batch) = batches.get(&key) else { continue };
        for entry in batch.entries.iter().filter(|e| e.terminal_id == terminal_id) {
            replay(&mut window, batch, key, entry);
        }
    }
    window.last_sequence = window.last_sequence.max(state.last_sequence);
    window.floor = state.floor;
    window
}

/// Applies one journal entry to a window, as deciding it did.
fn replay(window: &mut TerminalWindow, batch: &Batch, key: [u8; 16], entry: &Entry) {
    if entry.message_type == MessageType::OfflineUpload {
        let result = OfflineResult {
            sequence: entry.aux,
            code: entry.code,
            transfer_id: batch.answer_transfer_id(entry),
            balance_fen: entry.balance_fen,
        };
        if let Some(existing) = window.find_mut(entry.sequence) {
            let mut results = existing.offline.take().map(Vec::from).unwrap_or_default();
            results.push(result);
            existing.offline = Some(results.into_boxed_slice());
            return;
        }
        let mut upload = WindowEntry::new(entry.sequence, entry.message_type, AnswerCode::Approved);
        upload.batch = Some(key);
        upload.offline = Some(vec![result].into_boxed_slice());
        window.push(upload);
        return;
    }
    if entry.message_type == MessageType::Reversal {
        if entry.flags & Entry::TOMBSTONE != 0 {
            let mut tombstone =
                WindowEntry::new(entry.aux, MessageType::Purchase, AnswerCode::AlreadyReversed);
            tombstone.tombstone = true;
            tombstone.batch = Some(key);
            window.push(tombstone);
        } else if entry.code == AnswerCode::Approved
            && entry.transfer_count > 0
            && let Some(original) = window.find_mut(entry.aux)
        {
            original.reversed = true;
        }
    }
    let mut retained = WindowEntry::new(entry.sequence, entry.message_type, entry.code);
    if entry.message_type == MessageType::BalanceInquiry {
        retained.expiry_date = u32::try_from(entry.aux).unwrap_or(0);
        retained.card_state = u8::try_from(entry.reference)
            .ok()
            .and_then(|wire| CardState::from_wire(wire).ok())
            .unwrap_or(CardState::Closed);
        retained.balance_fen = entry.balance_fen;
        retained.restricted_fen = entry.restricted_balance_fen;
        retained.batch = Some(key);
        window.push(retained);
        return;
    }
    retained.transfer_id = batch.answer_transfer_id(entry);
    retained.card_number = entry.card_number;
    retained.amount_fen = entry.amount_fen;
    retained.balance_fen = entry.balance_fen;
    retained.restricted_fen = entry.restricted_balance_fen;
    retained.batch = Some(key);
    window.push(retained);
}

/// Refunds and reversal of one sale (a purchase's transfers).
#[derive(Debug, Clone, Copy, Default)]
struct SaleMark {
    refunded_fen: i64,
    reversed: bool,
}

impl SaleMark {
    fn encode(self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[..8].copy_from_slice(&self.refunded_fen.to_le_bytes());
        out[8] = u8::from(self.reversed);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 9] = bytes.try_into().ok()?;
        Some(Self {
            refunded_fen: i64::from_le_bytes(bytes[..8].try_into().ok()?),
            reversed: bytes[8] != 0,
        })
    }
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

/// What a purchase-like debit took from a card.
struct Debit {
    restricted_fen: i64,
    main_fen: i64,
    balance_fen: i64,
    restricted_after_fen: i64,
}

/// One shard's writer thread.
pub(crate) struct ShardWriter {
    id: u8,
    shared: Arc<Shared>,
    queue: Receiver<Command>,
    next_transfer_id: u64,
    next_batch: u64,
    last_date: u32,
    /// The seal of the journal's last batch, which the next one follows.
    last_seal: Seal,
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
            next_transfer_id: recovered.next_transfer_id,
            next_batch: recovered.next_batch,
            last_date: recovered.last_date,
            last_seal: recovered.last_seal,
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
                let answer = refusal(&command.submission.request, AnswerCode::ServiceUnavailable);
                let _ = command.reply.send(answer);
            }
            return;
        }
        // Held while the batch is decided and written: the cutover waits for it once
        // after it moves the open date, so no batch of a closed date is still coming.
        let gate = Arc::clone(&self.stats);
        let _deciding = gate.batch_gate.lock().unwrap_or_else(PoisonError::into_inner);
        let now_ms = self.shared.config.clock.now_ms();
        let date = self.shared.date_at(now_ms).max(
            BusinessDate::from_yyyymmdd(self.last_date).unwrap_or(BusinessDate::from_unix_days(0)),
        );
        let mut work = Work {
            date,
            now_ms,
            key: batch_key(self.next_transfer_id, self.next_batch),
            first_transfer_id: self.next_transfer_id,
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
        match committed {
            Ok(seal) => {
                if let Some(seal) = seal {
                    self.last_seal = seal;
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
                if !work.entries.is_empty() {
                    self.next_transfer_id = work.next_id();
                    self.next_batch += 1;
                    self.last_date = date.to_yyyymmdd();
                }
                self.count_committed(&work, requests);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.transfers.fetch_add(work.transfers.len() as u64, Ordering::Relaxed);
                self.stats.requests.fetch_add(requests, Ordering::Relaxed);
                // Queued for the checkpointer before anyone is answered, so that a flush
                // asked for after an answer includes its batch.
                if seal.is_some() {
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

    /// Writes the batch and everything it changes in one write; returns its seal.
    fn commit(&self, work: &Work) -> Result<Seal, StorageError> {
        let started = Instant::now();
        let store = &self.shared.store;
        let journal = store.cf(&self.journal);
        let batch = BatchView {
            number: self.next_batch,
            business_date: work.date,
            committed_at_ms: work.now_ms,
            first_transfer_id: work.first_transfer_id,
            transfers: &work.transfers,
            entries: &work.entries,
        };
        let (record, seal) = batch.encode_sealed(&self.shared.chain.key, self.id, &self.last_seal);
        let mut write = WriteBatch::default();
        write.put_cf(journal, work.key, record);
        if self.last_date != work.date.to_yyyymmdd() {
            let key = prefixed_key(shard_key::DAY_START, &work.date.to_yyyymmdd().to_be_bytes());
            write.put_cf(journal, key, work.key);
        }
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
        Ok(seal)
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

    fn decide(&mut self, work: &mut Work, terminal: &Terminal, submission: &Submission) -> Answer {
        let request = &submission.request;
        if terminal.shard != self.id {
            return refusal(request, AnswerCode::ServiceUnavailable);
        }
        if !terminal.is_enabled() {
            return refusal(request, AnswerCode::TerminalDisabled);
        }
        let sequence = submission.sequence;
        let window = self.windows.entry(terminal.id).or_default();
        if sequence <= window.last_sequence {
            return match window.find(sequence) {
                Some(entry) if entry.tombstone => refusal(request, AnswerCode::AlreadyReversed),
                Some(entry) => entry.answer(true),
                None => refusal(request, AnswerCode::StaleSequence),
            };
        }
        if self.names_card_in_doubt(request) {
            // Not retained: once a restart has read the account back, the same
            // sequence is decided afresh. A debit that was already waiting for the
            // account's lock when a failed write marked it is refused under
            // the lock instead, and that refusal is retained.
            return refusal(request, AnswerCode::ServiceUnavailable);
        }
        let entries_before = work.entries.len();
        let mut retained = match request {
            Request::Purchase(purchase) => self.purchase(work, terminal, submission, purchase),
            Request::TopUp(top_up) => self.top_up(work, terminal, sequence, top_up),
            Request::BalanceInquiry(inquiry) => {
                self.inquiry(work, terminal, sequence, inquiry.card_number)
            }
            Request::Refund(refund) => self.refund(work, terminal, sequence, refund),
            Request::Reversal(reversal) => self.reversal(work, terminal, sequence, reversal),
            Request::OfflineUpload(upload) => {
                self.offline(work, terminal, sequence, &upload.records)
            }
            _ => return refusal(request, AnswerCode::UnknownMessageType),
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
    fn names_card_in_doubt(&self, request: &Request) -> bool {
        let cards = &self.shared.cards;
        match request {
            Request::Purchase(purchase) => cards.card_in_doubt(purchase.card_number),
            Request::TopUp(top_up) => cards.card_in_doubt(top_up.card_number),
            Request::BalanceInquiry(inquiry) => cards.card_in_doubt(inquiry.card_number),
            Request::Refund(refund) => cards.card_in_doubt(refund.card_number),
            Request::Reversal(reversal) => cards.card_in_doubt(reversal.card_number),
            Request::OfflineUpload(upload) => {
                upload.records.iter().any(|record| cards.card_in_doubt(record.card_number))
            }
            _ => false,
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

    fn purchase(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        submission: &Submission,
        purchase: &Purchase,
    ) -> WindowEntry {
        let sequence = submission.sequence;
        let card_number = purchase.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = purchase.amount_fen;
        let refuse = |work: &mut Work, code, balances| {
            Self::record(work, origin, MessageType::Purchase, code, None, amount, balances)
        };
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount, (0, 0));
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard, (0, 0));
        };
        let fen = i64::from(amount);
        let mut state = card.account.lock();
        if card.account.in_doubt() {
            // Put in doubt while this request waited for the lock (see `decide`).
            drop(state);
            return refuse(work, AnswerCode::ServiceUnavailable, (0, 0));
        }
        let balances = (state.balance_fen, state.restricted_fen);
        let decided = debit_purchase(&mut state, &card, terminal, submission, purchase, work.date);
        drop(state);
        let debit = match decided {
            Ok(debit) => debit,
            Err(code) => return refuse(work, code, balances),
        };
        let account_number = card.account.number;
        work.taken.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: debit.main_fen,
            restricted_fen: debit.restricted_fen,
            spent_fen: fen,
        });
        let first = self.post_sale(
            work,
            terminal,
            sequence,
            card_number,
            account_number,
            &debit,
            TransferKind::Purchase,
            purchase.meal_period,
            work.now_ms,
        );
        Self::record(
            work,
            origin,
            MessageType::Purchase,
            AnswerCode::Approved,
            Some(first),
            amount,
            (debit.balance_fen, debit.restricted_after_fen),
        )
    }

    /// Posts a sale's one or two transfers (restricted purse first) and returns the
    /// first id.
    #[allow(clippy::too_many_arguments)]
    fn post_sale(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        card_number: u64,
        account_number: u64,
        debit: &Debit,
        kind: TransferKind,
        meal_period: MealPeriod,
        timestamp_ms: u64,
    ) -> u64 {
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let merchant = AccountId::merchant(terminal.merchant_id);
        let first = work.next_id();
        let mut continues = false;
        if debit.restricted_fen > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: AccountId::card_restricted(account_number),
                    credit: merchant,
                    amount_fen: debit.restricted_fen,
                    kind,
                    corrects: 0,
                    meal_period,
                    timestamp_ms,
                    continues: false,
                },
            );
            continues = true;
        }
        if debit.main_fen > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: AccountId::card(account_number),
                    credit: merchant,
                    amount_fen: debit.main_fen,
                    kind,
                    corrects: 0,
                    meal_period,
                    timestamp_ms,
                    continues,
                },
            );
        }
        first
    }

    fn top_up(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        top_up: &TopUp,
    ) -> WindowEntry {
        let card_number = top_up.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = top_up.amount_fen;
        let refuse = |work: &mut Work, code, balances| {
            Self::record(work, origin, MessageType::TopUp, code, None, amount, balances)
        };
        if terminal.category != MerchantCategory::CardCentre {
            return refuse(work, AnswerCode::ChannelNotAllowed, (0, 0));
        }
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount, (0, 0));
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard, (0, 0));
        };
        let state = card.account.lock();
        let balances = (state.balance_fen, state.restricted_fen);
        if let Err(code) = usable(&card, &state, work.date) {
            drop(state);
            return refuse(work, code, balances);
        }
        let fen = i64::from(amount);
        let held: i64 = work
            .held
            .iter()
            .filter(|m| Arc::ptr_eq(&m.account, &card.account))
            .map(|m| m.main_fen)
            .sum();
        if state.balance_fen + held + fen > state.limits.balance_fen_max {
            drop(state);
            return refuse(work, AnswerCode::BalanceLimit, balances);
        }
        let after = (state.balance_fen + held + fen, state.restricted_fen);
        let account_number = card.account.number;
        drop(state);
        work.held.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: fen,
            restricted_fen: 0,
            spent_fen: 0,
        });
        let first = work.transfer(
            origin,
            Leg {
                debit: AccountId::channel(top_up.channel),
                credit: AccountId::card(account_number),
                amount_fen: fen,
                kind: TransferKind::TopUp,
                corrects: 0,
                meal_period: MealPeriod::Unspecified,
                timestamp_ms: work.now_ms,
                continues: false,
            },
        );
        if !top_up.reference.as_bytes().is_empty() {
            let value = top_up_reference_value(top_up.channel, fen, top_up.reference.as_bytes());
            work.top_up_references.push((first, value));
        }
        Self::record(
            work,
            origin,
            MessageType::TopUp,
            AnswerCode::Approved,
            Some(first),
            amount,
            after,
        )
    }

    /// Answers an inquiry. It moves no money but is journalled like every answer, so
    /// that a retry after a restart gets the same answer and the retry window is the
    /// same before and after.
    fn inquiry(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        card_number: u64,
    ) -> WindowEntry {
        let (code, card_state, balances, expiry_date) = match self.shared.cards.card(card_number) {
            None => (AnswerCode::UnknownCard, CardState::Closed, (0, 0), 0),
            Some(card) => {
                let state = card.account.lock();
                let card_state =
                    if card.replaced_at_ms != 0 { CardState::Replaced } else { state.state };
                (
                    AnswerCode::Approved,
                    card_state,
                    (state.balance_fen, state.restricted_fen),
                    state.record.expiry_date,
                )
            }
        };
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let mut entry =
            Self::record(work, origin, MessageType::BalanceInquiry, code, None, 0, balances);
        if let Some(last) = work.entries.last_mut() {
            last.aux = u64::from(expiry_date);
            last.reference = u64::from(card_state.to_wire());
        }
        entry.card_state = card_state;
        entry.expiry_date = expiry_date;
        entry
    }

    /// Finds a transfer of this shard, in the batch being decided or on disk.
    fn find_transfer(&self, work: &Work, id: u64) -> Option<(Transfer, Option<Transfer>)> {
        if journal_of(id) != self.id {
            return None;
        }
        let pair = |transfers: &[Transfer], index: usize| {
            let first = *transfers.get(index)?;
            let next = transfers.get(index + 1).filter(|t| t.continues).copied();
            Some((first, next))
        };
        if id >= work.first_transfer_id {
            return pair(&work.transfers, usize::try_from(id - work.first_transfer_id).ok()?);
        }
        // Recent batches are found by a point read of their key; older ones (before the
        // ledger was opened, or pushed out of the map) by seeking the journal.
        let recent = self.recent_batches.range(..=id).next_back();
        let Some((_, key)) =
            recent.filter(|_| self.recent_batches.keys().next().is_some_and(|first| *first <= id))
        else {
            return self.shared.transfer_pair(self.id, id);
        };
        let journal = self.shared.store.cf(&self.journal);
        let value = self.shared.store.db().get_pinned_cf(journal, key).ok()??;
        read_transfer(&value, id).ok()?
    }

    fn sale_mark(&self, work: &Work, id: u64) -> SaleMark {
        if let Some(mark) = work.sale_marks.get(&id) {
            return *mark;
        }
        let key = prefixed_key(shard_key::SALE_MARK, &id.to_be_bytes());
        let journal = self.shared.store.cf(&self.journal);
        match self.shared.store.db().get_cf(journal, key) {
            Ok(Some(bytes)) => SaleMark::decode(&bytes).unwrap_or_default(),
            Ok(None) => SaleMark::default(),
            Err(error) => {
                tracing::error!(shard = self.id, %error, "cannot read a sale mark");
                SaleMark { refunded_fen: i64::MAX / 2, reversed: true }
            }
        }
    }

    fn refund(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        refund: &Refund,
    ) -> WindowEntry {
        let card_number = refund.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = refund.amount_fen;
        let refuse = |work: &mut Work, code| {
            Self::record(work, origin, MessageType::Refund, code, None, amount, (0, 0))
        };
        if amount == 0 {
            return refuse(work, AnswerCode::InvalidAmount);
        }
        let id = refund.purchase_transfer_id;
        let Some((first, second)) = self.find_transfer(work, id) else {
            return refuse(work, AnswerCode::UnknownTransfer);
        };
        if !first.kind.is_sale() || first.continues || first.card_number != card_number {
            return refuse(work, AnswerCode::UnknownTransfer);
        }
        if first.credit != AccountId::merchant(terminal.merchant_id) {
            return refuse(work, AnswerCode::WrongMerchant);
        }
        let mark = self.sale_mark(work, id);
        if mark.reversed {
            return refuse(work, AnswerCode::AlreadyReversed);
        }
        // The sale's purses: restricted first (if it paid), then main.
        let (restricted_paid, main_paid) = match (first.debit.kind(), second) {
            (crate::account::AccountKind::CardRestricted, Some(main)) => {
                (first.amount_fen, main.amount_fen)
            }
            (crate::account::AccountKind::CardRestricted, None) => (first.amount_fen, 0),
            _ => (0, first.amount_fen),
        };
        let fen = i64::from(amount);
        if mark.refunded_fen + fen > restricted_paid + main_paid {
            return refuse(work, AnswerCode::RefundExceedsPurchase);
        }
        let Some(card) = self.shared.cards.card(card_number) else {
            return refuse(work, AnswerCode::UnknownCard);
        };
        let state = card.account.lock();
        if state.state == CardState::Closed {
            drop(state);
            return refuse(work, AnswerCode::CardClosed);
        }
        // Money goes back to the main purse first, then the restricted one.
        let main_left = (main_paid - mark.refunded_fen).max(0);
        let to_main = fen.min(main_left);
        let to_restricted = fen - to_main;
        let held = |work: &Work, restricted: bool| -> i64 {
            work.held
                .iter()
                .filter(|m| Arc::ptr_eq(&m.account, &card.account))
                .map(|m| if restricted { m.restricted_fen } else { m.main_fen })
                .sum()
        };
        let after = (
            state.balance_fen + held(work, false) + to_main,
            state.restricted_fen + held(work, true) + to_restricted,
        );
        drop(state);
        let account_number = card.account.number;
        let merchant = AccountId::merchant(terminal.merchant_id);
        let first_id = work.next_id();
        if to_main > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: merchant,
                    credit: AccountId::card(account_number),
                    amount_fen: to_main,
                    kind: TransferKind::Refund,
                    corrects: id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: false,
                },
            );
        }
        if to_restricted > 0 {
            work.transfer(
                origin,
                Leg {
                    debit: merchant,
                    credit: AccountId::card_restricted(account_number),
                    amount_fen: to_restricted,
                    kind: TransferKind::Refund,
                    corrects: id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: to_main > 0,
                },
            );
        }
        work.held.push(Movement {
            account: Arc::clone(&card.account),
            main_fen: to_main,
            restricted_fen: to_restricted,
            spent_fen: 0,
        });
        work.sale_marks
            .insert(id, SaleMark { refunded_fen: mark.refunded_fen + fen, reversed: false });
        let mut entry = Self::record(
            work,
            origin,
            MessageType::Refund,
            AnswerCode::Approved,
            Some(first_id),
            amount,
            after,
        );
        if let Some(last) = work.entries.last_mut() {
            last.reference = id;
        }
        entry.transfer_id = first_id;
        entry
    }

    fn reversal(
        &mut self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        reversal: &Reversal,
    ) -> WindowEntry {
        let card_number = reversal.card_number;
        let origin = Origin { terminal_id: terminal.id, sequence, card_number };
        let amount = reversal.amount_fen;
        let original_sequence = reversal.original_sequence;
        let answer = |work: &mut Work, code, first: Option<u64>, balances, flags| {
            let entry =
                Self::record(work, origin, MessageType::Reversal, code, first, amount, balances);
            if let Some(last) = work.entries.last_mut() {
                last.aux = original_sequence;
                last.flags = flags;
            }
            entry
        };
        if original_sequence >= sequence {
            return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
        }
        let window = self.windows.entry(terminal.id).or_default();
        let Some(original) = window.find(original_sequence).cloned() else {
            if original_sequence <= window.floor {
                return answer(work, AnswerCode::StaleSequence, None, (0, 0), 0);
            }
            // Never seen: leave a tombstone so the late original is refused.
            let mut tombstone = WindowEntry::new(
                original_sequence,
                MessageType::Purchase,
                AnswerCode::AlreadyReversed,
            );
            tombstone.tombstone = true;
            tombstone.batch = Some(work.key);
            window.push(tombstone);
            return answer(work, AnswerCode::Approved, None, (0, 0), Entry::TOMBSTONE);
        };
        if original.tombstone || original.reversed {
            return answer(work, AnswerCode::AlreadyReversed, None, (0, 0), 0);
        }
        let reversible =
            matches!(original.message_type, MessageType::Purchase | MessageType::TopUp);
        if !reversible || original.card_number != card_number || original.amount_fen != amount {
            return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
        }
        if original.code != AnswerCode::Approved {
            // Nothing was done, so nothing is undone.
            return answer(work, AnswerCode::Approved, None, (0, 0), 0);
        }
        let Some((first, second)) = self.find_transfer(work, original.transfer_id) else {
            return answer(work, AnswerCode::UnknownTransfer, None, (0, 0), 0);
        };
        let Some(card) = self.shared.cards.card(card_number) else {
            return answer(work, AnswerCode::UnknownCard, None, (0, 0), 0);
        };
        let first_id = work.next_id();
        let balances;
        let mut flags = 0;
        if original.message_type == MessageType::Purchase {
            if self.sale_mark(work, first.id).refunded_fen > 0 {
                return answer(work, AnswerCode::ReversalMismatch, None, (0, 0), 0);
            }
            let state = card.account.lock();
            let (mut main, mut restricted) = (0, 0);
            for part in std::iter::once(first).chain(second) {
                if part.debit.kind() == crate::account::AccountKind::CardRestricted {
                    restricted += part.amount_fen;
                } else {
                    main += part.amount_fen;
                }
            }
            balances = (state.balance_fen + main, state.restricted_fen + restricted);
            drop(state);
            let same_day = first.business_date == work.date;
            let spent_back = if same_day { -(main + restricted) } else { 0 };
            for part in std::iter::once(first).chain(second) {
                work.transfer(
                    origin,
                    Leg {
                        debit: part.credit,
                        credit: part.debit,
                        amount_fen: part.amount_fen,
                        kind: TransferKind::Reversal,
                        corrects: part.id,
                        meal_period: part.meal_period,
                        timestamp_ms: work.now_ms,
                        continues: part.id != first.id,
                    },
                );
            }
            if same_day {
                flags = Entry::SPENT_BACK;
            }
            work.held.push(Movement {
                account: Arc::clone(&card.account),
                main_fen: main,
                restricted_fen: restricted,
                spent_fen: spent_back,
            });
            work.sale_marks.insert(first.id, SaleMark { refunded_fen: 0, reversed: true });
        } else {
            let fen = first.amount_fen;
            let mut state = card.account.lock();
            if card.account.in_doubt() {
                drop(state);
                return answer(work, AnswerCode::ServiceUnavailable, None, (0, 0), 0);
            }
            if state.balance_fen < fen {
                let balances = (state.balance_fen, state.restricted_fen);
                drop(state);
                return answer(work, AnswerCode::InsufficientFunds, None, balances, 0);
            }
            state.balance_fen -= fen;
            balances = (state.balance_fen, state.restricted_fen);
            drop(state);
            work.taken.push(Movement {
                account: Arc::clone(&card.account),
                main_fen: fen,
                restricted_fen: 0,
                spent_fen: 0,
            });
            work.transfer(
                origin,
                Leg {
                    debit: first.credit,
                    credit: first.debit,
                    amount_fen: fen,
                    kind: TransferKind::Reversal,
                    corrects: first.id,
                    meal_period: MealPeriod::Unspecified,
                    timestamp_ms: work.now_ms,
                    continues: false,
                },
            );
        }
        if let Some(original) =
            self.windows.entry(terminal.id).or_default().find_mut(original_sequence)
        {
            original.reversed = true;
        }
        answer(work, AnswerCode::Approved, Some(first_id), balances, flags)
    }

    fn offline(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        records: &[OfflineRecord],
    ) -> WindowEntry {
        let mut results = Vec::with_capacity(records.len());
        for record in records {
            let result = self.offline_record(work, terminal, sequence, record);
            results.push(result);
        }
        let mut upload =
            WindowEntry::new(sequence, MessageType::OfflineUpload, AnswerCode::Approved);
        upload.offline = Some(results.into_boxed_slice());
        upload
    }

    fn offline_record(
        &self,
        work: &mut Work,
        terminal: &Terminal,
        sequence: u64,
        record: &OfflineRecord,
    ) -> OfflineResult {
        let origin = Origin { terminal_id: terminal.id, sequence, card_number: record.card_number };
        let note = |work: &mut Work, code, first: Option<u64>, balance_fen, flags, reference| {
            let kind = MessageType::OfflineUpload;
            Self::record(work, origin, kind, code, first, record.amount_fen, (balance_fen, 0));
            if let Some(last) = work.entries.last_mut() {
                last.aux = record.sequence;
                last.reference = reference;
                last.flags = flags;
            }
            let transfer_id = first.unwrap_or(reference);
            if flags & Entry::DUPLICATE == 0 {
                work.offline_records.insert((terminal.id, record.sequence), (code, transfer_id));
            }
            OfflineResult { sequence: record.sequence, code, transfer_id, balance_fen }
        };
        if let Some(transfer_id) = self.offline_seen(work, terminal.id, record.sequence) {
            return note(work, AnswerCode::Duplicate, None, 0, Entry::DUPLICATE, transfer_id);
        }
        if record.amount_fen == 0 {
            return note(work, AnswerCode::InvalidAmount, None, 0, 0, 0);
        }
        let Some(card) = self.shared.cards.card(record.card_number) else {
            return note(work, AnswerCode::UnknownCard, None, 0, 0, 0);
        };
        let fen = i64::from(record.amount_fen);
        let mut state = card.account.lock();
        if card.account.in_doubt() {
            drop(state);
            return note(work, AnswerCode::ServiceUnavailable, None, 0, 0, 0);
        }
        let taken_at = record.taken_at_ms;
        let blocked = if card.replaced_at_ms != 0 && card.replaced_at_ms <= taken_at {
            Some(AnswerCode::CardReplaced)
        } else if state.state != CardState::Active && state.record.state_changed_at_ms <= taken_at {
            Some(state_code(state.state))
        } else if fen > state.limits.no_pin_fen_max {
            Some(AnswerCode::TransactionLimit)
        } else {
            None
        };
        let utility = terminal.category == MerchantCategory::Utility;
        let quarantine = match blocked {
            Some(code) => Some(code),
            None => match take(&mut state, fen, utility) {
                None => Some(AnswerCode::InsufficientFunds),
                Some(debit) => {
                    drop(state);
                    work.taken.push(Movement {
                        account: Arc::clone(&card.account),
                        main_fen: debit.main_fen,
                        restricted_fen: debit.restricted_fen,
                        spent_fen: 0,
                    });
                    let first = self.post_sale(
                        work,
                        terminal,
                        sequence,
                        record.card_number,
                        card.account.number,
                        &debit,
                        TransferKind::OfflinePurchase,
                        record.meal_period,
                        taken_at,
                    );
                    return note(work, AnswerCode::Approved, Some(first), debit.balance_fen, 0, 0);
                }
            },
        };
        let balance_fen = state.balance_fen;
        drop(state);
        let code = quarantine.unwrap_or(AnswerCode::InsufficientFunds);
        let first = work.transfer(
            origin,
            Leg {
                debit: AccountId::single(crate::account::AccountKind::Suspense),
                credit: AccountId::merchant(terminal.merchant_id),
                amount_fen: fen,
                kind: TransferKind::OfflineQuarantine,
                corrects: 0,
                meal_period: record.meal_period,
                timestamp_ms: taken_at,
                continues: false,
            },
        );
        note(work, code, Some(first), balance_fen, Entry::QUARANTINED, 0)
    }

    /// The transfer an offline record was posted or quarantined under (0 if it was
    /// refused), if the record has been seen before.
    fn offline_seen(&self, work: &Work, terminal_id: u32, sequence: u64) -> Option<u64> {
        if let Some((_, transfer_id)) = work.offline_records.get(&(terminal_id, sequence)) {
            return Some(*transfer_id);
        }
        let journal = self.shared.store.cf(&self.journal);
        let bytes =
            self.shared.store.db().get_cf(journal, offline_key(terminal_id, sequence)).ok()??;
        Some(bytes.get(2..10).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
    }
}

fn offline_key(terminal_id: u32, sequence: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = shard_key::OFFLINE_RECORD;
    key[1..5].copy_from_slice(&terminal_id.to_be_bytes());
    key[5..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn offline_value(code: AnswerCode, transfer_id: u64) -> [u8; 10] {
    let mut value = [0u8; 10];
    value[..2].copy_from_slice(&code.to_wire().to_le_bytes());
    value[2..].copy_from_slice(&transfer_id.to_le_bytes());
    value
}

/// Whether a card may take a debit or credit now.
fn usable(card: &CardEntry, state: &AccountState, date: BusinessDate) -> Result<(), AnswerCode> {
    if card.replaced_at_ms != 0 {
        return Err(AnswerCode::CardReplaced);
    }
    if state.state != CardState::Active {
        return Err(state_code(state.state));
    }
    if state.record.expiry_date < date.to_yyyymmdd() {
        return Err(AnswerCode::CardExpired);
    }
    Ok(())
}

const fn state_code(state: CardState) -> AnswerCode {
    match state {
        CardState::Active => AnswerCode::Approved,
        CardState::Lost => AnswerCode::CardLost,
        CardState::Frozen => AnswerCode::CardFrozen,
        CardState::Closed => AnswerCode::CardClosed,
        CardState::Replaced => AnswerCode::CardReplaced,
    }
}

/// A purchase's checks at the card, in order, and its debit, all under the account's
/// lock: state and expiry, the per-purchase and daily limits, the PIN above the no-PIN
/// limit, then the funds.
fn debit_purchase(
    state: &mut AccountState,
    card: &CardEntry,
    terminal: &Terminal,
    submission: &Submission,
    purchase: &Purchase,
    date: BusinessDate,
) -> Result<Debit, AnswerCode> {
    usable(card, state, date)?;
    let fen = i64::from(purchase.amount_fen);
    if fen > state.limits.transaction_fen_max {
        return Err(AnswerCode::TransactionLimit);
    }
    if state.spent_on(date) + fen > state.limits.daily_fen_max {
        return Err(AnswerCode::DailyLimit);
    }
    if fen > state.limits.no_pin_fen_max {
        check_pin(state, terminal, submission, purchase)?;
    }
    let utility = terminal.category == MerchantCategory::Utility;
    let debit = take(state, fen, utility).ok_or(AnswerCode::InsufficientFunds)?;
    state.add_spent(date, fen);
    Ok(debit)
}

/// Takes `fen` from a card: the restricted purse first at a utility, then the main.
fn take(state: &mut AccountState, fen: i64, utility: bool) -> Option<Debit> {
    let restricted_fen = if utility { state.restricted_fen.clamp(0, fen) } else { 0 };
    let main_fen = fen - restricted_fen;
    if main_fen > state.balance_fen {
        return None;
    }
    state.restricted_fen -= restricted_fen;
    state.balance_fen -= main_fen;
    Some(Debit {
        restricted_fen,
        main_fen,
        balance_fen: state.balance_fen,
        restricted_after_fen: state.restricted_fen,
    })
}

fn check_pin(
    state: &mut AccountState,
    terminal: &Terminal,
    submission: &Submission,
    purchase: &Purchase,
) -> Result<(), AnswerCode> {
    let Some(block) = purchase.pin_block else {
        return Err(AnswerCode::PinRequired);
    };
    if state.pin_failures >= PIN_FAILURES_MAX {
        return Err(AnswerCode::PinLocked);
    }
    let Some(hash) = state.record.pin.as_ref() else {
        return Err(AnswerCode::WrongPin);
    };
    let opened = MacKey::new(submission.mac_algorithm, &terminal.key()).ok().and_then(|key| {
        let context = PinContext {
            terminal_id: terminal.id,
            sequence: submission.sequence,
            card_number: purchase.card_number,
        };
        block.open(&key.derive(PIN_KEY_LABEL), context).ok()
    });
    if opened.is_some_and(|pin| hash.matches(&pin)) {
        state.pin_failures = 0;
        Ok(())
    } else {
        state.pin_failures += 1;
        Err(if state.pin_failures >= PIN_FAILURES_MAX {
            AnswerCode::PinLocked
        } else {
            AnswerCode::WrongPin
        })
    }
}

/// The answer that refuses `request` with `code` before anything was decided.
pub(crate) fn refusal(request: &Request, code: AnswerCode) -> Answer {
    refusal_of(request.message_type(), code)
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
    pub next_transfer_id: u64,
    pub next_batch: u64,
    pub last_date: u32,
    /// The seal of the journal's last batch ([`Seal::GENESIS`] if it has none sealed).
    pub last_seal: Seal,
    pub windows: HashMap<u32, TerminalWindow>,
}
