//! The business day for finance: the cutover, settling a date, the settlement as JSON
//! and its files.
//!
//! Settling reads a whole day of every shard's journal, so it runs on tokio's
//! blocking pool, never on a thread that serves requests.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use onecard_engine::BusinessDate;
use onecard_engine::settlement::{MerchantSettlement, Sales, Settled, Settlement, Tally};
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Permission};
use super::money::{Date, parse_business_date, yuan};
use super::{ApiError, ApiResult, AppState, Body, Params, QueryParams, RawBody};
use crate::settlement_files::{self, FileKind};

/// A date in a path, `YYYY-MM-DD`; 400 `bad_path` otherwise.
pub fn date_of(text: &str) -> Result<BusinessDate, ApiError> {
    parse_business_date(text)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", message))
}

fn date_from(date: Date) -> Result<BusinessDate, ApiError> {
    BusinessDate::from_yyyymmdd(date.0).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_date", "not a date")
    })
}

/// `POST /api/cutover`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverRequest {
    /// The business date to close.
    date: Date,
}

/// What a cutover did.
#[derive(Debug, Serialize)]
pub struct CutoverJson {
    closed_through: String,
    open: String,
    changed: bool,
}

/// Closes a business date now (repeat-safe).
pub async fn cutover(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<CutoverRequest>,
) -> ApiResult<CutoverJson> {
    let cutover = cutover_as(&state, &caller, date_from(request.date)?).await?;
    Ok(Json(CutoverJson {
        closed_through: cutover.closed_through.to_string(),
        open: cutover.open.to_string(),
        changed: cutover.changed,
    }))
}

/// Closes `date` for `caller` (the API's and the console's), on the blocking pool,
/// audited.
pub(crate) async fn cutover_as(
    state: &AppState,
    caller: &Caller,
    date: BusinessDate,
) -> Result<onecard_engine::ledger::Cutover, ApiError> {
    caller.require(state, Permission::DayWrite)?;
    let ledger = std::sync::Arc::clone(&state.ledger);
    let turned = super::blocking(move || ledger.cutover(date)).await?;
    caller.audited(state, "day.cutover", &date.to_string(), "", || turned)
}

/// A count and an amount.
#[derive(Debug, Serialize)]
pub struct TallyJson {
    count: u64,
    yuan: String,
}

impl From<Tally> for TallyJson {
    fn from(tally: Tally) -> Self {
        Self { count: tally.count, yuan: yuan(tally.fen) }
    }
}

/// Sales of a merchant, terminal or meal.
#[derive(Debug, Serialize)]
pub struct SalesJson {
    purchases: TallyJson,
    cardholders: u64,
    refunds: TallyJson,
    reversals: TallyJson,
    adjustments: TallyJson,
    gross_yuan: String,
}

impl From<&Sales> for SalesJson {
    fn from(sales: &Sales) -> Self {
        Self {
            purchases: sales.purchases.into(),
            cardholders: sales.cardholders,
            refunds: sales.refunds.into(),
            reversals: sales.reversals.into(),
            adjustments: sales.adjustments.into(),
            gross_yuan: yuan(sales.net_fen),
        }
    }
}

/// One terminal's line.
#[derive(Debug, Serialize)]
pub struct TerminalLineJson {
    terminal_id: u32,
    #[serde(flatten)]
    sales: SalesJson,
}

/// One meal period's line.
#[derive(Debug, Serialize)]
pub struct MealLineJson {
    meal: String,
    #[serde(flatten)]
    sales: SalesJson,
}

/// One merchant's settlement.
#[derive(Debug, Serialize)]
pub struct MerchantSettlementJson {
    merchant_id: u32,
    name: String,
    commission_rate: String,
    #[serde(flatten)]
    sales: SalesJson,
    commission_yuan: String,
    net_payable_yuan: String,
    terminals: Vec<TerminalLineJson>,
    meals: Vec<MealLineJson>,
}

impl From<&MerchantSettlement> for MerchantSettlementJson {
    fn from(merchant: &MerchantSettlement) -> Self {
        Self {
            merchant_id: merchant.merchant_id,
            name: merchant.name.clone(),
            commission_rate: merchant.commission_rate.normalize().to_string(),
            sales: (&merchant.sales).into(),
            commission_yuan: yuan(merchant.commission_fen),
            net_payable_yuan: yuan(merchant.net_payable_fen),
            terminals: merchant
                .terminals
                .iter()
                .map(|t| TerminalLineJson { terminal_id: t.terminal_id, sales: (&t.sales).into() })
                .collect(),
            meals: merchant
                .meals
                .iter()
                .map(|m| MealLineJson { meal: m.meal.clone(), sales: (&m.sales).into() })
                .collect(),
        }
    }
}

/// Totals of a settlement.
#[derive(Debug, Serialize)]
pub struct TotalsJson {
    merchants: u64,
    purchases: TallyJson,
    refunds: TallyJson,
    reversals: TallyJson,
    adjustments: TallyJson,
    gross_yuan: String,
    commission_yuan: String,
    net_payable_yuan: String,
}

/// A settlement.
#[derive(Debug, Serialize)]
pub struct SettlementJson {
    business_date: String,
    /// Whether this request posted it (false: it was settled before).
    #[serde(skip_serializing_if = "Option::is_none")]
    posted: Option<bool>,
    settled_at_ms: u64,
    /// A string: ids pass 2^53.
    first_transfer_id: String,
    transfer_count: u32,
    totals: TotalsJson,
    files: Vec<String>,
    merchants: Vec<MerchantSettlementJson>,
}

fn settlement_json(settlement: &Settlement, posted: Option<bool>) -> SettlementJson {
    let totals = settlement.totals();
    SettlementJson {
        business_date: settlement.date().map_or_else(String::new, |d| d.to_string()),
        posted,
        settled_at_ms: settlement.settled_at_ms,
        first_transfer_id: settlement.first_transfer_id.to_string(),
        transfer_count: settlement.transfer_count,
        totals: TotalsJson {
            merchants: totals.merchants,
            purchases: totals.purchases.into(),
            refunds: totals.refunds.into(),
            reversals: totals.reversals.into(),
            adjustments: totals.adjustments.into(),
            gross_yuan: yuan(totals.net_sales_fen),
            commission_yuan: yuan(totals.commission_fen),
            net_payable_yuan: yuan(totals.net_payable_fen),
        },
        files: FileKind::ALL.iter().map(|kind| kind.name().to_owned()).collect(),
        merchants: settlement.merchants.iter().map(Into::into).collect(),
    }
}

/// Settles a closed date (repeat-safe) and writes its files. The body, if any, is
/// read and ignored: a request whose body is left unread can lose its connection
/// while the settlement runs.
pub async fn settle(
    State(state): State<AppState>,
    caller: Caller,
    Params(date): Params<String>,
    RawBody(_): RawBody,
) -> ApiResult<SettlementJson> {
    let settled = settle_as(&state, &caller, date_of(&date)?).await?;
    Ok(Json(settlement_json(&settled.settlement, Some(settled.posted))))
}

/// Settles `date` for `caller` and writes its files (the API's and the console's), on
/// the blocking pool, audited.
pub(crate) async fn settle_as(
    state: &AppState,
    caller: &Caller,
    date: BusinessDate,
) -> Result<Settled, ApiError> {
    caller.require(state, Permission::DayWrite)?;
    let ledger = std::sync::Arc::clone(&state.ledger);
    let dir = state.config.settlement_dir.clone();
    let settled: Result<Settled, ApiError> = super::blocking(move || {
        let settled = ledger.settle(date)?;
        settlement_files::write_all(&settled.settlement, &dir).map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "files_unwritable",
                format!("settled, but the files could not be written: {error:#}"),
            )
        })?;
        Ok(settled)
    })
    .await?;
    caller.audited(state, "settlement.settle", &date.to_string(), "", || settled)
}

fn stored(state: &AppState, date: BusinessDate) -> Result<Settlement, ApiError> {
    state.ledger.settlement(date)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "settlement_not_found",
            format!("{date} has not been settled"),
        )
    })
}

/// A settled date.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(date): Params<String>,
) -> ApiResult<SettlementJson> {
    caller.require(&state, Permission::LedgerRead)?;
    let settlement = stored(&state, date_of(&date)?)?;
    Ok(Json(settlement_json(&settlement, None)))
}

/// `?kind=merchants|terminals|meals|xlsx` (default merchants).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    #[serde(default)]
    kind: Option<String>,
}

/// One of a settled date's files, rendered from the stored record: the same bytes
/// as the files written at settlement.
pub async fn file(
    State(state): State<AppState>,
    caller: Caller,
    Params(date): Params<String>,
    QueryParams(query): QueryParams<FileQuery>,
) -> Result<Response, ApiError> {
    caller.require(&state, Permission::LedgerRead)?;
    let name = query.kind.as_deref().unwrap_or("merchants");
    let kind = FileKind::from_name(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("no settlement file {name:?}: merchants, terminals, meals or xlsx"),
        )
    })?;
    let settlement = stored(&state, date_of(&date)?)?;
    let rendered = settlement_files::render(&settlement, kind).map_err(|error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{error:#}"))
    })?;
    Ok(download(kind, rendered))
}

/// A rendered settlement file as a download.
pub(crate) fn download(kind: FileKind, rendered: settlement_files::RenderedFile) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", rendered.name);
    (
        [
            (header::CONTENT_TYPE, kind.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        rendered.bytes,
    )
        .into_response()
}
