//! The service hall's services: the workflows open to cardholders (a definition's
//! `applicants = ["cardholder"]`), listed by category and searchable by name; a
//! service's form, with what onecard knows of the holder filled in (一表通); the
//! holder's applications, their progress, and the confirmation with a rating when
//! one is done. Every submission and action is the engine's (`Workflows`), as the
//! API's are.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use onecard_engine::audit::Outcome;
use onecard_engine::notice::{Notice, NoticeKind};
use onecard_engine::workflow::{
    Action, Actor, CARDHOLDER, Definition, FieldKind, Instance, Prefill, Status, WorkflowError,
};
use serde::Deserialize;

use super::hall::Holder;
use super::{Lang, beijing_time, forgery_token, not_now, page, refusal, see_other};
use crate::api::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hall/services", get(services))
        .route("/hall/services/{name}", get(service_form).post(apply))
        .route("/hall/applications", get(applications))
        .route("/hall/applications/{id}", get(application))
        .route("/hall/applications/{id}/confirm", post(confirm))
        .route("/hall/notices", get(notices))
}

/// The cardholder as the workflows see them.
pub(super) fn actor(holder: &Holder, from: SocketAddr) -> Actor {
    Actor {
        name: applicant(holder.session.card_number),
        roles: vec![CARDHOLDER.to_owned()],
        from: from.ip().to_string(),
    }
}

/// The applicant name of a card's holder in the workflows.
pub(super) fn applicant(card_number: u64) -> String {
    format!("{CARDHOLDER}:{card_number}")
}

/// The part of a bilingual label (`中文 English`) for the page's language.
pub(super) fn label(lang: Lang, text: &str) -> &str {
    let split = text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()).map(|(at, _)| at);
    match (lang, split) {
        (_, None) | (_, Some(0)) => text,
        (Lang::Zh, Some(at)) => text[..at].trim(),
        (Lang::En, Some(at)) => text[at..].trim(),
    }
}

fn open_to_cardholders(definition: &Definition) -> bool {
    definition.applicants.iter().any(|a| a == CARDHOLDER)
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn services(
    State(state): State<AppState>,
    holder: Holder,
    Query(query): Query<SearchQuery>,
) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let wanted = query.q.trim().to_lowercase();
    let mut by_category: BTreeMap<&str, Vec<&Definition>> = BTreeMap::new();
    for definition in state.workflows.definitions() {
        if open_to_cardholders(definition)
            && (wanted.is_empty() || definition.title.to_lowercase().contains(&wanted))
        {
            by_category.entry(definition.category.as_str()).or_default().push(definition);
        }
    }
    page(
        lang,
        lang.t("办事服务", "Services"),
        Some(holder.nav()),
        html! {
            form.search method="get" action="/hall/services" {
                label { (lang.t("按名称查找服务", "Find a service by name"))
                    input name="q" value=(query.q); }
                button type="submit" { (lang.t("查找", "Find")) }
            }
            @if by_category.is_empty() {
                p { (lang.t("没有找到服务。", "No service found.")) }
            }
            @for (category, definitions) in &by_category {
                h2 { (label(lang, category)) }
                ul.choices {
                    @for definition in definitions {
                        li { a href={ "/hall/services/" (definition.name) } { (label(lang, &definition.title)) } }
                    }
                }
            }
        },
    )
}

/// The definition `name`, if it is open to cardholders.
fn service<'a>(state: &'a AppState, name: &str) -> Option<&'a Definition> {
    state.workflows.definition(name).ok().filter(|d| open_to_cardholders(d))
}

/// What onecard fills `prefill` in with for the session's card.
fn prefilled(state: &AppState, holder: &Holder, prefill: Prefill) -> String {
    let card = state.ledger.card(holder.session.card_number);
    match prefill {
        Prefill::HolderName => card.map(|c| c.holder_name).unwrap_or_default(),
        Prefill::HolderId => card.map(|c| c.holder_id).unwrap_or_default(),
        Prefill::CardNumber => holder.session.card_number.to_string(),
    }
}

async fn service_form(
    State(state): State<AppState>,
    holder: Holder,
    Path(name): Path<String>,
) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let Some(definition) = service(&state, &name) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项服务。", "No such service."));
    };
    form_page(&state, &holder, definition, None, &BTreeMap::new(), StatusCode::OK)
}

fn form_page(
    state: &AppState,
    holder: &Holder,
    definition: &Definition,
    error: Option<&str>,
    given: &BTreeMap<String, String>,
    status: StatusCode,
) -> Response {
    let lang = holder.lang;
    let mut response = page(
        lang,
        label(lang, &definition.title),
        Some(holder.nav()),
        html! {
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action={ "/hall/services/" (definition.name) } {
                input type="hidden" name="forgery" value=(forgery_token(&holder.token));
                @for field in &definition.fields {
                    @let value = given.get(&field.name).cloned().unwrap_or_default();
                    label {
                        (label(lang, &field.label))
                        @if let Some(prefill) = field.prefill {
                            input name=(field.name) value=(prefilled(state, holder, prefill)) readonly;
                        } @else {
                            @match field.kind {
                                FieldKind::Text => {
                                    input name=(field.name) value=(value) required;
                                }
                                FieldKind::LongText => {
                                    textarea name=(field.name) rows="4" required { (value) }
                                }
                                FieldKind::Choice => {
                                    select name=(field.name) required {
                                        @for choice in &field.choices {
                                            option value=(choice.value) selected[choice.value == value] { (label(lang, &choice.label)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                button type="submit" { (lang.t("提交", "Submit")) }
            }
        },
    );
    *response.status_mut() = status;
    response
}

async fn apply(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    holder: Holder,
    Path(name): Path<String>,
    Form(mut given): Form<BTreeMap<String, String>>,
) -> Response {
    let lang = holder.lang;
    let forgery = given.remove("forgery").unwrap_or_default();
    if !holder.forgery_ok(&forgery) || holder.session.must_change {
        return super::forged(lang);
    }
    let Some(definition) = service(&state, &name) else {
        return refusal(lang, StatusCode::NOT_FOUND, lang.t("没有这项服务。", "No such service."));
    };
    // Only the definition's fields, the prefilled ones from the card whatever was sent.
    let mut form = serde_json::Map::new();
    for field in &definition.fields {
        let value = match field.prefill {
            Some(prefill) => prefilled(&state, &holder, prefill),
            None => given.get(&field.name).map(|v| v.trim().to_owned()).unwrap_or_default(),
        };
        form.insert(field.name.clone(), serde_json::Value::String(value));
    }
    let workflows = state.workflows.clone();
    let who = actor(&holder, from);
    let workflow = name.clone();
    let submitted = tokio::task::spawn_blocking(move || {
        workflows.submit(&who, &workflow, serde_json::Value::Object(form))
    })
    .await;
    match submitted {
        Ok(Ok(instance)) => {
            holder.audit(
                &state,
                from,
                "hall.apply",
                Outcome::Ok,
                &format!("{name} application {}", instance.id),
            );
            see_other(&format!("/hall/applications/{}", instance.id), &[])
        }
        Ok(Err(WorkflowError::Form(reason))) => {
            holder.audit(&state, from, "hall.apply", Outcome::Refused, &reason);
            let message = format!("{}{reason}", lang.t("表单有误：", "The form is not complete: "));
            form_page(
                &state,
                &holder,
                definition,
                Some(&message),
                &given,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
        }
        Ok(Err(error)) => {
            holder.audit(&state, from, "hall.apply", Outcome::Refused, &error.to_string());
            refusal(lang, StatusCode::CONFLICT, &error.to_string())
        }
        Err(_) => refusal(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            lang.t("暂时无法提交。", "Not possible now."),
        ),
    }
}

/// Where an application stands, in words.
pub(super) fn status_name(
    lang: Lang,
    instance: &Instance,
    definition: Option<&Definition>,
) -> String {
    let step = definition.and_then(|d| d.steps.get(instance.step)).map(|s| s.name.as_str());
    match instance.status {
        Status::Open => match step {
            Some(step) => format!("{}{step}", lang.t("办理中：", "In progress: ")),
            None => lang.t("办理中", "In progress").to_owned(),
        },
        Status::Returned => lang.t("已退回，待补充", "Returned for changes").to_owned(),
        Status::Rejected => lang.t("未通过", "Rejected").to_owned(),
        Status::Completed => lang.t("已办结", "Done").to_owned(),
    }
}

async fn applications(State(state): State<AppState>, holder: Holder) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let mine = applicant(holder.session.card_number);
    let listed = state.workflows.list(|instance| instance.applicant == mine);
    let Ok(mut listed) = listed else {
        return refusal(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            lang.t("暂时无法读取。", "Not readable now."),
        );
    };
    listed.reverse();
    page(
        lang,
        lang.t("我的申请", "My applications"),
        Some(holder.nav()),
        html! {
            @if listed.is_empty() {
                p { (lang.t("还没有申请。", "No applications yet.")) " " a href="/hall/services" { (lang.t("办事服务", "Services")) } }
            } @else {
                table.applications {
                    thead { tr {
                        th { (lang.t("编号", "No.")) }
                        th { (lang.t("服务", "Service")) }
                        th { (lang.t("提交时间", "Submitted")) }
                        th { (lang.t("进度", "Progress")) }
                    } }
                    tbody {
                        @for instance in &listed {
                            @let definition = state.workflows.definition(&instance.workflow).ok();
                            tr {
                                td { a href={ "/hall/applications/" (instance.id) } { (instance.id) } }
                                td { (definition.map_or(instance.workflow.as_str(), |d| label(lang, &d.title))) }
                                td { (instance.history.first().map(|h| beijing_time(h.at_ms)).unwrap_or_default()) }
                                td { (status_name(lang, instance, definition)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The session's own application `id`, or nothing (another's is as absent as none).
fn own_application(state: &AppState, holder: &Holder, id: &str) -> Option<Instance> {
    let id = id.parse().ok()?;
    let instance = state.workflows.instance(id).ok()?;
    (instance.applicant == applicant(holder.session.card_number)).then_some(instance)
}

/// An application's history, oldest first.
pub(super) fn history(lang: Lang, instance: &Instance) -> Markup {
    html! {
        ol.history {
            @for entry in &instance.history {
                li {
                    span.when { (beijing_time(entry.at_ms)) } " · "
                    span.who { (entry.actor) } " · "
                    span.what { (entry.action) " (" (entry.step) ")" }
                    @if let Some(rating) = entry.rating { " · " (lang.t("评分 ", "rating ")) (rating) "/5" }
                    @if !entry.comment.is_empty() { blockquote { (entry.comment) } }
                }
            }
        }
    }
}

/// An application's form, field by field, under the definition's labels.
pub(super) fn form_fields(
    lang: Lang,
    instance: &Instance,
    definition: Option<&Definition>,
) -> Markup {
    let labelled = |name: &str| {
        definition
            .and_then(|d| d.fields.iter().find(|f| f.name == name))
            .map_or_else(|| name.to_owned(), |f| label(lang, &f.label).to_owned())
    };
    let shown = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    html! {
        dl.card {
            @if let Some(form) = instance.form.as_object() {
                @for (name, value) in form {
                    dt { (labelled(name)) } dd { (shown(value)) }
                }
            }
        }
    }
}

async fn application(
    State(state): State<AppState>,
    holder: Holder,
    Path(id): Path<String>,
) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let Some(instance) = own_application(&state, &holder, &id) else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("没有这份申请。", "No such application."),
        );
    };
    let definition = state.workflows.definition(&instance.workflow).ok();
    let awaiting_me = instance.status == Status::Open
        && definition
            .and_then(|d| d.steps.get(instance.step))
            .is_some_and(|step| step.role == onecard_engine::workflow::APPLICANT);
    page(
        lang,
        &format!("{} {}", lang.t("申请", "Application"), instance.id),
        Some(holder.nav()),
        html! {
            p #progress { (status_name(lang, &instance, definition)) }
            (form_fields(lang, &instance, definition))
            @if awaiting_me {
                form.card method="post" action={ "/hall/applications/" (instance.id) "/confirm" } {
                    input type="hidden" name="forgery" value=(forgery_token(&holder.token));
                    p { (lang.t("已处理完毕，请确认并评价。", "It has been handled: confirm it and rate the service.")) }
                    label { (lang.t("评分（1–5）", "Rating (1–5)"))
                        select name="rating" required {
                            @for n in (1..=5).rev() { option value=(n) { (n) } }
                        }
                    }
                    label { (lang.t("评价", "Comment"))
                        textarea name="comment" rows="3" {} }
                    button #confirm type="submit" { (lang.t("确认办结", "Confirm")) }
                }
            }
            h2 { (lang.t("办理记录", "History")) }
            (history(lang, &instance))
        },
    )
}

#[derive(Debug, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    forgery: String,
    #[serde(default)]
    rating: String,
    #[serde(default)]
    comment: String,
}

async fn confirm(
    State(state): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    holder: Holder,
    Path(id): Path<String>,
    Form(form): Form<ConfirmForm>,
) -> Response {
    let lang = holder.lang;
    if !holder.forgery_ok(&form.forgery) || holder.session.must_change {
        return super::forged(lang);
    }
    let Some(instance) = own_application(&state, &holder, &id) else {
        return refusal(
            lang,
            StatusCode::NOT_FOUND,
            lang.t("没有这份申请。", "No such application."),
        );
    };
    let Some(rating) = form.rating.parse::<u8>().ok().filter(|r| (1..=5).contains(r)) else {
        return refusal(
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("评分是 1 到 5。", "A rating is 1 to 5."),
        );
    };
    let workflows = state.workflows.clone();
    let who = actor(&holder, from);
    let acted = tokio::task::spawn_blocking(move || {
        workflows.act(&who, instance.id, Action::Approve, &form.comment, None, Some(rating))
    })
    .await;
    match acted {
        Ok(Ok(instance)) => {
            holder.audit(
                &state,
                from,
                "hall.confirm",
                Outcome::Ok,
                &format!("application {} rated {rating}", instance.id),
            );
            see_other(&format!("/hall/applications/{}", instance.id), &[])
        }
        Ok(Err(error)) => {
            holder.audit(&state, from, "hall.confirm", Outcome::Refused, &error.to_string());
            refusal(lang, StatusCode::CONFLICT, &error.to_string())
        }
        Err(_) => not_now(lang),
    }
}

/// Notices shown on one page at most.
pub(super) const NOTICES_SHOWN: usize = 30;

/// A notice in words, linking to its application at `base` (`/hall/applications`).
pub(super) fn notice_list(lang: Lang, notices: &[Notice], base: &str) -> Markup {
    let said = |notice: &Notice| -> String {
        let title = label(lang, &notice.title);
        match notice.kind {
            NoticeKind::Progressed => {
                format!("{title}{}{}", lang.t(" 已到达：", " reached "), notice.step)
            }
            NoticeKind::YourTurn => format!(
                "{title}{}",
                lang.t(" 已处理完毕，请您确认", " is handled: please confirm it")
            ),
            NoticeKind::Waiting => {
                format!("{title}{}{}", lang.t(" 待办理：", " waits for you at "), notice.step)
            }
            NoticeKind::Returned => {
                format!("{title}{}", lang.t(" 已退回，请补充", " was returned for changes"))
            }
            NoticeKind::Rejected => format!("{title}{}", lang.t(" 未通过", " was rejected")),
            NoticeKind::Completed => format!("{title}{}", lang.t(" 已办结", " is done")),
        }
    };
    html! {
        @if notices.is_empty() {
            p { (lang.t("没有消息。", "No notices.")) }
        } @else {
            ul.notices {
                @for notice in notices {
                    li {
                        span.when { (beijing_time(notice.at_ms)) } " · "
                        a href={ (base) "/" (notice.application) } { (said(notice)) }
                    }
                }
            }
        }
    }
}

async fn notices(State(state): State<AppState>, holder: Holder) -> Response {
    if holder.session.must_change {
        return see_other("/hall/password", &[]);
    }
    let lang = holder.lang;
    let mine = [applicant(holder.session.card_number)];
    let Ok(notices) = state.workflows.notices_for(&mine, NOTICES_SHOWN) else {
        return refusal(
            lang,
            StatusCode::SERVICE_UNAVAILABLE,
            lang.t("暂时无法读取。", "Not readable now."),
        );
    };
    page(
        lang,
        lang.t("消息", "Notices"),
        Some(holder.nav()),
        notice_list(lang, &notices, "/hall/applications"),
    )
}
