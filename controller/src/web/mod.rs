//! The web dashboard (DESIGN.md "Server"), served by `slipctl serve` at `/`: server-rendered
//! HTML from compiled templates (`maud`: the markup is Rust, checked by the compiler, with no
//! template files and no build step outside cargo), one stylesheet and one small script built
//! into the binary. Every page reads and works without JavaScript (actions are plain forms);
//! the script adds live updates from Server-Sent Events (fragments rendered here, so markup is
//! made in one place) and shows times in the viewer's zone. Access goes through the same
//! authorization middleware as the API (`auth::is_page`: a visitor not logged in is sent to
//! `/login`, forms carry the session's CSRF token as `csrf_token`, refusals are HTML).
//!
//! Split by job: `dashboard` (the grid), `ticket` (new ticket with the ref picker, the ticket
//! page and its actions), `panes` (a deploy's journal as one pane per host), `project` (hosts,
//! releases, 检测 check, rollback with confirmation), `lists` (history, agents, users and
//! grants), `live` (the event streams), `i18n` (English and Chinese).

mod dashboard;
mod form;
pub mod i18n;
mod lists;
mod live;
mod panes;
mod project;
mod ticket;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Router, routing};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::server::App;
use crate::server::auth::{Caller, Via};
use crate::server::error::{ApiError, ApiResult};
use crate::server::listen::Peer;
use i18n::Lang;

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("live.js");

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", routing::get(dashboard::page))
        .route("/live/dashboard", routing::get(dashboard::live))
        .route("/login", routing::get(login_page).post(login))
        .route("/logout", routing::post(logout))
        .route("/lang/{lang}", routing::get(switch_lang))
        .route("/projects/{p}/envs/{e}", routing::get(project::page))
        .route("/projects/{p}/envs/{e}/check", routing::post(project::check))
        .route("/projects/{p}/envs/{e}/rollback", routing::post(project::rollback))
        .route("/projects/{p}/envs/{e}/freezes", routing::post(project::freeze))
        .route("/projects/{p}/envs/{e}/maintenance", routing::post(project::maintenance))
        .route("/projects/{p}/envs/{e}/freezes/{id}/lift", routing::post(project::lift))
        .route("/projects/{p}/envs/{e}/tickets/new", routing::get(ticket::new_page))
        .route("/projects/{p}/envs/{e}/tickets", routing::post(ticket::create))
        .route("/tickets/{id}", routing::get(ticket::page))
        .route("/tickets/{id}/live", routing::get(ticket::live))
        .route("/tickets/{id}/approve", routing::post(ticket::approve))
        .route("/tickets/{id}/reject", routing::post(ticket::reject))
        .route("/tickets/{id}/deploy", routing::post(ticket::deploy))
        .route("/tickets/{id}/cancel", routing::post(ticket::cancel))
        .route("/tickets/{id}/rollback", routing::post(ticket::rollback))
        .route("/deploys/{id}", routing::get(panes::deploy_page))
        .route("/deploys/{id}/live", routing::get(panes::live))
        .route("/deploys/{id}/promote", routing::post(panes::promote))
        .route("/deploys/{id}/abort", routing::post(panes::abort))
        .route("/history", routing::get(lists::history))
        .route("/agents", routing::get(lists::agents))
        .route("/agents/token", routing::post(lists::join_token))
        .route("/agents/evict", routing::post(lists::evict))
        .route("/users", routing::get(lists::users))
        .route("/users/grant", routing::post(lists::grant))
        .route("/users/revoke", routing::post(lists::revoke))
        .route("/users/add", routing::post(lists::add_user))
        .route("/users/remove", routing::post(lists::remove_user))
        .route("/users/password", routing::post(lists::reset_password))
        .route("/account", routing::get(lists::account))
        .route("/projects/new", routing::get(form::new_page).post(form::create))
        .route("/projects/{p}/edit", routing::get(form::edit_page).post(form::edit))
        .route("/projects/{p}/revisions/{n}", routing::get(form::revision_page))
        .route("/projects/{p}/revert", routing::post(form::revert))
        .route("/account/password", routing::post(lists::change_password))
        .route("/assets/app.css", routing::get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route(
            "/assets/live.js",
            routing::get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }),
        )
}

/// Who is looking at a page, in which language.
#[derive(Clone)]
pub struct Viewer {
    pub lang: Lang,
    pub caller: Caller,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let caller =
            parts.extensions.get::<Caller>().cloned().ok_or_else(|| ApiError::unauthorized("not logged in"))?;
        Ok(Viewer { lang: Lang::of(&parts.headers), caller })
    }
}

impl Viewer {
    pub fn t(&self, key: &str) -> &'static str {
        self.lang.t(key)
    }

    /// A whole page around `body`.
    pub fn page(&self, title: &str, body: Markup) -> Response {
        page(self.lang, title, Some(&self.caller), body).into_response()
    }

    /// `error` shown as a page (its status kept).
    pub fn fail(&self, error: impl Into<ApiError>) -> Shown {
        Shown(Box::new(error_page(self.lang, Some(&self.caller), &error.into())))
    }

    /// The session's CSRF token, for forms.
    pub fn csrf(&self) -> String {
        match &self.caller.via {
            Via::Session { csrf, .. } => csrf.clone(),
            _ => String::new(),
        }
    }

    /// A form that posts to `action` with the CSRF token, `fields` and one submit button.
    pub fn button(&self, action: &str, label: &str, class: &str, fields: Markup) -> Markup {
        html! {
            form.action method="post" action=(action) {
                input type="hidden" name="csrf_token" value=(self.csrf());
                (fields)
                button type="submit" class=(class) { (label) }
            }
        }
    }
}

/// A page that could not be shown: the error page, as the response (boxed: it travels in
/// every page handler's `Err`).
pub struct Shown(Box<Response>);

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        *self.0
    }
}

pub type PageResult = Result<Response, Shown>;

/// `?` on store and engine results inside a page handler: the error shown as a page.
pub trait OrShow<T> {
    fn or_show(self, v: &Viewer) -> Result<T, Shown>;
}

impl<T, E: Into<ApiError>> OrShow<T> for Result<T, E> {
    fn or_show(self, v: &Viewer) -> Result<T, Shown> {
        self.map_err(|e| v.fail(e))
    }
}

/// An error as a page: what went wrong and the fix, with the error's status.
/// A page the authorization refused, presented to the browser: one not logged in goes to the
/// login page; any other refusal says why in HTML, in the viewer's language. The API's
/// refusals pass as they are.
pub async fn present_refusals(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let page =
        req.extensions().get::<axum::extract::MatchedPath>().is_some_and(|m| crate::server::auth::is_page(m.as_str()));
    let lang = Lang::of(req.headers());
    let response = next.run(req).await;
    match response.extensions().get::<crate::server::auth::Refused>() {
        Some(r) if page && r.status == axum::http::StatusCode::UNAUTHORIZED => Redirect::to("/login").into_response(),
        Some(r) if page => {
            let e = ApiError::new(r.status, r.error.clone(), r.fix.clone());
            error_page(lang, None, &e)
        }
        _ => response,
    }
}

pub fn error_page(lang: Lang, caller: Option<&Caller>, e: &ApiError) -> Response {
    let body = html! {
        section.panel.problem role="alert" {
            h1 { (lang.t("problem")) " " span.muted { (e.status.as_u16()) } }
            p.error { (e.error) }
            @if !e.fix.is_empty() { p { strong { (lang.t("fix")) } " " (e.fix) } }
            p { a href="/" { "← " (lang.t("dashboard")) } }
        }
    };
    (e.status, page(lang, lang.t("problem"), caller, body)).into_response()
}

/// A time as the server knows it (UTC), turned into the viewer's zone by the script.
pub fn when(secs: i64) -> Markup {
    let text = slipway_common::time::format_utc(secs);
    html! { time datetime=(text.replace(' ', "T")) data-ts=(secs) { (text) } }
}

/// The label key of a deploy record's kind.
pub fn kind_key(d: &crate::state::store::DeployRecord) -> &'static str {
    if d.kind == crate::state::store::DeployKind::Rollback { "rollback" } else { "deploy" }
}

/// A link to ticket `id`, read as one (`ticket #5`, `上线单 #5`): ticket and deploy numbers
/// are counted apart and often stand side by side.
pub fn ticket_link(lang: Lang, id: impl std::fmt::Display) -> Markup {
    html! { a.ticket-no href={ "/tickets/" (id) } { (lang.t("ticket_no")) (id) } }
}

/// A link to deploy `id` (`deploy #3`, `部署 #3`).
pub fn deploy_link(lang: Lang, id: impl std::fmt::Display) -> Markup {
    html! { a.deploy-no href={ "/deploys/" (id) } { (lang.t("deploy_no")) (id) } }
}

/// The first 7 characters of a commit.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// The page around every view: header with the product, navigation, the caller and the
/// language switch.
fn page(lang: Lang, title: &str, caller: Option<&Caller>, body: Markup) -> Markup {
    let csrf = caller.and_then(|c| match &c.via {
        Via::Session { csrf, .. } => Some(csrf.clone()),
        _ => None,
    });
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(token) = &csrf { meta name="csrf-token" content=(token); }
                title { (title) " · " (lang.t("title")) }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/live.js" defer {}
            }
            body {
                a.skip href="#main" { (lang.t("skip")) }
                header.top {
                    a.brand href="/" { "Slipway" }
                    nav aria-label=(lang.t("nav")) {
                        @if let Some(c) = caller {
                            a href="/" { (lang.t("dashboard")) }
                            a href="/history" { (lang.t("history")) }
                            a href="/agents" { (lang.t("agents")) }
                            @if c.admin { a href="/users" { (lang.t("users")) } }
                        }
                    }
                    div.who {
                        a.lang href={ "/lang/" (if lang == Lang::Zh { "en" } else { "zh" }) } { (lang.t("switch")) }
                        @if let Some(c) = caller {
                            span { (lang.t("signed_in")) " " a href="/account" { strong { (c.name) } } }
                            @if let Some(token) = &csrf {
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf_token" value=(token);
                                    button type="submit" { (lang.t("logout")) }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Markup {
    login_view(&app, Lang::of(&headers), None)
}

fn login_view(app: &App, lang: Lang, error: Option<&str>) -> Markup {
    let company = app.sign_in.oidc.as_ref().map(|p| p.config.label.as_str());
    page(
        lang,
        lang.t("login"),
        None,
        html! {
            section.login {
                h1 { (lang.t("login")) }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/login" {
                    label for="user" { (lang.t("user")) }
                    input #user name="user" type="text" autocomplete="username" required autofocus;
                    label for="password" { (lang.t("password")) }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { (lang.t("login")) }
                }
                @if let Some(label) = company {
                    p.sso { a.button #sso href="/login/oidc" { (lang.t("sso")) " " (label) } }
                }
            }
        },
    )
}

async fn login(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = Lang::of(&headers);
    if let Err(e) = crate::server::login::same_origin(&headers, &app.public_url) {
        return (e.status, login_view(&app, lang, Some(&e.error))).into_response();
    }
    match crate::server::sign_in::open_session(&app, &form.user, &form.password, &peer).await {
        Ok((_, _, cookie)) => {
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            r
        }
        Err(e) if e.status == axum::http::StatusCode::UNAUTHORIZED => {
            (axum::http::StatusCode::UNAUTHORIZED, login_view(&app, lang, Some(lang.t("wrong")))).into_response()
        }
        Err(e) => {
            let mut r = (e.status, login_view(&app, lang, Some(&format!("{}: {}", e.error, e.fix)))).into_response();
            if let Some(secs) = e.retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
    }
}

async fn logout(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    if let Via::Session { digest, .. } = &caller.via {
        app.store.remove_session(digest)?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("slipway_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(r)
}

async fn switch_lang(Path(lang): Path<String>, headers: HeaderMap) -> Response {
    let code = if lang == "zh" { "zh" } else { "en" };
    let back = back_to(headers.get(header::REFERER).and_then(|v| v.to_str().ok()));
    let mut r = Redirect::to(back).into_response();
    let cookie = format!("lang={code}; Path=/; SameSite=Strict; Max-Age=31536000");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ascii"));
    r
}

/// Where the language switch returns to: the path of the page it was pressed on, on this
/// server only (a path that would leave it, like `//elsewhere`, goes to the dashboard). A path
/// with a control character is refused too: browsers drop tabs and newlines from a URL, so
/// `/\t/evil.example` would be `//evil.example` to them.
pub fn back_to(referer: Option<&str>) -> &str {
    let path = referer.map(|r| match r.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => r,
    });
    path.filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.chars().any(char::is_control))
        .unwrap_or("/")
}

/// A status word as shown: translated, and marked with its class (colour) and a symbol, so it
/// is never told by colour alone.
pub fn status(lang: Lang, word: &str) -> Markup {
    let (class, mark) = match word {
        "succeeded" | "approved" | "live" | "passed" | "ok" | "reachable" | "yes" => ("ok", "✓"),
        "failed" | "incomplete" | "rejected" | "aborted" | "unreachable" => ("bad", "✗"),
        "running" | "deploying" | "paused" | "pending" | "connecting" | "uploading" | "staged" | "hooks" => {
            ("busy", "…")
        }
        _ => ("muted", "•"),
    };
    let label = if word == "running" { lang.t("in_progress") } else { lang.t(word) };
    html! { span class={ "status " (class) } { span aria-hidden="true" { (mark) } " " (if label == "?" { word } else { label }) } }
}

#[cfg(test)]
mod tests {
    use super::back_to;

    #[test]
    fn the_language_switch_returns_to_this_server_only() {
        assert_eq!(back_to(Some("http://ops.example:8080/tickets/7?x=1")), "/tickets/7?x=1");
        assert_eq!(back_to(Some("https://ops.example")), "/");
        assert_eq!(back_to(Some("http://ops.example//evil.example/x")), "/");
        assert_eq!(back_to(Some("/\\evil.example")), "/");
        assert_eq!(back_to(Some("javascript:alert(1)")), "/");
        assert_eq!(back_to(None), "/");
        assert_eq!(back_to(Some("/\t/evil.example")), "/", "a tab is dropped by browsers: //evil.example");
        assert_eq!(back_to(Some("http://ops.example/\n/evil.example")), "/");
    }
}
