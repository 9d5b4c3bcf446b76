//! The online service hall (网上办事大厅), for cardholders: log in with the campus
//! card number and the hall password, change an issued password first, see the card
//! and its statement, report the card lost.
//!
//! A session reaches one card, the one it logged in with; no URL here names a card,
//! so there is no other cardholder's page to ask for.

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use onecard_engine::AccountId;
use onecard_engine::audit::Outcome;
use onecard_protocol::CardState;
use serde::Deserialize;

use super::{
    ForgeryOnly, Lang, SignInFirst, beijing_time, cookie, date, forged, forgery_checks,
    forgery_token, login_forgery_checks, page, refusal, see_other, set_cookie, sign_in_page, yuan,
};
use crate::api::AppState;
use crate::hall::{self, HallError, HallSession};

/// The cookie of a cardholder's session.
const SESSION_COOKIE: &str = "onecard_hall";

/// Statement lines on the card page.
const STATEMENT_LINES: usize = 20;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hall/", get(my_card))
        .route("/hall/login", get(login_form).post(login))
        .route("/hall/logout", post(logout))
        .route("/hall/password", get(password_form).post(change_password))
        .route("/hall/report-lost", post(report_lost))
}

/// A signed-in cardholder: the session and its token.
pub(super) struct Holder {
    pub(super) token: String,
    pub(super) session: HallSession,
    pub(super) lang: Lang,
}

impl FromRequestParts<AppState> for Holder {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        let lang = Lang::of(&parts.headers);
        let signed_out = SignInFirst("/hall/login");
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(signed_out)?;
        let session = state.hall.get(&token).ok_or(SignInFirst("/hall/login"))?;
        Ok(Self { token, session, lang })
    }
}

impl Holder {
    pub(super) fn nav(&self) -> Markup {
        let lang = self.lang;
        html! {
            a href="/hall/" { (lang.t("我的卡", "My card")) }
            a href="/hall/services" { (lang.t("办事服务", "Services")) }
            a href="/hall/applications" { (lang.t("我的申请", "My applications")) }
            a href="/hall/notices" { (lang.t("消息", "Notices")) }
            form.inline method="post" action="/hall/logout" {
                input type="hidden" name="forgery" value=(forgery_token(&self.token));
                button type="submit" { (lang.t("退出", "Log out")) }
            }
        }
    }

    pub(super) fn forgery_ok(&self, given: &str) -> bool {
        forgery_checks(given, &forgery_token(&self.token))
    }

    pub(super) fn audit(
        &self,
        state: &AppState,
        from: std::net::SocketAddr,
        action: &str,
        outcome: Outcome,
        detail: &str,
    ) {
        let actor = format!("cardholder:{}", self.session.card_number);
        let target = format!("card:{}", self.session.card_number);
        let _ = state.audit(&actor, action, &target, outcome, from, detail);
    }
}

async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, None, StatusCode::OK)
}

fn login_page(headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    let lang = Lang::of(headers);
    let fields = html! {
        label { (lang.t("校园卡号", "Campus card number"))
            input name="card_number" inputmode="numeric" autocomplete="username" required; }
        label { (lang.t("查询密码", "Hall password"))
            input name="password" type="password" autocomplete="current-password" required; }
    };
    let hint = lang.t(
        "查询密码不是消费密码。首次登录请使用卡务中心发放的密码，登录后须修改。忘记密码请携带证件到卡务中心重置。",
        "The hall password is not your purchase PIN. Log in first with the password the card centre gave you; you will change it at once. If you forgot it, the card centre resets it when you show your ID.",
    );
    let title = lang.t("网上办事大厅 · 登录", "Service hall · Log in");
    sign_in_page(
        headers,
        (title, "/hall/login", lang.t("登录", "Log in")),
        fields,
        Some(hint),
        (error, status),
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    card_number: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
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
                "The form has expired; open the login page again.",
            ),
        );
    }
    let bad = lang.t("卡号或查询密码错误。", "Wrong card number or hall password.");
    let Ok(card_number) = form.card_number.trim().parse::<u64>() else {
        return login_page(&headers, Some(bad), StatusCode::UNAUTHORIZED);
    };
    let actor = format!("cardholder:{card_number}");
    let target = format!("card:{card_number}");
    match hall::login(&state, card_number, &form.password).await {
        Ok((token, must_change)) => {
            let _ = state.audit(&actor, "hall.login", &target, Outcome::Ok, from, "");
            let to = if must_change { "/hall/password" } else { "/hall/" };
            see_other(to, &[set_cookie(SESSION_COOKIE, &token)])
        }
        Err(error) => {
            let _ = state.audit(
                &actor,
                "hall.login",
                &target,
                Outcome::Refused,
                from,
                &error.to_string(),
            );
            let message = match error {
                HallError::Locked { .. } => lang.t(
                    "连续输错次数过多，登录已暂时锁定，请稍后再试。",
                    "Too many wrong passwords: the login is locked for a while. Try again later.",
                ),
                HallError::BadCredentials => bad,
                _ => lang.t(
                    "暂时无法登录，请稍后再试。",
                    "Logging in is not possible now; try again later.",
                ),
            };
            let status = match error {
                HallError::Locked { .. } => StatusCode::LOCKED,
                HallError::BadCredentials => StatusCode::UNAUTHORIZED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            login_page(&headers, Some(message), status)
        }
    }
}

async fn logout(
    State(state): State<AppState>,
    holder: Holder,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    if !holder.forgery_ok(&form.forgery) {
        return forged(holder.lang);
    }
    state.hall.end(&holder.token);
    see_other("/hall/login", &[set_cookie(SESSION_COOKIE, "")])
}

async fn password_form(holder: Holder) -> Response {
    password_page(&holder, None, StatusCode::OK)
}

fn password_page(holder: &Holder, error: Option<&str>, status: StatusCode) -> Response {
    let lang = holder.lang;
    let mut response = page(
        lang,
        lang.t("修改查询密码", "Change the hall password"),
        Some(holder.nav()),
        html! {
            @if holder.session.must_change {
                p.notice { (lang.t("这是卡务中心发放的密码，请先设置您自己的密码。", "This password was issued by the card centre: set your own first.")) }
            }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action="/hall/password" {
                input type="hidden" name="forgery" value=(forgery_token(&holder.token));
                label { (lang.t("当前密码", "Current password"))
                    input name="current" type="password" autocomplete="current-password" required; }
                label { (lang.t("新密码（至少 8 位）", "New password (8 characters or more)"))
                    input name="new" type="password" autocomplete="new-password" required; }
                label { (lang.t("再次输入新密码", "New password again"))
                    input name="repeat" type="password" autocomplete="new-password" required; }
                button type="submit" { (lang.t("修改", "Change")) }
            }
        },
    );
    *response.status_mut() = status;
    response
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    repeat: String,
}

async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    holder: Holder,
    Form(form): Form<PasswordForm>,
) -> Response {
    let lang = holder.lang;
    if !holder.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    if form.new != form.repeat {
        let message = lang.t("两次输入的新密码不一致。", "The two new passwords differ.");
        return password_page(&holder, Some(message), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let card = holder.session.card_number;
    match hall::change_password(&state, &holder.token, card, &form.current, &form.new).await {
        Ok(()) => {
            holder.audit(&state, from, "hall.change_password", Outcome::Ok, "");
            see_other("/hall/", &[])
        }
        Err(error) => {
            holder.audit(
                &state,
                from,
                "hall.change_password",
                Outcome::Refused,
                &error.to_string(),
            );
            let (message, status) = match error {
                HallError::WeakPassword => (
                    lang.t("新密码至少 8 位。", "The new password needs 8 characters or more."),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
                HallError::SamePassword => (
                    lang.t(
                        "新密码不能与当前密码相同。",
                        "The new password must differ from the current one.",
                    ),
                    StatusCode::UNPROCESSABLE_ENTITY,
                ),
                HallError::BadCredentials => (
                    lang.t("当前密码错误。", "The current password is wrong."),
                    StatusCode::UNAUTHORIZED,
                ),
                HallError::Locked { .. } => (
                    lang.t(
                        "连续输错次数过多，已暂时锁定。",
                        "Too many wrong passwords: locked for a while.",
                    ),
                    StatusCode::LOCKED,
                ),
                _ => (
                    lang.t(
                        "暂时无法修改，请稍后再试。",
                        "The password cannot be changed now; try again later.",
                    ),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
            };
            password_page(&holder, Some(message), status)
        }
    }
}

/// The card's state in the page's language.
pub(super) fn state_name(lang: Lang, state: CardState) -> &'static str {
    match state {
        CardState::Active => lang.t("正常", "Active"),
        CardState::Lost => lang.t("已挂失", "Reported lost"),
        CardState::Frozen => lang.t("已冻结", "Frozen"),
        CardState::Closed => lang.t("已注销", "Closed"),
        CardState::Replaced => lang.t("已补办（旧卡）", "Replaced (old number)"),
    }
}

/// A statement's lines, newest first: when, what, where, amount in or out.
pub(super) fn statement_table(
    state: &AppState,
    lang: Lang,
    card_number: u64,
    account_number: u64,
) -> Markup {
    let page = state.ledger.statement(card_number, None, STATEMENT_LINES);
    let main = AccountId::card(account_number);
    let restricted = AccountId::card_restricted(account_number);
    let Ok(page) = page else {
        return html! { p.error { (lang.t("流水暂时无法读取。", "The statement cannot be read now.")) } };
    };
    if page.transfers.is_empty() {
        return html! { p { (lang.t("暂无流水。", "No transactions yet.")) } };
    }
    html! {
        table.statement {
            thead { tr {
                th { (lang.t("时间", "When")) }
                th { (lang.t("类型", "What")) }
                th { (lang.t("地点", "Where")) }
                th.amount { (lang.t("金额（元）", "Amount (yuan)")) }
            } }
            tbody {
                @for transfer in &page.transfers {
                    @let incoming = transfer.credit == main || transfer.credit == restricted;
                    tr {
                        td { (beijing_time(transfer.timestamp_ms)) }
                        td { (kind_name(lang, transfer.kind.label())) }
                        td { (place(state, transfer.terminal_id)) }
                        td class={ "amount " (if incoming { "in" } else { "out" }) } {
                            (if incoming { "+" } else { "−" }) (yuan(transfer.amount_fen))
                        }
                    }
                }
            }
        }
    }
}

/// The merchant behind a terminal, by name.
fn place(state: &AppState, terminal_id: u32) -> String {
    state
        .ledger
        .terminal(terminal_id)
        .and_then(|terminal| state.ledger.merchant(terminal.merchant_id))
        .map(|merchant| merchant.name.clone())
        .unwrap_or_default()
}

fn kind_name(lang: Lang, label: &str) -> &'static str {
    match label {
        "purchase" | "offline_purchase" => lang.t("消费", "Purchase"),
        "top_up" => lang.t("充值", "Top-up"),
        "refund" => lang.t("退款", "Refund"),
        "reversal" => lang.t("冲正", "Reversal"),
        "subsidy" => lang.t("补助", "Subsidy"),
        "subsidy_expiry" => lang.t("补助清零", "Subsidy expired"),
        "deposit" => lang.t("押金", "Deposit"),
        "card_fee" => lang.t("工本费", "Card fee"),
        "adjustment" => lang.t("调账", "Adjustment"),
        _ => lang.t("其他", "Other"),
    }
}

async fn my_card(State(state): State<AppState>, holder: Holder) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let Some(card) = state.ledger.card(holder.session.card_number) else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("找不到这张卡。", "This card does not exist."),
        );
    };
    let daily = card.limits.daily_fen_max;
    let can_report = matches!(card.state, CardState::Active | CardState::Frozen);
    page(
        lang,
        lang.t("我的校园卡", "My campus card"),
        Some(holder.nav()),
        html! {
            section.card {
                dl {
                    dt { (lang.t("持卡人", "Holder")) } dd #holder { (card.holder_name) " (" (card.holder_id) ")" }
                    dt { (lang.t("卡号", "Card number")) } dd #card-number { (card.card_number) }
                    dt { (lang.t("状态", "State")) } dd #card-state { (state_name(lang, card.state)) }
                    dt { (lang.t("主钱包余额", "Main purse")) } dd #balance { (yuan(card.balance_fen)) " " (lang.t("元", "yuan")) }
                    dt { (lang.t("补助钱包余额", "Restricted purse")) } dd #restricted { (yuan(card.restricted_fen)) " " (lang.t("元", "yuan")) }
                    dt { (lang.t("有效期至", "Valid through")) } dd { (date(card.expiry_date)) }
                    dt { (lang.t("今日已消费 / 日限额", "Spent today / daily limit")) }
                    dd #today { (yuan(card.spent_today_fen)) " / " (yuan(daily)) " " (lang.t("元", "yuan")) }
                }
            }
            @if card.state == CardState::Lost {
                p.notice #lost-notice { (lang.t(
                    "此卡已挂失，所有终端将拒绝此卡。补办新卡请携带本人证件到卡务中心，余额将转入新卡；如找回原卡，也请到卡务中心解挂。",
                    "This card is reported lost: every terminal refuses it. For a new card, bring your ID to the card centre; the balance moves to the new card. If you find this one, the card centre unlocks it."
                )) }
            }
            @if can_report {
                form.card method="post" action="/hall/report-lost" {
                    input type="hidden" name="forgery" value=(forgery_token(&holder.token));
                    p { (lang.t("卡丢了？挂失立即生效，终端将拒绝此卡。解挂须本人到卡务中心办理。", "Lost your card? Reporting it takes effect at once: terminals refuse it. Only the card centre can unlock it, with your ID.")) }
                    button.danger #report-lost type="submit" { (lang.t("挂失此卡", "Report this card lost")) }
                }
            }
            h2 { (lang.t("最近流水", "Latest transactions")) }
            (statement_table(&state, lang, card.card_number, card.account_number))
        },
    )
}

async fn report_lost(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    holder: Holder,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    let lang = holder.lang;
    if !holder.forgery_ok(&form.forgery) || holder.session.must_change {
        return forged(lang);
    }
    let ledger = Arc::clone(&state.ledger);
    let card = holder.session.card_number;
    let reported = tokio::task::spawn_blocking(move || ledger.report_lost(card)).await;
    match reported {
        Ok(Ok(_)) => {
            holder.audit(&state, from, "hall.report_lost", Outcome::Ok, "");
            see_other("/hall/", &[])
        }
        Ok(Err(error)) => {
            holder.audit(&state, from, "hall.report_lost", Outcome::Refused, &error.to_string());
            refusal(
                lang,
                StatusCode::CONFLICT,
                lang.t("此卡现在不能挂失。", "This card cannot be reported lost now."),
            )
        }
        Err(_) => refusal(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            lang.t(
                "暂时无法挂失，请稍后再试或致电卡务中心。",
                "The card cannot be reported lost now; try again, or call the card centre.",
            ),
        ),
    }
}
