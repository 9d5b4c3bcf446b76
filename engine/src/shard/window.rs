//! The retry window: the answers a terminal's retries are served from, and their
//! rebuilding from the journal at open.

use super::*;

/// One retained answer of a terminal.
#[derive(Debug, Clone)]
pub(super) struct WindowEntry {
    pub(super) sequence: u64,
    pub(super) message_type: MessageType,
    pub(super) code: AnswerCode,
    pub(super) transfer_id: u64,
    pub(super) card_number: u64,
    pub(super) amount_fen: u32,
    pub(super) balance_fen: i64,
    pub(super) restricted_fen: i64,
    /// The journal batch holding it; `None` for answers that wrote nothing.
    pub(super) batch: Option<[u8; 16]>,
    /// A reversal arrived before this sequence did: the original is refused.
    pub(super) tombstone: bool,
    /// The request was reversed.
    pub(super) reversed: bool,
    /// Balance inquiries: card state and expiry.
    pub(super) card_state: CardState,
    pub(super) expiry_date: u32,
    /// Offline uploads: what became of each record.
    pub(super) offline: Option<Box<[OfflineResult]>>,
}

impl WindowEntry {
    pub(super) fn new(sequence: u64, message_type: MessageType, code: AnswerCode) -> Self {
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
    pub(super) fn answer(&self, duplicate: bool) -> Answer {
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
    pub(super) last_sequence: u64,
    /// Every sequence at or below this that is not retained is stale.
    pub(super) floor: u64,
    blacklist_version: u64,
    entries: VecDeque<WindowEntry>,
}

impl TerminalWindow {
    pub(super) fn find(&self, sequence: u64) -> Option<&WindowEntry> {
        self.entries.iter().rev().find(|entry| entry.sequence == sequence)
    }

    pub(super) fn find_mut(&mut self, sequence: u64) -> Option<&mut WindowEntry> {
        self.entries.iter_mut().rev().find(|entry| entry.sequence == sequence)
    }

    pub(super) fn push(&mut self, entry: WindowEntry) {
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
    pub(super) fn operand(&self, batch: [u8; 16]) -> TerminalState {
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
pub(super) fn replay(window: &mut TerminalWindow, batch: &Batch, key: [u8; 16], entry: &Entry) {
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
