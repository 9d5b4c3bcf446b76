//! Corruption: `verify` reads every block back with its checksum and names a flipped
//! byte's file; it finds a balance no transfer explains and says which account.

use onecard_engine::account::AccountId;
use onecard_engine::cards::{CardMoney, CardType};
use onecard_engine::store::{CF_BALANCES, Store};
use onecard_engine::verify::verify;
use onecard_protocol::AnswerCode;

use crate::support::*;

/// A campus with a day's purchases on both shards, every family flushed to SST files,
/// closed. Returns it (closed) and the live SST files of the shard-0 journal.
fn flushed_and_closed(name: &str) -> (Campus, Vec<String>) {
    let mut campus = Campus::new(name);
    for card in 1001..1021 {
        campus.open_card(card, CardType::Student);
        campus.top_up(card, 100_00);
    }
    for round in 0..10 {
        for card in 1001..1021 {
            let canteen = if round % 2 == 0 {
                campus.terminals.canteen_a
            } else {
                campus.terminals.canteen_b
            };
            assert_eq!(campus.buy(canteen, card, 1_00).code, AnswerCode::Approved);
        }
    }
    let store = campus.ledger().store();
    for family in store.family_names() {
        store.db().flush_cf(store.cf(family)).expect("flushes");
    }
    let journal: Vec<String> = store
        .db()
        .live_files()
        .expect("lists")
        .into_iter()
        .filter(|file| file.column_family_name == "journal-0")
        .map(|file| file.name)
        .collect();
    assert!(!journal.is_empty(), "the shard-0 journal was flushed to a file");
    campus.ledger.take().expect("open").close();
    (campus, journal)
}

#[test]
fn a_flipped_byte_in_an_sst_file_is_named_and_fails_verification() {
    let (campus, journal) = flushed_and_closed("corrupt-sst");
    {
        let store = Store::open(campus.dir.path(), 2).expect("opens");
        let report = verify(&store, Some(&chain_key(&campus, &store)), None).expect("reads");
        assert!(report.is_clean(), "{report}");
        assert!(report.sst_files >= 3 && report.keys_checked > 200, "{report}");
    }
    // One bit of one key in the first data block of the journal's file.
    let name = journal[0].trim_start_matches('/');
    let path = campus.dir.path().join(name);
    let mut bytes = std::fs::read(&path).expect("reads the file");
    bytes[40] ^= 0x01;
    std::fs::write(&path, bytes).expect("writes it back");

    let store = Store::open(campus.dir.path(), 2).expect("opening reads no data block");
    let report = verify(&store, Some(&chain_key(&campus, &store)), None)
        .expect("corruption is a finding, not an error");
    assert!(!report.is_clean());
    let named = &report.problems[0];
    assert!(named.starts_with("column family journal-0: Corruption"), "{report}");
    assert!(named.contains(name), "the report names {name}: {report}");
    assert_eq!(report.problems.len(), 2, "one corrupt family, invariants unchecked: {report}");
    assert_eq!(report.batches, 0, "no sum is taken over a store that does not read back");
}

#[test]
fn a_tampered_card_balance_is_named_with_what_its_postings_give() {
    let (campus, _) = flushed_and_closed("corrupt-balance");
    let ledger = onecard_engine::Ledger::open(campus.dir.path(), campus.config.clone());
    let ledger = ledger.expect("opens");
    let account = ledger.card(1007).expect("card").account_number;
    ledger.close();
    let store = Store::open(campus.dir.path(), 2).expect("opens");
    // One yuan more in the purse, written straight into RocksDB, as an intruder would.
    let key = AccountId::card(account).to_u64().to_be_bytes();
    let balances = store.cf(CF_BALANCES);
    let stored = store.db().get_cf(balances, key).expect("reads").expect("a balance");
    let mut money = CardMoney::decode(&stored).expect("decodes");
    assert_eq!(money.balance_fen, 90_00);
    money.balance_fen += 1_00;
    store.db().put_cf(balances, key, money.encode()).expect("writes");

    let report = verify(&store, Some(&chain_key(&campus, &store)), None).expect("reads");
    assert!(!report.is_clean());
    let expected =
        format!("{}: stored balance 9100 fen, postings give 9000 fen", AccountId::card(account));
    assert!(report.problems.contains(&expected), "{report}");
    assert!(
        report.problems.iter().any(|p| p.starts_with("card pool control total")),
        "the card pool no longer adds up either: {report}"
    );
}
