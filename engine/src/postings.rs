//! What a durable batch record derives beyond itself: the one deterministic apply.
//!
//! A journal's batch record is the ledger. Everything else on disk is derived from it
//! by [`Postings::of`], a pure function of the record's transfers and entries: one
//! balance delta per account touched (a card's two purses and its spending of the
//! day folded into one [`CardMoney`]), the card-pool control total, and one statement
//! index key per card movement. The shard that commits a batch, the control plane,
//! the checkpointer, recovery after a restart and `verify` all call it, so the same
//! record gives the same state on any machine.
//!
//! None of it is written with the batch: the commit writes the record alone (and what
//! a retry must find at once), and the checkpointer (`checkpoint.rs`) writes what the
//! postings fold into, in the background, with the journal position they reflect.

use std::collections::HashMap;

use onecard_protocol::{AnswerCode, MessageType};
use rocksdb::{ColumnFamily, WriteBatch};

use crate::account::{AccountId, AccountKind};
use crate::cards::CardMoney;
use crate::date::BusinessDate;
use crate::journal::{Entry, Transfer};
use crate::store::KEY_CARD_POOL;

/// The derived changes of one batch, or of many folded together.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Postings {
    /// Card accounts by number: purse deltas and spending.
    pub cards: HashMap<u64, CardMoney>,
    /// Every other account: its balance delta.
    pub accounts: HashMap<AccountId, i64>,
    /// The card-pool control total's delta: the sum of every card movement.
    pub card_pool_fen: i64,
    /// Statement index keys, one per card movement ([`index_key`]).
    pub index: Vec<[u8; 24]>,
}

impl Postings {
    /// The one apply: what a batch of `date` with these transfers and entries changes.
    ///
    /// Spending of the day (for the daily limit) follows the entries: an approved
    /// purchase adds its amount, a reversal flagged [`Entry::SPENT_BACK`] gives its
    /// transfers' amount back. Offline purchases are not counted against the limit.
    ///
    /// # Panics
    /// If the postings do not balance: every debit has its credit, so a batch's
    /// account movements sum to zero (checked before a batch is written and when it
    /// is read back).
    #[must_use]
    pub fn of(date: BusinessDate, transfers: &[Transfer], entries: &[Entry]) -> Self {
        let mut postings = Self::default();
        for transfer in transfers {
            postings.post(transfer.debit, -transfer.amount_fen, transfer);
            postings.post(transfer.credit, transfer.amount_fen, transfer);
        }
        for entry in entries {
            let approved = entry.code == AnswerCode::Approved && entry.transfer_count > 0;
            let first = usize::try_from(entry.transfer_index).unwrap_or(usize::MAX);
            let Some(made) = transfers.get(first..first + usize::from(entry.transfer_count)) else {
                continue;
            };
            match entry.message_type {
                MessageType::Purchase if approved => {
                    let account = made[0].debit.number();
                    postings.add_spent(account, date, i64::from(entry.amount_fen));
                }
                MessageType::Reversal if approved && entry.flags & Entry::SPENT_BACK != 0 => {
                    let account = made[0].credit.number();
                    let fen: i64 = made.iter().map(|t| t.amount_fen).sum();
                    postings.add_spent(account, date, -fen);
                }
                _ => {}
            }
        }
        postings.check();
        postings
    }

    fn post(&mut self, account: AccountId, fen: i64, transfer: &Transfer) {
        match account.kind() {
            AccountKind::Card | AccountKind::CardRestricted => {
                let money = self.cards.entry(account.number()).or_default();
                if account.kind() == AccountKind::Card {
                    money.balance_fen += fen;
                } else {
                    money.restricted_fen += fen;
                }
                self.card_pool_fen += fen;
                self.index.push(index_key(account.number(), transfer.timestamp_ms, transfer.id));
            }
            _ => *self.accounts.entry(account).or_default() += fen,
        }
    }

    fn add_spent(&mut self, card_account: u64, date: BusinessDate, fen: i64) {
        let delta =
            CardMoney { spent_date: date.to_yyyymmdd(), spent_fen: fen, ..CardMoney::default() };
        let money = self.cards.entry(card_account).or_default();
        *money = money.merge(delta);
    }

    /// Folds `other` in: balances add, spending folds as [`CardMoney::merge`] does,
    /// index keys are kept. The fold is associative and commutative.
    pub fn fold(&mut self, other: Self) {
        for (account, money) in other.cards {
            let mine = self.cards.entry(account).or_default();
            *mine = mine.merge(money);
        }
        for (account, fen) in other.accounts {
            *self.accounts.entry(account).or_default() += fen;
        }
        self.card_pool_fen += other.card_pool_fen;
        self.index.extend(other.index);
    }

    /// Asserts the invariant of every fold of whole batches: the movements sum to
    /// zero, and the card pool moves by exactly the card postings.
    ///
    /// # Panics
    /// If either does not hold.
    pub fn check(&self) {
        let card_net: i64 =
            self.cards.values().map(|money| money.balance_fen + money.restricted_fen).sum();
        let other_net: i64 = self.accounts.values().sum();
        assert_eq!(card_net + other_net, 0, "postings of whole batches sum to zero");
        assert_eq!(card_net, self.card_pool_fen, "the card pool moves by the card postings");
    }

    /// Writes the balance merges (not the index keys) into `batch`, in key order: a
    /// memtable takes sorted inserts fastest, and every write waits for the one before
    /// it to be in the memtable.
    ///
    /// # Panics
    /// If the postings do not balance ([`Postings::check`]).
    pub fn write_balances(&self, balances: &ColumnFamily, batch: &mut WriteBatch) {
        self.check();
        let mut merges: Vec<([u8; 8], Vec<u8>)> =
            self.cards
                .iter()
                .filter(|(_, money)| **money != CardMoney::default())
                .map(|(account, money)| {
                    (AccountId::card(*account).to_u64().to_be_bytes(), money.encode().to_vec())
                })
                .chain(self.accounts.iter().filter(|(_, fen)| **fen != 0).map(|(account, fen)| {
                    (account.to_u64().to_be_bytes(), fen.to_le_bytes().to_vec())
                }))
                .collect();
        merges.sort_unstable_by_key(|(key, _)| *key);
        for (key, value) in &merges {
            batch.merge_cf(balances, key, value);
        }
        if self.card_pool_fen != 0 {
            batch.merge_cf(balances, KEY_CARD_POOL, self.card_pool_fen.to_le_bytes());
        }
    }
}

/// A card statement index key: card account (8, BE), time ms (8, BE), transfer id
/// (8, BE). Iterated backwards from a card's upper bound it gives the newest first.
#[must_use]
pub fn index_key(card_account: u64, timestamp_ms: u64, transfer_id: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&card_account.to_be_bytes());
    key[8..16].copy_from_slice(&timestamp_ms.to_be_bytes());
    key[16..].copy_from_slice(&transfer_id.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use onecard_protocol::MealPeriod;

    use super::*;
    use crate::journal::TransferKind;

    fn date() -> BusinessDate {
        BusinessDate::from_yyyymmdd(20_260_901).expect("a date")
    }

    fn transfer(id: u64, debit: AccountId, credit: AccountId, fen: i64) -> Transfer {
        Transfer {
            id,
            debit,
            credit,
            amount_fen: fen,
            kind: TransferKind::Purchase,
            business_date: date(),
            timestamp_ms: 1_000 + id,
            terminal_id: 1,
            sequence: id,
            corrects: 0,
            card_number: 7,
            meal_period: MealPeriod::Lunch,
            continues: false,
        }
    }

    fn entry(message_type: MessageType, index: u32, count: u8, fen: u32, flags: u8) -> Entry {
        Entry {
            terminal_id: 1,
            sequence: u64::from(index) + 1,
            message_type,
            code: AnswerCode::Approved,
            transfer_index: index,
            transfer_count: count,
            card_number: 7,
            amount_fen: fen,
            balance_fen: 0,
            restricted_balance_fen: 0,
            aux: 0,
            reference: 0,
            flags,
        }
    }

    #[test]
    fn a_purchase_and_its_same_day_reversal_give_the_spending_back() {
        let card = AccountId::card(7);
        let merchant = AccountId::merchant(3);
        let transfers = [transfer(1, card, merchant, 500), transfer(2, merchant, card, 500)];
        let entries = [
            entry(MessageType::Purchase, 0, 1, 500, 0),
            entry(MessageType::Reversal, 1, 1, 500, Entry::SPENT_BACK),
        ];
        let postings = Postings::of(date(), &transfers, &entries);
        let money = postings.cards[&7];
        assert_eq!((money.balance_fen, money.spent_fen), (0, 0));
        assert_eq!(money.spent_date, 20_260_901);
        assert_eq!(postings.index.len(), 2, "one index key per card movement");
        assert_eq!(postings.card_pool_fen, 0);
        let only_purchase = Postings::of(date(), &transfers[..1], &entries[..1]);
        assert_eq!(only_purchase.cards[&7].spent_fen, 500);
        assert_eq!(only_purchase.accounts[&merchant], 500);
    }

    #[test]
    fn folding_batches_equals_the_postings_of_their_union() {
        let card = AccountId::card(7);
        let merchant = AccountId::merchant(3);
        let transfers = [transfer(1, card, merchant, 300), transfer(2, card, merchant, 200)];
        let entries = [
            entry(MessageType::Purchase, 0, 1, 300, 0),
            entry(MessageType::Purchase, 1, 1, 200, 0),
        ];
        let whole = Postings::of(date(), &transfers, &entries);
        let mut folded = Postings::of(date(), &transfers[..1], &entries[..1]);
        let second = [entries[1]];
        let mut second_entry = second;
        second_entry[0].transfer_index = 0;
        folded.fold(Postings::of(date(), &transfers[1..], &second_entry));
        assert_eq!(folded.cards, whole.cards);
        assert_eq!(folded.accounts, whole.accounts);
        assert_eq!(folded.card_pool_fen, whole.card_pool_fen);
    }

    #[test]
    #[should_panic(expected = "sum to zero")]
    fn postings_that_do_not_balance_are_refused() {
        let mut postings = Postings::default();
        postings.accounts.insert(AccountId::merchant(1), 5);
        postings.check();
    }
}
