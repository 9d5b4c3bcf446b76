//! `verify`: proves the ledger's invariants from disk, and says what is wrong.
//!
//! First it reads every key of every column family with RocksDB's block checksums
//! verified, so a flipped bit anywhere in a live SST file is found and named (RocksDB's
//! error gives the file and offset); a store that does not read back intact has its
//! corrupt families listed and its invariants left unchecked, since any sum over it
//! would be a guess. Then it reads every journal (each shard's and the control
//! plane's) from the first batch to the last and checks:
//! - every batch decodes, and its postings match its header (`journal::Batch::decode`);
//! - given the chain key, every sealed batch's seal follows the one before it in its
//!   journal ([`crate::chain`]), so a batch rewritten, removed or slipped in is named
//!   even if every balance was changed to match; and no unsealed batch follows a
//!   sealed one; the same of the audit log's records ([`crate::audit`]);
//! - transfer ids are dense within each journal, and every transfer is positive and
//!   between two different accounts;
//! - the sum of all debits equals the sum of all credits;
//! - every account's checkpointed balance equals the sum of its postings up to each
//!   journal's checkpoint watermark (`checkpoint.rs`), and every watermark names a
//!   batch its journal has;
//! - the card-pool control total equals the sum of card balances;
//! - no card purse is below zero;
//! - every terminal's idempotency record names batches in its journal, and every
//!   refund or reversal mark and offline record names a transfer that exists;
//! - where given, the in-memory card balances equal what the whole journal gives.

use std::collections::HashMap;

use rocksdb::IteratorMode;

use crate::account::{AccountId, AccountKind};
use crate::audit::{AUDIT_CHAIN, AuditRecord};
use crate::cards::CardMoney;
use crate::chain::{Chain, ChainKey, Seal};
use crate::journal::{Batch, CONTROL_JOURNAL, batch_key, first_transfer_id};
use crate::shard::TerminalState;
use crate::store::{
    CF_AUDIT, CF_BALANCES, KEY_CARD_POOL, Store, WATERMARK_PREFIX, before_first_batch,
    is_card_balance_key, journal_cf, shard_key, watermark_key,
};

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Batches read.
    pub batches: u64,
    /// Transfers read.
    pub transfers: u64,
    /// Batches that carry a seal.
    pub sealed_batches: u64,
    /// Audit records read.
    pub audit_records: u64,
    /// Audit records that carry a seal.
    pub sealed_audit_records: u64,
    /// Whether the seals were checked (the chain key was given).
    pub chain_checked: bool,
    /// Accounts with a balance.
    pub accounts: u64,
    /// Sum of all debits, fen.
    pub debits_fen: i64,
    /// Sum of all credits, fen.
    pub credits_fen: i64,
    /// Sum of card balances (main and restricted), fen.
    pub card_pool_fen: i64,
    /// Live SST files, every block of which was read and its checksum checked.
    pub sst_files: u64,
    /// Keys read in the checksum pass, over every column family.
    pub keys_checked: u64,
    /// Every broken invariant, in words that name the account, batch or key.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether every invariant holds.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} SST files and {} keys read back with checksums checked",
            self.sst_files, self.keys_checked
        )?;
        let chain = if self.chain_checked { "checked" } else { "not checked: no master key" };
        writeln!(
            f,
            "{} of {} batches and {} of {} audit records sealed; the journal chain {chain}",
            self.sealed_batches, self.batches, self.sealed_audit_records, self.audit_records
        )?;
        writeln!(
            f,
            "{} batches, {} transfers, {} accounts; debits {} fen, credits {} fen; card pool {} fen",
            self.batches,
            self.transfers,
            self.accounts,
            self.debits_fen,
            self.credits_fen,
            self.card_pool_fen
        )?;
        if self.problems.is_empty() {
            write!(f, "ledger verified: every invariant holds")
        } else {
            writeln!(f, "{} problem(s):", self.problems.len())?;
            for problem in &self.problems {
                writeln!(f, "- {problem}")?;
            }
            Ok(())
        }
    }
}

/// Broken seals named one by one in a journal; more are counted in one line.
const CHAIN_BREAKS_NAMED_MAX: u64 = 5;

/// Where a journal's chain stands as verify walks it.
#[derive(Clone, Copy)]
enum Link {
    /// No sealed batch yet: the journal began before the chain.
    Before,
    /// The last batch's seal, which the next must follow.
    After(Seal),
    /// The last batch could not be read, so the next one's seal cannot be checked.
    Unknown,
}

/// Walks one chain, a journal's batches or the audit log's records, in order.
struct ChainWalk<'a> {
    key: Option<&'a ChainKey>,
    /// The chain's id in its seals: the journal number, or [`AUDIT_CHAIN`].
    chain_id: u8,
    /// How problems name the chain (`journal 0`, `audit log`) and its links (`batch`).
    place: String,
    unit: &'static str,
    units: &'static str,
    link: Link,
    breaks: u64,
    /// The first link that must carry a seal (from the sealed chain key); 0: unknown.
    start: u64,
}

impl<'a> ChainWalk<'a> {
    fn new(
        chain: Option<&'a Chain>,
        chain_id: u8,
        place: String,
        units: [&'static str; 2],
    ) -> Self {
        let start = chain.map_or(0, |chain| {
            if chain_id == AUDIT_CHAIN {
                chain.starts.audit
            } else {
                chain.starts.journal(chain_id)
            }
        });
        let [unit, units] = units;
        let key = chain.map(|chain| &chain.key);
        Self { key, chain_id, place, unit, units, link: Link::Before, breaks: 0, start }
    }

    fn journal(chain: Option<&'a Chain>, journal: u8) -> Self {
        Self::new(chain, journal, format!("journal {journal}"), ["batch", "batches"])
    }

    fn audit(chain: Option<&'a Chain>) -> Self {
        Self::new(chain, AUDIT_CHAIN, "audit log".to_owned(), ["record", "records"])
    }

    /// Checks link `number`, which carries `seal` over `sealed` (its bytes before the
    /// seal); returns whether it carries a seal.
    fn link(
        &mut self,
        number: u64,
        seal: Option<Seal>,
        sealed: &[u8],
        report: &mut VerifyReport,
    ) -> bool {
        let (place, unit, units) = (&self.place, self.unit, self.units);
        let Some(seal) = seal else {
            let start = self.start;
            if start > 0 && number >= start {
                self.breaks += 1;
                if self.breaks <= CHAIN_BREAKS_NAMED_MAX {
                    report.problems.push(format!(
                        "{place} {unit} {number}: no seal, though the chain began at {unit} \
                         {start} (the seals were stripped, or the {unit} written by hand)"
                    ));
                }
            } else if matches!(self.link, Link::After(_)) {
                report.problems.push(format!(
                    "{place} {unit} {number}: no seal, after sealed {units} (written by \
                     hand, or by a build before the chain)"
                ));
            }
            return false;
        };
        let previous = match self.link {
            Link::Before => Some(Seal::GENESIS),
            Link::After(previous) => Some(previous),
            Link::Unknown => None,
        };
        self.link = Link::After(seal);
        let (Some(key), Some(previous)) = (self.key, previous) else { return true };
        if key.seal(self.chain_id, &previous, sealed).matches(&seal) {
            return true;
        }
        self.breaks += 1;
        if self.breaks <= CHAIN_BREAKS_NAMED_MAX {
            report.problems.push(format!(
                "{} {unit} {number}: its seal does not follow the {unit} before it \
                 (the {unit} was changed, one was removed or slipped in before it, or the \
                 master key is not this store's)",
                self.place
            ));
        }
        true
    }

    fn finish(self, report: &mut VerifyReport) {
        if self.breaks > CHAIN_BREAKS_NAMED_MAX {
            report.problems.push(format!(
                "{}: {} more {} whose seals are missing or do not follow",
                self.place,
                self.breaks - CHAIN_BREAKS_NAMED_MAX,
                self.units
            ));
        }
    }
}

/// Verifies the store. `chain` is the key the journals are sealed with (from the
/// master key); without it, seals are counted but not checked. `in_memory` holds
/// (card account, main, restricted) as the running ledger has them; it is compared
/// when given.
///
/// # Errors
/// If the store cannot be read for a reason other than corruption. A block whose
/// checksum fails, or a record that cannot be decoded, is a problem in the report.
pub fn verify(
    store: &Store,
    chain: Option<&Chain>,
    in_memory: Option<&[(u64, i64, i64)]>,
) -> Result<VerifyReport, rocksdb::Error> {
    let mut report = VerifyReport { chain_checked: chain.is_some(), ..VerifyReport::default() };
    check_checksums(store, &mut report)?;
    if !report.is_clean() {
        report.problems.push(
            "the invariants were not checked: the store must first read back intact \
             (restore the newest backup that verifies)"
                .to_owned(),
        );
        return Ok(report);
    }
    let mut derived: HashMap<AccountId, i64> = HashMap::new();
    // The postings after each journal's checkpoint watermark: the checkpoint does
    // not hold them yet, memory does.
    let mut after_checkpoint: HashMap<AccountId, i64> = HashMap::new();
    let mut last_ids: HashMap<u8, u64> = HashMap::new();
    let journals = (0..store.shards()).chain(std::iter::once(CONTROL_JOURNAL));
    for journal in journals {
        let cf = store.cf(&journal_cf(journal));
        let watermark = store
            .db()
            .get_cf(store.cf(CF_BALANCES), watermark_key(journal))?
            .and_then(|bytes| <[u8; 16]>::try_from(bytes.as_slice()).ok());
        if watermark.is_none() {
            report.problems.push(format!("journal {journal}: no checkpoint watermark"));
        }
        let watermark = watermark.unwrap_or(before_first_batch(journal));
        let mut watermark_found = watermark == before_first_batch(journal);
        let mut expected_id = first_transfer_id(journal);
        let mut walk = ChainWalk::journal(chain, journal);
        let start = batch_key(first_transfer_id(journal) - 1, 0);
        for item in
            store.db().iterator_cf(cf, IteratorMode::From(&start, rocksdb::Direction::Forward))
        {
            let (key, value) = item?;
            if key.len() != 16 || key[0] != journal {
                break;
            }
            report.batches += 1;
            let batch = match Batch::decode(&value) {
                Ok(batch) => batch,
                Err(error) => {
                    report
                        .problems
                        .push(format!("journal {journal} batch {}: {error}", hex::encode(&key)));
                    walk.link = Link::Unknown;
                    continue;
                }
            };
            if key.as_ref() != batch_key(batch.first_transfer_id, batch.number) {
                report.problems.push(format!(
                    "journal {journal} batch {} is stored under another key",
                    batch.number
                ));
            }
            if batch.first_transfer_id != expected_id {
                report.problems.push(format!(
                    "journal {journal} batch {}: first transfer {} where {expected_id} was next",
                    batch.number, batch.first_transfer_id
                ));
            }
            expected_id = batch.next_transfer_id();
            let checkpointed = key.as_ref() <= watermark.as_slice();
            watermark_found |= key.as_ref() == watermark.as_slice();
            if walk.link(batch.number, batch.seal, Batch::sealed_bytes(&value), &mut report) {
                report.sealed_batches += 1;
            }
            for transfer in &batch.transfers {
                report.transfers += 1;
                report.debits_fen += transfer.amount_fen;
                report.credits_fen += transfer.amount_fen;
                *derived.entry(transfer.debit).or_default() -= transfer.amount_fen;
                *derived.entry(transfer.credit).or_default() += transfer.amount_fen;
                if !checkpointed {
                    *after_checkpoint.entry(transfer.debit).or_default() -= transfer.amount_fen;
                    *after_checkpoint.entry(transfer.credit).or_default() += transfer.amount_fen;
                }
            }
        }
        walk.finish(&mut report);
        last_ids.insert(journal, expected_id);
        if !watermark_found {
            report.problems.push(format!(
                "journal {journal}: the checkpoint claims batch {}, which the journal does not have",
                hex::encode(watermark)
            ));
        }
    }
    if report.debits_fen != report.credits_fen {
        report.problems.push(format!(
            "debits {} fen differ from credits {} fen",
            report.debits_fen, report.credits_fen
        ));
    }
    let total: i64 = derived.values().sum();
    if total != 0 {
        report.problems.push(format!("account balances sum to {total} fen, not zero"));
    }
    if let Some(cards) = in_memory {
        for (account, main, restricted) in cards {
            let stored_main = derived.get(&AccountId::card(*account)).copied().unwrap_or(0);
            let stored_restricted =
                derived.get(&AccountId::card_restricted(*account)).copied().unwrap_or(0);
            if (*main, *restricted) != (stored_main, stored_restricted) {
                report.problems.push(format!(
                    "card account {account}: memory holds {main}/{restricted} fen, the journal {stored_main}/{stored_restricted}"
                ));
            }
        }
    }
    let mut checkpointed = derived;
    for (account, fen) in after_checkpoint {
        *checkpointed.entry(account).or_default() -= fen;
    }
    check_balances(store, checkpointed, &mut report)?;
    check_marks(store, &last_ids, &mut report)?;
    check_audit(store, chain, &mut report)?;
    Ok(report)
}

/// Walks the audit log's chain: every record parses, sits under its own sequence, and
/// (given the key) follows the record before it.
fn check_audit(
    store: &Store,
    chain: Option<&Chain>,
    report: &mut VerifyReport,
) -> Result<(), rocksdb::Error> {
    let mut walk = ChainWalk::audit(chain);
    for item in store.db().iterator_cf(store.cf(CF_AUDIT), IteratorMode::Start) {
        let (key, value) = item?;
        report.audit_records += 1;
        let stored_at = <[u8; 8]>::try_from(key.as_ref()).ok().map(u64::from_be_bytes);
        let record = match serde_json::from_slice::<AuditRecord>(&value) {
            Ok(record) if stored_at == Some(record.sequence) => record,
            Ok(record) => {
                report.problems.push(format!(
                    "audit record {} is stored under key {}",
                    record.sequence,
                    hex::encode(&key)
                ));
                walk.link = Link::Unknown;
                continue;
            }
            Err(error) => {
                report.problems.push(format!("audit key {}: {error}", hex::encode(&key)));
                walk.link = Link::Unknown;
                continue;
            }
        };
        let seal = record.carried_seal();
        if record.seal.is_some() && seal.is_none() {
            report
                .problems
                .push(format!("audit record {}: its seal is not a seal", record.sequence));
            walk.link = Link::Unknown;
            continue;
        }
        if walk.link(record.sequence, seal, &record.sealed_bytes(), report) {
            report.sealed_audit_records += 1;
        }
    }
    walk.finish(report);
    Ok(())
}

/// Reads every key of every column family with block checksums verified and without
/// filling the block cache; a failed read ends that family's pass as a problem naming
/// the family and (in RocksDB's words) the file and offset.
///
/// # Errors
/// If the live files cannot be listed.
pub fn check_checksums(store: &Store, report: &mut VerifyReport) -> Result<(), rocksdb::Error> {
    report.sst_files = store.db().live_files()?.len() as u64;
    for name in store.family_names() {
        let mut options = rocksdb::ReadOptions::default();
        options.set_verify_checksums(true);
        options.fill_cache(false);
        let mut keys = store.db().raw_iterator_cf_opt(store.cf(name), options);
        keys.seek_to_first();
        while keys.valid() {
            report.keys_checked += 1;
            keys.next();
        }
        if let Err(error) = keys.status() {
            report.problems.push(format!("column family {name}: {error}"));
        }
    }
    Ok(())
}

fn check_balances(
    store: &Store,
    mut derived: HashMap<AccountId, i64>,
    report: &mut VerifyReport,
) -> Result<(), rocksdb::Error> {
    let balances = store.cf(CF_BALANCES);
    let mut card_pool_stored = None;
    let mut card_pool = 0i64;
    // Each stored balance is checked against the postings and taken out of them, so
    // one map (not two) holds a large store's accounts.
    let mut compare = |account: AccountId, stored: i64, report: &mut VerifyReport| {
        let expected = derived.remove(&account).unwrap_or(0);
        if stored != expected {
            report.problems.push(format!(
                "{account}: stored balance {stored} fen, postings give {expected} fen"
            ));
        }
        if account.kind().is_card() {
            card_pool += stored;
        }
        if stored != 0 {
            report.accounts += 1;
        }
    };
    for item in store.db().iterator_cf(balances, IteratorMode::Start) {
        let (key, value) = item?;
        if key.first() == Some(&WATERMARK_PREFIX) {
            continue;
        }
        if key.as_ref() == KEY_CARD_POOL {
            card_pool_stored = <[u8; 8]>::try_from(value.as_ref()).ok().map(i64::from_le_bytes);
            continue;
        }
        let Some(raw) = <[u8; 8]>::try_from(key.as_ref()).ok().map(u64::from_be_bytes) else {
            report.problems.push(format!("balances: unknown key {}", hex::encode(&key)));
            continue;
        };
        let Ok(account) = AccountId::from_u64(raw) else {
            report.problems.push(format!("balances: key {raw:#x} names no account kind"));
            continue;
        };
        if is_card_balance_key(&key) {
            let Some(money) = CardMoney::decode(&value) else {
                report.problems.push(format!("balances: {account} holds {} bytes", value.len()));
                continue;
            };
            compare(account, money.balance_fen, report);
            compare(AccountId::card_restricted(account.number()), money.restricted_fen, report);
            if money.balance_fen < 0 || money.restricted_fen < 0 {
                report.problems.push(format!(
                    "card account {} is below zero: {}/{} fen",
                    account.number(),
                    money.balance_fen,
                    money.restricted_fen
                ));
            }
        } else {
            match <[u8; 8]>::try_from(value.as_ref()) {
                Ok(bytes) => compare(account, i64::from_le_bytes(bytes), report),
                Err(_) => {
                    report.problems.push(format!("balances: {account} holds {} bytes", value.len()))
                }
            }
        }
    }
    for (account, expected) in derived {
        if expected != 0 {
            report
                .problems
                .push(format!("{account}: postings give {expected} fen but no balance is stored"));
        }
    }
    report.card_pool_fen = card_pool;
    if card_pool_stored.unwrap_or(0) != card_pool {
        report.problems.push(format!(
            "card pool control total {} fen differs from the sum of card balances {card_pool} fen",
            card_pool_stored.unwrap_or(0)
        ));
    }
    let _ = AccountKind::Card;
    Ok(())
}

fn check_marks(
    store: &Store,
    last_ids: &HashMap<u8, u64>,
    report: &mut VerifyReport,
) -> Result<(), rocksdb::Error> {
    for shard in 0..store.shards() {
        let cf = store.cf(&journal_cf(shard));
        let next_id = last_ids.get(&shard).copied().unwrap_or(first_transfer_id(shard));
        let exists = |id: u64| id >= first_transfer_id(shard) && id < next_id;
        for item in store.db().iterator_cf(
            cf,
            IteratorMode::From(&[shard_key::TERMINAL_STATE], rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            match key.first().copied() {
                Some(shard_key::TERMINAL_STATE) => {
                    let Some(state) = TerminalState::decode(&value) else {
                        report.problems.push(format!(
                            "shard {shard}: unreadable terminal state {}",
                            hex::encode(&key)
                        ));
                        continue;
                    };
                    for batch in &state.batches {
                        if store.db().get_cf(cf, batch)?.is_none() {
                            report.problems.push(format!(
                                "shard {shard}: terminal state {} names missing batch {}",
                                hex::encode(&key[1..]),
                                hex::encode(batch)
                            ));
                        }
                    }
                }
                Some(shard_key::SALE_MARK) => {
                    let id = <[u8; 8]>::try_from(&key[1..]).map(u64::from_be_bytes).unwrap_or(0);
                    if !exists(id) {
                        report.problems.push(format!(
                            "shard {shard}: refund mark for missing transfer {id:#x}"
                        ));
                    }
                }
                Some(shard_key::OFFLINE_RECORD) => {
                    let id = value
                        .get(2..10)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_le_bytes);
                    if id != 0 && !exists(id) {
                        report.problems.push(format!(
                            "shard {shard}: offline record names missing transfer {id:#x}"
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
