//! The card centre's card lifecycle: open, report lost, unlock, freeze, reissue,
//! extend, limits and PIN; and lookups: a card, its statement.
//!
//! Each change here takes effect at once and is audited; batch operations and those
//! that move money out of a card (closure with refund) go through approval workflows.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use onecard_engine::cards::{CardType, LimitOverrides, Limits};
use onecard_engine::journal::Transfer;
use onecard_engine::ledger::{CardView, StatementCursor};
use onecard_engine::{AccountId, OpenCard};
use onecard_protocol::Pin;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Permission};
use super::money::{Date, Yuan, date, yuan};
use super::{ApiError, ApiResult, AppState, Body, Params, QueryParams, snake};

/// A card as the API shows it.
#[derive(Debug, Serialize)]
pub struct CardJson {
    card_number: u64,
    account_number: u64,
    holder_id: String,
    holder_name: String,
    card_type: CardType,
    state: String,
    expiry_date: String,
    balance_yuan: String,
    restricted_yuan: String,
    deposit_yuan: String,
    spent_today_yuan: String,
    limits: LimitsJson,
    has_pin: bool,
}

/// Limits in yuan.
#[derive(Debug, Serialize)]
pub struct LimitsJson {
    transaction_yuan_max: String,
    daily_yuan_max: String,
    no_pin_yuan_max: String,
    balance_yuan_max: String,
}

impl From<&Limits> for LimitsJson {
    fn from(limits: &Limits) -> Self {
        Self {
            transaction_yuan_max: yuan(limits.transaction_fen_max),
            daily_yuan_max: yuan(limits.daily_fen_max),
            no_pin_yuan_max: yuan(limits.no_pin_fen_max),
            balance_yuan_max: yuan(limits.balance_fen_max),
        }
    }
}

impl From<CardView> for CardJson {
    fn from(card: CardView) -> Self {
        Self {
            card_number: card.card_number,
            account_number: card.account_number,
            holder_id: card.holder_id,
            holder_name: card.holder_name,
            card_type: card.card_type,
            state: snake(card.state),
            expiry_date: date(card.expiry_date),
            balance_yuan: yuan(card.balance_fen),
            restricted_yuan: yuan(card.restricted_fen),
            deposit_yuan: yuan(card.deposit_fen),
            spent_today_yuan: yuan(card.spent_today_fen),
            limits: LimitsJson::from(&card.limits),
            has_pin: card.has_pin,
        }
    }
}

/// Per-card limit overrides in yuan; an absent limit keeps the card type's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    transaction_yuan_max: Option<Yuan>,
    daily_yuan_max: Option<Yuan>,
    no_pin_yuan_max: Option<Yuan>,
    balance_yuan_max: Option<Yuan>,
}

impl From<LimitsBody> for LimitOverrides {
    fn from(body: LimitsBody) -> Self {
        Self {
            transaction_fen_max: body.transaction_yuan_max.map(|y| y.0),
            daily_fen_max: body.daily_yuan_max.map(|y| y.0),
            no_pin_fen_max: body.no_pin_yuan_max.map(|y| y.0),
            balance_fen_max: body.balance_yuan_max.map(|y| y.0),
        }
    }
}

fn pin(text: &str) -> Result<Pin, ApiError> {
    Pin::new(text).map_err(|error| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_pin", error.to_string())
    })
}

/// `POST /api/cards`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBody {
    card_number: u64,
    holder_id: String,
    holder_name: String,
    card_type: CardType,
    expiry_date: Date,
    #[serde(default)]
    deposit_yuan: Option<Yuan>,
    #[serde(default)]
    pin: Option<String>,
    #[serde(default)]
    limits: Option<LimitsBody>,
}

/// A card just opened, with its first hall password: shown this once, for the card
/// centre to hand to the holder.
#[derive(Debug, Serialize)]
pub struct OpenedJson {
    #[serde(flatten)]
    card: CardJson,
    /// The service hall's first password; the holder changes it at the first login.
    hall_password: String,
}

/// Opens a card (开户): cardholder, account and first card, and the card's first hall
/// password.
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<OpenBody>,
) -> ApiResult<OpenedJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let target = format!("card:{}", body.card_number);
    let detail = format!("holder {} type {:?}", body.holder_id, body.card_type);
    let pin = body.pin.as_deref().map(pin).transpose();
    let pin = caller.audited(&state, "card.open", &target, &detail, || pin)?;
    let open = OpenCard {
        card_number: body.card_number,
        holder_id: body.holder_id,
        holder_name: body.holder_name,
        card_type: body.card_type,
        expiry_date: body.expiry_date.0,
        deposit_fen: body.deposit_yuan.map_or(0, |y| y.0),
        pin,
        overrides: body.limits.map(LimitOverrides::from).unwrap_or_default(),
    };
    let (hall_password, credential) = crate::hall::issue(&state).await.map_err(hall_error)?;
    let card =
        caller.audited(&state, "card.open", &target, &detail, || state.ledger.open_card(open))?;
    caller.audited(&state, "card.hall_password", &target, "issued at opening", || {
        state.ledger.set_hall_credential(card.card_number, &credential)
    })?;
    Ok(Json(OpenedJson { card: card.into(), hall_password }))
}

/// A new hall password, issued by the counter.
#[derive(Debug, Serialize)]
pub struct HallPasswordJson {
    card_number: u64,
    /// Shown this once; the holder changes it at the next login.
    hall_password: String,
}

/// `POST /api/cards/{card}/hall-password`: the counter resets a card's hall password
/// (the holder forgot it, or was locked out): a new one, to be changed at the next
/// login; the card's hall sessions end.
pub async fn reset_hall_password(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
) -> ApiResult<HallPasswordJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let target = format!("card:{card}");
    let known = state.ledger.card(card).ok_or(onecard_engine::ControlError::UnknownCard(card));
    caller.audited(&state, "card.hall_password", &target, "reset", || known.map(drop))?;
    let (hall_password, credential) = crate::hall::issue(&state).await.map_err(hall_error)?;
    caller.audited(&state, "card.hall_password", &target, "reset", || {
        state.ledger.set_hall_credential(card, &credential)
    })?;
    state.hall.end_card(card, None);
    Ok(Json(HallPasswordJson { card_number: card, hall_password }))
}

fn hall_error(error: crate::hall::HallError) -> ApiError {
    match error {
        crate::hall::HallError::Control(error) => error.into(),
        other => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hashing_failed", other.to_string())
        }
    }
}

/// Looks a card up.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsRead)?;
    let card = state.ledger.card(card).ok_or(onecard_engine::ControlError::UnknownCard(card))?;
    Ok(Json(card.into()))
}

/// A change of a card's state, as the engine makes it.
pub(crate) type StateChange =
    fn(&onecard_engine::Ledger, u64) -> Result<CardView, onecard_engine::ControlError>;

/// The state change an action names: `report-lost`, `unlock`, `freeze`, `unfreeze`
/// (the API's and the console's).
pub(crate) fn state_change(action: &str) -> Option<StateChange> {
    Some(match action {
        "report-lost" => onecard_engine::Ledger::report_lost,
        "unlock" => onecard_engine::Ledger::unlock,
        "freeze" => onecard_engine::Ledger::freeze,
        "unfreeze" => onecard_engine::Ledger::unfreeze,
        _ => return None,
    })
}

/// `POST /api/cards/{card}/{action}`: `report-lost`, `unlock`, `freeze`, `unfreeze`.
pub async fn action(
    State(state): State<AppState>,
    caller: Caller,
    Params((card, action)): Params<(u64, String)>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let ledger = &state.ledger;
    let change = state_change(&action).ok_or_else(|| ApiError::unknown_action("card", &action))?;
    let audit_action = format!("card.{}", action.replace('-', "_"));
    let view = caller
        .audited(&state, &audit_action, &format!("card:{card}"), "", || change(ledger, card))?;
    Ok(Json(view.into()))
}

/// `POST /api/cards/{card}/reissue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReissueBody {
    new_card_number: u64,
    #[serde(default)]
    fee_yuan: Option<Yuan>,
}

/// Reissues a card (补卡): a new number for the same account.
pub async fn reissue(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
    Body(body): Body<ReissueBody>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let fee = body.fee_yuan.map_or(0, |y| y.0);
    let detail = format!("new card {} fee {}", body.new_card_number, yuan(fee));
    let view = caller.audited(&state, "card.reissue", &format!("card:{card}"), &detail, || {
        state.ledger.reissue(card, body.new_card_number, fee)
    })?;
    Ok(Json(view.into()))
}

/// `POST /api/cards/{card}/extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    expiry_date: Date,
}

/// Extends a card's expiry (延期).
pub async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
    Body(body): Body<ExtendBody>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let detail = format!("to {}", date(body.expiry_date.0));
    let view = caller.audited(&state, "card.extend", &format!("card:{card}"), &detail, || {
        state.ledger.extend(card, body.expiry_date.0)
    })?;
    Ok(Json(view.into()))
}

/// Sets per-card limits.
pub async fn limits(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
    Body(body): Body<LimitsBody>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let overrides = LimitOverrides::from(body);
    let detail = format!("{overrides:?}");
    let view =
        caller.audited(&state, "card.set_limits", &format!("card:{card}"), &detail, || {
            state.ledger.set_limits(card, overrides)
        })?;
    Ok(Json(view.into()))
}

/// `POST /api/cards/{card}/pin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    pin: String,
}

/// Sets or resets a card's PIN (never logged or audited in clear).
pub async fn set_pin(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
    Body(body): Body<PinBody>,
) -> ApiResult<CardJson> {
    caller.require(&state, Permission::CardsWrite)?;
    let target = format!("card:{card}");
    let pin = caller.audited(&state, "card.set_pin", &target, "", || pin(&body.pin))?;
    let view =
        caller.audited(&state, "card.set_pin", &target, "", || state.ledger.set_pin(card, &pin))?;
    Ok(Json(view.into()))
}

/// A transfer as the API shows it.
#[derive(Debug, Serialize)]
pub struct TransferJson {
    id: String,
    kind: &'static str,
    debit: String,
    credit: String,
    amount_yuan: String,
    business_date: String,
    timestamp_ms: u64,
    terminal_id: u32,
    sequence: u64,
    corrects: Option<String>,
    card_number: Option<u64>,
    meal_period: String,
}

impl From<&Transfer> for TransferJson {
    fn from(t: &Transfer) -> Self {
        Self {
            id: t.id.to_string(),
            kind: t.kind.label(),
            debit: t.debit.to_string(),
            credit: t.credit.to_string(),
            amount_yuan: yuan(t.amount_fen),
            business_date: t.business_date.to_string(),
            timestamp_ms: t.timestamp_ms,
            terminal_id: t.terminal_id,
            sequence: t.sequence,
            corrects: (t.corrects != 0).then(|| t.corrects.to_string()),
            card_number: (t.card_number != 0).then_some(t.card_number),
            meal_period: snake(t.meal_period),
        }
    }
}

/// `?limit=50&before=<cursor>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<String>,
}

/// One statement page.
#[derive(Debug, Serialize)]
pub struct StatementJson {
    card_number: u64,
    transfers: Vec<StatementLine>,
    /// Pass as `before` for the next (older) page; absent at the end.
    next: Option<String>,
}

/// A statement line: the transfer, and what it did to the card.
#[derive(Debug, Serialize)]
pub struct StatementLine {
    #[serde(flatten)]
    transfer: TransferJson,
    /// `in` (credited the card) or `out` (debited it).
    direction: &'static str,
}

/// A card's statement, newest first, a page at a time.
pub async fn statement(
    State(state): State<AppState>,
    caller: Caller,
    Params(card): Params<u64>,
    QueryParams(query): QueryParams<StatementQuery>,
) -> ApiResult<StatementJson> {
    caller.require(&state, Permission::CardsRead)?;
    let before = query.before.as_deref().map(parse_cursor).transpose()?;
    let limit = query.limit.unwrap_or(50);
    let view = state.ledger.card(card).ok_or(onecard_engine::ControlError::UnknownCard(card))?;
    let page = state.ledger.statement(card, before, limit)?;
    let main = AccountId::card(view.account_number);
    let restricted = AccountId::card_restricted(view.account_number);
    let transfers = page
        .transfers
        .iter()
        .map(|t| StatementLine {
            transfer: t.into(),
            direction: if t.credit == main || t.credit == restricted { "in" } else { "out" },
        })
        .collect();
    let next = page.next.map(|c| format!("{}-{}", c.timestamp_ms, c.transfer_id));
    Ok(Json(StatementJson { card_number: card, transfers, next }))
}

fn parse_cursor(text: &str) -> Result<StatementCursor, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("{text:?} is not a statement cursor"),
        )
    };
    let (time, id) = text.split_once('-').ok_or_else(bad)?;
    Ok(StatementCursor {
        timestamp_ms: time.parse().map_err(|_| bad())?,
        transfer_id: id.parse().map_err(|_| bad())?,
    })
}
