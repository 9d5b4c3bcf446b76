//! The card centre's console, for operators: sign in with the operator's name and
//! password (the API's login: lockout, expiry, forced change), find a card by its
//! number, the holder's name or student/staff number, see it with its statement,
//! and change its state as the operator's role allows.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use onecard_engine::ledger::CardView;
use onecard_protocol::CardState;
use serde::Deserialize;

use super::hall::{state_name, statement_table};
use super::services::{NOTICES_SHOWN, form_fields, history, label, notice_list, status_name};
use super::{
    ForgeryOnly, Lang, SignInFirst, beijing_time, cookie, date, forged, forgery_checks,
    forgery_token, login_forgery_checks, not_now, page, refusal, see_other, set_cookie,
    sign_in_page, yuan,
};
use crate::api::{
    ApiError, AppState, Caller, Permission, authenticate, change_operator_password, state_change,
};
use onecard_engine::workflow::{Action, Actor, Status};

/// The cookie of an operator's console session: the API's bearer token.
const SESSION_COOKIE: &str = "onecard_console";

/// Cards a search lists at most.
const SEARCH_RESULTS_MAX: usize = 50;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/", get(home))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/password", post(change_password))
        .route("/console/cards", get(search))
        .route("/console/cards/{card}", get(card))
        .route("/console/cards/{card}/{action}", post(card_action))
        .route("/console/inbox", get(inbox))
        .route("/console/notices", get(notices))
        .route("/console/applications/{id}", get(application))
        .route("/console/applications/{id}/{action}", post(act))
}

/// A signed-in operator.
pub(super) struct Operator {
    pub(super) caller: Caller,
    pub(super) token: String,
    pub(super) lang: Lang,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        let lang = Lang::of(&parts.headers);
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(SignInFirst("/console/login"))?;
        let from = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |info| info.0);
        let caller = Caller::from_token(state, Some(&token), from, parts.uri.path().to_owned())
            .map_err(|_| SignInFirst("/console/login"))?;
        Ok(Self { caller, token, lang })
    }
}

impl Operator {
    pub(super) fn nav(&self) -> Markup {
        let lang = self.lang;
        html! {
            a href="/console/" { (lang.t("首页", "Home")) }
            a href="/console/cards" { (lang.t("卡务", "Cards")) }
            a href="/console/merchants" { (lang.t("商户", "Merchants")) }
            a href="/console/terminals" { (lang.t("终端", "Terminals")) }
            a href="/console/day" { (lang.t("营业日", "Business day")) }
            @if Permission::AuditRead.allows(self.caller.role) {
                a href="/console/audit" { (lang.t("审计", "Audit")) }
            }
            @if Permission::OperatorsWrite.allows(self.caller.role) {
                a href="/console/operators" { (lang.t("操作员", "Operators")) }
            }
            @if Permission::Backups.allows(self.caller.role) {
                a href="/console/backups" { (lang.t("备份", "Backups")) }
            }
            a href="/console/inbox" { (lang.t("待办", "Inbox")) }
            a href="/console/notices" { (lang.t("消息", "Notices")) }
            span.who { (self.caller.operator) " · " (self.caller.role.as_str()) }
            form.inline method="post" action="/console/logout" {
                input type="hidden" name="forgery" value=(forgery_token(&self.token));
                button type="submit" { (lang.t("退出", "Sign out")) }
            }
        }
    }

    pub(super) fn forgery_ok(&self, given: &str) -> bool {
        forgery_checks(given, &forgery_token(&self.token))
    }

    /// The page for an API error: its message, with its status.
    pub(super) fn error(&self, error: &ApiError) -> Response {
        refusal(self.lang, error.status, &error.message)
    }
}

async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, None, StatusCode::OK)
}

fn login_page(headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    let lang = Lang::of(headers);
    let fields = html! {
        label { (lang.t("操作员", "Operator"))
            input name="operator" autocomplete="username" required; }
        label { (lang.t("密码", "Password"))
            input name="password" type="password" autocomplete="current-password" required; }
    };
    let title = lang.t("卡务中心控制台 · 登录", "Card centre console · Sign in");
    sign_in_page(
        headers,
        (title, "/console/login", lang.t("登录", "Sign in")),
        fields,
        None,
        (error, status),
    )
}

/// The change of a password that must be changed before signing in: the operator's
/// name, the current password and the new one twice, under the login form's
/// anti-forgery value.
fn password_page(
    headers: &HeaderMap,
    operator: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let lang = Lang::of(headers);
    let fields = html! {
        input type="hidden" name="operator" value=(operator);
        label { (lang.t("当前密码", "Current password"))
            input name="password" type="password" autocomplete="current-password" required; }
        label { (lang.t("新密码", "New password"))
            input name="new_password" type="password" autocomplete="new-password" required; }
        label { (lang.t("再次输入新密码", "New password again"))
            input name="repeat" type="password" autocomplete="new-password" required; }
    };
    let title = lang.t("修改密码", "Change the password");
    sign_in_page(
        headers,
        (title, "/console/password", lang.t("修改", "Change")),
        fields,
        None,
        (error, status),
    )
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    repeat: String,
}

async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let lang = Lang::of(&headers);
    if !login_forgery_checks(&headers, &form.forgery) {
        return forged(lang);
    }
    if form.new_password != form.repeat {
        let message = lang.t("两次输入的新密码不一致。", "The two new passwords differ.");
        return password_page(
            &headers,
            &form.operator,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let changed =
        change_operator_password(&state, from, &form.operator, &form.password, form.new_password)
            .await;
    match changed {
        Ok(_) => {
            let message = lang.t(
                "密码已修改，请用新密码登录。",
                "The password is changed: sign in with the new one.",
            );
            login_page(&headers, Some(message), StatusCode::OK)
        }
        Err(error) => password_page(&headers, &form.operator, Some(&error.message), error.status),
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = Lang::of(&headers);
    if !login_forgery_checks(&headers, &form.forgery) {
        return refusal(
            lang,
            StatusCode::FORBIDDEN,
            lang.t(
                "表单已失效，请重新打开登录页。",
                "The form has expired; open the sign-in page again.",
            ),
        );
    }
    let record =
        match authenticate(&state, from, "console.login", &form.operator, &form.password).await {
            Ok(record) => record,
            Err(error) => return login_page(&headers, Some(&error.message), error.status),
        };
    let max_age_ms =
        u64::try_from(state.config.auth.password_max_age.as_millis()).unwrap_or(u64::MAX);
    let expired =
        onecard_engine::date::now_ms().saturating_sub(record.password_changed_at_ms) > max_age_ms;
    if record.must_change_password || expired {
        let message = lang.t(
            "密码须先修改（管理员设置的密码或已过期）。",
            "The password must be changed first (set by an admin, or too old).",
        );
        return password_page(&headers, &record.name, Some(message), StatusCode::FORBIDDEN);
    }
    let token = match state.sessions.issue(&record.name, record.role, state.config.auth.token_ttl) {
        Ok(token) => token,
        Err(error) => return login_page(&headers, Some(&error.message), error.status),
    };
    let _ = state.audit(
        &record.name,
        "console.login",
        &format!("operator:{}", record.name),
        onecard_engine::audit::Outcome::Ok,
        from,
        "",
    );
    see_other("/console/", &[set_cookie(SESSION_COOKIE, &token)])
}

async fn logout(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    if !operator.forgery_ok(&form.forgery) {
        return forged(operator.lang);
    }
    state.sessions.revoke(&operator.token);
    see_other("/console/login", &[set_cookie(SESSION_COOKIE, "")])
}

async fn home(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    let ledger = &state.ledger;
    let terminals: Vec<_> =
        ledger.terminals().iter().map(|t| crate::api::terminal_json(&state, t)).collect();
    let online = terminals.iter().filter(|t| t.online).count();
    let attention = terminals.iter().filter(|t| t.needs_attention()).count();
    let waiting = state.workflows.inbox(&operator.actor()).map_or(0, |items| items.len());
    let closed = ledger.closed_through();
    let last_settlement = ledger.settlement(closed).ok().flatten().map(|s| s.totals());
    let may_read_ledger = Permission::LedgerRead.allows(operator.caller.role);
    let poisoned = ledger.health().iter().filter(|h| h.poisoned).count();
    page(
        lang,
        lang.t("卡务中心控制台", "Card centre console"),
        Some(operator.nav()),
        html! {
            @if poisoned > 0 {
                p.error role="alert" { (lang.t("有分片无法写入，正在拒绝交易：请按运维手册处理。", "A shard cannot write and refuses transactions: follow the runbook.")) }
            }
            dl.figures {
                dt { (lang.t("营业日", "Business date")) } dd #business-date { (ledger.business_date()) }
                @if may_read_ledger {
                    dt { (lang.t("卡池余额（元）", "Card pool (yuan)")) }
                    dd #card-pool { (ledger.card_pool_fen().map(yuan).unwrap_or_default()) }
                }
                dt { (lang.t("终端在线 / 全部", "Terminals online / all")) } dd { (online) " / " (terminals.len()) }
                dt { (lang.t("需关注的终端", "Terminals needing attention")) }
                dd { a href="/console/terminals?attention=1" { (attention) } }
                dt { (lang.t("我的待办", "Waiting for me")) } dd #waiting { a href="/console/inbox" { (waiting) } }
                @if may_read_ledger {
                    dt { (lang.t("最近结算", "Last settlement")) }
                    dd {
                        @if let Some(totals) = last_settlement {
                            a href={ "/console/settlements/" (closed) } { (closed) } " · " (yuan(totals.net_payable_fen))
                        } @else {
                            (closed) " · " (lang.t("未结算", "not settled"))
                        }
                    }
                }
            }
            (search_form(lang, ""))
        },
    )
}

fn search_form(lang: Lang, query: &str) -> Markup {
    html! {
        form.search method="get" action="/console/cards" {
            label { (lang.t("查找卡：卡号、姓名或学工号", "Find a card: number, holder's name or student/staff number"))
                input name="q" value=(query) required; }
            button type="submit" { (lang.t("查找", "Find")) }
        }
    }
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn search(
    State(state): State<AppState>,
    operator: Operator,
    Query(query): Query<SearchQuery>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::CardsRead) {
        return operator.error(&error);
    }
    let found = state.ledger.find_cards(&query.q, SEARCH_RESULTS_MAX);
    page(
        lang,
        lang.t("卡务", "Cards"),
        Some(operator.nav()),
        html! {
            (search_form(lang, &query.q))
            @if !query.q.trim().is_empty() {
                @if found.is_empty() {
                    p { (lang.t("没有找到。", "Nothing found.")) }
                } @else {
                    table.cards {
                        thead { tr {
                            th { (lang.t("卡号", "Card")) }
                            th { (lang.t("持卡人", "Holder")) }
                            th { (lang.t("学工号", "Student/staff no.")) }
                            th { (lang.t("状态", "State")) }
                            th.amount { (lang.t("余额（元）", "Balance (yuan)")) }
                        } }
                        tbody {
                            @for card in &found {
                                tr {
                                    td { a href={ "/console/cards/" (card.card_number) } { (card.card_number) } }
                                    td { (card.holder_name) }
                                    td { (card.holder_id) }
                                    td { (state_name(lang, card.state)) }
                                    td.amount { (yuan(card.balance_fen)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The state changes the console offers, with the API's action names.
const ACTIONS: [(&str, &str, &str, CardState); 4] = [
    ("report-lost", "挂失", "Report lost", CardState::Lost),
    ("unlock", "解挂", "Unlock", CardState::Active),
    ("freeze", "冻结", "Freeze", CardState::Frozen),
    ("unfreeze", "解冻", "Unfreeze", CardState::Active),
];

/// Whether `action` applies to a card in `state`.
fn applies(action: &str, state: CardState) -> bool {
    match action {
        "report-lost" => matches!(state, CardState::Active | CardState::Frozen),
        "unlock" => state == CardState::Lost,
        "freeze" => state == CardState::Active,
        "unfreeze" => state == CardState::Frozen,
        _ => false,
    }
}

async fn card(
    State(state): State<AppState>,
    operator: Operator,
    axum::extract::Path(card_number): axum::extract::Path<String>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::CardsRead) {
        return operator.error(&error);
    }
    let Some(card) = card_number.parse().ok().and_then(|number| state.ledger.card(number)) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("找不到这张卡。", "No such card."));
    };
    let may_change = Permission::CardsWrite.allows(operator.caller.role);
    page(
        lang,
        &format!("{} {}", lang.t("卡", "Card"), card.card_number),
        Some(operator.nav()),
        html! {
            (card_figures(lang, &card))
            @if may_change {
                div.actions {
                    @for (action, zh, en, _) in ACTIONS {
                        @if applies(action, card.state) {
                            form.inline method="post" action={ "/console/cards/" (card.card_number) "/" (action) } {
                                input type="hidden" name="forgery" value=(forgery_token(&operator.token));
                                button id=(action) type="submit" { (lang.t(zh, en)) }
                            }
                        }
                    }
                }
            }
            h2 { (lang.t("流水", "Statement")) }
            (statement_table(&state, lang, card.card_number, card.account_number))
        },
    )
}

fn card_figures(lang: Lang, card: &CardView) -> Markup {
    html! {
        dl.card {
            dt { (lang.t("持卡人", "Holder")) } dd #holder { (card.holder_name) " (" (card.holder_id) ")" }
            dt { (lang.t("状态", "State")) } dd #card-state { (state_name(lang, card.state)) }
            dt { (lang.t("主钱包", "Main purse")) } dd #balance { (yuan(card.balance_fen)) }
            dt { (lang.t("补助钱包", "Restricted purse")) } dd { (yuan(card.restricted_fen)) }
            dt { (lang.t("押金", "Deposit")) } dd { (yuan(card.deposit_fen)) }
            dt { (lang.t("有效期至", "Valid through")) } dd { (date(card.expiry_date)) }
            dt { (lang.t("今日消费 / 日限额", "Spent today / daily limit")) }
            dd { (yuan(card.spent_today_fen)) " / " (yuan(card.limits.daily_fen_max)) }
        }
    }
}

async fn card_action(
    State(state): State<AppState>,
    operator: Operator,
    axum::extract::Path((card_number, action)): axum::extract::Path<(String, String)>,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    if let Err(error) = operator.caller.require(&state, Permission::CardsWrite) {
        return operator.error(&error);
    }
    let Ok(card) = card_number.parse::<u64>() else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("找不到这张卡。", "No such card."));
    };
    let Some(change) = state_change(&action) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项操作。", "No such action."));
    };
    let audit_action = format!("card.{}", action.replace('-', "_"));
    let ledger = Arc::clone(&state.ledger);
    let changed = tokio::task::spawn_blocking(move || change(&ledger, card)).await;
    let outcome = match changed {
        Ok(outcome) => outcome,
        Err(_) => {
            return not_now(lang);
        }
    };
    let done =
        operator
            .caller
            .audited(&state, &audit_action, &format!("card:{card}"), "console", || outcome);
    match done {
        Ok(_) => see_other(&format!("/console/cards/{card}"), &[]),
        Err(error) => operator.error(&error),
    }
}

impl Operator {
    /// The operator as the workflows see them.
    pub(super) fn actor(&self) -> Actor {
        Actor {
            name: self.caller.operator.clone(),
            roles: vec![self.caller.role.as_str().to_owned()],
            from: self.caller.from.ip().to_string(),
        }
    }
}

async fn inbox(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    let items = match state.workflows.inbox(&operator.actor()) {
        Ok(items) => items,
        Err(error) => return refusal(lang, StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    };
    let now = onecard_engine::date::now_ms();
    page(
        lang,
        lang.t("待办", "Inbox"),
        Some(operator.nav()),
        html! {
            @if items.is_empty() {
                p { (lang.t("没有待办事项。", "Nothing waiting for you.")) }
            } @else {
                table.inbox {
                    thead { tr {
                        th { (lang.t("编号", "No.")) }
                        th { (lang.t("事项", "Workflow")) }
                        th { (lang.t("申请人", "Applicant")) }
                        th { (lang.t("当前步骤", "Step")) }
                        th { (lang.t("到达时间", "Since")) }
                    } }
                    tbody {
                        @for instance in &items {
                            @let definition = state.workflows.definition(&instance.workflow).ok();
                            tr.overdue[state.workflows.is_overdue(instance, now)] {
                                td { a href={ "/console/applications/" (instance.id) } { (instance.id) } }
                                td { (definition.map_or(instance.workflow.as_str(), |d| label(lang, &d.title))) }
                                td { (instance.applicant) }
                                td { (definition.and_then(|d| d.steps.get(instance.step)).map_or("", |s| s.name.as_str())) }
                                td {
                                    (beijing_time(instance.step_since_ms))
                                    @if state.workflows.is_overdue(instance, now) { " " strong { (lang.t("已超时", "overdue")) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The actions an operator's page offers, with the engine's names and their labels.
const STEP_ACTIONS: [(Action, &str, &str, &str); 4] = [
    (Action::Approve, "approve", "通过", "Approve"),
    (Action::Return, "return", "退回", "Return"),
    (Action::Reject, "reject", "驳回", "Reject"),
    (Action::Comment, "comment", "批注", "Comment"),
];

async fn application(
    State(state): State<AppState>,
    operator: Operator,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let lang = operator.lang;
    let Some(instance) = id.parse().ok().and_then(|id| state.workflows.instance(id).ok()) else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("没有这份申请。", "No such application."),
        );
    };
    let definition = state.workflows.definition(&instance.workflow).ok();
    let step = definition.and_then(|d| d.steps.get(instance.step));
    let my_turn = instance.status == Status::Open
        && step.is_some_and(|step| step.role == operator.caller.role.as_str())
        && instance.assignee.as_ref().is_none_or(|a| *a == operator.caller.operator);
    page(
        lang,
        &format!("{} {}", lang.t("申请", "Application"), instance.id),
        Some(operator.nav()),
        html! {
            p #progress { (status_name(lang, &instance, definition)) " · " (lang.t("申请人 ", "applicant ")) (instance.applicant) }
            (form_fields(lang, &instance, definition))
            @if let (true, Some(step)) = (my_turn, step) {
                form.card method="post" action={ "/console/applications/" (instance.id) "/act" } {
                    input type="hidden" name="forgery" value=(forgery_token(&operator.token));
                    label { (lang.t("意见", "Comment")) textarea name="comment" rows="3" {} }
                    div.actions {
                        @for (action, name, zh, en) in STEP_ACTIONS {
                            @if step.actions.contains(&action) {
                                button id=(name) type="submit" name="action" value=(name) { (lang.t(zh, en)) }
                            }
                        }
                    }
                }
            }
            h2 { (lang.t("办理记录", "History")) }
            (history(lang, &instance))
        },
    )
}

#[derive(Debug, Deserialize)]
struct ActForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    comment: String,
}

async fn act(
    State(state): State<AppState>,
    operator: Operator,
    axum::extract::Path((id, _)): axum::extract::Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    let Ok(id) = id.parse::<u64>() else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("没有这份申请。", "No such application."),
        );
    };
    let Some((action, ..)) = STEP_ACTIONS.iter().find(|(_, name, ..)| *name == form.action) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项操作。", "No such action."));
    };
    let (workflows, who, action) = (state.workflows.clone(), operator.actor(), *action);
    let comment = form.comment;
    let acted =
        tokio::task::spawn_blocking(move || workflows.act(&who, id, action, &comment, None, None))
            .await;
    let outcome = match acted {
        Ok(outcome) => outcome.map_err(ApiError::from),
        Err(_) => {
            return not_now(lang);
        }
    };
    let target = format!("application:{id}");
    let detail = format!("{} (console)", form.action);
    match operator.caller.audited(&state, "workflow.act", &target, &detail, || outcome) {
        Ok(_) => see_other(&format!("/console/applications/{id}"), &[]),
        Err(error) => operator.error(&error),
    }
}

async fn notices(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    let to = [
        operator.caller.operator.clone(),
        onecard_engine::notice::role_recipient(operator.caller.role.as_str()),
    ];
    let notices = match state.workflows.notices_for(&to, NOTICES_SHOWN) {
        Ok(notices) => notices,
        Err(error) => return refusal(lang, StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
    };
    page(
        lang,
        lang.t("消息", "Notices"),
        Some(operator.nav()),
        notice_list(lang, &notices, "/console/applications"),
    )
}
