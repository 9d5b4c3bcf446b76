//! The health checks and the Prometheus scrape: the only endpoints that need no
//! operator token. `/metrics` asks for the configured metrics token, if one is set.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// `/healthz`: the process is alive and answering.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

/// A shard as `/readyz` reports it.
#[derive(Debug, Serialize)]
struct ShardJson {
    shard: u8,
    poisoned: bool,
    queue_depth: usize,
}

/// `/readyz`'s answer.
#[derive(Debug, Serialize)]
struct ReadyJson {
    ready: bool,
    business_date: String,
    shards: Vec<ShardJson>,
    /// The control plane (cards, merchants, day turns, workflows) is poisoned.
    control_poisoned: bool,
}

/// `/readyz`: 200 when the store is open and every shard and the control plane take
/// work; 503 when one is poisoned by a failed write (it needs a restart).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let shards: Vec<ShardJson> = state
        .ledger
        .health()
        .into_iter()
        .map(|h| ShardJson { shard: h.shard, poisoned: h.poisoned, queue_depth: h.queue_depth })
        .collect();
    let control_poisoned = state.ledger.control_poisoned();
    let ready = shards.iter().all(|s| !s.poisoned) && !control_poisoned;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let business_date = state.ledger.business_date().to_string();
    let body = ReadyJson { ready, business_date, shards, control_poisoned };
    (status, Json(body)).into_response()
}

/// Whether `headers` carry the metrics token `expected` as a bearer credential (or
/// none is configured), compared in constant time.
#[must_use]
pub fn metrics_token_given(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// `/metrics`: every series in Prometheus text format.
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !metrics_token_given(state.config.metrics_token.as_deref(), &headers) {
        state.metrics.auth_refused.with_label_values(&["metrics_token"]).inc();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the metrics token is required",
        ));
    }
    state.ledger.refresh_metrics();
    match state.workflows.overdue(onecard_engine::date::now_ms()) {
        Ok(overdue) => {
            state.metrics.workflow_overdue.set(i64::try_from(overdue.len()).unwrap_or(i64::MAX));
        }
        Err(error) => tracing::warn!(%error, "reading overdue applications for metrics"),
    }
    let families = state.ledger.metrics().registry().gather();
    let text = prometheus::TextEncoder::new().encode_to_string(&families).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding metrics: {error}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
