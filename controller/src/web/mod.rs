//! The web dashboard (DESIGN.md "Server"), served by `slipctl serve` at `/`: server-rendered
//! HTML from compiled templates (`maud`: the markup is Rust, checked by the compiler, with no
//! template files and no build step outside cargo), one stylesheet built into the binary, and
//! no JavaScript needed to read a page. Access goes through the same authorization middleware as
//! the API (`Need::Page`: a visitor not logged in is sent to `/login`).
//!
//! This first slice: log in and out, the projects × envs dashboard, English and Chinese.

pub mod i18n;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form, Router, routing};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::server::App;
use crate::server::auth::{Caller, Via};
use crate::server::error::ApiResult;
use crate::server::listen::Peer;
use i18n::Lang;

const CSS: &str = include_str!("app.css");

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", routing::get(dashboard))
        .route("/login", routing::get(login_page).post(login))
        .route("/logout", routing::post(logout))
        .route("/lang/{lang}", routing::get(switch_lang))
        .route("/assets/app.css", routing::get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
}

/// The page around every view: header with the product, the caller and the language switch.
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
            }
            body {
                header.top {
                    a.brand href="/" { "Slipway" }
                    nav {
                        @if caller.is_some() { a href="/" { (lang.t("dashboard")) } }
                    }
                    div.who {
                        a.lang href={ "/lang/" (if lang == Lang::Zh { "en" } else { "zh" }) } { (lang.t("switch")) }
                        @if let Some(c) = caller {
                            span { (lang.t("signed_in")) " " strong { (c.name) } }
                            @if let Some(token) = &csrf {
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf_token" value=(token);
                                    button type="submit" { (lang.t("logout")) }
                                }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login_page(headers: HeaderMap) -> Markup {
    login_view(Lang::of(&headers), None)
}

fn login_view(lang: Lang, error: Option<&str>) -> Markup {
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
    match crate::server::api::open_session(&app, &form.user, &form.password, &peer) {
        Ok((_, _, cookie)) => {
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, cookie);
            r
        }
        Err(_) => (axum::http::StatusCode::UNAUTHORIZED, login_view(lang, Some(lang.t("wrong")))).into_response(),
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
/// server only (a path that would leave it, like `//elsewhere`, goes to the dashboard).
fn back_to(referer: Option<&str>) -> &str {
    let path = referer.map(|r| match r.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => r,
    });
    path.filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\')).unwrap_or("/")
}

/// A status word as shown: translated, and marked with its class (colour) and a symbol, so it
/// is never told by colour alone.
fn status(lang: Lang, word: &str) -> Markup {
    let (class, mark) = match word {
        "succeeded" | "approved" => ("ok", "✓"),
        "failed" | "incomplete" | "rejected" => ("bad", "✗"),
        "running" | "deploying" | "paused" | "pending" => ("busy", "…"),
        _ => ("muted", "•"),
    };
    let label = if word == "running" { lang.t("running") } else { lang.t(word) };
    html! { span class={ "status " (class) } { span aria-hidden="true" { (mark) } " " (if label == "?" { word } else { label }) } }
}

async fn dashboard(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Markup> {
    let lang = Lang::of(&headers);
    let cells = crate::server::api::dashboard_cells(&app, &caller)?;
    let body = html! {
        h1 { (lang.t("dashboard")) }
        @if cells.is_empty() { p.empty { (lang.t("no_projects")) } }
        div.grid {
            @for cell in &cells { (cell_view(lang, cell)) }
        }
    };
    Ok(page(lang, lang.t("dashboard"), Some(&caller), body))
}

fn cell_view(lang: Lang, cell: &Value) -> Markup {
    let releases = cell["releases"].as_object().cloned().unwrap_or_default();
    html! {
        article.cell data-project=(cell["project"].as_str().unwrap_or("")) data-env=(cell["env"].as_str().unwrap_or("")) {
            header {
                h2 { (cell["project"].as_str().unwrap_or("")) }
                span.env { (cell["env"].as_str().unwrap_or("")) }
            }
            dl {
                dt { (lang.t("release")) }
                dd.releases {
                    @if releases.is_empty() { span.muted { (lang.t("no_hosts")) } }
                    @for (release, n) in &releases {
                        div.release { strong { (n) } " " (lang.t("hosts_on")) " " code { (release) } }
                    }
                }
                @if let Some(r) = cell["running"].as_object() {
                    dt { (lang.t("running")) }
                    dd { "#" (r["id"]) " " (status(lang, r["status"].as_str().unwrap_or(""))) " " (r["done"]) "/" (r["hosts"]) }
                }
                @if let Some(d) = cell["last_deploy"].as_object() {
                    dt { (lang.t("last_deploy")) }
                    dd { "#" (d["id"]) " " (status(lang, d["status"].as_str().unwrap_or(""))) }
                }
                @if let Some(t) = cell["last_ticket"].as_object() {
                    dt { (lang.t("last_ticket")) }
                    dd { "#" (t["id"]) " " (t["title"].as_str().unwrap_or("")) " " (status(lang, t["state"].as_str().unwrap_or(""))) }
                }
            }
        }
    }
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
    }
}
