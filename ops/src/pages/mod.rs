//! Web pages on the admin port: the card centre's console (`/console/`) for
//! operators, and the online service hall (`/hall/`) for cardholders. docs/CONSOLE.md
//! describes every page.
//!
//! Server-rendered HTML from Rust templates (maud), no JavaScript, one stylesheet
//! embedded in the binary. Each page calls the same engine operations as the JSON API
//! does; nothing here decides a rule of its own.
//!
//! # Security
//! - Sessions are cookies, `HttpOnly; SameSite=Strict; Path=/`: `onecard_console`
//!   holds an operator's token (the API's, so the API's rules hold: lockout, expiry,
//!   forced change, roles), `onecard_hall` a cardholder's. Neither reaches the other's
//!   pages. The admin port speaks plain HTTP; where it is put behind TLS, the proxy
//!   adds `Secure`.
//! - Every form that changes anything carries an anti-forgery token: for a session,
//!   a hash of the session's own token (which a page on another site cannot read);
//!   for a login form, a random value also set as a cookie (double submit). A form
//!   without it, or with another's, is refused 403.
//! - Every page is sent with a Content-Security-Policy that allows nothing but this
//!   origin's stylesheet and forms, `X-Frame-Options: DENY`, `no-store`, and no page
//!   ever shows a password hash or a token; a new terminal key or a first password
//!   is shown once, on the page that made it.
//!
//! # Layout
//! - `mod.rs` — the router, the page frame, languages, cookies, forgery tokens.
//! - `hall.rs` — the service hall: login, first password, my card, report lost.
//! - `services.rs` — the hall's services: apply, my applications, confirm and rate.
//! - `console.rs` — the console: sign-in, cards (search, detail, state changes), the
//!   inbox and applications, notices.
//! - `day.rs` — the console's business day: the cutover, settling a date, the
//!   settlements with their figures and files, reconciliation reports.
//! - `merchants.rs` — the console's merchants: create, enable, disable, commission.
//! - `terminals.rs` — the console's terminals: the attention list, enable, disable,
//!   a new key shown once.
//! - `audit.rs` — the console's audit search.
//! - `operators.rs` — the console's operators (admin): create, enable, disable,
//!   unlock, a password reset; a first password shown once.
//! - `backups.rs` — the console's backups: the list, the last outcome, one taken now.
//! - `style.css` — the one stylesheet.

mod audit;
mod backups;
mod console;
mod day;
mod hall;
mod merchants;
mod operators;
mod services;
mod terminals;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::AppState;

/// The page stylesheet, embedded.
const STYLE: &str = include_str!("style.css");

/// The policy every page is sent with: this origin's stylesheet and forms, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The cookie of a login form's anti-forgery value.
const LOGIN_FORGERY_COOKIE: &str = "onecard_login";

/// The routes of both sites, to merge into the admin port's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(landing))
        .route("/assets/style.css", get(style))
        .route("/lang/{lang}", get(switch_lang))
        .merge(hall::routes())
        .merge(services::routes())
        .merge(console::routes())
        .merge(day::routes())
        .merge(merchants::routes())
        .merge(backups::routes())
        .merge(operators::routes())
        .merge(terminals::routes())
        .merge(audit::routes())
        .layer(axum::middleware::from_fn(page_headers))
}

/// The headers every page carries.
async fn page_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.entry(header::CACHE_CONTROL).or_insert_with(|| HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

async fn landing(headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    page(
        lang,
        lang.t("校园一卡通", "Campus card"),
        None,
        html! {
            ul.choices {
                li { a href="/hall/" { (lang.t("网上办事大厅（持卡人）", "Online service hall (cardholders)")) } }
                li { a href="/console/" { (lang.t("卡务中心控制台（工作人员）", "Card centre console (staff)")) } }
            }
        },
    )
}

/// The language of a page: Chinese unless the `lang` cookie says English.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 中文, the default.
    Zh,
    /// English.
    En,
}

impl Lang {
    fn of(headers: &HeaderMap) -> Self {
        if cookie(headers, "onecard_lang").as_deref() == Some("en") { Self::En } else { Self::Zh }
    }

    /// `zh` or `en`, as the page's language is.
    const fn t(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            Self::Zh => zh,
            Self::En => en,
        }
    }

    const fn code(self) -> &'static str {
        match self {
            Self::Zh => "zh-CN",
            Self::En => "en",
        }
    }
}

/// A whole page: the frame around `body`, with `nav` (the site's links and its
/// sign-out form) when someone is signed in.
fn page(lang: Lang, title: &str, nav: Option<Markup>, body: Markup) -> Response {
    let other = match lang {
        Lang::Zh => ("en", "English"),
        Lang::En => ("zh", "中文"),
    };
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · onecard" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header {
                    span.brand { "onecard" }
                    @if let Some(nav) = nav { nav { (nav) } }
                    a.lang href={ "/lang/" (other.0) } { (other.1) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// A page that says why something was refused, with the status.
fn refusal(lang: Lang, status: StatusCode, message: &str) -> Response {
    let mut response = page(
        lang,
        lang.t("无法完成", "Not done"),
        None,
        html! { p.error { (message) } p { a href="/" { (lang.t("返回首页", "Back to the start")) } } },
    );
    *response.status_mut() = status;
    response
}

/// The page for work that could not run now (the blocking pool refused it, or it
/// panicked): nothing was done, and the operator may try again.
fn not_now(lang: Lang) -> Response {
    refusal(lang, StatusCode::SERVICE_UNAVAILABLE, lang.t("暂时无法办理。", "Not possible now."))
}

/// The value of cookie `name` in the request's headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` value for a session cookie: HttpOnly, SameSite=Strict, the whole
/// site; `value` empty clears it.
fn set_cookie(name: &str, value: &str) -> HeaderValue {
    let max_age = if value.is_empty() { "; Max-Age=0" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("onecard_invalid=; Max-Age=0"))
}

/// The anti-forgery token of a session: a hash of the session's token, which only
/// a page of this site (sent the cookie) can know.
fn forgery_token(session_token: &str) -> String {
    let digest = Sha256::digest(format!("onecard forms {session_token}").as_bytes());
    hex::encode(&digest[..16])
}

/// Whether a form's `given` anti-forgery token is `expected`.
fn forgery_checks(given: &str, expected: &str) -> bool {
    !expected.is_empty() && given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A form that carries nothing but its anti-forgery token (a button).
#[derive(Debug, serde::Deserialize)]
struct ForgeryOnly {
    #[serde(default)]
    forgery: String,
}

/// The answer to a form whose anti-forgery token did not check out.
fn forged(lang: Lang) -> Response {
    refusal(
        lang,
        StatusCode::FORBIDDEN,
        lang.t(
            "表单校验失败（可能来自其他网站），未执行任何操作。",
            "The form did not check out (it may come from another site); nothing was done.",
        ),
    )
}

/// A sign-in page titled `title`: `fields` (the name and password inputs) in a form
/// posted to `action` with its anti-forgery value and a `submit` button, `error`
/// above it and `hint` below.
fn sign_in_page(
    headers: &HeaderMap,
    (title, action, submit): (&str, &str, &str),
    fields: Markup,
    hint: Option<&str>,
    (error, status): (Option<&str>, StatusCode),
) -> Response {
    let lang = Lang::of(headers);
    let (forgery, cookie) = login_forgery(headers);
    let mut response = page(
        lang,
        title,
        None,
        html! {
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action=(action) {
                input type="hidden" name="forgery" value=(forgery);
                (fields)
                button type="submit" { (submit) }
            }
            @if let Some(hint) = hint { p.hint { (hint) } }
        },
    );
    *response.status_mut() = status;
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The rejection of a page that needs a session it does not have: a 303 to the
/// site's sign-in page.
struct SignInFirst(&'static str);

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        see_other(self.0, &[])
    }
}

/// A login form's anti-forgery value: the one already in the browser's cookie, or a
/// new one (and the cookie that carries it).
fn login_forgery(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(value) = cookie(headers, LOGIN_FORGERY_COOKIE).filter(|v| v.len() == 32) {
        return (value, None);
    }
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        return (String::new(), None);
    }
    let value = hex::encode(bytes);
    let header = set_cookie(LOGIN_FORGERY_COOKIE, &value);
    (value, Some(header))
}

/// Whether a login form's anti-forgery value matches its cookie.
fn login_forgery_checks(headers: &HeaderMap, given: &str) -> bool {
    cookie(headers, LOGIN_FORGERY_COOKIE).is_some_and(|expected| forgery_checks(given, &expected))
}

/// A 303 to `to`, setting `cookies`.
fn see_other(to: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = Redirect::to(to).into_response();
    for value in cookies {
        response.headers_mut().append(header::SET_COOKIE, value.clone());
    }
    response
}

/// Fen as yuan, `12.50`.
fn yuan(fen: i64) -> String {
    crate::api::money::yuan(fen)
}

/// A `yyyymmdd` date as `2027-07-31`.
fn date(yyyymmdd: u32) -> String {
    onecard_engine::BusinessDate::from_yyyymmdd(yyyymmdd)
        .map_or_else(|| yyyymmdd.to_string(), |date| date.to_string())
}

/// Milliseconds since the epoch as Beijing time, `2026-12-07 12:05`.
fn beijing_time(ms: u64) -> String {
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX).saturating_add(8 * 3600);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let date = onecard_engine::date::BusinessDate::from_unix_days(days);
    format!("{date} {:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
}

/// `GET /lang/{zh|en}`: sets the language cookie and goes back to the start.
async fn switch_lang(axum::extract::Path(lang): axum::extract::Path<String>) -> Response {
    let value = if lang == "en" { "en" } else { "zh" };
    let cookie = HeaderValue::from_str(&format!("onecard_lang={value}; Path=/; SameSite=Lax"))
        .unwrap_or_else(|_| HeaderValue::from_static("onecard_lang=zh; Path=/"));
    see_other("/", &[cookie])
}
