//! The journal chain: history rewritten together with its balances, which every sum
//! in `verify` accepts, is named by the seal that no longer follows; a store from
//! before the chain is sealed from its next batch on; the audit log is chained alike.

use onecard_engine::account::AccountId;
use onecard_engine::audit::{AuditEntry, AuditRecord, Outcome};
use onecard_engine::cards::CardType;
use onecard_engine::chain::KEY_CHAIN_KEY;
use onecard_engine::chain::{Chain, ChainStarts, SEAL_BYTES};
use onecard_engine::journal::{Batch, CONTROL_JOURNAL, UNSEALED_RECORD_VERSION};
use onecard_engine::sealing::MasterKey;
use onecard_engine::sealing::SealError;
use onecard_engine::store::{CF_AUDIT, CF_BALANCES, CF_META, Store, journal_cf};
use onecard_engine::verify::verify;
use onecard_protocol::AnswerCode;

use crate::support::*;

/// Bytes of a batch record's header, and of one transfer in it (docs/ARCHITECTURE.md).
const HEADER_BYTES: usize = 48;
const TRANSFER_BYTES: usize = 70;

/// A campus whose canteen A (merchant 2, shard 0) sold 30 meals, one batch each.
fn campus_with_sales(name: &str) -> Campus {
    let mut campus = Campus::new(name);
    for card in 2001..2011 {
        campus.open_card(card, CardType::Student);
        campus.top_up(card, 50_00);
    }
    for round in 0..3 {
        for card in 2001..2011 {
            let amount = 5_00 + round * 10 + u32::try_from(card % 7).expect("small");
            let answer = campus.buy(campus.terminals.canteen_a, card, amount);
            assert_eq!(answer.code, AnswerCode::Approved);
        }
    }
    campus.ledger.take().expect("open").close();
    campus
}

/// Every batch of a journal: key and record, in commit order.
fn batches(store: &Store, journal: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .db()
        .iterator_cf(store.cf(&journal_cf(journal)), rocksdb::IteratorMode::Start)
        .map(|item| item.expect("reads"))
        .filter(|(key, _)| key.len() == 16 && key[0] == journal)
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect()
}

fn add_to_balance(store: &Store, account: AccountId, fen: i64) {
    let balances = store.cf(CF_BALANCES);
    let key = account.to_u64().to_be_bytes();
    let stored = store.db().get_cf(balances, key).expect("reads");
    let fen_before =
        stored.map_or(0, |value| i64::from_le_bytes(value.as_slice().try_into().expect("8 bytes")));
    store.db().put_cf(balances, key, (fen_before + fen).to_le_bytes()).expect("writes");
}

#[test]
fn a_sale_moved_to_another_merchant_with_both_balances_is_named_by_its_seal() {
    let campus = campus_with_sales("chain-rewrite");
    let store = Store::open(campus.dir.path(), 2).expect("opens");
    let chain = chain_key(&campus, &store);
    let report = verify(&store, Some(&chain), None).expect("reads");
    assert!(report.is_clean(), "{report}");
    assert!(report.chain_checked);
    assert_eq!(report.sealed_batches, report.batches, "every batch is sealed: {report}");

    // An intruder with write access moves one meal's money from canteen A to the shop
    // (merchant 4, also on shard 0), in the journal and in both balances.
    let journal = batches(&store, 0);
    let (key, record) = &journal[journal.len() / 2];
    let batch = Batch::decode(record).expect("decodes");
    let (index, sale) = batch
        .transfers
        .iter()
        .enumerate()
        .find(|(_, transfer)| transfer.credit == AccountId::merchant(2))
        .expect("a canteen sale");
    let mut forged = record.clone();
    let at = HEADER_BYTES + index * TRANSFER_BYTES + 8;
    forged[at..at + 8].copy_from_slice(&AccountId::merchant(4).to_u64().to_le_bytes());
    store.db().put_cf(store.cf(&journal_cf(0)), key, &forged).expect("writes");
    add_to_balance(&store, AccountId::merchant(2), -sale.amount_fen);
    add_to_balance(&store, AccountId::merchant(4), sale.amount_fen);

    let unchained = verify(&store, None, None).expect("reads");
    assert!(unchained.is_clean(), "every sum still agrees, as the intruder meant: {unchained}");
    assert!(!unchained.chain_checked);

    let report = verify(&store, Some(&chain), None).expect("reads");
    assert_eq!(
        report.problems,
        vec![format!(
            "journal 0 batch {}: its seal does not follow the batch before it (the batch was \
             changed, one was removed or slipped in before it, or the master key is not this \
             store's)",
            batch.number
        )],
        "the forged batch alone is named; the next one still follows its stored seal"
    );

    // Another master key: no batch follows, and the report stays short.
    let starts = ChainStarts::default();
    let stranger = Chain {
        key: MasterKey::generate().expect("random").new_chain_key(&starts).expect("seals").0,
        starts,
    };
    let report = verify(&store, Some(&stranger), None).expect("reads");
    let shard_0: Vec<&String> =
        report.problems.iter().filter(|p| p.starts_with("journal 0")).collect();
    assert_eq!(shard_0.len(), 6, "five named, the rest counted: {report}");
    let more = journal.len() - 5;
    assert_eq!(
        shard_0[5],
        &format!("journal 0: {more} more batches whose seals are missing or do not follow")
    );
}

#[test]
fn a_store_from_before_the_chain_is_sealed_from_its_next_batch_and_checked_from_there() {
    let mut campus = campus_with_sales("chain-legacy");
    let (legacy_batches, chain_start) = {
        // Every record rewritten as the build before the chain wrote it: version 1,
        // no seal, and no chain key in `meta`.
        let store = Store::open(campus.dir.path(), 2).expect("opens");
        store.db().delete_cf(store.cf(CF_META), KEY_CHAIN_KEY).expect("deletes");
        let mut count = 0;
        let mut last_number = 0;
        for journal in [0, 1, CONTROL_JOURNAL] {
            for (key, mut record) in batches(&store, journal) {
                if journal == 0 {
                    last_number = Batch::decode(&record).expect("decodes").number;
                }
                record[1] = UNSEALED_RECORD_VERSION;
                record.truncate(record.len() - SEAL_BYTES);
                store.db().put_cf(store.cf(&journal_cf(journal)), key, record).expect("writes");
                count += 1;
            }
        }
        let report = verify(&store, Some(&chain_key(&campus, &store)), None);
        let report = report.expect("reads");
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.sealed_batches, 0);
        (count, last_number + 1)
    };

    campus.reopen();
    for card in 2001..2006 {
        campus.top_up(card, 10_00);
        assert_eq!(campus.buy(campus.terminals.canteen_a, card, 3_00).code, AnswerCode::Approved);
    }
    let report = campus.ledger().verify().expect("reads");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.batches - report.sealed_batches, legacy_batches, "{report}");
    assert!(report.sealed_batches >= 10, "{report}");

    // A sealed journal's newest batch stripped of its seal is not taken for an old one:
    // the chain key, stored at that first open, holds where the chain began.
    campus.ledger.take().expect("open").close();
    let store = Store::open(campus.dir.path(), 2).expect("opens");
    let journal = batches(&store, 0);
    let (key, record) = journal.last().expect("a batch");
    let number = Batch::decode(record).expect("decodes").number;
    let mut stripped = record.clone();
    stripped[1] = UNSEALED_RECORD_VERSION;
    stripped.truncate(stripped.len() - SEAL_BYTES);
    store.db().put_cf(store.cf(&journal_cf(0)), key, stripped).expect("writes");
    let report = verify(&store, Some(&chain_key(&campus, &store)), None);
    assert_eq!(
        report.expect("reads").problems,
        vec![format!(
            "journal 0 batch {number}: no seal, though the chain began at batch {chain_start} \
             (the seals were stripped, or the batch written by hand)"
        )]
    );
}

#[test]
fn a_journal_stripped_of_every_seal_does_not_pass_for_one_from_before_the_chain() {
    let campus = campus_with_sales("chain-stripped");
    let store = Store::open(campus.dir.path(), 2).expect("opens");
    let journal = batches(&store, 0);
    for (key, record) in &journal {
        let mut stripped = record.clone();
        stripped[1] = UNSEALED_RECORD_VERSION;
        stripped.truncate(stripped.len() - SEAL_BYTES);
        store.db().put_cf(store.cf(&journal_cf(0)), key, stripped).expect("writes");
    }
    let report = verify(&store, Some(&chain_key(&campus, &store)), None).expect("reads");
    let named: Vec<&String> =
        report.problems.iter().filter(|p| p.contains("no seal, though the chain began")).collect();
    assert_eq!(named.len(), 5, "five named: {report}");
    assert!(named[0].starts_with("journal 0 batch 1: no seal"), "{report}");
    let more = journal.len() - 5;
    assert!(report.problems.contains(&format!(
        "journal 0: {more} more batches whose seals are missing or do not follow"
    )));
    // The starts are bound into the chain key's seal: moving them does not open it.
    let stored = store.db().get_cf(store.cf(CF_META), KEY_CHAIN_KEY).expect("reads");
    let text = String::from_utf8(stored.expect("stored")).expect("text");
    let moved = text.replacen("\"0\":1", "\"0\":999", 1);
    assert_ne!(moved, text);
    store.db().put_cf(store.cf(CF_META), KEY_CHAIN_KEY, moved).expect("writes");
    assert!(matches!(
        onecard_engine::chain::load(&store, &campus.config.master_key),
        Err(onecard_engine::chain::ChainError::Sealing(SealError::WrongChainKey))
    ));
}

#[test]
fn an_audit_record_changed_by_hand_is_named_by_its_seal_and_the_log_continues_after_a_restart() {
    let mut campus = Campus::new("chain-audit");
    let entry = |actor: &'static str, outcome| AuditEntry {
        actor,
        action: "card.freeze",
        target: "card:2001",
        outcome,
        from: "10.2.3.4",
        detail: "",
    };
    for actor in ["clerk.wang", "clerk.li", "clerk.wang"] {
        campus.ledger().audit(&entry(actor, Outcome::Ok)).expect("audited");
    }
    campus.ledger().audit(&entry("-", Outcome::Refused)).expect("audited");
    campus.reopen();
    let after = campus.ledger().audit(&entry("clerk.zhao", Outcome::Ok)).expect("audited");
    assert_eq!(after.sequence, 5, "the log goes on where it stopped, with no gap");
    let report = campus.ledger().verify().expect("reads");
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.audit_records, report.sealed_audit_records), (5, 5));
    campus.ledger.take().expect("open").close();

    // Who froze the card, changed after the fact.
    let store = Store::open(campus.dir.path(), 2).expect("opens");
    let audit = store.cf(CF_AUDIT);
    let key = 2u64.to_be_bytes();
    let stored = store.db().get_cf(audit, key).expect("reads").expect("record 2");
    let mut record: AuditRecord = serde_json::from_slice(&stored).expect("parses");
    assert_eq!(record.actor, "clerk.li");
    record.actor = "clerk.wang".to_owned();
    store.db().put_cf(audit, key, serde_json::to_vec(&record).expect("json")).expect("writes");

    let report = verify(&store, Some(&chain_key(&campus, &store)), None).expect("reads");
    assert_eq!(
        report.problems,
        vec![
            "audit log record 2: its seal does not follow the record before it (the record \
             was changed, one was removed or slipped in before it, or the master key is not \
             this store's)"
                .to_owned()
        ]
    );
    // A record removed: the one after it no longer follows.
    store.db().put_cf(audit, key, &stored).expect("puts it back");
    store.db().delete_cf(audit, 4u64.to_be_bytes()).expect("deletes");
    let report = verify(&store, Some(&chain_key(&campus, &store)), None).expect("reads");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(report.problems[0].starts_with("audit log record 5: its seal does not follow"));

    // A last record that does not parse does not stop the ledger: the log goes on
    // after it, and verify names it.
    store.db().put_cf(audit, 6u64.to_be_bytes(), b"not json").expect("writes");
    drop(store);
    campus.reopen();
    let next = campus.ledger().audit(&entry("clerk.zhao", Outcome::Ok)).expect("audited");
    assert_eq!(next.sequence, 7);
    let report = campus.ledger().verify().expect("reads");
    assert!(
        report.problems.iter().any(|p| p.starts_with("audit key 0000000000000006:")),
        "{report}"
    );
}
