//! Backups over HTTP: the list, and a backup taken now (admin only). The daily backup
//! runs inside `serve` by itself (`backup.rs`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::auth::{Caller, Permission};
use super::{ApiError, ApiResult, AppState, RawBody};
use crate::backup::{self, BackupConfig, BackupInfo};

/// `GET /api/backups`'s answer.
#[derive(Debug, Serialize)]
pub struct BackupsJson {
    dir: String,
    offsite_dir: Option<String>,
    keep: usize,
    backups: Vec<BackupInfo>,
}

fn failed(error: &anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "backup_failed", format!("{error:#}"))
}

/// The backups, oldest first, and whether the offsite copy holds each.
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<BackupsJson> {
    let (config, backups) = list_as(&state, &caller).await?;
    Ok(Json(BackupsJson {
        dir: config.dir.display().to_string(),
        offsite_dir: config.offsite_dir.as_ref().map(|d| d.display().to_string()),
        keep: config.keep,
        backups,
    }))
}

/// Where backups go and every one kept, oldest first, for `caller` (the API's and
/// the console's), read on the blocking pool.
pub(crate) async fn list_as(
    state: &AppState,
    caller: &Caller,
) -> Result<(BackupConfig, Vec<BackupInfo>), ApiError> {
    caller.require(state, Permission::Backups)?;
    let config = state.backups.config().clone();
    let listed = super::blocking({
        let config = config.clone();
        move || backup::list(&config.dir, config.offsite_dir.as_deref())
    })
    .await?;
    Ok((config, listed.map_err(|error| failed(&error))?))
}

/// Takes a backup now for `caller` (the API's and the console's), on the blocking
/// pool, audited.
pub(crate) async fn take_as(state: &AppState, caller: &Caller) -> Result<BackupInfo, ApiError> {
    caller.require(state, Permission::Backups)?;
    let backups = std::sync::Arc::clone(&state.backups);
    let taken = super::blocking(move || backups.create()).await?;
    caller.audited(state, "backup.create", "store", "", || taken.map_err(|error| failed(&error)))
}

/// Takes a backup now, while serving; it waits for one already running.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RawBody(_): RawBody,
) -> ApiResult<BackupInfo> {
    Ok(Json(take_as(&state, &caller).await?))
}
