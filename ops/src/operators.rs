//! Operators of the admin API: who they are, their role, and their password.
//!
//! Records live in the store's `admin` column family under `op/` ++ name, as JSON,
//! so a backup carries them. Passwords are hashed with Argon2id (the `argon2` crate's
//! defaults: 19 MiB, 2 passes) under a random salt; the hash is never logged or sent.
//! Hashing is slow on purpose, so it runs on the blocking pool behind a small
//! semaphore: a flood of logins costs bounded memory.

use std::sync::{Arc, Mutex, PoisonError};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use onecard_engine::Ledger;
use onecard_engine::journal::CONTROL_JOURNAL;
use onecard_engine::storage::StorageError;
use onecard_engine::store::CF_ADMIN;
use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Shortest password an operator may set.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted (hashing cost does not grow with it, but memory does).
pub const PASSWORD_BYTES_MAX: usize = 128;
/// Password hashes computed at once.
const HASHING_CONCURRENT_MAX: usize = 2;
/// Longest operator name.
pub const OPERATOR_NAME_BYTES_MAX: usize = 64;
/// Operators listed at most.
pub const OPERATORS_MAX: usize = 10_000;

const KEY_PREFIX: &[u8] = b"op/";

/// What an operator may do; see `api::Permission` for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the system: operators, merchants, terminals, everything.
    Admin,
    /// A card centre clerk: card lifecycle at the counter.
    Clerk,
    /// The finance office: balances, transfers, commission rates.
    Finance,
    /// Reads everything, changes nothing, reads the audit log.
    Auditor,
    /// A department head (处长): approves applications at their workflow steps;
    /// otherwise reads as any operator does.
    DepartmentHead,
}

/// Every role, in the order the API lists them.
pub const ROLES: [Role; 5] =
    [Role::Admin, Role::Clerk, Role::Finance, Role::Auditor, Role::DepartmentHead];

impl Role {
    /// The role's name as the API writes it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Clerk => "clerk",
            Self::Finance => "finance",
            Self::Auditor => "auditor",
            Self::DepartmentHead => "department_head",
        }
    }
}

/// An operator as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorRecord {
    /// Login name.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// Argon2id hash in PHC string form.
    pub password_hash: String,
    /// When the password was last set, ms since the epoch.
    pub password_changed_at_ms: u64,
    /// The password was set by someone else and must be changed before use.
    pub must_change_password: bool,
    /// Wrong passwords in a row.
    pub failed_logins: u32,
    /// Locked until then, ms since the epoch (0: not locked).
    pub locked_until_ms: u64,
    /// A disabled operator cannot log in.
    pub disabled: bool,
    /// When created, ms since the epoch.
    pub created_at_ms: u64,
    /// Who created them.
    pub created_by: String,
}

impl OperatorRecord {
    /// A new, enabled operator whose password was just set.
    #[must_use]
    pub fn new(
        name: String,
        role: Role,
        password_hash: String,
        must_change_password: bool,
        created_by: String,
    ) -> Self {
        let now = onecard_engine::date::now_ms();
        Self {
            name,
            role,
            password_hash,
            password_changed_at_ms: now,
            must_change_password,
            failed_logins: 0,
            locked_until_ms: 0,
            disabled: false,
            created_at_ms: now,
            created_by,
        }
    }
}

/// Why an operator change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The name is empty, too long, or has characters other than letters, digits,
    /// `.`, `_` and `-`.
    #[error("operator names are 1 to {OPERATOR_NAME_BYTES_MAX} letters, digits, '.', '_' or '-'")]
    InvalidName,
    /// The password is too short or too long.
    #[error(
        "a password has at least {PASSWORD_CHARS_MIN} characters and at most {PASSWORD_BYTES_MAX} bytes"
    )]
    WeakPassword,
    /// The name is taken.
    #[error("operator {0} already exists")]
    Exists(String),
    /// No operator has this name.
    #[error("no operator {0}")]
    Unknown(String),
    /// Too many operators.
    #[error("at most {OPERATORS_MAX} operators")]
    TooMany,
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A durable write failed.
    #[error("write failed: {0}")]
    Write(#[from] StorageError),
    /// Hashing failed (no randomness for a salt).
    #[error("password hashing failed")]
    Hashing,
}

/// Operator records over the ledger's store.
#[derive(Clone)]
pub struct Operators {
    ledger: Arc<Ledger>,
    /// Serialises read-modify-write of records.
    write: Arc<Mutex<()>>,
    hashing: Arc<Semaphore>,
}

impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operators").finish_non_exhaustive()
    }
}

fn key(name: &str) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Checks an operator name.
///
/// # Errors
/// [`OperatorError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), OperatorError> {
    let ok = !name.is_empty()
        && name.len() <= OPERATOR_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(OperatorError::InvalidName) }
}

/// Checks a new password's length.
///
/// # Errors
/// [`OperatorError::WeakPassword`].
pub fn check_password(password: &str) -> Result<(), OperatorError> {
    if password.chars().count() < PASSWORD_CHARS_MIN || password.len() > PASSWORD_BYTES_MAX {
        return Err(OperatorError::WeakPassword);
    }
    Ok(())
}

impl Operators {
    /// Operators kept in `ledger`'s store.
    #[must_use]
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self {
            ledger,
            write: Arc::new(Mutex::new(())),
            hashing: Arc::new(Semaphore::new(HASHING_CONCURRENT_MAX)),
        }
    }

    /// The operator `name`.
    ///
    /// # Errors
    /// If the store cannot be read or holds a record this build cannot parse.
    pub fn get(&self, name: &str) -> Result<Option<OperatorRecord>, OperatorError> {
        let store = self.ledger.store();
        let Some(bytes) = store.db().get_cf(store.cf(CF_ADMIN), key(name))? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// Every operator, by name.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn list(&self) -> Result<Vec<OperatorRecord>, OperatorError> {
        let store = self.ledger.store();
        let mode = IteratorMode::From(KEY_PREFIX, Direction::Forward);
        let mut out = Vec::new();
        for item in store.db().iterator_cf(store.cf(CF_ADMIN), mode) {
            let (key, value) = item?;
            if !key.starts_with(KEY_PREFIX) || out.len() >= OPERATORS_MAX {
                break;
            }
            match serde_json::from_slice(&value) {
                Ok(record) => out.push(record),
                Err(error) => tracing::error!(%error, "unreadable operator record"),
            }
        }
        Ok(out)
    }

    /// Writes a record, synced.
    ///
    /// # Errors
    /// If the write fails.
    pub fn put(&self, record: &OperatorRecord) -> Result<(), OperatorError> {
        let store = self.ledger.store();
        let value = serde_json::to_vec(record).expect("an operator record always serialises");
        let mut write = rocksdb::WriteBatch::default();
        write.put_cf(store.cf(CF_ADMIN), key(&record.name), value);
        store.write_synced(CONTROL_JOURNAL, write)?;
        Ok(())
    }

    /// Reads `name`, lets `change` edit it, and writes it back, with no other change
    /// to operators in between.
    ///
    /// # Errors
    /// [`OperatorError::Unknown`], or a failed read or write.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut OperatorRecord),
    ) -> Result<OperatorRecord, OperatorError> {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut record = self.get(name)?.ok_or_else(|| OperatorError::Unknown(name.to_owned()))?;
        change(&mut record);
        self.put(&record)?;
        Ok(record)
    }

    /// Creates an operator whose password hash is already computed.
    ///
    /// # Errors
    /// [`OperatorError::Exists`], [`OperatorError::TooMany`], or a failed write.
    pub fn create(&self, record: &OperatorRecord) -> Result<(), OperatorError> {
        check_name(&record.name)?;
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if self.get(&record.name)?.is_some() {
            return Err(OperatorError::Exists(record.name.clone()));
        }
        if self.list()?.len() >= OPERATORS_MAX {
            return Err(OperatorError::TooMany);
        }
        self.put(record)
    }

    /// Hashes a password on the blocking pool.
    ///
    /// # Errors
    /// [`OperatorError::Hashing`] if no salt can be drawn.
    pub async fn hash(&self, password: String) -> Result<String, OperatorError> {
        let _permit = self.hashing.acquire().await.map_err(|_| OperatorError::Hashing)?;
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|_| OperatorError::Hashing)?
    }

    /// Checks a password against a stored hash on the blocking pool; a hash that does
    /// not parse never matches.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }
}

/// Hashes `password` with Argon2id under a fresh random salt.
///
/// # Errors
/// [`OperatorError::Hashing`] if no salt can be drawn.
pub fn hash_password(password: &str) -> Result<String, OperatorError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| OperatorError::Hashing)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| OperatorError::Hashing)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| OperatorError::Hashing)
}

/// A random password of 20 letters and digits, for a first admin and the demo.
///
/// # Errors
/// If the system has no randomness.
pub fn random_password() -> Result<String, OperatorError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|_| OperatorError::Hashing)?;
    Ok(bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_own_password_only() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&hash).expect("phc");
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"correct horsE", &parsed).is_err());
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("clerk.wang").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("王").is_err());
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("密码密码密码密码").is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }
}
