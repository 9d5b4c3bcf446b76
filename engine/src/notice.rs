//! Notices of applications' progress (消息通知): one for the applicant at every step
//! change, and one for whoever's inbox gains the application (the step's role, or
//! the person it was handed to).
//!
//! Notices are derived from the application as it is stored, compared with what was
//! stored before (`workflow.rs`), and written in the same synced write as the
//! application itself:
//! a change and its notices are durable together, or neither is. They are numbered
//! densely from 1 in the `workflow` family (`o` ++ id), never changed or deleted;
//! the outbox that hands them to a webhook keeps its own cursor beside them
//! ([`KEY_DELIVERED`]), so a delivery is retried until it is acknowledged and a
//! receiver tells a repeat by the notice's id.

use serde::{Deserialize, Serialize};

/// `o` ++ notice id (8, BE) → a notice (JSON).
pub const NOTICE_PREFIX: u8 = b'o';
/// The next notice id (u64 BE).
pub const KEY_NEXT_NOTICE: &[u8] = b"N";
/// The last notice id the outbox has delivered (u64 BE; absent: none).
pub const KEY_DELIVERED: &[u8] = b"D";

/// The recipient name of every operator holding `role`.
#[must_use]
pub fn role_recipient(role: &str) -> String {
    format!("role:{role}")
}

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// To the applicant: the application reached a step (it was submitted, passed a
    /// step, or was resubmitted).
    Progressed,
    /// To the applicant: it waits for them (a step of theirs, such as confirming).
    YourTurn,
    /// To the step's role or assignee: it waits in their inbox.
    Waiting,
    /// To the applicant: sent back for changes.
    Returned,
    /// To the applicant: rejected.
    Rejected,
    /// To the applicant: done.
    Completed,
}

/// One notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Its id, dense from 1: a receiver's key for telling a repeat.
    pub id: u64,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Who it is for: an applicant's or operator's name, or `role:<role>`.
    pub to: String,
    /// What it says.
    pub kind: NoticeKind,
    /// The application.
    pub application: u64,
    /// Its workflow's name.
    pub workflow: String,
    /// Its workflow's title.
    pub title: String,
    /// The step it stands at now (empty when finished).
    pub step: String,
}

/// A notice's key.
#[must_use]
pub fn notice_key(id: u64) -> Vec<u8> {
    crate::store::prefixed_key(NOTICE_PREFIX, &id.to_be_bytes())
}
