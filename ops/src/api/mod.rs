//! The admin and finance HTTP API: JSON over HTTP on the admin port, with /metrics
//! and the health checks beside it. docs/API.md describes every endpoint.
//!
//! # Layout
//! - `mod.rs` — the router, the shared state, errors and extractors.
//! - `adjustments.rs` — adjustments under four eyes: a maker proposes, a checker posts.
//! - `auth.rs` — operators' logins, bearer tokens, roles and permissions.
//! - `cards.rs` — the card centre's card lifecycle and lookups.
//! - `directory.rs` — merchants and terminals.
//! - `ledger.rs` — balances, transfers and the audit log.
//! - `settlement.rs` — the day cutover, settlement and the settlement files.
//! - `reconcile.rs` — reconciliation: the internal checks and channel statements.
//! - `workflows.rs` — approval workflows: apply, act, inbox, history.
//! - `health.rs` — /healthz, /readyz and /metrics.
//! - `money.rs` — yuan strings at the edge, fen inside.
//!
//! Every error is JSON, `{"error": {"code": "...", "message": "..."}}`, with a stable
//! code: bad JSON, unknown fields, wrong types and oversize bodies are 4xx, never 500.
//! Every change, and every refused attempt, is written to the audit log.

mod adjustments;
mod auth;
mod backups;
mod cards;
pub mod cell;
mod directory;
mod health;
mod ledger;
pub mod money;
mod reconcile;
mod settlement;
mod workflows;

pub use reconcile::fen_as_yuan;
pub use workflows::subsidy_rows_from_csv;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::backup::Backups;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use onecard_engine::audit::{AuditEntry, Outcome};
use onecard_engine::storage::StorageError;
use onecard_engine::workflow::Workflows;
use onecard_engine::{ControlError, Ledger};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use auth::Sessions;
pub(crate) use auth::{
    Caller, Permission, authenticate, change_operator_password, create_operator_as,
    operator_action_as, reset_password_as,
};
pub(crate) use backups::{list_as as list_backups_as, take_as as take_backup_as};
pub(crate) use cards::state_change;
pub(crate) use directory::terminal_json;
pub(crate) use directory::{create_merchant_as, set_commission_as, set_merchant_enabled_as};
pub use health::metrics_token_given;
pub(crate) use settlement::{cutover_as, date_of, download as settlement_download, settle_as};

use crate::config::Config;
use crate::operators::{OperatorError, Operators};

/// Largest request body accepted; a larger one is refused with 413 before it is read.
pub const API_BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest application form (a subsidy batch or card list of up to 10,000 rows).
pub const WORKFLOW_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Bodies up to this size are read before authentication, so that an endpoint that
/// takes no body still leaves its connection reusable; larger ones are read by their
/// handlers once the caller is known.
pub const BODY_READ_AHEAD_BYTES: usize = 4 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The ledger.
    pub ledger: Arc<Ledger>,
    /// Operator records.
    pub operators: Operators,
    /// Live bearer tokens.
    pub sessions: Arc<Sessions>,
    /// Approval workflows.
    pub workflows: Workflows,
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Backups on demand, one at a time with the daily one.
    pub backups: Arc<Backups>,
    /// Cardholders' live sessions in the service hall.
    pub hall: Arc<crate::hall::HallSessions>,
    /// The API's own metrics.
    metrics: Arc<HttpMetrics>,
}

impl AppState {
    /// State over an open ledger.
    ///
    /// # Panics
    /// If the API's metrics cannot be registered (a duplicate name: a bug).
    #[must_use]
    pub fn new(
        ledger: Arc<Ledger>,
        config: Arc<Config>,
        workflows: Workflows,
        backups: Arc<Backups>,
    ) -> Self {
        let metrics = Arc::new(HttpMetrics::new(ledger.metrics().registry()));
        Self {
            backups,
            operators: Operators::new(Arc::clone(&ledger)),
            sessions: Arc::new(Sessions::default()),
            hall: Arc::new(crate::hall::HallSessions::default()),
            workflows,
            ledger,
            config,
            metrics,
        }
    }

    /// Appends to the audit log. A failed audit write is itself logged: the action it
    /// records has been refused or failed by then, or is reported as failed.
    pub(crate) fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        from: SocketAddr,
        detail: &str,
    ) -> Result<(), ApiError> {
        let from = from.ip().to_string();
        let entry = AuditEntry { actor, action, target, outcome, from: &from, detail };
        self.ledger.audit(&entry).map(drop).map_err(|error| {
            tracing::error!(%error, action, target, "audit write failed");
            ApiError::storage(&error)
        })
    }
}

/// The API's own metrics, in the engine's registry.
struct HttpMetrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    auth_refused: IntCounterVec,
    workflow_overdue: prometheus::IntGauge,
}

impl HttpMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new("onecard_http_requests_total", "Admin API requests, by route and status."),
            &["route", "status"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "onecard_http_request_duration_seconds",
                "Admin API request time, by route.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["route"],
        )
        .expect("valid metric");
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "onecard_http_auth_refused_total",
                "Admin API requests refused by authentication or role, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Every reason from the start, so a rate over them exists before the first.
        for reason in AUTH_REFUSAL_REASONS {
            auth_refused.with_label_values(&[reason]).reset();
        }
        let workflow_overdue = prometheus::IntGauge::new(
            "onecard_workflow_overdue_applications",
            "Open applications whose current step is past its deadline (read at each scrape).",
        )
        .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(seconds.clone()),
            Box::new(auth_refused.clone()),
            Box::new(workflow_overdue.clone()),
        ] {
            registry.register(metric).expect("API metric names are unique");
        }
        Self { requests, seconds, auth_refused, workflow_overdue }
    }
}

/// The reasons `onecard_http_auth_refused_total` counts.
const AUTH_REFUSAL_REASONS: [&str; 8] = [
    "no_token",
    "unknown_token",
    "token_expired",
    "forbidden",
    "bad_credentials",
    "operator_locked",
    "password_change_required",
    "metrics_token",
];

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/password", post(auth::change_password))
        .route("/operators", get(auth::list_operators).post(auth::create_operator))
        .route("/operators/{name}/password", post(auth::reset_password))
        .route("/operators/{name}/{action}", post(auth::operator_action))
        .route("/cards", post(cards::open))
        .route("/cards/{card}", get(cards::show))
        .route("/cards/{card}/statement", get(cards::statement))
        .route("/cards/{card}/reissue", post(cards::reissue))
        .route("/cards/{card}/extend", post(cards::extend))
        .route("/cards/{card}/limits", post(cards::limits))
        .route("/cards/{card}/pin", post(cards::set_pin))
        .route("/cards/{card}/hall-password", post(cards::reset_hall_password))
        .route("/cards/{card}/{action}", post(cards::action))
        .route("/merchants", get(directory::list_merchants).post(directory::create_merchant))
        .route("/merchants/{id}", get(directory::show_merchant))
        .route("/merchants/{id}/{action}", post(directory::merchant_action))
        .route("/terminals", get(directory::list_terminals).post(directory::create_terminal))
        .route("/terminals/attention", get(directory::attention))
        .route("/terminals/{id}", get(directory::show_terminal))
        .route("/terminals/{id}/{action}", post(directory::terminal_action))
        .route("/balances", get(ledger::balances))
        .route("/accounts/{account}", get(ledger::account))
        .route("/transfers/{id}", get(ledger::transfer))
        .route("/audit", get(ledger::audit))
        .route("/verify", get(ledger::verify))
        .route("/backups", get(backups::list).post(backups::create))
        .route("/cutover", post(settlement::cutover))
        .route("/settlements/{date}", get(settlement::show).post(settlement::settle))
        .route("/settlements/{date}/file", get(settlement::file))
        .route("/reconciliations/{date}", get(reconcile::internal))
        .route("/workflows", get(workflows::definitions))
        .route(
            "/workflows/{name}",
            post(workflows::submit)
                .layer(axum::extract::DefaultBodyLimit::max(WORKFLOW_BODY_BYTES_MAX)),
        )
        .route(
            "/workflows/{name}/csv",
            post(workflows::submit_csv)
                .layer(axum::extract::DefaultBodyLimit::max(WORKFLOW_BODY_BYTES_MAX)),
        )
        .route("/applications", get(workflows::list))
        .route("/applications/{id}", get(workflows::show))
        .route(
            "/applications/{id}/resubmit",
            post(workflows::resubmit)
                .layer(axum::extract::DefaultBodyLimit::max(WORKFLOW_BODY_BYTES_MAX)),
        )
        .route("/applications/{id}/{action}", post(workflows::act))
        .route("/inbox", get(workflows::inbox))
        .route("/adjustments", get(adjustments::list).post(adjustments::propose))
        .route("/adjustments/{id}", get(adjustments::show))
        .route("/adjustments/{id}/{action}", post(adjustments::decide))
        .route(
            "/reconciliations/{date}/channels/{channel}",
            get(reconcile::show_statement).post(reconcile::import_statement),
        )
        .fallback(not_found);
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest("/api", api)
        .merge(crate::pages::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(refuse_oversize))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(API_BODY_BYTES_MAX))
        .with_state(state)
}

/// Counts every request by its route (the pattern, never the ids in it) and status.
async fn observe(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state.metrics.requests.with_label_values(&[&route, &status]).inc();
    state.metrics.seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    response
}

/// Refuses a body whose declared length is over the limit before reading any of it,
/// and reads a small one ([`BODY_READ_AHEAD_BYTES`]) whole before its handler runs. A
/// handler that takes no body (freeze, unlock, ...) would otherwise leave it unread,
/// and the server would then close the connection after answering, under a client
/// that may already be sending its next request on it.
async fn refuse_oversize(request: Request, next: Next) -> Response {
    // A channel's statement streams to disk and keeps its own, larger, bound.
    if request.uri().path().contains("/channels/") {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let path = request.uri().path();
    let form = path.starts_with("/api/workflows/")
        || (path.starts_with("/api/applications/") && path.ends_with("/resubmit"));
    let limit = if form { WORKFLOW_BODY_BYTES_MAX } else { API_BODY_BYTES_MAX };
    let too_large = || {
        let message = format!("a body is at most {limit} bytes");
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message).into_response()
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    // Larger bodies, and those of undeclared length, are read by their handlers, after
    // the caller is authenticated; only a small one is read here, unauthenticated.
    if declared.is_none_or(|length| length > BODY_READ_AHEAD_BYTES as u64) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let over_limit = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if over_limit {
                return too_large();
            }
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body could not be read: {error}"),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with a stable `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// 404 for `POST /api/{resource}s/{id}/{action}` with an action the resource
    /// does not have.
    pub fn unknown_action(resource: &str, action: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no {resource} action {action:?}"))
    }

    fn storage(error: &impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("the store failed: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match &error {
            ControlError::UnknownCard(_) => (S::NOT_FOUND, "card_not_found"),
            ControlError::UnknownMerchant(_) => (S::NOT_FOUND, "merchant_not_found"),
            ControlError::UnknownTerminal(_) => (S::NOT_FOUND, "terminal_not_found"),
            ControlError::CardExists(_) => (S::CONFLICT, "card_exists"),
            ControlError::NotAllowed { .. } => (S::CONFLICT, "card_state"),
            ControlError::InvalidAmount(_) => (S::UNPROCESSABLE_ENTITY, "invalid_amount"),
            ControlError::InvalidLimits => (S::UNPROCESSABLE_ENTITY, "invalid_limits"),
            ControlError::InvalidRate(_) => (S::UNPROCESSABLE_ENTITY, "invalid_rate"),
            ControlError::InvalidName(_) => (S::UNPROCESSABLE_ENTITY, "invalid_name"),
            ControlError::InvalidDate(_) => (S::UNPROCESSABLE_ENTITY, "invalid_date"),
            ControlError::Zero(_) => (S::UNPROCESSABLE_ENTITY, "invalid_value"),
            ControlError::BatchTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "batch_too_large"),
            ControlError::DateNotOpen { .. } => (S::CONFLICT, "date_not_open"),
            ControlError::DateNotClosed { .. } => (S::CONFLICT, "date_not_closed"),
            ControlError::SameAccount(_) => (S::UNPROCESSABLE_ENTITY, "same_account"),
            ControlError::UnknownAccount(_) => (S::UNPROCESSABLE_ENTITY, "invalid_account"),
            ControlError::Storage(_) | ControlError::Write(_) | ControlError::InDoubt(_) => {
                (S::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match &error {
            OperatorError::InvalidName => (S::UNPROCESSABLE_ENTITY, "invalid_name"),
            OperatorError::WeakPassword => (S::UNPROCESSABLE_ENTITY, "weak_password"),
            OperatorError::Exists(_) => (S::CONFLICT, "operator_exists"),
            OperatorError::Unknown(_) => (S::NOT_FOUND, "operator_not_found"),
            OperatorError::TooMany => (S::CONFLICT, "too_many_operators"),
            OperatorError::Storage(_) | OperatorError::Write(_) => {
                (S::SERVICE_UNAVAILABLE, "storage_unavailable")
            }
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, message)
    }
}

impl From<rocksdb::Error> for ApiError {
    fn from(error: rocksdb::Error) -> Self {
        Self::storage(&error)
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        Self::storage(&error)
    }
}

/// A JSON body: like `axum::Json`, but every rejection is one of ours.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => {
                let code = match &rejection {
                    JsonRejection::JsonDataError(_) => "invalid_body",
                    JsonRejection::JsonSyntaxError(_) => "bad_json",
                    JsonRejection::MissingJsonContentType(_) => "json_required",
                    _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                    _ => "bad_body",
                };
                Err(ApiError::new(rejection.status(), code, rejection.body_text()))
            }
        }
    }
}

/// A body read whole (within [`API_BODY_BYTES_MAX`], or the route's own larger
/// limit where it sets one), for endpoints whose body
/// depends on the action; parse it with [`parse_json`].
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(request, state).await.map(Self).map_err(|rejection| {
            let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "bad_body"
            };
            ApiError::new(rejection.status(), code, rejection.body_text())
        })
    }
}

/// Parses a JSON body: 400 `bad_json` if it is not JSON, 422 `invalid_body` if it
/// is JSON of the wrong shape.
///
/// # Errors
/// As above.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        if error.is_data() {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", error.to_string())
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", error.to_string())
        }
    })
}

/// Path parameters, with a JSON 400 for a malformed one.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
            })
    }
}

/// Query parameters, with a JSON 400 for a malformed one.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
            })
    }
}

pub use onecard_engine::metrics::snake_case as snake;

/// Runs `work` on tokio's blocking pool (synced writes, whole-journal reads) and waits
/// for it; a task that panicked is a 500.
///
/// # Errors
/// 500 `internal` if the task did not finish.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
    })
}

/// A handler's successful answer: JSON with 200.
pub type ApiResult<T> = Result<Json<T>, ApiError>;
