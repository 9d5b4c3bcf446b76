//! The console's business day: the open date and the closed dates before it, each
//! date's settlement with its figures and every merchant's line, and the files
//! finance pulls (the merchants, terminals and meals CSVs and the workbook), the
//! same bytes as the settlement folder's and the API's.

use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use maud::html;
use serde::Deserialize;

use super::console::Operator;
use super::{ForgeryOnly, forged, forgery_token, page, refusal, see_other, yuan};
use crate::api::{AppState, Permission, cutover_as, settle_as};
use crate::settlement_files::{self, FileKind};

/// Closed dates listed on the day page, the latest first.
const DATES_LISTED: usize = 14;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/day", get(day))
        .route("/console/day/cutover", post(cutover))
        .route("/console/settlements/{date}", get(settlement).post(settle))
        .route("/console/settlements/{date}/file", get(file))
        .route("/console/reconciliations/{date}", get(reconciliation))
}

async fn day(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::LedgerRead) {
        return operator.error(&error);
    }
    let ledger = &state.ledger;
    let may_close = Permission::DayWrite.allows(operator.caller.role);
    let forgery = forgery_token(&operator.token);
    let mut dates = Vec::new();
    let mut date = ledger.closed_through();
    while dates.len() < DATES_LISTED && date < ledger.business_date() {
        dates.push((date, ledger.settlement(date).ok().flatten().map(|s| s.totals())));
        date = date.previous();
    }
    page(
        lang,
        lang.t("营业日与结算", "Business day and settlement"),
        Some(operator.nav()),
        html! {
            dl.figures {
                dt { (lang.t("当前营业日", "Open business date")) } dd #open-date { (ledger.business_date()) }
                dt { (lang.t("已日切至", "Closed through")) } dd #closed-through { (ledger.closed_through()) }
            }
            @if may_close {
                form.inline method="post" action="/console/day/cutover" {
                    input type="hidden" name="forgery" value=(forgery);
                    button #cutover.danger type="submit" { (lang.t("日切：关闭当前营业日", "Cutover: close the open business date")) }
                }
                p.hint { (lang.t(
                    "日切在配置的时刻自动进行；这里提前关闭当前营业日，关闭后的交易记入下一营业日。",
                    "The cutover runs by itself at the configured time; this closes the open date now, and later transactions belong to the next date."
                )) }
            }
            table.dates {
                thead { tr {
                    th { (lang.t("营业日", "Date")) }
                    th { (lang.t("结算", "Settlement")) }
                    th.amount { (lang.t("净应付（元）", "Net payable (yuan)")) }
                    th { (lang.t("对账", "Reconciliation")) }
                } }
                tbody {
                    @for (date, totals) in &dates {
                        tr {
                            td { (date) }
                            @if let Some(totals) = totals {
                                td { a href={ "/console/settlements/" (date) } { (lang.t("已结算", "settled")) } }
                                td.amount { (yuan(totals.net_payable_fen)) }
                            } @else {
                                td {
                                    (lang.t("未结算", "not settled"))
                                    @if may_close {
                                        " "
                                        form.inline method="post" action={ "/console/settlements/" (date) } {
                                            input type="hidden" name="forgery" value=(forgery);
                                            button id={ "settle-" (date) } type="submit" { (lang.t("结算", "Settle")) }
                                        }
                                    }
                                }
                                td {}
                            }
                            td { a href={ "/console/reconciliations/" (date) } { (lang.t("对账报告", "report")) } }
                        }
                    }
                }
            }
        },
    )
}

async fn cutover(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    if !operator.forgery_ok(&form.forgery) {
        return forged(operator.lang);
    }
    let open = state.ledger.business_date();
    match cutover_as(&state, &operator.caller, open).await {
        Ok(_) => see_other("/console/day", &[]),
        Err(error) => operator.error(&error),
    }
}

async fn settle(
    State(state): State<AppState>,
    operator: Operator,
    Path(date): Path<String>,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    if !operator.forgery_ok(&form.forgery) {
        return forged(operator.lang);
    }
    let date = match crate::api::date_of(&date) {
        Ok(date) => date,
        Err(error) => return operator.error(&error),
    };
    match settle_as(&state, &operator.caller, date).await {
        Ok(_) => see_other(&format!("/console/settlements/{date}"), &[]),
        Err(error) => operator.error(&error),
    }
}

async fn settlement(
    State(state): State<AppState>,
    operator: Operator,
    Path(date): Path<String>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::LedgerRead) {
        return operator.error(&error);
    }
    let Some(settled) = settled(&state, &date) else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("这一天没有结算。", "That date has no settlement."),
        );
    };
    let totals = settled.totals();
    let date = settled.date().map(|d| d.to_string()).unwrap_or_default();
    page(
        lang,
        &format!("{} {date}", lang.t("结算", "Settlement")),
        Some(operator.nav()),
        html! {
            dl.figures #totals {
                dt { (lang.t("商户", "Merchants")) } dd { (totals.merchants) }
                dt { (lang.t("消费笔数 / 金额", "Purchases")) } dd { (totals.purchases.count) " / " (yuan(totals.purchases.fen)) }
                dt { (lang.t("退款", "Refunds")) } dd { (totals.refunds.count) " / " (yuan(totals.refunds.fen)) }
                dt { (lang.t("冲正", "Reversals")) } dd { (totals.reversals.count) " / " (yuan(totals.reversals.fen)) }
                dt { (lang.t("净销售", "Net sales")) } dd { (yuan(totals.net_sales_fen)) }
                dt { (lang.t("管理费", "Commission")) } dd { (yuan(totals.commission_fen)) }
                dt { (lang.t("净应付", "Net payable")) } dd #net-payable { (yuan(totals.net_payable_fen)) }
            }
            p.actions {
                @for kind in FileKind::ALL {
                    a.button id={ "download-" (kind.name()) } href={ "/console/settlements/" (date) "/file?kind=" (kind.name()) } {
                        (lang.t("下载 ", "Download ")) (kind.file_name(settled.business_date))
                    }
                }
            }
            table.settlement {
                thead { tr {
                    th { (lang.t("商户", "Merchant")) }
                    th.amount { (lang.t("消费笔数", "Purchases")) }
                    th.amount { (lang.t("净销售", "Net sales")) }
                    th.amount { (lang.t("管理费", "Commission")) }
                    th.amount { (lang.t("净应付", "Net payable")) }
                } }
                tbody {
                    @for merchant in settled.merchants.iter().filter(|m| m.sales.purchases.count > 0 || m.net_payable_fen != 0) {
                        tr {
                            td { (merchant.name) }
                            td.amount { (merchant.sales.purchases.count) }
                            td.amount { (yuan(merchant.sales.net_fen)) }
                            td.amount { (yuan(merchant.commission_fen)) }
                            td.amount { (yuan(merchant.net_payable_fen)) }
                        }
                    }
                }
            }
        },
    )
}

fn settled(state: &AppState, date: &str) -> Option<onecard_engine::settlement::Settlement> {
    let date = crate::api::money::parse_business_date(date).ok()?;
    state.ledger.settlement(date).ok().flatten()
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    #[serde(default)]
    kind: String,
}

async fn file(
    State(state): State<AppState>,
    operator: Operator,
    Path(date): Path<String>,
    Query(query): Query<FileQuery>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::LedgerRead) {
        return operator.error(&error);
    }
    let (Some(settled), Some(kind)) = (settled(&state, &date), FileKind::from_name(&query.kind))
    else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这个文件。", "No such file."));
    };
    match settlement_files::render(&settled, kind) {
        Ok(rendered) => crate::api::settlement_download(kind, rendered),
        Err(error) => refusal(lang, StatusCode::INTERNAL_SERVER_ERROR, &format!("{error:#}")),
    }
}

async fn reconciliation(
    State(state): State<AppState>,
    operator: Operator,
    Path(date): Path<String>,
) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::LedgerRead) {
        return operator.error(&error);
    }
    let Ok(date) = crate::api::money::parse_business_date(&date) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这一天。", "No such date."));
    };
    let ledger = std::sync::Arc::clone(&state.ledger);
    let report = match tokio::task::spawn_blocking(move || ledger.reconcile(date)).await {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => return refusal(lang, StatusCode::CONFLICT, &error.to_string()),
        Err(_) => {
            return refusal(
                lang,
                StatusCode::SERVICE_UNAVAILABLE,
                lang.t("暂时无法对账。", "Not possible now."),
            );
        }
    };
    let flow = &report.card_flow;
    page(
        lang,
        &format!("{} {date}", lang.t("对账报告", "Reconciliation")),
        Some(operator.nav()),
        html! {
            p #verdict class=(if report.passed { "notice" } else { "error" }) {
                @if report.passed { (lang.t("全部核对一致。", "Every check agrees.")) }
                @else { (lang.t("有差异，需处理（调账须经审批）。", "There are discrepancies to resolve (an adjustment needs approval).")) }
            }
            h2 { (lang.t("卡池资金流", "Card pool flow")) }
            dl.figures {
                dt { (lang.t("期初", "Opening")) } dd { (yuan(flow.opening_fen)) }
                dt { (lang.t("充值", "Top-ups")) } dd { (yuan(flow.top_ups_fen)) }
                dt { (lang.t("补助", "Subsidies")) } dd { (yuan(flow.subsidies_fen)) }
                dt { (lang.t("消费", "Purchases")) } dd { (yuan(flow.purchases_fen)) }
                dt { (lang.t("退款", "Refunds")) } dd { (yuan(flow.refunds_fen)) }
                dt { (lang.t("冲正", "Reversals")) } dd { (yuan(flow.reversals_fen)) }
                dt { (lang.t("调账", "Adjustments")) } dd { (yuan(flow.adjustments_fen)) }
                dt { (lang.t("销户", "Closures")) } dd { (yuan(flow.closures_fen)) }
                dt { (lang.t("清零", "Expiries")) } dd { (yuan(flow.expiries_fen)) }
                dt { (lang.t("期末", "Closing")) } dd { (yuan(flow.closing_fen)) }
            }
            h2 { (lang.t("核对项", "Checks")) }
            table.checks {
                thead { tr {
                    th { (lang.t("核对", "Check")) }
                    th { (lang.t("结果", "Result")) }
                    th { (lang.t("差异", "Discrepancies")) }
                } }
                tbody {
                    @for check in &report.checks {
                        tr.overdue[!check.passed] {
                            td { (check.name) }
                            td { (if check.passed { lang.t("一致", "agrees") } else { lang.t("不一致", "differs") }) }
                            td {
                                @for discrepancy in &check.discrepancies {
                                    div { (discrepancy.subject) ": " (lang.t("应为 ", "expected ")) (yuan(discrepancy.expected_fen))
                                        (lang.t("，实为 ", ", found ")) (yuan(discrepancy.found_fen))
                                        @if !discrepancy.note.is_empty() { " (" (discrepancy.note) ")" } }
                                }
                                @if check.discrepancy_count > check.discrepancies.len() as u64 {
                                    div { "… " (check.discrepancy_count) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
