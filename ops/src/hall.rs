//! The online service hall's cardholders (网上办事大厅): hall passwords issued,
//! checked and changed, and the cardholders' sessions.
//!
//! A cardholder logs in with the campus card number and the hall password (查询密码),
//! which is not the purchase PIN. The card centre issues it (the demo gives every
//! demo card a known one); the holder must change an issued one before anything else.
//! Failures are counted per card and lock the card's hall login as an operator's is
//! locked (`[auth] login_failures_max`, `lockout`). The engine keeps the credential
//! ([`onecard_engine::HallCredential`]); the hash is Argon2id, computed here on the
//! blocking pool. Sessions live in memory, as operators' tokens do: a restart signs
//! every cardholder out.

use std::time::Duration;

use onecard_engine::date::now_ms;
use onecard_engine::{ControlError, HallCredential};

use crate::api::AppState;
use crate::operators::{OperatorError, random_password};
use crate::tokens::{Lookup, TokenError, Tokens};

/// A hall password's length, characters, at least.
pub const HALL_PASSWORD_CHARS_MIN: usize = 8;

/// A hall password's length, bytes, at most (longer is refused before hashing).
pub const HALL_PASSWORD_BYTES_MAX: usize = 128;

/// A cardholder's session lasts this long from login.
pub const HALL_SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// Live cardholder sessions held at once ([`Tokens`]).
pub const HALL_SESSIONS_MAX: usize = 100_000;

/// Why a cardholder's login or password change is refused.
#[derive(Debug, thiserror::Error)]
pub enum HallError {
    /// No such card, no hall password, or the wrong one: the three are not told apart.
    #[error("wrong card number or hall password")]
    BadCredentials,
    /// Too many failures: no login until the lockout ends.
    #[error("locked for {seconds} more seconds after too many failures")]
    Locked {
        /// Seconds until a login is accepted again.
        seconds: u64,
    },
    /// A new password too short or too long.
    #[error(
        "a hall password has at least {HALL_PASSWORD_CHARS_MIN} characters and at most {HALL_PASSWORD_BYTES_MAX} bytes"
    )]
    WeakPassword,
    /// The new password is the current one.
    #[error("the new password must differ from the current one")]
    SamePassword,
    /// Every session slot is live.
    #[error("too many cardholders are logged in; try again later")]
    TooManySessions,
    /// No randomness, or hashing failed.
    #[error("the password could not be hashed")]
    Hashing,
    /// The engine refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl From<OperatorError> for HallError {
    fn from(_: OperatorError) -> Self {
        Self::Hashing
    }
}

/// A cardholder's live session.
#[derive(Debug, Clone)]
pub struct HallSession {
    /// The card logged in with: the only card the session reaches.
    pub card_number: u64,
    /// The password must be changed before anything else.
    pub must_change: bool,
}

/// Live cardholder sessions.
#[derive(Debug)]
pub struct HallSessions {
    tokens: Tokens<HallSession>,
}

impl Default for HallSessions {
    fn default() -> Self {
        Self { tokens: Tokens::new(HALL_SESSIONS_MAX) }
    }
}

impl HallSessions {
    fn issue(&self, card_number: u64, must_change: bool) -> Result<String, HallError> {
        let session = HallSession { card_number, must_change };
        self.tokens.issue(session, HALL_SESSION_TTL).map_err(|error| match error {
            TokenError::NoRandomness => HallError::Hashing,
            TokenError::Full => HallError::TooManySessions,
        })
    }

    /// The live session of `token`, if any.
    #[must_use]
    pub fn get(&self, token: &str) -> Option<HallSession> {
        match self.tokens.lookup(token) {
            Lookup::Valid(session) => Some(session),
            Lookup::Expired | Lookup::Unknown => None,
        }
    }

    /// Ends `token`'s session.
    pub fn end(&self, token: &str) {
        self.tokens.revoke(token);
    }

    /// Ends every session of `card_number` but `keep`'s (a password changed there).
    pub fn end_card(&self, card_number: u64, keep: Option<&str>) {
        self.tokens.revoke_where(|s, spared| s.card_number == card_number && !spared, keep);
    }

    fn password_changed(&self, token: &str) {
        self.tokens.update(token, |session| session.must_change = false);
    }
}

/// A new hall password for the card centre to hand over, and its credential (to be
/// changed at the first login).
///
/// # Errors
/// [`HallError::Hashing`] if no randomness can be drawn.
pub async fn issue(state: &AppState) -> Result<(String, HallCredential), HallError> {
    let password: String = random_password()?.chars().take(10).collect();
    let credential = credential(state, &password, true).await?;
    Ok((password, credential))
}

/// A credential holding `password`'s hash.
///
/// # Errors
/// [`HallError::Hashing`].
pub async fn credential(
    state: &AppState,
    password: &str,
    must_change: bool,
) -> Result<HallCredential, HallError> {
    let password_hash = state.operators.hash(password.to_owned()).await?;
    Ok(HallCredential {
        password_hash,
        must_change,
        failures: 0,
        locked_until_ms: 0,
        set_at_ms: now_ms(),
    })
}

/// A hash no password matches in practice, checked against for cards without a hall
/// password, so that timing does not tell which cards have one.
fn no_credential_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        crate::operators::hash_password("no card has this hall password").unwrap_or_default()
    })
}

/// Checks `card_number`'s hall `password`, counting a failure and locking after too
/// many, and opens a session: its token, and whether the password must be changed.
///
/// # Errors
/// [`HallError::BadCredentials`], [`HallError::Locked`], or a failed read or write.
pub async fn login(
    state: &AppState,
    card_number: u64,
    password: &str,
) -> Result<(String, bool), HallError> {
    let checked = check(state, card_number, password).await?;
    let token = state.hall.issue(card_number, checked.must_change)?;
    Ok((token, checked.must_change))
}

/// Checks `card_number`'s hall `password` as a login does: a failure counts and, after
/// too many, locks; a success clears them. Returns the credential.
async fn check(
    state: &AppState,
    card_number: u64,
    password: &str,
) -> Result<HallCredential, HallError> {
    if password.len() > HALL_PASSWORD_BYTES_MAX {
        return Err(HallError::BadCredentials);
    }
    let ledger = &state.ledger;
    let stored = if ledger.card(card_number).is_some() {
        ledger.hall_credential(card_number)?
    } else {
        None
    };
    let Some(mut stored) = stored else {
        state.operators.verify(password.to_owned(), no_credential_hash().to_owned()).await;
        return Err(HallError::BadCredentials);
    };
    let now = now_ms();
    if stored.locked_until_ms > now {
        return Err(HallError::Locked { seconds: (stored.locked_until_ms - now).div_ceil(1000) });
    }
    if !state.operators.verify(password.to_owned(), stored.password_hash.clone()).await {
        let auth = &state.config.auth;
        stored.failures += 1;
        if stored.failures >= auth.login_failures_max {
            stored.failures = 0;
            let lockout_ms = u64::try_from(auth.lockout.as_millis()).unwrap_or(u64::MAX);
            stored.locked_until_ms = now.saturating_add(lockout_ms);
        }
        write(state, card_number, stored).await?;
        return Err(HallError::BadCredentials);
    }
    if stored.failures > 0 || stored.locked_until_ms > 0 {
        stored.failures = 0;
        stored.locked_until_ms = 0;
        write(state, card_number, stored.clone()).await?;
    }
    Ok(stored)
}

/// Changes the hall password of the card behind session `token`, given the current
/// one; ends the card's other sessions.
///
/// # Errors
/// [`HallError::BadCredentials`] for a wrong current password (counted as a failed
/// login), [`HallError::WeakPassword`], [`HallError::SamePassword`], or a failed write.
pub async fn change_password(
    state: &AppState,
    token: &str,
    card_number: u64,
    current: &str,
    new: &str,
) -> Result<(), HallError> {
    if new.chars().count() < HALL_PASSWORD_CHARS_MIN || new.len() > HALL_PASSWORD_BYTES_MAX {
        return Err(HallError::WeakPassword);
    }
    if new == current {
        return Err(HallError::SamePassword);
    }
    // The current password is checked as a login's is, lockout included.
    check(state, card_number, current).await?;
    let updated = credential(state, new, false).await?;
    write(state, card_number, updated).await?;
    state.hall.end_card(card_number, Some(token));
    state.hall.password_changed(token);
    Ok(())
}

/// Writes a credential on the blocking pool (a synced write).
async fn write(
    state: &AppState,
    card_number: u64,
    credential: HallCredential,
) -> Result<(), HallError> {
    let ledger = std::sync::Arc::clone(&state.ledger);
    tokio::task::spawn_blocking(move || ledger.set_hall_credential(card_number, &credential))
        .await
        .map_err(|_| HallError::Hashing)??;
    Ok(())
}
