//! The console's backups: where they go, every backup kept (its time, size, files
//! and whether the offsite copy holds it), the last one this process tried and how
//! it ended, and for the roles that may, a backup taken now.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Form, Router};
use maud::html;

use super::console::Operator;
use super::{ForgeryOnly, beijing_time, forged, forgery_token, page, see_other};
use crate::api::{AppState, list_backups_as, take_backup_as};
use crate::backup;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/console/backups", get(backups).post(take))
}

async fn backups(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    let (config, listed) = match list_backups_as(&state, &operator.caller).await {
        Ok(listed) => listed,
        Err(error) => return operator.error(&error),
    };
    let offset = state.ledger.config().utc_offset_minutes;
    let last = state.backups.last_attempt();
    page(
        lang,
        lang.t("备份", "Backups"),
        Some(operator.nav()),
        html! {
            dl.figures {
                dt { (lang.t("备份目录", "Backup directory")) } dd { code { (config.dir.display()) } }
                dt { (lang.t("异地副本", "Offsite copy")) }
                dd { @if let Some(dir) = &config.offsite_dir { code { (dir.display()) } } @else { (lang.t("未配置", "not configured")) } }
                dt { (lang.t("保留份数", "Kept")) } dd { (config.keep) }
                dt { (lang.t("最近一次", "Last attempt")) }
                dd #last-attempt {
                    @match &last {
                        None => { (lang.t("本次启动后尚未备份", "none since this start")) }
                        Some(attempt) => {
                            (beijing_time(attempt.at_ms)) " · "
                            @match &attempt.outcome {
                                Ok(id) => { span.good { (lang.t("成功，备份 ", "taken, backup ")) (id) } }
                                Err(error) => { span.error role="alert" { (lang.t("失败：", "failed: ")) (error) } }
                            }
                        }
                    }
                }
            }
            form.inline method="post" action="/console/backups" {
                input type="hidden" name="forgery" value=(forgery_token(&operator.token));
                button #take-backup type="submit" { (lang.t("立即备份", "Back up now")) }
            }
            table.backups {
                thead { tr {
                    th { (lang.t("备份", "Backup")) }
                    th { (lang.t("时间", "Taken")) }
                    th.amount { (lang.t("大小（字节）", "Size (bytes)")) }
                    th.amount { (lang.t("文件数", "Files")) }
                    th { (lang.t("异地", "Offsite")) }
                } }
                tbody {
                    @for info in listed.iter().rev() {
                        tr.overdue[config.offsite_dir.is_some() && !info.offsite] {
                            td { (info.id) }
                            td { (backup::time_text(info.timestamp_s, offset)) }
                            td.amount { (info.size_bytes) }
                            td.amount { (info.files) }
                            td { @if info.offsite { "✓" } }
                        }
                    }
                }
            }
            @if listed.is_empty() { p { (lang.t("还没有备份。", "No backup yet.")) } }
        },
    )
}

async fn take(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    // A failed backup is shown on the list page too (the last attempt).
    match take_backup_as(&state, &operator.caller).await {
        Ok(_) => see_other("/console/backups", &[]),
        Err(error) => operator.error(&error),
    }
}
