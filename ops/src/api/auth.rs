//! Operators' logins, bearer tokens, roles and what each role may do.
//!
//! A login checks the password (Argon2id), counts failures and locks the operator
//! after too many, refuses a password past its age (or one an admin set) until it is
//! changed, and then issues a random 256-bit bearer token. The server keeps only the
//! token's SHA-256, in memory: tokens expire, and a restart signs everyone out.
//! Every request but the health checks carries `Authorization: Bearer <token>`; every
//! refusal is counted and audited.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use onecard_engine::audit::Outcome;
use onecard_engine::date::now_ms;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, Body, Params};
use crate::operators::{OperatorRecord, PASSWORD_BYTES_MAX, Role, check_name, check_password};
use crate::tokens::{Lookup, TokenError, Tokens};

/// Live tokens held at once ([`Tokens`]).
const SESSIONS_MAX: usize = 10_000;

/// What a role may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Look up cards and statements.
    CardsRead,
    /// Open cards and change their state, limits and PIN.
    CardsWrite,
    /// List merchants and terminals.
    DirectoryRead,
    /// Create and disable merchants and terminals, rotate terminal keys.
    DirectoryWrite,
    /// Set a merchant's commission rate.
    CommissionWrite,
    /// Read balances and transfers.
    LedgerRead,
    /// Read the audit log.
    AuditRead,
    /// Turn the business day and settle a date.
    DayWrite,
    /// Manage operators.
    OperatorsWrite,
    /// List backups and take one.
    Backups,
    /// Add and remove the nodes of a cell.
    CellWrite,
}

impl Permission {
    /// Whether `role` holds this permission.
    #[must_use]
    pub const fn allows(self, role: Role) -> bool {
        use Role::{Admin, Auditor, Clerk, Finance};
        match self {
            Self::CardsRead | Self::DirectoryRead => true,
            Self::CardsWrite => matches!(role, Admin | Clerk),
            Self::DirectoryWrite | Self::OperatorsWrite | Self::Backups | Self::CellWrite => {
                matches!(role, Admin)
            }
            Self::CommissionWrite => matches!(role, Admin | Finance),
            Self::LedgerRead => matches!(role, Admin | Finance | Auditor),
            Self::AuditRead => matches!(role, Admin | Auditor),
            Self::DayWrite => matches!(role, Admin | Finance),
        }
    }
}

/// One live token's operator.
#[derive(Debug, Clone)]
struct Session {
    operator: String,
    role: Role,
}

/// Live bearer tokens (the console's session cookie holds one too).
#[derive(Debug)]
pub struct Sessions {
    tokens: Tokens<Session>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { tokens: Tokens::new(SESSIONS_MAX) }
    }
}

impl Sessions {
    pub(crate) fn issue(
        &self,
        operator: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let session = Session { operator: operator.to_owned(), role };
        self.tokens.issue(session, ttl).map_err(|error| match error {
            TokenError::NoRandomness => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_randomness", error.to_string())
            }
            TokenError::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                "too many live tokens; try again later",
            ),
        })
    }

    fn lookup(&self, token: &str) -> Lookup<Session> {
        self.tokens.lookup(token)
    }

    pub(crate) fn revoke(&self, token: &str) {
        self.tokens.revoke(token);
    }

    /// Ends every token of `operator` (disabled, or password changed).
    fn revoke_operator(&self, operator: &str) {
        self.tokens.revoke_where(|session, _| session.operator == operator, None);
    }
}

/// The authenticated operator behind a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Their name.
    pub operator: String,
    /// Their role.
    pub role: Role,
    /// Where the request came from.
    pub from: SocketAddr,
    token: String,
    path: String,
}

fn client_addr(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let from = client_addr(parts);
        let path = parts.uri.path().to_owned();
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        Self::from_token(state, token, from, path)
    }
}

impl Caller {
    /// The operator behind `token` (a bearer token, or the console's session cookie),
    /// counted and audited when refused.
    ///
    /// # Errors
    /// [`ApiError`] `unauthenticated` or `token_expired`.
    pub(crate) fn from_token(
        state: &AppState,
        token: Option<&str>,
        from: SocketAddr,
        path: String,
    ) -> Result<Self, ApiError> {
        let refuse = |reason: &'static str, code: &'static str, message: &str| {
            state.metrics.auth_refused.with_label_values(&[reason]).inc();
            let _ = state.audit("-", "auth.token", &path, Outcome::Refused, from, message);
            ApiError::new(StatusCode::UNAUTHORIZED, code, message)
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(refuse("no_token", "unauthenticated", "a bearer token is required"));
        };
        match state.sessions.lookup(token) {
            Lookup::Valid(session) => Ok(Self {
                operator: session.operator,
                role: session.role,
                from,
                token: token.to_owned(),
                path,
            }),
            Lookup::Expired => {
                Err(refuse("token_expired", "token_expired", "the token has expired; log in again"))
            }
            Lookup::Unknown => {
                Err(refuse("unknown_token", "unauthenticated", "the token is not valid"))
            }
        }
    }

    /// Refuses (403, audited) unless the caller's role holds `permission`.
    ///
    /// # Errors
    /// [`ApiError`] `forbidden`.
    pub fn require(&self, state: &AppState, permission: Permission) -> Result<(), ApiError> {
        if permission.allows(self.role) {
            return Ok(());
        }
        state.metrics.auth_refused.with_label_values(&["forbidden"]).inc();
        let detail = format!("role {} may not {permission:?}", self.role.as_str());
        let _ = state.audit(
            &self.operator,
            "auth.permission",
            &self.path,
            Outcome::Refused,
            self.from,
            &detail,
        );
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail))
    }

    /// Audits a change the caller made (or tried).
    ///
    /// # Errors
    /// If the audit log cannot be written.
    pub fn audit(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), ApiError> {
        state.audit(&self.operator, action, target, outcome, self.from, detail)
    }

    /// Runs `change` and audits it, successful or not; the change's error, if any,
    /// is the answer.
    ///
    /// # Errors
    /// The change's error, or a failed audit write.
    pub fn audited<T, E: Into<ApiError>>(
        &self,
        state: &AppState,
        action: &str,
        target: &str,
        detail: &str,
        change: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, ApiError> {
        match change() {
            Ok(value) => {
                self.audit(state, action, target, Outcome::Ok, detail)?;
                Ok(value)
            }
            Err(error) => {
                let error: ApiError = error.into();
                let outcome =
                    if error.status.is_server_error() { Outcome::Failed } else { Outcome::Refused };
                let detail = format!("{detail}: {}", error.message);
                self.audit(state, action, target, outcome, &detail)?;
                Err(error)
            }
        }
    }
}

/// `POST /api/auth/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    operator: String,
    password: String,
}

/// A new token.
#[derive(Debug, Serialize)]
pub struct LoginAnswer {
    token: String,
    operator: String,
    role: Role,
    expires_at_ms: u64,
}

/// A hash no password matches in practice, checked against for unknown operators.
fn unknown_operator_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        crate::operators::hash_password("no operator has this password").unwrap_or_default()
    })
}

/// Checks `operator`'s `password`, counting a failure and locking after too many.
pub(crate) async fn authenticate(
    state: &AppState,
    from: SocketAddr,
    action: &str,
    operator: &str,
    password: &str,
) -> Result<OperatorRecord, ApiError> {
    let refuse = |status: StatusCode, reason: &'static str, detail: &str| {
        state.metrics.auth_refused.with_label_values(&[reason]).inc();
        let target = format!("operator:{operator}");
        let _ = state.audit(operator, action, &target, Outcome::Refused, from, detail);
        ApiError::new(status, reason, detail)
    };
    let bad = "wrong operator or password";
    if check_name(operator).is_err() || password.len() > PASSWORD_BYTES_MAX {
        return Err(refuse(StatusCode::UNAUTHORIZED, "bad_credentials", bad));
    }
    let Some(record) = state.operators.get(operator)? else {
        // As long as a wrong password takes, so timing does not tell which names exist.
        state.operators.verify(password.to_owned(), unknown_operator_hash().to_owned()).await;
        return Err(refuse(StatusCode::UNAUTHORIZED, "bad_credentials", bad));
    };
    if record.disabled {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "operator_disabled",
            "this operator is disabled",
        ));
    }
    let now = now_ms();
    if record.locked_until_ms > now {
        let detail =
            format!("locked for {} more seconds", (record.locked_until_ms - now).div_ceil(1000));
        return Err(refuse(StatusCode::LOCKED, "operator_locked", &detail));
    }
    if !state.operators.verify(password.to_owned(), record.password_hash.clone()).await {
        let auth = &state.config.auth;
        let lockout_ms = u64::try_from(auth.lockout.as_millis()).unwrap_or(u64::MAX);
        let updated = state.operators.update(operator, |r| {
            r.failed_logins += 1;
            if r.failed_logins >= auth.login_failures_max {
                r.failed_logins = 0;
                r.locked_until_ms = now.saturating_add(lockout_ms);
            }
        })?;
        let detail = if updated.locked_until_ms > now {
            format!("wrong password; locked after {} failures", auth.login_failures_max)
        } else {
            "wrong password".to_owned()
        };
        state.metrics.auth_refused.with_label_values(&["bad_credentials"]).inc();
        let _ = state.audit(
            operator,
            action,
            &format!("operator:{operator}"),
            Outcome::Refused,
            from,
            &detail,
        );
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", bad));
    }
    if record.failed_logins > 0 || record.locked_until_ms > 0 {
        return Ok(state.operators.update(operator, |r| {
            r.failed_logins = 0;
            r.locked_until_ms = 0;
        })?);
    }
    Ok(record)
}

/// Logs in: a bearer token for the operator.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Body(login): Body<Login>,
) -> ApiResult<LoginAnswer> {
    let record = authenticate(&state, from, "auth.login", &login.operator, &login.password).await?;
    let max_age_ms =
        u64::try_from(state.config.auth.password_max_age.as_millis()).unwrap_or(u64::MAX);
    let expired = now_ms().saturating_sub(record.password_changed_at_ms) > max_age_ms;
    if record.must_change_password || expired {
        let detail = if expired {
            "password too old; change it"
        } else {
            "password set by an admin; change it"
        };
        state.metrics.auth_refused.with_label_values(&["password_change_required"]).inc();
        state.audit(
            &record.name,
            "auth.login",
            &format!("operator:{}", record.name),
            Outcome::Refused,
            from,
            detail,
        )?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "password_change_required",
            format!("{detail} at POST /api/auth/password"),
        ));
    }
    let ttl = state.config.auth.token_ttl;
    let token = state.sessions.issue(&record.name, record.role, ttl)?;
    state.audit(
        &record.name,
        "auth.login",
        &format!("operator:{}", record.name),
        Outcome::Ok,
        from,
        "",
    )?;
    let expires_at_ms = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    Ok(Json(LoginAnswer { token, operator: record.name, role: record.role, expires_at_ms }))
}

/// Ends the caller's token.
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<serde_json::Value> {
    state.sessions.revoke(&caller.token);
    caller.audit(
        &state,
        "auth.logout",
        &format!("operator:{}", caller.operator),
        Outcome::Ok,
        "",
    )?;
    Ok(Json(serde_json::json!({ "logged_out": true })))
}

/// `POST /api/auth/password`: an operator changes their own password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    operator: String,
    password: String,
    new_password: String,
}

/// Changes a password, given the current one; ends the operator's tokens.
pub async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Body(change): Body<ChangePassword>,
) -> ApiResult<OperatorView> {
    let record = change_operator_password(
        &state,
        from,
        &change.operator,
        &change.password,
        change.new_password,
    )
    .await?;
    Ok(Json(OperatorView::from(&record)))
}

/// Changes `operator`'s password from `current` to `new` (the API's and the
/// console's), audited; ends the operator's tokens.
///
/// # Errors
/// As a login's, and `weak_password` or `same_password`.
pub(crate) async fn change_operator_password(
    state: &AppState,
    from: SocketAddr,
    operator: &str,
    current: &str,
    new: String,
) -> Result<OperatorRecord, ApiError> {
    let action = "auth.change_password";
    authenticate(state, from, action, operator, current).await?;
    let target = format!("operator:{operator}");
    if let Err(error) = check_password(&new) {
        state.audit(operator, action, &target, Outcome::Refused, from, "weak password")?;
        return Err(error.into());
    }
    if new == current {
        state.audit(operator, action, &target, Outcome::Refused, from, "same password")?;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "same_password",
            "the new password must differ",
        ));
    }
    let hash = state.operators.hash(new).await?;
    let record = state.operators.update(operator, |r| {
        r.password_hash = hash;
        r.password_changed_at_ms = now_ms();
        r.must_change_password = false;
    })?;
    state.sessions.revoke_operator(operator);
    state.audit(operator, action, &target, Outcome::Ok, from, "")?;
    Ok(record)
}

/// An operator as the API shows it: never the hash.
#[derive(Debug, Serialize)]
pub struct OperatorView {
    name: String,
    role: Role,
    disabled: bool,
    locked: bool,
    must_change_password: bool,
    failed_logins: u32,
    password_changed_at_ms: u64,
    created_at_ms: u64,
    created_by: String,
}

impl From<&OperatorRecord> for OperatorView {
    fn from(record: &OperatorRecord) -> Self {
        Self {
            name: record.name.clone(),
            role: record.role,
            disabled: record.disabled,
            locked: record.locked_until_ms > now_ms(),
            must_change_password: record.must_change_password,
            failed_logins: record.failed_logins,
            password_changed_at_ms: record.password_changed_at_ms,
            created_at_ms: record.created_at_ms,
            created_by: record.created_by.clone(),
        }
    }
}

/// Every operator (admin).
pub async fn list_operators(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Vec<OperatorView>> {
    caller.require(&state, Permission::OperatorsWrite)?;
    Ok(Json(state.operators.list()?.iter().map(OperatorView::from).collect()))
}

/// `POST /api/operators`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    name: String,
    role: Role,
    password: String,
}

/// Creates an operator with an initial password they must change at first login.
pub async fn create_operator(
    State(state): State<AppState>,
    caller: Caller,
    Body(create): Body<CreateOperator>,
) -> ApiResult<OperatorView> {
    let record =
        create_operator_as(&state, &caller, create.name, create.role, create.password).await?;
    Ok(Json(OperatorView::from(&record)))
}

/// Creates an operator for `caller` (the API's and the console's) with a first
/// password they must change at first login, audited.
pub(crate) async fn create_operator_as(
    state: &AppState,
    caller: &Caller,
    name: String,
    role: Role,
    password: String,
) -> Result<OperatorRecord, ApiError> {
    caller.require(state, Permission::OperatorsWrite)?;
    let target = format!("operator:{name}");
    let detail = format!("role {}", role.as_str());
    let checked = check_name(&name).and_then(|()| check_password(&password));
    caller.audited(state, "operator.create", &target, &detail, || checked)?;
    let hash = state.operators.hash(password).await?;
    let record = OperatorRecord::new(name, role, hash, true, caller.operator.clone());
    caller
        .audited(state, "operator.create", &target, &detail, || state.operators.create(&record))?;
    Ok(record)
}

/// `POST /api/operators/{name}/{action}`: `unlock`, `disable` or `enable`.
pub async fn operator_action(
    State(state): State<AppState>,
    caller: Caller,
    Params((name, action)): Params<(String, String)>,
) -> ApiResult<OperatorView> {
    let record = operator_action_as(&state, &caller, &name, &action)?;
    Ok(Json(OperatorView::from(&record)))
}

/// `unlock`, `disable` or `enable` operator `name` for `caller` (the API's and the
/// console's), audited; disabling ends their sessions.
pub(crate) fn operator_action_as(
    state: &AppState,
    caller: &Caller,
    name: &str,
    action: &str,
) -> Result<OperatorRecord, ApiError> {
    caller.require(state, Permission::OperatorsWrite)?;
    let target = format!("operator:{name}");
    match action {
        "unlock" => caller.audited(state, "operator.unlock", &target, "", || {
            state.operators.update(name, |r| {
                r.locked_until_ms = 0;
                r.failed_logins = 0;
            })
        }),
        "disable" | "enable" => {
            let disabled = action == "disable";
            if disabled && name == caller.operator {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "self",
                    "an operator cannot disable themselves",
                ));
            }
            let record =
                caller.audited(state, &format!("operator.{action}"), &target, "", || {
                    state.operators.update(name, |r| r.disabled = disabled)
                })?;
            state.sessions.revoke_operator(name);
            Ok(record)
        }
        _ => Err(ApiError::unknown_action("operator", action)),
    }
}

/// `POST /api/operators/{name}/password`: an admin sets a new password, which the
/// operator must change at their next login; their tokens end.
pub async fn reset_password(
    State(state): State<AppState>,
    caller: Caller,
    Params(name): Params<String>,
    Body(reset): Body<ResetPassword>,
) -> ApiResult<OperatorView> {
    let record = reset_password_as(&state, &caller, &name, reset.password).await?;
    Ok(Json(OperatorView::from(&record)))
}

/// Sets operator `name`'s password for `caller` (the API's and the console's): they
/// must change it at their next login, and their sessions end. Audited.
pub(crate) async fn reset_password_as(
    state: &AppState,
    caller: &Caller,
    name: &str,
    password: String,
) -> Result<OperatorRecord, ApiError> {
    caller.require(state, Permission::OperatorsWrite)?;
    let target = format!("operator:{name}");
    caller.audited(state, "operator.reset_password", &target, "", || check_password(&password))?;
    let hash = state.operators.hash(password).await?;
    let record = caller.audited(state, "operator.reset_password", &target, "", || {
        state.operators.update(name, |r| {
            r.password_hash = hash;
            r.password_changed_at_ms = now_ms();
            r.must_change_password = true;
            r.failed_logins = 0;
            r.locked_until_ms = 0;
        })
    })?;
    state.sessions.revoke_operator(name);
    Ok(record)
}

/// The body of `reset-password`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetPassword {
    password: String,
}
