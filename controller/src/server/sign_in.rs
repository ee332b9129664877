//! Signing in over HTTP (SECURITY.md "Sign-in"): a name and password (`POST /api/v1/session`
//! and the login page) checked against the local user, or the company directory; and the
//! OpenID Connect flow (`GET /login/oidc` → the provider → `GET /login/oidc/callback`). Every
//! path goes through the failed-login budgets ([`super::login`]), ends in the audit trail, and
//! opens the same session.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router, routing};
use maud::{DOCTYPE, html};
use serde::Deserialize;

use super::App;
use super::auth::SESSION_COOKIE;
use super::error::{ApiError, ApiResult};
use super::listen::Peer;
use super::login::Refusal;
use crate::ops::sign_in::oidc::Refused;
use crate::ops::users::SESSION_SECS;
use crate::state::users::UserRecord;

/// The cookie that ties an OpenID Connect flow to the browser that started it.
const FLOW_COOKIE: &str = "slipway_oidc";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/login/oidc", routing::get(oidc_start))
        .route("/login/oidc/callback", routing::get(oidc_callback))
}

/// Check a name and password and open a session: the user, the session's CSRF token, and the
/// `Set-Cookie` value. A local user's password is checked here (unless company sign-in is
/// required and the user is not a break-glass one); any other name goes to the company
/// directory when there is one.
pub async fn open_session(
    app: &App,
    name: &str,
    password: &str,
    peer: &Peer,
) -> ApiResult<(UserRecord, String, HeaderValue)> {
    let found = app.store.user(name)?;
    let local = found.as_ref().is_some_and(|u| u.company.is_none());
    let (user, via) = if !local && app.sign_in.config.ldap.is_some() {
        (directory(app, name, password, peer).await?, "ldap")
    } else {
        let exists = local;
        // The same work and the same answer whether the user exists or not.
        let phc = found
            .as_ref()
            .filter(|_| exists)
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_phc().to_owned());
        if let Err(refusal) = app.logins.verify(name, exists, phc, password, peer).await {
            return Err(refused(app, name, peer, refusal, "wrong user or password"));
        }
        let Some(user) = found.filter(|_| exists) else {
            return Err(ApiError::unauthorized("wrong user or password"));
        };
        if !app.sign_in.local_password_allowed(&user.name) {
            let e = app.sign_in.local_refusal(&user.name);
            audit(app, &user.name, peer, "sign_in_failed", "refused", "local password: company sign-in required");
            return Err(e.into());
        }
        (user, "password")
    };
    let (csrf, cookie) = session(app, &user, peer, via)?;
    Ok((user, csrf, cookie))
}

/// The company directory's word on `name` and `password`, within the login budgets.
async fn directory(app: &App, name: &str, password: &str, peer: &Peer) -> ApiResult<UserRecord> {
    let Some(config) = &app.sign_in.config.ldap else { unreachable!("called with [sign_in.ldap] only") };
    if let Err(refusal) = app.logins.held(name, peer) {
        return Err(refused(app, name, peer, refusal, "throttled"));
    }
    let Ok(_permit) = app.logins.directory.try_acquire() else {
        return Err(refused(app, name, peer, Refusal::Busy, "busy"));
    };
    let account = match crate::ops::sign_in::ldap::check(config, &app.sign_in.home, name, password).await {
        Ok(account) => account,
        Err(e) => {
            tracing::warn!(error = %e, "company sign-in: the directory did not answer");
            return Err(ApiError::from(e).with_status(StatusCode::SERVICE_UNAVAILABLE));
        }
    };
    app.logins.outcome(name, peer, account.is_some());
    let Some(account) = account else {
        return Err(refused(app, name, peer, Refusal::Wrong, "wrong user or password (ldap)"));
    };
    admit(app, &account, peer)
}

/// The user a proven company account signs in as ([`crate::ops::sign_in::admit`]).
fn admit(app: &App, account: &crate::ops::sign_in::Account, peer: &Peer) -> ApiResult<UserRecord> {
    crate::ops::sign_in::admit(&app.store, &app.sign_in.config, account).map_err(|e| {
        let detail = format!("{}: {e}", account.via);
        audit(app, &account.name, peer, "sign_in_failed", "refused", &detail);
        app.metrics.login_failure("company");
        ApiError::from(e)
    })
}

/// Log, count and audit a refused sign-in; the API's answer to it.
fn refused(app: &App, name: &str, peer: &Peer, refusal: Refusal, detail: &str) -> ApiError {
    let shown = slipway_common::archive::clip(name, 64);
    // (A refusal before any check costs nothing and is only counted: a flood of them must
    // not flood the log too.)
    if refusal == Refusal::Wrong {
        tracing::warn!(user = %shown, from = %peer, "login failed: {detail}");
    } else {
        tracing::debug!(user = %shown, from = %peer, reason = refusal.word(), "login refused");
    }
    app.metrics.login_failure(refusal.word());
    // Every wrong password is on the audit trail; of the refusals a flood's budgets answer
    // before any check, one in a hundred (the metric counts them all).
    static THROTTLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let keep =
        refusal == Refusal::Wrong || THROTTLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(100);
    if keep {
        let detail = if refusal == Refusal::Wrong { detail } else { refusal.word() };
        audit(app, &shown, peer, "sign_in_failed", "refused", detail);
    }
    refusal.to_api()
}

fn audit(app: &App, who: &str, peer: &Peer, action: &str, outcome: &str, detail: &str) {
    let target = format!("user {who}");
    crate::ops::audit::record(&app.store, who, &peer.to_string(), action, &target, outcome, detail);
}

/// A new session for `user`, recorded; its CSRF token and cookie.
fn session(app: &App, user: &UserRecord, peer: &Peer, via: &str) -> ApiResult<(String, HeaderValue)> {
    let (id, csrf) = crate::ops::users::open_session(&app.store, &user.name, &peer.to_string())?;
    let detail = match &user.company {
        Some(c) => {
            format!("{via}; groups: {}; admin: {}; grants: {}", c.groups.join(" "), user.admin, user.grants.len())
        }
        None => via.to_owned(),
    };
    audit(app, &user.name, peer, "sign_in", "ok", &detail);
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}");
    Ok((csrf, HeaderValue::from_str(&cookie).expect("cookie is ASCII")))
}

/// An argon2id hash of a random password, checked when the user does not exist.
fn dummy_phc() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| super::auth::hash_password(&super::auth::random_hex()).unwrap_or_default())
}

fn callback_url(app: &App) -> String {
    format!("{}/login/oidc/callback", app.public_url)
}

/// `GET /login/oidc`: off to the provider, with a cookie that only this browser holds.
/// (A browser comes here: a problem is a page, not JSON.)
async fn oidc_start(State(app): State<Arc<App>>) -> Response {
    let Some(provider) = &app.sign_in.oidc else {
        return page(StatusCode::NOT_FOUND, "no OpenID Connect sign-in here ([sign_in.oidc] in config.toml)", None);
    };
    let (url, browser) = match provider.start(&callback_url(&app)).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(error = %e, "company sign-in: the OpenID provider did not answer");
            return page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None);
        }
    };
    let Ok(location) = HeaderValue::from_str(&url) else {
        return page(StatusCode::BAD_GATEWAY, "the OpenID provider's authorization URL is not a header value", None);
    };
    let secure = if app.secure_cookies { "; Secure" } else { "" };
    // Lax: the provider sends the browser back with a top-level GET from its own site.
    let cookie = format!("{FLOW_COOKIE}={browser}; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age=600{secure}");
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, location);
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/oidc/callback`: the provider's answer. Signed in, the browser gets its session
/// cookie on a page of ours that moves on to `/` (a `SameSite=Strict` cookie set on a redirect
/// that came from another site would not be sent on that redirect's next hop).
async fn oidc_callback(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let Some(provider) = &app.sign_in.oidc else {
        return page(StatusCode::NOT_FOUND, "no OpenID Connect sign-in here", None);
    };
    if let Some(error) = &q.error {
        let text = format!("the provider said: {error} {}", q.error_description.as_deref().unwrap_or(""));
        audit(&app, "-", &peer, "sign_in_failed", "refused", &format!("oidc: {text}"));
        return page(StatusCode::UNAUTHORIZED, &text, None);
    }
    let (Some(state), Some(code)) = (q.state.as_deref(), q.code.as_deref()) else {
        return page(StatusCode::BAD_REQUEST, "the callback has no state or code", None);
    };
    let browser = super::auth::cookie(&headers, FLOW_COOKIE);
    let account = match provider.finish(&callback_url(&app), state, code, browser).await {
        Ok(account) => account,
        Err(Refused::Flow(why)) => {
            tracing::warn!(from = %peer, "OpenID sign-in refused: {why}");
            app.metrics.login_failure("oidc");
            audit(&app, "-", &peer, "sign_in_failed", "refused", &format!("oidc: {why}"));
            return page(StatusCode::UNAUTHORIZED, &why, None);
        }
        Err(Refused::Provider(e)) => {
            tracing::warn!(error = %e, "company sign-in: the OpenID provider failed");
            return page(StatusCode::BAD_GATEWAY, &e.to_string(), None);
        }
    };
    let signed_in = admit(&app, &account, &peer).and_then(|user| session(&app, &user, &peer, "oidc"));
    match signed_in {
        Ok((_, session_cookie)) => {
            let mut r = page(StatusCode::OK, "signed in", Some("/"));
            r.headers_mut().append(header::SET_COOKIE, session_cookie);
            r.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_static("slipway_oidc=; Path=/login/oidc; HttpOnly; SameSite=Lax; Max-Age=0"),
            );
            r
        }
        Err(e) => page(e.status, &format!("{}: {}", e.error, e.fix), None),
    }
}

/// The few words a callback answers with (the app's stylesheet; no script), moving on to `next`.
fn page(status: StatusCode, text: &str, next: Option<&str>) -> Response {
    let body = html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                @if let Some(next) = next { meta http-equiv="refresh" content=(format!("0; url={next}")); }
                link rel="stylesheet" href="/assets/app.css";
                title { "Slipway" }
            }
            body {
                main.login {
                    p role=(if next.is_some() { "status" } else { "alert" }) { (text) }
                    @if let Some(next) = next { p { a href=(next) { "Slipway" } } }
                    @else { p { a href="/login" { "Sign in" } } }
                }
            }
        }
    };
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
