//! Terminal keys at rest: sealed with the master key, a store from before sealing
//! sealed when it opens, the wrong master key refused by name, and a rotation of the
//! master key that seals every secret anew.

use onecard_engine::LedgerError;
use onecard_engine::cards::CardType;
use onecard_engine::directory::TerminalRecord;
use onecard_engine::rekey;
use onecard_engine::sealing::{MasterKey, SealError};
use onecard_engine::store::{CF_CONTROL, Store, control_key, prefixed_key};
use onecard_engine::verify::verify;
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

#[test]
fn a_master_key_rotation_seals_every_secret_anew_and_the_history_still_checks() {
    let mut campus = Campus::new("sealing-rotate");
    campus.open_card(1001, CardType::Student);
    campus.top_up(1001, 20_00);
    assert_eq!(campus.buy(campus.terminals.canteen_a, 1001, 3_00).code, AnswerCode::Approved);
    campus.ledger.take().expect("open").close();
    let old = campus.config.master_key.clone();
    let new = MasterKey::generate().expect("random");
    {
        let store = Store::open(campus.dir.path(), 2).expect("opens");
        let stranger = MasterKey::generate().expect("random");
        assert!(matches!(
            rekey::rotate(&store, &stranger, &new),
            Err(LedgerError::Sealing(SealError::WrongChainKey))
        ));
        assert!(rekey::opens_with(&store, &old).is_ok(), "a refused rotation wrote nothing");

        let rotation = rekey::rotate(&store, &old, &new).expect("rotates");
        assert_eq!(rotation.terminal_keys, 6);
        assert!(rekey::opens_with(&store, &new).is_ok());
        assert!(matches!(
            rekey::opens_with(&store, &old),
            Err(LedgerError::Sealing(SealError::WrongChainKey))
        ));
        let chain = onecard_engine::chain::load(&store, &new).expect("opens with the new key");
        let report = verify(&store, Some(&chain), None).expect("reads");
        assert!(report.is_clean() && report.sealed_batches == report.batches, "{report}");
    }
    match onecard_engine::Ledger::open(campus.dir.path(), campus.config.clone()) {
        Err(LedgerError::Sealing(SealError::WrongKey { .. })) => {}
        other => panic!("opened with the retired master key: {:?}", other.map(|_| ())),
    }
    campus.config.master_key = new;
    campus.reopen();
    let canteen = campus.terminals.canteen_a;
    assert_eq!(
        campus.config.master_key.open(canteen, &stored_record(&campus, canteen).sealed_key),
        Ok(key(canteen))
    );
    assert_eq!(campus.buy(canteen, 1001, 2_00).code, AnswerCode::Approved);
    campus.assert_verified();
    assert_eq!(campus.balance(1001), 15_00);
}
