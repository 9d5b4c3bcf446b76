//! Why the ledger does not open, and why a control operation is refused.

use super::*;

/// Why the ledger cannot open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The store would not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// RocksDB failed while reading the ledger back.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A write at open (the dates it closes) failed.
    #[error("write failed: {0}")]
    Write(#[from] StorageError),
    /// A terminal's key does not open with the master key given.
    #[error(transparent)]
    Sealing(#[from] SealError),
    /// A stored record is not what this build writes.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A thread of the ledger (a shard's writer, the checkpointer) could not start.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl From<RecoverError> for LedgerError {
    fn from(error: RecoverError) -> Self {
        match error {
            RecoverError::Rocks(error) => Self::Storage(error),
            RecoverError::Write(error) => Self::Write(error),
            RecoverError::Corrupt { what, detail } => Self::Corrupt { what, detail },
        }
    }
}

impl From<ChainError> for LedgerError {
    fn from(error: ChainError) -> Self {
        match error {
            ChainError::Read(error) => Self::Storage(error),
            ChainError::Write(error) => Self::Write(error),
            ChainError::Corrupt(detail) => Self::Corrupt { what: "chain key", detail },
            ChainError::Sealing(error) => Self::Sealing(error),
        }
    }
}

/// Why a control operation was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No card has this number.
    #[error("no card {0}")]
    UnknownCard(u64),
    /// The card number is taken.
    #[error("card {0} already exists")]
    CardExists(u64),
    /// No merchant has this id.
    #[error("no merchant {0}")]
    UnknownMerchant(u32),
    /// No terminal has this id.
    #[error("no terminal {0}")]
    UnknownTerminal(u32),
    /// The card's state does not allow the action.
    #[error("card {card} is {state:?}; cannot {action}")]
    NotAllowed {
        /// The card.
        card: u64,
        /// Its state.
        state: CardState,
        /// What was asked.
        action: &'static str,
    },
    /// An amount is negative, zero where it must be positive, or too large.
    #[error("invalid amount {0} fen")]
    InvalidAmount(i64),
    /// A limit is negative.
    #[error("limits must not be negative")]
    InvalidLimits,
    /// A commission rate outside 0..1.
    #[error("commission rate {0} is outside 0 to 1")]
    InvalidRate(Decimal),
    /// A name or holder id that is empty or too long.
    #[error("{0} must be 1 to {NAME_BYTES_MAX} bytes")]
    InvalidName(&'static str),
    /// A date that is not a calendar date or not after the current one.
    #[error("invalid date {0}")]
    InvalidDate(u32),
    /// A number that must not be zero.
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// Settlement of a date that has not been closed by its cutover.
    #[error("business date {date} is not closed yet (closed through {closed_through})")]
    DateNotClosed {
        /// The date asked for.
        date: BusinessDate,
        /// The last closed date.
        closed_through: BusinessDate,
    },
    /// A stored record this build cannot read.
    #[error("corrupt {0}")]
    Corrupt(String),
    /// An account that does not exist (a channel or single account number out of
    /// range).
    #[error("no account {0}")]
    UnknownAccount(String),
    /// A transfer from an account to itself.
    #[error("{0} cannot be both debited and credited")]
    SameAccount(String),
    /// A cutover of a date after the open one, or of a day that has not begun.
    #[error(
        "business date {date} cannot close: the open date is {open}, and a day closes only once it has begun"
    )]
    DateNotOpen {
        /// The date asked for.
        date: BusinessDate,
        /// The open date.
        open: BusinessDate,
    },
    /// The store failed; nothing was changed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A durable write failed (or an earlier one did, and the control plane takes no
    /// writes until restart); nothing was changed in memory.
    #[error("write failed: {0}")]
    Write(#[from] StorageError),
    /// A failed write left this card account in doubt: it takes no change until a
    /// restart reads it back ([`crate::cards::CardAccount::in_doubt`]).
    #[error(
        "card account {0} is in doubt after a failed write; it takes no change until onecard restarts"
    )]
    InDoubt(u64),
    /// A batch has more rows than one control batch may carry.
    #[error("{rows} rows; a batch takes at most {max}")]
    BatchTooLarge {
        /// Rows given.
        rows: usize,
        /// The limit.
        max: usize,
    },
    /// The system has no randomness for a PIN salt or a key's sealing nonce.
    #[error("no randomness for a PIN salt or a sealing nonce")]
    Random,
}

pub(super) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt { what, detail: detail.to_string() }
}
