//! Terminal keys at rest: sealed with the master key, a store from before sealing
//! sealed when it opens, and the wrong master key refused by name.

use onecard_engine::LedgerError;
use onecard_engine::cards::CardType;
use onecard_engine::directory::TerminalRecord;
use onecard_engine::sealing::{MasterKey, SealError};
use onecard_engine::store::{CF_CONTROL, control_key, prefixed_key};
use onecard_protocol::AnswerCode;

use crate::support::*;

fn stored_record(campus: &Campus, terminal: u32) -> TerminalRecord {
    let store = campus.ledger().store();
    let key = prefixed_key(control_key::TERMINAL, &terminal.to_be_bytes());
    let bytes = store.db().get_cf(store.cf(CF_CONTROL), key).expect("reads").expect("stored");
    serde_json::from_slice(&bytes).expect("a terminal record")
}

#[test]
fn a_key_stored_in_the_clear_is_sealed_when_the_store_opens_and_still_signs() {
    let mut campus = Campus::new("sealing-upgrade");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 10_00);
    let canteen = campus.terminals.canteen_a;
    let sealed = stored_record(&campus, canteen);
    assert!(sealed.clear_key.is_none());
    assert!(!sealed.sealed_key.contains(&key(canteen).to_hex()));
    // As a build before sealing wrote it: the key in the clear.
    let legacy = format!(
        r#"{{"id":{canteen},"merchant_id":{},"key":"{}","enabled":true}}"#,
        sealed.merchant_id,
        key(canteen).to_hex()
    );
    let store = campus.ledger().store();
    let at = prefixed_key(control_key::TERMINAL, &canteen.to_be_bytes());
    store.db().put_cf(store.cf(CF_CONTROL), at, legacy).expect("writes");

    campus.reopen();
    let upgraded = stored_record(&campus, canteen);
    assert!(upgraded.clear_key.is_none(), "sealed at open");
    assert_ne!(upgraded.sealed_key, sealed.sealed_key, "a fresh nonce");
    assert_eq!(campus.config.master_key.open(canteen, &upgraded.sealed_key), Ok(key(canteen)));
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::Approved);
    campus.reopen();
    assert_eq!(campus.buy(canteen, 1001, 1_00).code, AnswerCode::Approved);
}

#[test]
fn a_rotated_key_is_sealed_too_and_the_wrong_master_key_is_refused_by_terminal() {
    let mut campus = Campus::new("sealing-wrong-key");
    let canteen = campus.terminals.canteen_b;
    let new_key = onecard_protocol::TerminalKey::new([0xA7; 32]);
    campus.ledger().rotate_terminal_key(canteen, &new_key).expect("rotates");
    let record = stored_record(&campus, canteen);
    assert_eq!(campus.config.master_key.open(canteen, &record.sealed_key), Ok(new_key));

    campus.ledger.take().expect("open").close();
    let wrong = onecard_engine::LedgerConfig {
        master_key: MasterKey::generate().expect("random"),
        ..campus.config.clone()
    };
    match onecard_engine::Ledger::open(campus.dir.path(), wrong) {
        Err(LedgerError::Sealing(SealError::WrongKey { terminal_id })) => {
            assert_eq!(terminal_id, campus.terminals.counter, "the first terminal is named");
        }
        other => panic!("opened with the wrong master key: {:?}", other.map(|_| ())),
    }
    campus.reopen();
    assert_eq!(campus.ledger().terminals().len(), 6, "the right key opens every terminal");
}
