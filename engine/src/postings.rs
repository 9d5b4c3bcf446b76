//! What a batch of transfers does to balances and indexes, gathered so that each
//! account is written once per batch.
//!
//! Every journal (a shard's or the control plane's) commits its batch together with
//! the writes derived from it: one merge operand per account touched, one for the
//! card-pool control total, and one statement index key per card movement.

use std::collections::HashMap;

use rocksdb::WriteBatch;

use crate::account::{AccountId, AccountKind};
use crate::cards::CardMoney;
use crate::date::BusinessDate;
use crate::journal::Transfer;
use crate::store::{CF_BALANCES, CF_INDEX, KEY_CARD_POOL, Store};

/// The derived writes of one batch.
#[derive(Debug, Default)]
pub struct Postings {
    cards: HashMap<u64, CardMoney>,
    accounts: HashMap<AccountId, i64>,
    card_pool_fen: i64,
    index: Vec<[u8; 24]>,
}

impl Postings {
    /// Adds one transfer's two postings.
    pub fn add(&mut self, transfer: &Transfer) {
        self.post(transfer.debit, -transfer.amount_fen, transfer);
        self.post(transfer.credit, transfer.amount_fen, transfer);
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

    /// Adds `fen` to a card's spending on `date` (negative for a reversed purchase).
    pub fn add_spent(&mut self, card_account: u64, date: BusinessDate, fen: i64) {
        let money = self.cards.entry(card_account).or_default();
        money.spent_date = date.to_yyyymmdd();
        money.spent_fen += fen;
    }

    /// Whether there is nothing to write.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty() && self.accounts.is_empty()
    }

    /// Writes the merges and index keys into `batch`.
    ///
    /// # Panics
    /// If the postings do not balance: every debit has its credit, so the batch's
    /// account movements must sum to zero before anything is written.
    pub fn write(&self, store: &Store, batch: &mut WriteBatch) {
        let card_net: i64 =
            self.cards.values().map(|money| money.balance_fen + money.restricted_fen).sum();
        let other_net: i64 = self.accounts.values().sum();
        assert_eq!(card_net + other_net, 0, "a batch's postings sum to zero");
        assert_eq!(card_net, self.card_pool_fen, "the card pool moves by the card postings");
        let balances = store.cf(CF_BALANCES);
        for (account, money) in &self.cards {
            batch.merge_cf(
                balances,
                AccountId::card(*account).to_u64().to_be_bytes(),
                money.encode(),
            );
        }
        for (account, fen) in &self.accounts {
            if *fen != 0 {
                batch.merge_cf(balances, account.to_u64().to_be_bytes(), fen.to_le_bytes());
            }
        }
        if self.card_pool_fen != 0 {
            batch.merge_cf(balances, KEY_CARD_POOL, self.card_pool_fen.to_le_bytes());
        }
        let index = store.cf(CF_INDEX);
        for key in &self.index {
            batch.put_cf(index, key, []);
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
