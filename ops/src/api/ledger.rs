//! Finance's view of the ledger: the university's accounts, any account's balance, a
//! transfer by id; and the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use onecard_engine::account::{AccountId, AccountKind};
use onecard_engine::audit::AuditRecord;
use onecard_protocol::Channel;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Permission};
use super::cards::TransferJson;
use super::money::yuan;
use super::{ApiError, ApiResult, AppState, Params, QueryParams, snake};

/// One account's balance.
#[derive(Debug, Serialize)]
pub struct BalanceJson {
    account: String,
    kind: &'static str,
    balance_yuan: String,
}

fn balance(state: &AppState, account: AccountId) -> Result<BalanceJson, ApiError> {
    Ok(BalanceJson {
        account: account.to_string(),
        kind: account.kind().name(),
        balance_yuan: yuan(state.ledger.account_balance(account)?),
    })
}

/// The university's own accounts and the card pool.
#[derive(Debug, Serialize)]
pub struct BalancesJson {
    /// The sum of every card balance (资金池), what the university owes cardholders.
    card_pool_yuan: String,
    business_date: String,
    accounts: Vec<BalanceJson>,
}

/// The card pool and every single account (deposits, subsidy funding, fee and
/// commission income, refunds payable, suspense, payouts) and each top-up channel.
pub async fn balances(State(state): State<AppState>, caller: Caller) -> ApiResult<BalancesJson> {
    caller.require(&state, Permission::LedgerRead)?;
    let singles = [
        AccountKind::SubsidyFunding,
        AccountKind::PendingSubsidy,
        AccountKind::Deposit,
        AccountKind::CardFeeIncome,
        AccountKind::CommissionIncome,
        AccountKind::SettlementPayout,
        AccountKind::Suspense,
        AccountKind::RefundPayable,
    ];
    let mut accounts = Vec::new();
    for channel in Channel::ALL {
        accounts.push(balance(&state, AccountId::channel(*channel))?);
    }
    for kind in singles {
        accounts.push(balance(&state, AccountId::single(kind))?);
    }
    Ok(Json(BalancesJson {
        card_pool_yuan: yuan(state.ledger.card_pool_fen()?),
        business_date: state.ledger.business_date().to_string(),
        accounts,
    }))
}

/// Parses `kind:number` (`merchant:12`, `deposit:0`, `card:41`).
pub fn parse_account(text: &str) -> Result<AccountId, ApiError> {
    onecard_engine::account::parse_account(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("{text:?} is not an account such as merchant:12"),
        )
    })
}

/// One account's committed balance.
pub async fn account(
    State(state): State<AppState>,
    caller: Caller,
    Params(account): Params<String>,
) -> ApiResult<BalanceJson> {
    caller.require(&state, Permission::LedgerRead)?;
    Ok(Json(balance(&state, parse_account(&account)?)?))
}

/// One transfer by id.
pub async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u64>,
) -> ApiResult<TransferJson> {
    caller.require(&state, Permission::LedgerRead)?;
    let transfer = state.ledger.transfer(id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "transfer_not_found", format!("no transfer {id}"))
    })?;
    Ok(Json((&transfer).into()))
}

/// `?before=<sequence>&limit=100`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// An audit record.
#[derive(Debug, Serialize)]
pub struct AuditJson {
    sequence: u64,
    at_ms: u64,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    from: String,
    detail: String,
}

impl From<AuditRecord> for AuditJson {
    fn from(record: AuditRecord) -> Self {
        Self {
            sequence: record.sequence,
            at_ms: record.at_ms,
            actor: record.actor,
            action: record.action,
            target: record.target,
            outcome: snake(record.outcome),
            from: record.from,
            detail: record.detail,
        }
    }
}

/// The audit log, newest first.
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Vec<AuditJson>> {
    caller.require(&state, Permission::AuditRead)?;
    let page = state.ledger.audit_page(query.before, query.limit.unwrap_or(100))?;
    Ok(Json(page.into_iter().map(AuditJson::from).collect()))
}

/// What `GET /api/verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyJson {
    clean: bool,
    batches: u64,
    /// Batches that end in a journal-chain seal; the rest predate the chain.
    sealed_batches: u64,
    /// Whether every seal was checked against the batch before it.
    chain_checked: bool,
    /// Audit records read, and those that end in an audit-chain seal.
    audit_records: u64,
    sealed_audit_records: u64,
    transfers: u64,
    accounts: u64,
    debits_yuan: String,
    credits_yuan: String,
    card_pool_yuan: String,
    sst_files: u64,
    keys_checked: u64,
    problems: Vec<String>,
}

/// Proves the ledger's invariants from disk while serving (admins and auditors).
/// Meaningful when terminal traffic is quiet: a batch committing during the read can
/// show up as a difference between memory and disk. Audited.
pub async fn verify(State(state): State<AppState>, caller: Caller) -> ApiResult<VerifyJson> {
    caller.require(&state, Permission::AuditRead)?;
    let ledger = std::sync::Arc::clone(&state.ledger);
    let report = tokio::task::spawn_blocking(move || ledger.verify()).await.map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "verify did not finish")
    })??;
    let detail = format!("{} transfers, {} problems", report.transfers, report.problems.len());
    caller.audit(&state, "ledger.verify", "ledger", onecard_engine::audit::Outcome::Ok, &detail)?;
    Ok(Json(VerifyJson {
        clean: report.is_clean(),
        batches: report.batches,
        sealed_batches: report.sealed_batches,
        chain_checked: report.chain_checked,
        audit_records: report.audit_records,
        sealed_audit_records: report.sealed_audit_records,
        transfers: report.transfers,
        accounts: report.accounts,
        debits_yuan: yuan(report.debits_fen),
        credits_yuan: yuan(report.credits_fen),
        card_pool_yuan: yuan(report.card_pool_fen),
        sst_files: report.sst_files,
        keys_checked: report.keys_checked,
        problems: report.problems,
    }))
}
