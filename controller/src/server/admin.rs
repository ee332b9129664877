//! The admin API over `ops::users` (`/api/v1/users`, `/api/v1/tokens`), a user's own password
//! (`/api/v1/me/password`, within the login budgets), and the notifications given up on
//! (`/api/v1/notifications/failed`). The policy has checked who calls before any of it runs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json, Router, routing};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ops::audit::Actor;
use crate::ops::users::{
    add_user, create_token, grant, remove_token, remove_user, revoke, set_password, token_json, unknown_user, user_json,
};
use crate::server::App;
use crate::server::auth::{Caller, random_hex};
use crate::server::error::{ApiResult, Body};
use crate::state::users::{Grant, Role};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    user: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    project: String,
    env: String,
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    scopes: Vec<GrantBody>,
    #[serde(default)]
    admin: bool,
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/users", routing::get(users_h).post(add_user_h))
        .route("/api/v1/users/{name}", routing::delete(remove_user_h))
        .route("/api/v1/users/{name}/grants", routing::post(grant_h).delete(revoke_h))
        .route("/api/v1/users/{name}/password", routing::post(reset_password_h))
        .route("/api/v1/me/password", routing::post(change_password_h))
        .route("/api/v1/tokens", routing::get(tokens_h).post(create_token_h))
        .route("/api/v1/tokens/{id}", routing::delete(remove_token_h))
        .route("/api/v1/notifications/failed", routing::get(failed_notifications_h))
}

/// Notifications given up on after their retries, oldest first.
async fn failed_notifications_h(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.store.failed_notifications()?)))
}

async fn users_h(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.store.users()?.iter().map(user_json).collect::<Vec<_>>())))
}

async fn add_user_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<NewUser>,
) -> ApiResult<impl IntoResponse> {
    let user = add_user(&app.store, &Actor::of(&caller), &b.user, b.admin, &b.password)?;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

async fn remove_user_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    remove_user(&app.store, &Actor::of(&caller), &name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grant_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(g): Body<GrantBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(user_json(&grant(&app.store, &Actor::of(&caller), &name, &g.project, &g.env, g.role)?)))
}

async fn revoke_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(g): Body<GrantBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(user_json(&revoke(&app.store, &Actor::of(&caller), &name, &g.project, &g.env, g.role)?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    /// The new password; none: one is made and shown once.
    #[serde(default)]
    password: Option<String>,
}

/// `POST /api/v1/users/{name}/password` (admins): a new password for a user, whose sessions end.
async fn reset_password_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(b): Body<ResetPassword>,
) -> ApiResult<Json<Value>> {
    let generated = b.password.is_none();
    let password = b.password.unwrap_or_else(|| random_hex()[..20].to_owned());
    set_password(&app.store, &Actor::of(&caller), &name, &password, None)?;
    Ok(Json(json!({"user": name, "password": generated.then_some(password), "sessions_ended": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current: String,
    new: String,
}

/// Change the logged-in user's own password, given the current one; their other sessions end.
pub async fn change_own_password(app: &App, caller: &Caller, current: &str, new: &str) -> ApiResult<()> {
    let crate::server::auth::Via::Session { digest, .. } = &caller.via else {
        return Err(crate::server::error::ApiError::bad(
            "only a logged-in user changes their own password",
            "log in (POST /api/v1/session), or ask an admin: slipctl user passwd NAME",
        ));
    };
    let user = app.store.user(&caller.name)?.ok_or_else(|| unknown_user(&caller.name))?;
    let peer = crate::server::listen::Peer::Unknown;
    if let Err(refusal) = app.logins.verify(&user.name, true, user.password_hash.clone(), current, &peer).await {
        app.metrics.login_failure(refusal.word());
        return Err(match refusal {
            crate::server::login::Refusal::Wrong => crate::server::error::ApiError::forbidden(
                "the current password is wrong",
                "type the password you log in with now",
            ),
            other => other.to_api(),
        });
    }
    set_password(&app.store, &Actor::of(caller), &user.name, new, Some(digest))?;
    Ok(())
}

async fn change_password_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<ChangePassword>,
) -> ApiResult<StatusCode> {
    change_own_password(&app, &caller, &b.current, &b.new).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens_h(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.store.tokens()?.iter().map(token_json).collect::<Vec<_>>())))
}

async fn create_token_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<NewToken>,
) -> ApiResult<impl IntoResponse> {
    let scopes: Vec<Grant> =
        b.scopes.into_iter().map(|g| Grant { project: g.project, env: g.env, role: g.role }).collect();
    let (record, token) = create_token(&app.store, &b.name, &scopes, b.admin, &caller.name, caller.user.as_deref())?;
    let mut doc = token_json(&record);
    doc["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(doc)))
}

async fn remove_token_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    remove_token(&app.store, &Actor::of(&caller), &id)?;
    Ok(StatusCode::NO_CONTENT)
}
