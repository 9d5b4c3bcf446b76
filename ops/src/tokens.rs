//! Live sessions by token, for operators (the API's bearer tokens and the console's
//! cookie) and for cardholders (the service hall's cookie).
//!
//! A token is 256 random bits, hex; the server keeps only its SHA-256, in memory,
//! with the session and the instant it expires. The map holds at most a fixed number
//! of sessions: past it, expired ones are dropped, and a new session with every slot
//! live is refused. A restart ends every session.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Why no session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The operating system gave no randomness.
    #[error("no randomness for a token")]
    NoRandomness,
    /// Every slot holds a live session.
    #[error("too many live sessions; try again later")]
    Full,
}

/// What a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<S> {
    /// A live session.
    Valid(S),
    /// A session that has expired (and is dropped now).
    Expired,
    /// No session.
    Unknown,
}

/// Live sessions of type `S`, by the SHA-256 of their tokens.
#[derive(Debug)]
pub struct Tokens<S> {
    sessions: Mutex<HashMap<[u8; 32], (S, Instant)>>,
    max: usize,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl<S: Clone> Tokens<S> {
    /// An empty map of at most `max` sessions.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self { sessions: Mutex::new(HashMap::new()), max }
    }

    /// Opens `session` for `ttl` and returns its token.
    ///
    /// # Errors
    /// [`TokenError`].
    pub fn issue(&self, session: S, ttl: Duration) -> Result<String, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|_| TokenError::NoRandomness)?;
        let token = hex::encode(bytes);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= self.max {
            let now = Instant::now();
            sessions.retain(|_, (_, expires_at)| *expires_at > now);
        }
        if sessions.len() >= self.max {
            return Err(TokenError::Full);
        }
        sessions.insert(key(&token), (session, Instant::now() + ttl));
        Ok(token)
    }

    /// The session `token` names.
    pub fn lookup(&self, token: &str) -> Lookup<S> {
        let key = key(token);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get(&key) {
            Some((session, expires_at)) if *expires_at > Instant::now() => {
                Lookup::Valid(session.clone())
            }
            Some(_) => {
                sessions.remove(&key);
                Lookup::Expired
            }
            None => Lookup::Unknown,
        }
    }

    /// Ends `token`'s session.
    pub fn revoke(&self, token: &str) {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).remove(&key(token));
    }

    /// Ends every session for which `end` says so; `token` is theirs, to spare one.
    pub fn revoke_where(&self, mut end: impl FnMut(&S, bool) -> bool, token: Option<&str>) {
        let spared = token.map(key);
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, (session, _)| !end(session, Some(*key) == spared));
    }

    /// Changes `token`'s session in place, if it is there.
    pub fn update(&self, token: &str, change: impl FnOnce(&mut S)) {
        if let Some((session, _)) =
            self.sessions.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&key(token))
        {
            change(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_session_until_it_expires_or_is_revoked() {
        let tokens = Tokens::new(2);
        let first = tokens.issue("a", Duration::from_secs(60)).expect("issues");
        assert_eq!(tokens.lookup(&first), Lookup::Valid("a"));
        assert_eq!(tokens.lookup("not a token"), Lookup::Unknown);
        let short = tokens.issue("b", Duration::ZERO).expect("issues");
        assert_eq!(tokens.lookup(&short), Lookup::Expired);
        assert_eq!(tokens.lookup(&short), Lookup::Unknown, "an expired session is dropped");
        let second = tokens.issue("c", Duration::from_secs(60)).expect("issues");
        assert_eq!(tokens.issue("d", Duration::from_secs(60)), Err(TokenError::Full));
        tokens.update(&second, |s| *s = "e");
        assert_eq!(tokens.lookup(&second), Lookup::Valid("e"));
        tokens.revoke_where(|_, spared| !spared, Some(&second));
        assert_eq!(tokens.lookup(&first), Lookup::Unknown);
        assert_eq!(tokens.lookup(&second), Lookup::Valid("e"));
        tokens.revoke(&second);
        assert_eq!(tokens.lookup(&second), Lookup::Unknown);
    }
}
