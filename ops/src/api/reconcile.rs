//! Reconciliation for finance: the internal checks of a closed date, and top-up
//! channels' statements imported and matched against our top-ups.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use onecard_engine::ControlError;
use onecard_protocol::Channel;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use super::auth::{Caller, Permission};
use super::settlement::date_of;
use super::{ApiError, ApiResult, AppState, Params, QueryParams};
use crate::channels;

/// Rewrites every `*_fen` number in `value` as a `*_yuan` string, the API's money,
/// and every `*transfer_id` number as a string (ids pass 2^53, where JavaScript's
/// numbers stop being exact).
#[must_use]
pub fn fen_as_yuan(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| match (key.strip_suffix("_fen"), value.as_i64()) {
                    (Some(stem), Some(fen)) => {
                        (format!("{stem}_yuan"), Value::from(super::money::yuan(fen)))
                    }
                    (Some(stem), None) if value.is_null() => (format!("{stem}_yuan"), Value::Null),
                    _ if key.ends_with("transfer_id") && value.is_u64() => {
                        let id = value.to_string();
                        (key, Value::from(id))
                    }
                    _ => (key, fen_as_yuan(value)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(fen_as_yuan).collect()),
        other => other,
    }
}

/// A closed date's internal reconciliation, run now (it reads every journal once).
pub async fn internal(
    State(state): State<AppState>,
    caller: Caller,
    Params(date): Params<String>,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::LedgerRead)?;
    let date = date_of(&date)?;
    let ledger = std::sync::Arc::clone(&state.ledger);
    let reconciliation = super::blocking(move || ledger.reconcile(date)).await??;
    let value = serde_json::to_value(&reconciliation).map_err(|error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
    })?;
    Ok(Json(fen_as_yuan(value)))
}

/// `?adapter=name` for an import; `?format=csv` for the stored report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelQuery {
    #[serde(default)]
    adapter: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

fn channel_of(name: &str) -> Result<Channel, ApiError> {
    channels::channel_named(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "channel_not_found",
            format!("no channel {name:?}: app, e_code, cash_machine, counter, bank_load"),
        )
    })
}

fn internal_error(error: &impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
}

/// Imports a channel's statement (the request body, CSV, streamed to disk and kept
/// beside the report) and reconciles it against our top-ups of the date.
pub async fn import_statement(
    State(state): State<AppState>,
    caller: Caller,
    Params((date, channel)): Params<(String, String)>,
    QueryParams(query): QueryParams<ChannelQuery>,
    body: axum::body::Body,
) -> ApiResult<serde_json::Value> {
    caller.require(&state, Permission::DayWrite)?;
    let date = date_of(&date)?;
    let channel = channel_of(&channel)?;
    let adapter_name = query.adapter.as_deref().unwrap_or(channels::BUILT_IN_ADAPTER);
    let adapter = channels::Adapter::load(&state.config.channel_adapters_dir, adapter_name)
        .map_err(|error| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_adapter", format!("{error:#}"))
        })?;
    let dir = state.config.settlement_dir.clone();
    let kept = channels::report_path(&dir, date, channel, "statement.csv");
    if let Some(folder) = kept.parent() {
        tokio::fs::create_dir_all(folder).await.map_err(|e| internal_error(&e))?;
    }
    let partial = kept.with_file_name(format!(
        ".{}.partial",
        kept.file_name().and_then(|n| n.to_str()).unwrap_or("statement")
    ));
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| internal_error(&e))?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("reading the body: {error}"))
        })?;
        received += chunk.len() as u64;
        if received > channels::STATEMENT_BYTES_MAX {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a statement is at most {} bytes", channels::STATEMENT_BYTES_MAX),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| internal_error(&e))?;
    }
    file.sync_all().await.map_err(|e| internal_error(&e))?;
    drop(file);
    let ledger = std::sync::Arc::clone(&state.ledger);
    let target = format!("{date}:{}", channels::channel_name(channel));
    let detail = format!("{received} bytes, adapter {}", adapter.name);
    // The statement is kept beside its report only once it has reconciled, so a
    // refused upload never replaces the statement a stored report came from.
    let outcome = super::blocking(move || {
        let outcome =
            channels::reconcile_statement(&ledger, date, channel, &adapter, &partial, &dir);
        match &outcome {
            Ok(_) => std::fs::rename(&partial, &kept).map_err(anyhow::Error::from).and(outcome),
            Err(_) => {
                let _ = std::fs::remove_file(&partial);
                outcome
            }
        }
    })
    .await?;
    let (_, json) = caller.audited(&state, "reconcile.channel", &target, &detail, || {
        outcome.map_err(|error| match error.downcast::<ControlError>() {
            Ok(control) => ApiError::from(control),
            Err(other) => match other.downcast::<channels::StatementError>() {
                Ok(bad) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_statement",
                    bad.to_string(),
                ),
                Err(other) => internal_error(&format!("{other:#}")),
            },
        })
    })?;
    Ok(Json(json))
}

/// A channel reconciliation's stored report: JSON, or `?format=csv` for every line.
pub async fn show_statement(
    State(state): State<AppState>,
    caller: Caller,
    Params((date, channel)): Params<(String, String)>,
    QueryParams(query): QueryParams<ChannelQuery>,
) -> Result<Response, ApiError> {
    caller.require(&state, Permission::LedgerRead)?;
    let date = date_of(&date)?;
    let channel = channel_of(&channel)?;
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("no format {other:?}: json or csv"),
            ));
        }
    };
    let extension = if csv { "csv" } else { "json" };
    let path = channels::report_path(&state.config.settlement_dir, date, channel, extension);
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "reconciliation_not_found",
            format!(
                "no statement of {} has been reconciled for {date}",
                channels::channel_name(channel)
            ),
        )
    })?;
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/json" };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
