//! Merchants and terminals: create, set commission, enable and disable, rotate a
//! terminal's key; and the fleet view of terminals that are offline or behind on the
//! blacklist.
//!
//! A terminal's key goes in (hex, from the card centre's key management, which loads
//! the same key into the device) and never comes out: no answer carries it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use onecard_engine::BusinessDate;
use onecard_engine::date::now_ms;
use onecard_engine::directory::{MerchantCategory, MerchantRecord, Terminal};
use onecard_protocol::TerminalKey;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Permission};
use super::money::yuan;
use super::{ApiError, ApiResult, AppState, Body, Params, QueryParams, RawBody};

/// A merchant as the API shows it.
#[derive(Debug, Serialize)]
pub struct MerchantJson {
    id: u32,
    name: String,
    category: MerchantCategory,
    shard: u8,
    /// The rate in force today.
    commission_rate: String,
    /// Approved changes still to come: the rate and the business date it applies from.
    scheduled_rates: Vec<ScheduledRateJson>,
    enabled: bool,
    /// What the ledger owes the merchant until settlement pays it.
    balance_yuan: Option<String>,
}

/// A commission change to come.
#[derive(Debug, Serialize)]
pub struct ScheduledRateJson {
    from: String,
    rate: String,
}

impl MerchantJson {
    fn new(record: &MerchantRecord, balance_fen: Option<i64>, today: BusinessDate) -> Self {
        let today = today.to_yyyymmdd();
        Self {
            id: record.id,
            name: record.name.clone(),
            category: record.category,
            shard: record.shard,
            commission_rate: record.rate_on(today).normalize().to_string(),
            scheduled_rates: record
                .rate_changes
                .iter()
                .filter(|change| change.from > today)
                .map(|change| ScheduledRateJson {
                    from: BusinessDate::from_yyyymmdd(change.from)
                        .map_or_else(String::new, |d| d.to_string()),
                    rate: change.rate.normalize().to_string(),
                })
                .collect(),
            enabled: record.enabled,
            balance_yuan: balance_fen.map(yuan),
        }
    }
}

/// Every merchant.
pub async fn list_merchants(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<MerchantJson>> {
    caller.require(&state, Permission::DirectoryRead)?;
    Ok(Json(
        state
            .ledger
            .merchants()
            .iter()
            .map(|m| MerchantJson::new(m, None, state.ledger.business_date()))
            .collect(),
    ))
}

/// One merchant, with its unsettled balance.
pub async fn show_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u32>,
) -> ApiResult<MerchantJson> {
    caller.require(&state, Permission::DirectoryRead)?;
    let merchant =
        state.ledger.merchant(id).ok_or(onecard_engine::ControlError::UnknownMerchant(id))?;
    let balance = state.ledger.account_balance(onecard_engine::AccountId::merchant(id))?;
    Ok(Json(MerchantJson::new(&merchant, Some(balance), state.ledger.business_date())))
}

/// A commission rate given as a decimal string, `"0.015"` for 1.5%.
fn rate(text: &str) -> Result<Decimal, ApiError> {
    text.trim().parse::<Decimal>().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rate",
            format!("{text:?} is not a decimal rate such as \"0.015\""),
        )
    })
}

/// `POST /api/merchants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMerchant {
    name: String,
    category: MerchantCategory,
    commission_rate: String,
}

/// Creates a merchant on the next shard in turn.
pub async fn create_merchant(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateMerchant>,
) -> ApiResult<MerchantJson> {
    let record =
        create_merchant_as(&state, &caller, &body.name, body.category, &body.commission_rate)?;
    Ok(Json(MerchantJson::new(&record, Some(0), state.ledger.business_date())))
}

/// Creates a merchant for `caller` (the API's and the console's), audited.
pub(crate) fn create_merchant_as(
    state: &AppState,
    caller: &Caller,
    name: &str,
    category: MerchantCategory,
    commission_rate: &str,
) -> Result<MerchantRecord, ApiError> {
    caller.require(state, Permission::DirectoryWrite)?;
    let detail = format!("{name} ({category:?}) rate {commission_rate}");
    caller.audited(state, "merchant.create", "merchant:new", &detail, || {
        rate(commission_rate).and_then(|rate| {
            state.ledger.create_merchant(name, category, rate).map_err(ApiError::from)
        })
    })
}

/// Sets a merchant's commission rate from the next business day (the API's and the
/// console's), audited.
pub(crate) fn set_commission_as(
    state: &AppState,
    caller: &Caller,
    id: u32,
    commission_rate: &str,
) -> Result<MerchantRecord, ApiError> {
    caller.require(state, Permission::CommissionWrite)?;
    let detail = format!("rate {commission_rate}");
    caller.audited(state, "merchant.set_commission", &format!("merchant:{id}"), &detail, || {
        rate(commission_rate)
            .and_then(|rate| state.ledger.set_commission_rate(id, rate).map_err(ApiError::from))
    })
}

/// Enables or disables a merchant (the API's and the console's), audited.
pub(crate) fn set_merchant_enabled_as(
    state: &AppState,
    caller: &Caller,
    id: u32,
    enabled: bool,
) -> Result<MerchantRecord, ApiError> {
    caller.require(state, Permission::DirectoryWrite)?;
    let action = if enabled { "merchant.enable" } else { "merchant.disable" };
    caller.audited(state, action, &format!("merchant:{id}"), "", || {
        state.ledger.set_merchant_enabled(id, enabled)
    })
}

/// `POST /api/merchants/{id}/commission`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommissionBody {
    commission_rate: String,
}

/// `POST /api/merchants/{id}/{action}`: `commission` with a body, `enable`,
/// `disable`.
pub async fn merchant_action(
    State(state): State<AppState>,
    caller: Caller,
    Params((id, action)): Params<(u32, String)>,
    RawBody(body): RawBody,
) -> ApiResult<MerchantJson> {
    let record = match action.as_str() {
        "commission" => {
            caller.require(&state, Permission::CommissionWrite)?;
            let body: CommissionBody = super::parse_json(&body)?;
            set_commission_as(&state, &caller, id, &body.commission_rate)?
        }
        "enable" | "disable" => set_merchant_enabled_as(&state, &caller, id, action == "enable")?,
        _ => {
            return Err(ApiError::unknown_action("merchant", &action));
        }
    };
    Ok(Json(MerchantJson::new(&record, None, state.ledger.business_date())))
}

/// A terminal as the API shows it: never its key.
#[derive(Debug, Serialize)]
pub struct TerminalJson {
    pub(crate) id: u32,
    pub(crate) merchant_id: u32,
    pub(crate) shard: u8,
    pub(crate) enabled: bool,
    /// A session is signed on now.
    pub(crate) online: bool,
    /// Not heard from within the offline threshold (or never since start).
    pub(crate) offline: bool,
    pub(crate) last_seen_ms: Option<u64>,
    pub(crate) clock_skew_ms: i64,
    pub(crate) software_version: u32,
    pub(crate) blacklist_version: u64,
    /// Versions behind the current blacklist.
    pub(crate) blacklist_behind: u64,
    pub(crate) last_sequence: u64,
}

impl TerminalJson {
    /// Enabled, and offline or behind on the blacklist: the attention list's rule.
    pub(crate) const fn needs_attention(&self) -> bool {
        self.enabled && (self.offline || self.blacklist_behind > 0)
    }
}

pub(crate) fn terminal_json(state: &AppState, terminal: &Terminal) -> TerminalJson {
    let now = now_ms();
    let offline_after_ms =
        u64::try_from(state.config.terminal_offline_after.as_millis()).unwrap_or(u64::MAX);
    let last_seen = terminal.last_seen_ms.load(Ordering::Relaxed);
    let online = terminal.sessions.load(Ordering::Acquire) > 0;
    let current = state.ledger.blacklist_version();
    let held = terminal.blacklist_version.load(Ordering::Acquire);
    TerminalJson {
        id: terminal.id,
        merchant_id: terminal.merchant_id,
        shard: terminal.shard,
        enabled: terminal.is_enabled(),
        online,
        offline: last_seen == 0 || now.saturating_sub(last_seen) > offline_after_ms,
        last_seen_ms: (last_seen != 0).then_some(last_seen),
        clock_skew_ms: terminal.clock_skew_ms.load(Ordering::Relaxed),
        software_version: terminal.software_version.load(Ordering::Relaxed),
        blacklist_version: held,
        blacklist_behind: current.saturating_sub(held),
        last_sequence: terminal.last_sequence.load(Ordering::Acquire),
    }
}

/// `?merchant_id=7`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalQuery {
    #[serde(default)]
    merchant_id: Option<u32>,
}

/// Every terminal, or one merchant's.
pub async fn list_terminals(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<TerminalQuery>,
) -> ApiResult<Vec<TerminalJson>> {
    caller.require(&state, Permission::DirectoryRead)?;
    let terminals = state.ledger.terminals();
    Ok(Json(
        terminals
            .iter()
            .filter(|t| query.merchant_id.is_none_or(|m| t.merchant_id == m))
            .map(|t| terminal_json(&state, t))
            .collect(),
    ))
}

/// Terminals needing attention: enabled and offline, or behind on the blacklist.
pub async fn attention(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<TerminalJson>> {
    caller.require(&state, Permission::DirectoryRead)?;
    let terminals = state.ledger.terminals();
    Ok(Json(
        terminals
            .iter()
            .map(|t| terminal_json(&state, t))
            .filter(TerminalJson::needs_attention)
            .collect(),
    ))
}

/// One terminal.
pub async fn show_terminal(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u32>,
) -> ApiResult<TerminalJson> {
    caller.require(&state, Permission::DirectoryRead)?;
    let terminal: Arc<Terminal> =
        state.ledger.terminal(id).ok_or(onecard_engine::ControlError::UnknownTerminal(id))?;
    Ok(Json(terminal_json(&state, &terminal)))
}

fn key(hex: &str) -> Result<TerminalKey, ApiError> {
    TerminalKey::from_hex(hex.trim()).map_err(|error| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_key", format!("key_hex: {error}"))
    })
}

/// `POST /api/terminals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTerminal {
    merchant_id: u32,
    key_hex: String,
}

/// Creates a terminal for a merchant with the key loaded into it.
pub async fn create_terminal(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateTerminal>,
) -> ApiResult<TerminalJson> {
    caller.require(&state, Permission::DirectoryWrite)?;
    let detail = format!("merchant {}", body.merchant_id);
    let record = caller.audited(&state, "terminal.create", "terminal:new", &detail, || {
        key(&body.key_hex).and_then(|key| {
            state.ledger.create_terminal(body.merchant_id, &key).map_err(ApiError::from)
        })
    })?;
    let terminal = state
        .ledger
        .terminal(record.id)
        .ok_or(onecard_engine::ControlError::UnknownTerminal(record.id))?;
    Ok(Json(terminal_json(&state, &terminal)))
}

/// `POST /api/terminals/{id}/key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    key_hex: String,
}

/// `POST /api/terminals/{id}/{action}`: `key` with a body (rotate), `enable`,
/// `disable`.
pub async fn terminal_action(
    State(state): State<AppState>,
    caller: Caller,
    Params((id, action)): Params<(u32, String)>,
    RawBody(body): RawBody,
) -> ApiResult<TerminalJson> {
    caller.require(&state, Permission::DirectoryWrite)?;
    let target = format!("terminal:{id}");
    match action.as_str() {
        "key" => {
            let body: KeyBody = super::parse_json(&body)?;
            caller.audited(&state, "terminal.rotate_key", &target, "", || {
                key(&body.key_hex).and_then(|key| {
                    state.ledger.rotate_terminal_key(id, &key).map_err(ApiError::from)
                })
            })?;
        }
        "enable" | "disable" => {
            let enabled = action == "enable";
            caller.audited(&state, &format!("terminal.{action}"), &target, "", || {
                state.ledger.set_terminal_enabled(id, enabled)
            })?;
        }
        _ => {
            return Err(ApiError::unknown_action("terminal", &action));
        }
    }
    let terminal =
        state.ledger.terminal(id).ok_or(onecard_engine::ControlError::UnknownTerminal(id))?;
    Ok(Json(terminal_json(&state, &terminal)))
}
