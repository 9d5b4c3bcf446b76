//! The online service hall's credentials: each card's hall password (查询密码), apart
//! from its purchase PIN, with which the cardholder logs in to the hall.
//!
//! The engine keeps the record and never sees the password: the caller hashes it
//! (Argon2id) and decides a login; the record holds the hash, whether the card centre
//! issued it (it must then be changed at the first login), the failures since the
//! last success and the lockout they caused. One record per card, in the control
//! family at `h` ++ card number, written synced through the control journal's door
//! (so replicated on a cell, as every control write is).

use serde::{Deserialize, Serialize};

use super::*;
use crate::store::{CF_CONTROL, control_key, prefixed_key};

/// A card's hall credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HallCredential {
    /// The hall password's Argon2id hash (a PHC string); never the password itself.
    pub password_hash: String,
    /// Issued by the card centre (at opening, or a reset at the counter): the holder
    /// must change it at the next login before anything else.
    pub must_change: bool,
    /// Failed logins since the last successful one.
    pub failures: u32,
    /// No login is accepted before this instant, ms since the epoch; 0 when the
    /// credential is not locked.
    pub locked_until_ms: u64,
    /// When the password was last set, ms since the epoch.
    pub set_at_ms: u64,
}

fn key(card_number: u64) -> Vec<u8> {
    prefixed_key(control_key::HALL_CREDENTIAL, &card_number.to_be_bytes())
}

impl Ledger {
    /// The hall credential of `card_number`, if one was ever set.
    ///
    /// # Errors
    /// [`ControlError::Storage`] if the store cannot be read;
    /// [`ControlError::Corrupt`] if the record does not parse.
    pub fn hall_credential(
        &self,
        card_number: u64,
    ) -> Result<Option<HallCredential>, ControlError> {
        let store = self.store();
        let Some(bytes) = store.db().get_cf(store.cf(CF_CONTROL), key(card_number))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            ControlError::Corrupt(format!("hall credential of {card_number}: {error}"))
        })
    }

    /// Sets the hall credential of each card in `credentials`, in one synced write.
    ///
    /// # Errors
    /// [`ControlError::UnknownCard`] if a card does not exist (nothing is written);
    /// [`ControlError::Write`] if the write fails.
    pub fn set_hall_credentials(
        &self,
        credentials: &[(u64, HallCredential)],
    ) -> Result<(), ControlError> {
        if let Some((card, _)) =
            credentials.iter().find(|(card, _)| self.shared.cards.card(*card).is_none())
        {
            return Err(ControlError::UnknownCard(*card));
        }
        let store = self.store();
        let cf = store.cf(CF_CONTROL);
        let mut write = rocksdb::WriteBatch::default();
        for (card, credential) in credentials {
            let value =
                serde_json::to_vec(credential).expect("a hall credential always serialises");
            write.put_cf(cf, key(*card), value);
        }
        store.write_synced(CONTROL_JOURNAL, write)?;
        Ok(())
    }

    /// Sets one card's hall credential; see [`Ledger::set_hall_credentials`].
    ///
    /// # Errors
    /// As [`Ledger::set_hall_credentials`].
    pub fn set_hall_credential(
        &self,
        card_number: u64,
        credential: &HallCredential,
    ) -> Result<(), ControlError> {
        self.set_hall_credentials(&[(card_number, credential.clone())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::{CardType, LimitOverrides};

    #[test]
    fn a_hall_credential_is_kept_per_card_and_survives_a_reopen() {
        let dir = onecard_tests::TempDir::new("hall");
        let config = LedgerConfig { shards: 1, ..LedgerConfig::default() };
        let ledger = Ledger::open(dir.path(), config.clone()).expect("opens");
        ledger
            .open_card(OpenCard {
                card_number: 7_001,
                holder_id: "S7001".to_owned(),
                holder_name: "李四".to_owned(),
                card_type: CardType::Student,
                expiry_date: 20_991_231,
                deposit_fen: 0,
                pin: None,
                overrides: LimitOverrides::default(),
            })
            .expect("opens a card");
        assert_eq!(ledger.hall_credential(7_001).expect("reads"), None);
        let credential = HallCredential {
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            must_change: true,
            failures: 0,
            locked_until_ms: 0,
            set_at_ms: 1,
        };
        ledger.set_hall_credential(7_001, &credential).expect("sets");
        let refused = ledger.set_hall_credential(7_002, &credential);
        assert!(matches!(refused, Err(ControlError::UnknownCard(7_002))), "{refused:?}");
        ledger.close();
        let ledger = Ledger::open(dir.path(), config).expect("reopens");
        assert_eq!(ledger.hall_credential(7_001).expect("reads"), Some(credential));
        assert_eq!(ledger.hall_credential(7_002).expect("reads"), None);
        let report = ledger.verify().expect("verifies");
        assert!(report.is_clean(), "{report}");
        ledger.close();
    }
}
