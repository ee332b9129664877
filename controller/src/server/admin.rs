//! Users, grants and tokens as operations on the store, for `slipctl user|token` and the
//! admin API (`/api/v1/users`, `/api/v1/tokens`) alike; and the notifications given up on
//! (`/api/v1/notifications/failed`). Whoever calls them has been checked
//! to be an admin already.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json, Router, routing};
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_common::time::unix_now;

use crate::error::{CtlError, Result};
use crate::server::App;
use crate::server::auth::{Caller, hash_password, random_hex, sha256_hex};
use crate::server::error::{ApiResult, Body};
use crate::state::store::Store;
use crate::state::users::{Grant, Role, TokenRecord, UserRecord};

pub fn unknown_user(name: &str) -> CtlError {
    CtlError::not_found(format!("unknown user '{name}'")).fix("`slipctl user list` (GET /api/v1/users) shows them")
}

/// `role` on (project, env): the project and env must exist; a maintainer's is the whole
/// project's (env `*`).
pub fn grant_of(store: &Store, project: &str, env: &str, role: Role) -> Result<Grant> {
    if role == Role::Maintainer || env == "*" {
        if role != Role::Maintainer || env != "*" {
            return Err(CtlError::bad(format!("a {} role is not granted on env '{env}'", role.word()))
                .fix("a maintainer is one of a whole project: PROJECT * maintainer; other roles name an env"));
        }
        store.project(project)?.ok_or_else(|| {
            CtlError::not_found(format!("unknown project '{project}'")).fix("`slipctl project list` shows them")
        })?;
        return Ok(Grant { project: project.to_owned(), env: env.to_owned(), role });
    }
    crate::engine::scope::env_of(store, project, env)?;
    Ok(Grant { project: project.to_owned(), env: env.to_owned(), role })
}

pub fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 {
        return Err(CtlError::bad("the password is shorter than 8 characters").fix("choose one of 8 or more"));
    }
    Ok(())
}

pub fn add_user(store: &Store, name: &str, admin: bool, password: &str) -> Result<UserRecord> {
    slipway_common::names::validate_name("user name", name).map_err(|e| CtlError::bad(e.to_string()))?;
    if store.user(name)?.is_some() {
        return Err(CtlError::bad(format!("user '{name}' exists"))
            .fix(format!("`slipctl user rm {name}` first, or pick another name")));
    }
    check_password(password)?;
    let user = UserRecord {
        name: name.to_owned(),
        password_hash: hash_password(password)?,
        admin,
        grants: Vec::new(),
        created_at: unix_now(),
    };
    store.put_user(&user)?;
    Ok(user)
}

pub fn grant(store: &Store, name: &str, project: &str, env: &str, role: Role) -> Result<UserRecord> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    let grant = grant_of(store, project, env, role)?;
    if !user.grants.contains(&grant) {
        user.grants.push(grant);
        user.grants.sort();
    }
    store.put_user(&user)?;
    Ok(user)
}

pub fn revoke(store: &Store, name: &str, project: &str, env: &str, role: Role) -> Result<UserRecord> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    let before = user.grants.len();
    user.grants.retain(|g| !(g.project == project && g.env == env && g.role == role));
    if user.grants.len() == before {
        return Err(CtlError::bad(format!("{name} holds no {} role on {project}/{env}", role.word()))
            .fix("`slipctl user list` shows the grants"));
    }
    store.put_user(&user)?;
    Ok(user)
}

/// Give `name` a new password and end their sessions (but `keep`, the session that changed it).
pub fn set_password(store: &Store, name: &str, password: &str, keep: Option<&str>) -> Result<()> {
    let mut user = store.user(name)?.ok_or_else(|| unknown_user(name))?;
    check_password(password)?;
    user.password_hash = hash_password(password)?;
    store.put_user(&user)?;
    store.remove_sessions_but(name, keep)
}

/// Remove a user and end their sessions.
pub fn remove_user(store: &Store, name: &str) -> Result<()> {
    if !store.remove_user(name)? {
        return Err(unknown_user(name));
    }
    store.remove_sessions_of(name)
}

/// A new token: its record and the secret text (shown once).
pub fn create_token(
    store: &Store,
    name: &str,
    scopes: &[Grant],
    admin: bool,
    by: &str,
    owner: Option<&str>,
) -> Result<(TokenRecord, String)> {
    slipway_common::names::validate_name("token name", name).map_err(|e| CtlError::bad(e.to_string()))?;
    if scopes.is_empty() && !admin {
        return Err(CtlError::bad("a token needs a scope PROJECT:ENV:ROLE (or admin)")
            .fix("e.g. --scope web-demo:test:deployer"));
    }
    let scopes = scopes.iter().map(|g| grant_of(store, &g.project, &g.env, g.role)).collect::<Result<Vec<_>>>()?;
    let id = random_hex()[..12].to_owned();
    let secret = random_hex();
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        secret_sha256: sha256_hex(&secret),
        scopes,
        admin,
        created_by: by.to_owned(),
        created_at: unix_now(),
        owner: owner.map(str::to_owned),
    };
    store.put_token(&record)?;
    Ok((record, format!("slw_{id}_{secret}")))
}

pub fn remove_token(store: &Store, id: &str) -> Result<()> {
    if !store.remove_token(id)? {
        return Err(CtlError::not_found(format!("unknown token '{id}'")).fix("`slipctl token list` shows them"));
    }
    Ok(())
}

/// A user as the API and `--output json` show them (never the password hash).
pub fn user_json(u: &UserRecord) -> Value {
    json!({"user": u.name, "admin": u.admin, "grants": u.grants, "created_at": u.created_at})
}

/// A token as listed (never its secret or digest).
pub fn token_json(t: &TokenRecord) -> Value {
    json!({"id": t.id, "name": t.name, "scopes": t.scopes, "admin": t.admin, "created_by": t.created_by, "owner": t.owner, "created_at": t.created_at})
}

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

async fn add_user_h(State(app): State<Arc<App>>, Body(b): Body<NewUser>) -> ApiResult<impl IntoResponse> {
    let user = add_user(&app.store, &b.user, b.admin, &b.password)?;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

async fn remove_user_h(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    remove_user(&app.store, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grant_h(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Body(g): Body<GrantBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(user_json(&grant(&app.store, &name, &g.project, &g.env, g.role)?)))
}

async fn revoke_h(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Body(g): Body<GrantBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(user_json(&revoke(&app.store, &name, &g.project, &g.env, g.role)?)))
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
    Path(name): Path<String>,
    Body(b): Body<ResetPassword>,
) -> ApiResult<Json<Value>> {
    let generated = b.password.is_none();
    let password = b.password.unwrap_or_else(|| random_hex()[..20].to_owned());
    set_password(&app.store, &name, &password, None)?;
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
    set_password(&app.store, &user.name, new, Some(digest))?;
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

async fn remove_token_h(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    remove_token(&app.store, &id)?;
    Ok(StatusCode::NO_CONTENT)
}
