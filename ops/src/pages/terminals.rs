//! The console's terminals: every terminal with its merchant and what the card
//! centre watches (online, last seen, clock skew, blacklist versions behind), the
//! attention list, and for an admin enabling, disabling and a new key, shown once.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use onecard_protocol::TerminalKey;
use serde::Deserialize;

use super::console::Operator;
use super::{ForgeryOnly, beijing_time, forged, forgery_token, not_now, page, refusal, see_other};
use crate::api::{AppState, Permission, terminal_json};

/// Terminals one page lists at most.
const TERMINALS_LISTED_MAX: usize = 2_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/terminals", get(terminals))
        .route("/console/terminals/{id}/{action}", post(terminal_action))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    attention: Option<String>,
}

async fn terminals(
    State(state): State<AppState>,
    operator: Operator,
    Query(query): Query<ListQuery>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::DirectoryRead) {
        return operator.error(&error);
    }
    let attention_only = query.attention.is_some();
    let may_change = Permission::DirectoryWrite.allows(operator.caller.role);
    let mut listed: Vec<_> = state
        .ledger
        .terminals()
        .iter()
        .map(|terminal| terminal_json(&state, terminal))
        .filter(|t| !attention_only || t.needs_attention())
        .collect();
    listed.sort_by_key(|t| t.id);
    listed.truncate(TERMINALS_LISTED_MAX);
    let merchant = |id: u32| state.ledger.merchant(id).map(|m| m.name.clone()).unwrap_or_default();
    page(
        lang,
        if attention_only {
            lang.t("需关注的终端", "Terminals needing attention")
        } else {
            lang.t("终端", "Terminals")
        },
        Some(operator.nav()),
        html! {
            p {
                a href="/console/terminals" { (lang.t("全部", "All")) } " · "
                a #attention href="/console/terminals?attention=1" { (lang.t("需关注（离线或黑名单落后）", "Needing attention (offline, or behind on the blacklist)")) }
            }
            table.terminals {
                thead { tr {
                    th { (lang.t("终端", "Terminal")) }
                    th { (lang.t("商户", "Merchant")) }
                    th { (lang.t("状态", "State")) }
                    th { (lang.t("最近联系", "Last seen")) }
                    th.amount { (lang.t("时钟偏差（秒）", "Clock skew (s)")) }
                    th.amount { (lang.t("黑名单落后", "Blacklist behind")) }
                    @if may_change { th {} }
                } }
                tbody {
                    @for terminal in &listed {
                        tr.overdue[terminal.needs_attention()] {
                            td { (terminal.id) }
                            td { (merchant(terminal.merchant_id)) }
                            td {
                                @if !terminal.enabled { (lang.t("已停用", "disabled")) }
                                @else if terminal.online { (lang.t("在线", "online")) }
                                @else if terminal.offline { (lang.t("离线", "offline")) }
                                @else { (lang.t("空闲", "idle")) }
                            }
                            td { (terminal.last_seen_ms.map(beijing_time).unwrap_or_default()) }
                            td.amount { (terminal.clock_skew_ms / 1000) }
                            td.amount { (terminal.blacklist_behind) }
                            @if may_change {
                                td {
                                    @for (action, zh, en) in [if terminal.enabled { ("disable", "停用", "Disable") } else { ("enable", "启用", "Enable") }, ("rotate-key", "换密钥", "New key")] {
                                        form.inline method="post" action={ "/console/terminals/" (terminal.id) "/" (action) } {
                                            input type="hidden" name="forgery" value=(forgery_token(&operator.token));
                                            button id={ (action) "-" (terminal.id) } type="submit" { (lang.t(zh, en)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn terminal_action(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, action)): Path<(u32, String)>,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    if let Err(error) = operator.caller.require(&state, Permission::DirectoryWrite) {
        return operator.error(&error);
    }
    let target = format!("terminal:{id}");
    let ledger = Arc::clone(&state.ledger);
    match action.as_str() {
        "enable" | "disable" => {
            let enabled = action == "enable";
            let changed =
                tokio::task::spawn_blocking(move || ledger.set_terminal_enabled(id, enabled)).await;
            let Ok(outcome) = changed else {
                return not_now(lang);
            };
            match operator.caller.audited(
                &state,
                &format!("terminal.{action}"),
                &target,
                "console",
                || outcome,
            ) {
                Ok(()) => see_other("/console/terminals", &[]),
                Err(error) => operator.error(&error),
            }
        }
        "rotate-key" => {
            let mut bytes = [0u8; 32];
            if getrandom::fill(&mut bytes).is_err() {
                return refusal(
                    lang,
                    StatusCode::SERVICE_UNAVAILABLE,
                    lang.t("暂时无法生成密钥。", "No key can be made now."),
                );
            }
            let key = TerminalKey::new(bytes);
            let hex = key.to_hex();
            let rotated =
                tokio::task::spawn_blocking(move || ledger.rotate_terminal_key(id, &key)).await;
            let Ok(outcome) = rotated else {
                return not_now(lang);
            };
            if let Err(error) =
                operator
                    .caller
                    .audited(&state, "terminal.rotate_key", &target, "console", || outcome)
            {
                return operator.error(&error);
            }
            page(
                lang,
                &format!("{} {id}", lang.t("终端新密钥", "New key of terminal")),
                Some(operator.nav()),
                html! {
                    p.notice { (lang.t(
                        "新密钥只显示这一次：请立即写入终端。旧密钥的会话已断开，终端用新密钥重新签到。",
                        "The new key is shown this once: load it into the terminal now. Sessions under the old key have ended; the terminal signs on again with the new one."
                    )) }
                    p { code #new-key { (hex) } }
                    p { a href="/console/terminals" { (lang.t("返回终端列表", "Back to the terminals")) } }
                },
            )
        }
        _ => refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项操作。", "No such action.")),
    }
}
