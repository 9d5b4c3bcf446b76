//! The console's audit log, searchable by who acted, what was acted on and the day
//! (Beijing time), newest first.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use maud::html;
use onecard_engine::audit::{AUDIT_PAGE_MAX, AuditRecord, Outcome};
use serde::Deserialize;

use super::console::Operator;
use super::{beijing_time, page};
use crate::api::{AppState, Permission};

/// Records one search shows at most.
const MATCHES_SHOWN: usize = 50;

/// Records one search reads at most before it stops and offers the older ones.
const RECORDS_SCANNED_MAX: usize = 20_000;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/console/audit", get(audit))
}

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    before: Option<u64>,
}

impl AuditQuery {
    fn matches(&self, record: &AuditRecord) -> bool {
        (self.actor.is_empty() || record.actor.contains(self.actor.trim()))
            && (self.target.is_empty() || record.target.contains(self.target.trim()))
            && (self.date.is_empty() || beijing_time(record.at_ms).starts_with(self.date.trim()))
    }
}

async fn audit(
    State(state): State<AppState>,
    operator: Operator,
    Query(query): Query<AuditQuery>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::AuditRead) {
        return operator.error(&error);
    }
    // Newest first, page by page; `cursor` is the last record read, where the older
    // records go on.
    let (mut found, mut scanned, mut cursor, mut exhausted) = (Vec::new(), 0, query.before, false);
    'scan: while scanned < RECORDS_SCANNED_MAX {
        let Ok(page) = state.ledger.audit_page(cursor, AUDIT_PAGE_MAX) else { break };
        if page.is_empty() {
            exhausted = true;
            break;
        }
        for record in page {
            cursor = Some(record.sequence);
            scanned += 1;
            if query.matches(&record) {
                found.push(record);
                if found.len() == MATCHES_SHOWN {
                    break 'scan;
                }
            }
        }
    }
    let older = if exhausted { None } else { cursor.filter(|c| *c > 1) };
    page(
        lang,
        lang.t("审计日志", "Audit log"),
        Some(operator.nav()),
        html! {
            form.search method="get" action="/console/audit" {
                label { (lang.t("操作人", "Actor")) input name="actor" value=(query.actor); }
                label { (lang.t("对象", "Target")) input name="target" value=(query.target); }
                label { (lang.t("日期", "Date")) input name="date" type="date" value=(query.date); }
                button type="submit" { (lang.t("查找", "Find")) }
            }
            table.audit {
                thead { tr {
                    th { "#" }
                    th { (lang.t("时间", "When")) }
                    th { (lang.t("操作人", "Actor")) }
                    th { (lang.t("操作", "Action")) }
                    th { (lang.t("对象", "Target")) }
                    th { (lang.t("结果", "Outcome")) }
                    th { (lang.t("来源", "From")) }
                    th { (lang.t("说明", "Detail")) }
                } }
                tbody {
                    @for record in &found {
                        tr.overdue[record.outcome != Outcome::Ok] {
                            td { (record.sequence) }
                            td { (beijing_time(record.at_ms)) }
                            td.actor { (record.actor) }
                            td.action { (record.action) }
                            td.target { (record.target) }
                            td { (format!("{:?}", record.outcome).to_lowercase()) }
                            td { (record.from) }
                            td { (record.detail) }
                        }
                    }
                }
            }
            @if found.is_empty() { p { (lang.t("没有找到记录。", "No record found.")) } }
            @if let Some(before) = older {
                p { a #older href={ "/console/audit?actor=" (query.actor) "&target=" (query.target) "&date=" (query.date) "&before=" (before) } { (lang.t("更早的记录", "Older records")) } }
            }
        },
    )
}
