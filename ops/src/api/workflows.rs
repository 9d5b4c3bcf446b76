//! Approval workflows over HTTP: the definitions, submitting an application, acting
//! on one, the inbox (待办), an application's history, and the overdue list.
//!
//! Any operator may apply; the applicant is the caller. Who may act at a step is the
//! workflow engine's rule (the step's role, or the person it was handed to, never the
//! applicant approving their own, never one person approving twice); every action and
//! every refused one is in the audit log as well as in the application's history.
//! Actions that run a ledger effect do synced writes, so they run on the blocking pool.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use onecard_engine::date::now_ms;
use onecard_engine::workflow::{Action, Actor, Definition, Instance, WorkflowError};
use serde::Deserialize;

use super::auth::{Caller, Permission};
use super::{ApiError, ApiResult, AppState, Body, Params, QueryParams, RawBody};

impl From<WorkflowError> for ApiError {
    fn from(error: WorkflowError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match error {
            WorkflowError::Ledger(control) => return Self::from(control),
            WorkflowError::UnknownWorkflow(_) => (S::NOT_FOUND, "workflow_not_found"),
            WorkflowError::UnknownInstance(_) => (S::NOT_FOUND, "application_not_found"),
            WorkflowError::Form(_) => (S::UNPROCESSABLE_ENTITY, "invalid_form"),
            WorkflowError::Finished(_) => (S::CONFLICT, "application_finished"),
            WorkflowError::NotYourTurn(_) => (S::FORBIDDEN, "not_your_turn"),
            WorkflowError::ActionNotAllowed { .. } => {
                (S::UNPROCESSABLE_ENTITY, "action_not_allowed")
            }
            WorkflowError::FourEyes(_) => (S::FORBIDDEN, "four_eyes"),
            WorkflowError::Storage(_) => (S::SERVICE_UNAVAILABLE, "storage_unavailable"),
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        name: caller.operator.clone(),
        roles: vec![caller.role.as_str().to_owned()],
        from: caller.from.ip().to_string(),
    }
}

/// Every workflow definition.
pub async fn definitions(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Vec<Definition>> {
    Ok(Json(state.workflows.definitions().into_iter().cloned().collect()))
}

/// `POST /api/workflows/{name}`: the application's form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    form: serde_json::Value,
}

/// Submits an application; the caller is its applicant.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Params(name): Params<String>,
    Body(request): Body<SubmitRequest>,
) -> ApiResult<Instance> {
    let workflows = state.workflows.clone();
    let (who, workflow) = (actor(&caller), name.clone());
    let outcome = super::blocking(move || workflows.submit(&who, &workflow, request.form)).await?;
    let instance =
        caller.audited(&state, "workflow.submit", &format!("workflow:{name}"), "", || outcome)?;
    Ok(Json(instance))
}

/// `POST /api/applications/{id}/resubmit`: the changed form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResubmitRequest {
    form: serde_json::Value,
    #[serde(default)]
    comment: String,
}

/// The applicant resubmits a returned application with a changed form.
pub async fn resubmit(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u64>,
    Body(request): Body<ResubmitRequest>,
) -> ApiResult<Instance> {
    let workflows = state.workflows.clone();
    let who = actor(&caller);
    let outcome =
        super::blocking(move || workflows.resubmit(&who, id, request.form, &request.comment))
            .await?;
    let instance =
        caller
            .audited(&state, "workflow.resubmit", &format!("application:{id}"), "", || outcome)?;
    Ok(Json(instance))
}

/// `?reason=...` for a subsidy list uploaded as CSV.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvQuery {
    reason: String,
}

/// A subsidy list as finance keeps it: CSV (UTF-8, a BOM allowed) with the header
/// `card_number,amount_yuan,purse,reason`, one subsidy a line; `purse` is `main` or
/// `restricted` (empty: main). A line that cannot be read refuses the upload, named by
/// its line number; a card that cannot take the subsidy is reported when it posts.
pub fn subsidy_rows_from_csv(body: &[u8]) -> Result<Vec<serde_json::Value>, ApiError> {
    let bad =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_form", message);
    let body = body.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(body);
    let header = reader.headers().map_err(|error| bad(format!("the header: {error}")))?.clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(format!("no column {name:?}")))
    };
    let (card_at, amount_at) = (column("card_number")?, column("amount_yuan")?);
    let (purse_at, reason_at) = (
        header.iter().position(|h| h.trim() == "purse"),
        header.iter().position(|h| h.trim() == "reason"),
    );
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|error| bad(format!("line {line}: {error}")))?;
        let field = |at: usize| record.get(at).unwrap_or("").trim();
        let card: u64 = field(card_at)
            .parse()
            .map_err(|_| bad(format!("line {line}: card_number {:?}", field(card_at))))?;
        let fen = super::money::parse_yuan(field(amount_at))
            .map_err(|m| bad(format!("line {line}: {m}")))?;
        let purse = purse_at.map(field).filter(|p| !p.is_empty()).unwrap_or("main");
        rows.push(serde_json::json!({
            "card_number": card,
            "amount_fen": fen,
            "purse": purse,
            "reason": reason_at.map(field).unwrap_or(""),
        }));
    }
    Ok(rows)
}

/// Submits a subsidy batch uploaded as a CSV list (see [`subsidy_rows_from_csv`]).
pub async fn submit_csv(
    State(state): State<AppState>,
    caller: Caller,
    Params(name): Params<String>,
    QueryParams(query): QueryParams<CsvQuery>,
    RawBody(body): RawBody,
) -> ApiResult<Instance> {
    if name != "subsidy_batch" {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_form",
            format!("only subsidy_batch takes a CSV list, not {name:?}"),
        ));
    }
    let rows = subsidy_rows_from_csv(&body);
    let form = rows.map(|rows| serde_json::json!({ "reason": query.reason, "rows": rows }));
    let workflows = state.workflows.clone();
    let who = actor(&caller);
    let outcome = match form {
        Ok(form) => super::blocking(move || workflows.submit(&who, "subsidy_batch", form))
            .await?
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let detail = format!("{} bytes of CSV", body.len());
    let instance =
        caller.audited(&state, "workflow.submit", "workflow:subsidy_batch", &detail, || outcome)?;
    Ok(Json(instance))
}

/// `POST /api/applications/{id}/{action}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActRequest {
    #[serde(default)]
    comment: String,
    /// A hand-over's recipient.
    #[serde(default)]
    to: Option<String>,
    /// The applicant's rating when confirming, 1 to 5.
    #[serde(default)]
    rating: Option<u8>,
}

/// Acts on an application: approve, reject, return, comment, hand_over.
pub async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Params((id, action)): Params<(u64, String)>,
    Body(request): Body<ActRequest>,
) -> ApiResult<Instance> {
    let parsed: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
        .map_err(|_| ApiError::unknown_action("application", &action))?;
    // A hand-over goes to an operator, with the role they hold.
    let hand_to = match request.to.as_deref().filter(|_| parsed == Action::HandOver) {
        Some(name) => {
            let record = state.operators.get(name)?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_form",
                    format!("no operator {name:?} to hand over to"),
                )
            })?;
            Some(Actor {
                name: record.name.clone(),
                roles: vec![record.role.as_str().to_owned()],
                from: String::new(),
            })
        }
        None => None,
    };
    // What the operator saw when they acted, for the audit log: the application's
    // workflow, its status and step, and its form's digest.
    let seen = state.workflows.instance(id).ok().map_or_else(String::new, |instance| {
        format!(
            " (saw {} application at step {}, status {:?}, form sha256 {})",
            instance.workflow,
            instance.step,
            instance.status,
            onecard_engine::workflow::form_digest(&instance.form)
        )
    });
    let workflows = state.workflows.clone();
    let who = actor(&caller);
    let outcome = super::blocking(move || {
        workflows.act(&who, id, parsed, &request.comment, hand_to.as_ref(), request.rating)
    })
    .await?;
    let detail = format!("{action}{seen}");
    let instance =
        caller
            .audited(&state, "workflow.act", &format!("application:{id}"), &detail, || outcome)?;
    Ok(Json(instance))
}

/// One application with its history: its applicant, anyone whose turn it is, and
/// those who read everything (admin, auditor).
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Params(id): Params<u64>,
) -> ApiResult<Instance> {
    let instance = state.workflows.instance(id)?;
    let involved = instance.applicant == caller.operator
        || instance.history.iter().any(|h| h.actor == caller.operator)
        || state.workflows.inbox(&actor(&caller))?.iter().any(|i| i.id == id);
    if !involved {
        caller.require(&state, Permission::AuditRead)?;
    }
    Ok(Json(instance))
}

/// The caller's inbox (待办).
pub async fn inbox(State(state): State<AppState>, caller: Caller) -> ApiResult<Vec<Instance>> {
    Ok(Json(state.workflows.inbox(&actor(&caller))?))
}

/// `?mine=true` (the caller's own applications) or `?overdue=true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    mine: bool,
    #[serde(default)]
    overdue: bool,
}

/// The caller's own applications (where each stands), or every overdue one.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Vec<Instance>> {
    if query.overdue {
        caller.require(&state, Permission::LedgerRead)?;
        return Ok(Json(state.workflows.overdue(now_ms())?));
    }
    if !query.mine {
        caller.require(&state, Permission::AuditRead)?;
        return Ok(Json(state.workflows.list(|_| true)?));
    }
    Ok(Json(state.workflows.list(|i| i.applicant == caller.operator)?))
}
