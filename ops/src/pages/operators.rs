//! The console's operators, for an admin: every operator with their role and state;
//! a new operator, enabling, disabling, unlocking and a password reset. A first or
//! reset password is made here and shown once, to hand over; its holder must change
//! it at their first login.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::html;
use serde::Deserialize;

use super::console::Operator;
use super::{ForgeryOnly, Lang, beijing_time, forged, forgery_token, page, refusal, see_other};
use crate::api::{AppState, Permission, create_operator_as, operator_action_as, reset_password_as};
use crate::operators::{ROLES, random_password};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/operators", get(operators).post(create))
        .route("/console/operators/{name}/{action}", post(operator_action))
}

async fn operators(State(state): State<AppState>, operator: Operator) -> Response {
    let lang = operator.lang;
    if let Err(error) = operator.caller.require(&state, Permission::OperatorsWrite) {
        return operator.error(&error);
    }
    let listed = state.operators.list().unwrap_or_default();
    let now = onecard_engine::date::now_ms();
    let forgery = forgery_token(&operator.token);
    page(
        lang,
        lang.t("操作员", "Operators"),
        Some(operator.nav()),
        html! {
            table.operators {
                thead { tr {
                    th { (lang.t("名称", "Name")) }
                    th { (lang.t("角色", "Role")) }
                    th { (lang.t("状态", "State")) }
                    th { (lang.t("密码修改于", "Password set")) }
                    th {}
                } }
                tbody {
                    @for record in &listed {
                        @let locked = record.locked_until_ms > now;
                        tr {
                            td.name { (record.name) }
                            td { (record.role.as_str()) }
                            td {
                                @if record.disabled { (lang.t("已停用", "disabled")) }
                                @else if locked { (lang.t("已锁定", "locked")) }
                                @else if record.must_change_password { (lang.t("须改密码", "must change password")) }
                                @else { (lang.t("正常", "active")) }
                            }
                            td { (beijing_time(record.password_changed_at_ms)) }
                            td {
                                @if record.name != operator.caller.operator {
                                    @let toggle = if record.disabled { ("enable", "启用", "Enable") } else { ("disable", "停用", "Disable") };
                                    @for (action, zh, en) in [Some(toggle), locked.then_some(("unlock", "解锁", "Unlock")), Some(("reset-password", "重置密码", "Reset password"))].into_iter().flatten() {
                                        form.inline method="post" action={ "/console/operators/" (record.name) "/" (action) } {
                                            input type="hidden" name="forgery" value=(forgery);
                                            button id={ (action) "-" (record.name) } type="submit" { (lang.t(zh, en)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { (lang.t("新操作员", "New operator")) }
            form.card method="post" action="/console/operators" {
                input type="hidden" name="forgery" value=(forgery);
                label { (lang.t("登录名", "Login name")) input #operator-name name="name" required maxlength="64"; }
                label { (lang.t("角色", "Role"))
                    select #operator-role name="role" {
                        @for role in ROLES { option value=(role.as_str()) { (role_name(lang, role.as_str())) } }
                    }
                }
                button #create-operator type="submit" { (lang.t("创建", "Create")) }
            }
        },
    )
}

fn role_name(lang: Lang, role: &str) -> &'static str {
    match role {
        "admin" => lang.t("系统管理员", "Admin"),
        "clerk" => lang.t("卡务柜员", "Clerk"),
        "finance" => lang.t("财务", "Finance"),
        "auditor" => lang.t("审计", "Auditor"),
        _ => lang.t("部门负责人", "Department head"),
    }
}

/// The page that shows a first or reset password, this once.
fn handed_over(operator: &Operator, name: &str, password: &str) -> Response {
    let lang = operator.lang;
    page(
        lang,
        &format!("{} {name}", lang.t("操作员初始密码：", "First password of")),
        Some(operator.nav()),
        html! {
            p.notice { (lang.t(
                "密码只显示这一次：请当面交给本人。本人首次登录时必须修改。",
                "The password is shown this once: hand it to its holder in person. They must change it at their first login."
            )) }
            p { code #first-password { (password) } }
            p { a href="/console/operators" { (lang.t("返回操作员列表", "Back to the operators")) } }
        },
    )
}

fn no_password(lang: Lang) -> Response {
    refusal(
        lang,
        StatusCode::SERVICE_UNAVAILABLE,
        lang.t("暂时无法生成密码。", "No password can be made now."),
    )
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    #[serde(default)]
    forgery: String,
    name: String,
    role: String,
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
    let Some(role) = ROLES.into_iter().find(|r| r.as_str() == form.role) else {
        return refusal(
            lang,
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("没有这个角色。", "No such role."),
        );
    };
    let Ok(password) = random_password() else { return no_password(lang) };
    let name = form.name.trim().to_owned();
    match create_operator_as(&state, &operator.caller, name.clone(), role, password.clone()).await {
        Ok(_) => handed_over(&operator, &name, &password),
        Err(error) => operator.error(&error),
    }
}

async fn operator_action(
    State(state): State<AppState>,
    operator: Operator,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ForgeryOnly>,
) -> Response {
    let lang = operator.lang;
    if !operator.forgery_ok(&form.forgery) {
        return forged(lang);
    }
    if action == "reset-password" {
        let Ok(password) = random_password() else { return no_password(lang) };
        return match reset_password_as(&state, &operator.caller, &name, password.clone()).await {
            Ok(_) => handed_over(&operator, &name, &password),
            Err(error) => operator.error(&error),
        };
    }
    match operator_action_as(&state, &operator.caller, &name, &action) {
        Ok(_) => see_other("/console/operators", &[]),
        Err(error) => operator.error(&error),
    }
}
