//! Adjustments (调账) under four eyes: one operator proposes (the maker), a different
//! one approves (the checker), and only then does the transfer post, exactly once.
//! A discrepancy found by reconciliation is never fixed in place; this is the way.
//!
//! Proposals live in the `admin` column family (`adj/` ++ id, JSON); the posted
//! transfer carries the adjustment's id as its idempotency key in the engine, so an
//! approval retried after a failure cannot post twice.

use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use onecard_engine::adjustment::AdjustmentOrder;
use onecard_engine::date::now_ms;
use onecard_engine::journal::CONTROL_JOURNAL;
use onecard_engine::store::CF_ADMIN;
use rocksdb::{Direction, IteratorMode};
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Permission};
use super::ledger::parse_account;
use super::money::{parse_yuan, yuan};
use super::{ApiError, ApiResult, AppState, Body, Params, RawBody};

const KEY_PREFIX: &[u8] = b"adj/";
const KEY_NEXT: &[u8] = b"adj-next";

/// Longest reason or reference, in bytes.
const ADJUSTMENT_TEXT_BYTES_MAX: usize = 512;

/// Proposals listed at most.
const ADJUSTMENTS_LISTED_MAX: usize = 1_000;

/// Serialises the read-modify-write of proposals.
static WRITE: Mutex<()> = Mutex::new(());

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentState {
    /// Waiting for a checker.
    Pending,
    /// Approved and posted.
    Posted,
    /// Rejected; nothing posted.
    Rejected,
}

/// A proposal as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdjustmentRecord {
    id: u64,
    state: AdjustmentState,
    debit: String,
    credit: String,
    amount_fen: i64,
    reason: String,
    /// What it resolves: a reconciliation line, say `channel:app:2026-09-01:line 5`.
    reference: String,
    maker: String,
    made_at_ms: u64,
    checker: Option<String>,
    decided_at_ms: Option<u64>,
    transfer_id: Option<u64>,
}

/// A proposal as the API shows it: the record with its amount in yuan and its
/// transfer id as a string ([`super::fen_as_yuan`]).
fn shown(record: &AdjustmentRecord) -> serde_json::Value {
    super::fen_as_yuan(serde_json::to_value(record).expect("a record always serialises"))
}

fn key(id: u64) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn load(state: &AppState, id: u64) -> Result<AdjustmentRecord, ApiError> {
    let store = state.ledger.store();
    let bytes = store.db().get_cf(store.cf(CF_ADMIN), key(id))?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "adjustment_not_found", format!("no adjustment {id}"))
    })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("adjustment {id}: {error}"),
        )
    })
}

fn store(state: &AppState, record: &AdjustmentRecord, next: Option<u64>) -> Result<(), ApiError> {
    let store = state.ledger.store();
    let cf = store.cf(CF_ADMIN);
    let mut write = rocksdb::WriteBatch::default();
    let value = serde_json::to_vec(record).expect("a record always serialises");
    write.put_cf(cf, key(record.id), value);
    if let Some(next) = next {
        write.put_cf(cf, KEY_NEXT, next.to_be_bytes());
    }
    store.write_synced(CONTROL_JOURNAL, write)?;
    Ok(())
}

/// `POST /api/adjustments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
    debit: String,
    credit: String,
    amount_yuan: String,
    reason: String,
    #[serde(default)]
    reference: String,
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// A maker proposes an adjustment; nothing posts until another operator approves.
pub async fn propose(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<ProposeRequest>,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::DayWrite)?;
    let account = |text: &str| {
        parse_account(text).map_err(|_| {
            unprocessable(
                "invalid_account",
                format!("{text:?} is not an account such as merchant:12"),
            )
        })
    };
    let (debit, credit) = (account(&request.debit)?, account(&request.credit)?);
    if debit == credit {
        return Err(unprocessable("same_account", "debit and credit are the same account"));
    }
    let amount_fen =
        parse_yuan(&request.amount_yuan).map_err(|m| unprocessable("invalid_amount", m))?;
    if amount_fen <= 0 {
        return Err(unprocessable("invalid_amount", "an adjustment moves a positive amount"));
    }
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() || reason.len() > ADJUSTMENT_TEXT_BYTES_MAX {
        return Err(unprocessable(
            "invalid_reason",
            format!("a reason is 1 to {ADJUSTMENT_TEXT_BYTES_MAX} bytes"),
        ));
    }
    if request.reference.len() > ADJUSTMENT_TEXT_BYTES_MAX {
        return Err(unprocessable(
            "invalid_reference",
            format!("a reference is at most {ADJUSTMENT_TEXT_BYTES_MAX} bytes"),
        ));
    }
    let _writing = WRITE.lock().unwrap_or_else(PoisonError::into_inner);
    let next = state.ledger.store().counter(CF_ADMIN, KEY_NEXT)?;
    let record = AdjustmentRecord {
        id: next,
        state: AdjustmentState::Pending,
        debit: debit.to_string(),
        credit: credit.to_string(),
        amount_fen,
        reason,
        reference: request.reference,
        maker: caller.operator.clone(),
        made_at_ms: now_ms(),
        checker: None,
        decided_at_ms: None,
        transfer_id: None,
    };
    let detail =
        format!("{} {} -> {}: {}", yuan(amount_fen), record.debit, record.credit, record.reason);
    caller.audited(&state, "adjustment.propose", &format!("adjustment:{next}"), &detail, || {
        store(&state, &record, Some(next + 1))
    })?;
    Ok(Json(shown(&record)))
}

/// Approves (posts) or rejects a pending adjustment; the checker must not be its maker.
pub async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Params((id, action)): Params<(u64, String)>,
    RawBody(_): RawBody,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::DayWrite)?;
    let approve = match action.as_str() {
        "approve" => true,
        "reject" => false,
        other => return Err(ApiError::unknown_action("adjustment", other)),
    };
    let target = format!("adjustment:{id}");
    let ledger = Arc::clone(&state.ledger);
    let checker = caller.operator.clone();
    let shared = state.clone();
    // Synced writes under a lock: on the blocking pool, not a request thread.
    let outcome = super::blocking(move || {
        let state = shared;
        let _writing = WRITE.lock().unwrap_or_else(PoisonError::into_inner);
        (|| {
            let mut record = load(&state, id)?;
            if record.state != AdjustmentState::Pending {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_pending",
                    format!("adjustment {id} is already {:?}", record.state).to_lowercase(),
                ));
            }
            if record.maker == checker {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "same_operator",
                    "the maker of an adjustment cannot be its checker",
                ));
            }
            if approve {
                let order = AdjustmentOrder {
                    id,
                    debit: parse_account(&record.debit)?,
                    credit: parse_account(&record.credit)?,
                    amount_fen: record.amount_fen,
                };
                record.transfer_id = Some(ledger.post_adjustment(order)?);
                record.state = AdjustmentState::Posted;
            } else {
                record.state = AdjustmentState::Rejected;
            }
            record.checker = Some(checker);
            record.decided_at_ms = Some(now_ms());
            store(&state, &record, None)?;
            Ok(record)
        })()
    })
    .await?;
    let record =
        caller.audited(&state, &format!("adjustment.{action}"), &target, "", || outcome)?;
    Ok(Json(shown(&record)))
}

/// One adjustment.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u64>,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::LedgerRead)?;
    Ok(Json(shown(&load(&state, id)?)))
}

/// Every adjustment, oldest first (at most 1,000).
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<serde_json::Value>> {
    caller.require(&state, Permission::LedgerRead)?;
    let store = state.ledger.store();
    let mut out = Vec::new();
    let mode = IteratorMode::From(KEY_PREFIX, Direction::Forward);
    for item in store.db().iterator_cf(store.cf(CF_ADMIN), mode) {
        let (key, value) = item?;
        if !key.starts_with(KEY_PREFIX) || out.len() >= ADJUSTMENTS_LISTED_MAX {
            break;
        }
        if let Ok(record) = serde_json::from_slice::<AdjustmentRecord>(&value) {
            out.push(shown(&record));
        }
    }
    Ok(Json(out))
}
