//! The console's merchants: every merchant with its category, shard, commission rate
//! (today's and any change to come) and whether it takes cards; for the roles that
//! may, a new merchant, enabling and disabling, and a commission change from the next
//! business day. Each goes through the API's own function, with the same audit.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use onecard_engine::directory::MerchantCategory;
use serde::Deserialize;

use super::console::Operator;
use super::{Lang, date, forged, forgery_token, not_now, page, refusal, see_other};
use crate::api::{
    ApiError, AppState, Permission, create_merchant_as, set_commission_as, set_merchant_enabled_as,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/merchants", get(merchants).post(create))
        .route("/console/merchants/{id}/{action}", post(merchant_action))
}

/// Every category, with what the card centre calls it.
const CATEGORIES: [(MerchantCategory, &str, &str, &str); 5] = [
    (MerchantCategory::Canteen, "canteen", "食堂", "Canteen"),
    (MerchantCategory::Shop, "shop", "商店", "Shop"),
    (MerchantCategory::Laundry, "laundry", "洗衣", "Laundry"),
    (MerchantCategory::Utility, "utility", "水电", "Utility"),
    (MerchantCategory::CardCentre, "card_centre", "卡务中心", "Card centre"),
];

fn category_name(lang: Lang, category: MerchantCategory) -> &'static str {
    CATEGORIES.iter().find(|(c, ..)| *c == category).map_or("", |(_, _, zh, en)| lang.t(zh, en))
}

async fn merchants(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::DirectoryRead) {
        return operator.error(&error);
    }
    let role = operator.caller.role;
    let (may_change, may_set_rate) =
        (Permission::DirectoryWrite.allows(role), Permission::CommissionWrite.allows(role));
    let today = state.ledger.business_date().to_yyyymmdd();
    let mut listed = state.ledger.merchants();
    listed.sort_by_key(|m| m.id);
    let forgery = forgery_token(&operator.token);
    page(
        lang,
        lang.t("商户", "Merchants"),
        Some(operator.nav()),
        html! {
            table.merchants {
                thead { tr {
                    th { (lang.t("商户", "Merchant")) }
                    th { (lang.t("名称", "Name")) }
                    th { (lang.t("类别", "Category")) }
                    th { (lang.t("分片", "Shard")) }
                    th { (lang.t("佣金率", "Commission")) }
                    th { (lang.t("状态", "State")) }
                    @if may_change || may_set_rate { th {} }
                } }
                tbody {
                    @for merchant in &listed {
                        tr.overdue[!merchant.enabled] {
                            td { (merchant.id) }
                            td.name { (merchant.name) }
                            td { (category_name(lang, merchant.category)) }
                            td { (merchant.shard) }
                            td {
                                (merchant.rate_on(today).normalize())
                                @for change in merchant.rate_changes.iter().filter(|c| c.from > today) {
                                    br;
                                    small { (lang.t("自 ", "from ")) (date(change.from)) ": " (change.rate.normalize()) }
                                }
                            }
                            td { @if merchant.enabled { (lang.t("营业", "open")) } @else { (lang.t("已停用", "disabled")) } }
                            @if may_change || may_set_rate {
                                td {
                                    @if may_change {
                                        @let (action, zh, en) = if merchant.enabled { ("disable", "停用", "Disable") } else { ("enable", "启用", "Enable") };
                                        form.inline method="post" action={ "/console/merchants/" (merchant.id) "/" (action) } {
                                            input type="hidden" name="forgery" value=(forgery);
                                            button id={ (action) "-" (merchant.id) } type="submit" { (lang.t(zh, en)) }
                                        }
                                    }
                                    @if may_set_rate {
                                        form.inline method="post" action={ "/console/merchants/" (merchant.id) "/commission" } {
                                            input type="hidden" name="forgery" value=(forgery);
                                            input id={ "rate-" (merchant.id) } name="commission_rate" size="6" required placeholder="0.015";
                                            button type="submit" { (lang.t("改佣金率", "Set rate")) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if may_set_rate {
                p.hint { (lang.t("新佣金率自下一营业日起生效。", "A new rate applies from the next business day.")) }
            }
            @if may_change { (create_form(lang, &forgery)) }
        },
    )
}

fn create_form(lang: Lang, forgery: &str) -> Markup {
    html! {
        h2 { (lang.t("新商户", "New merchant")) }
        form.card method="post" action="/console/merchants" {
            input type="hidden" name="forgery" value=(forgery);
            label { (lang.t("名称", "Name")) input #merchant-name name="name" required maxlength="64"; }
            label { (lang.t("类别", "Category"))
                select #merchant-category name="category" {
                    @for (_, value, zh, en) in CATEGORIES { option value=(value) { (lang.t(zh, en)) } }
                }
            }
            label { (lang.t("佣金率（如 0.015 即 1.5%）", "Commission rate (0.015 is 1.5%)"))
                input #merchant-rate name="commission_rate" required value="0"; }
            button #create-merchant type="submit" { (lang.t("创建", "Create")) }
        }
    }
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    #[serde(default)]
    forgery: String,
    name: String,
    category: String,
    commission_rate: String,
}

/// Runs `change` on the blocking pool (each is a synced write) and goes back to the
/// list, or shows why it was refused.
async fn changed(
    operator: &Operator,
    change: impl FnOnce() -> Result<(), ApiError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(change).await {
        Ok(Ok(())) => see_other("/console/merchants", &[]),
        Ok(Err(error)) => operator.error(&error),
        Err(_) => not_now(operator.lang),
    }
}

async fn create(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<CreateForm>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    let Some(category) = CATEGORIES.iter().find(|(_, v, ..)| *v == form.category).map(|c| c.0)
    else {
        return refusal(
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("没有这个类别。", "No such category."),
        );
    };
    let caller = operator.caller.clone();
    changed(&operator, move || {
        create_merchant_as(&state, &caller, form.name.trim(), category, &form.commission_rate)
            .map(|_| ())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    commission_rate: String,
}

async fn merchant_action(
    State(state): State<AppState>,
    operator: Operator,
    Path((id, action)): Path<(u32, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    let caller = operator.caller.clone();
    match action.as_str() {
        "enable" | "disable" => {
            let enabled = action == "enable";
            changed(&operator, move || {
                set_merchant_enabled_as(&state, &caller, id, enabled).map(|_| ())
            })
            .await
        }
        "commission" => {
            changed(&operator, move || {
                set_commission_as(&state, &caller, id, &form.commission_rate).map(|_| ())
            })
            .await
        }
        _ => refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项操作。", "No such action.")),
    }
}
