//! Freezes over HTTP (`ops::freezes` underneath): `GET /api/v1/freezes` (those of the envs the
//! caller may see), `GET|POST /api/v1/projects/{p}/envs/{e}/freezes` and `DELETE
//! …/freezes/{id}` (a maintainer of the project, or an admin). And who may deploy past a window
//! or a freeze: an admin, with a reason.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json, Router, routing};
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_common::time::{parse_when, unix_now};

use crate::ops::freezes;
use crate::server::App;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};
use crate::state::users::Role;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/freezes", routing::get(all))
        .route("/api/v1/projects/{p}/envs/{e}/freezes", routing::get(of_env).post(create))
        .route("/api/v1/projects/{p}/envs/{e}/freezes/{id}", routing::delete(lift))
        .route("/api/v1/projects/{p}/envs/{e}/maintenance", routing::post(maintenance))
}

/// Going past a window or a freeze is an admin's, with a reason.
pub fn may_override(caller: &Caller, reason: Option<&str>) -> ApiResult<()> {
    match reason {
        None => Ok(()),
        Some(_) if caller.admin => Ok(()),
        Some(_) => Err(ApiError::forbidden(
            format!("{} is not an admin: only an admin deploys past a window or a freeze", caller.name),
            "ask an admin, or wait for the window (or the freeze's end)",
        )),
    }
}

async fn all(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let list: Vec<_> = freezes::list(&app.store, None)?
        .into_iter()
        .filter(|f| caller.allows(&f.project, &f.env, Role::Viewer))
        .collect();
    Ok(Json(json!(list)))
}

async fn of_env(State(app): State<Arc<App>>, Path((p, e)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let list: Vec<_> = freezes::list(&app.store, Some(&p))?.into_iter().filter(|f| f.env == e).collect();
    Ok(Json(json!(list)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFreeze {
    /// A duration from now (`3d`), RFC 3339, or `YYYY-MM-DD HH:MM [Zone]`.
    until: String,
    #[serde(default)]
    from: Option<String>,
    reason: String,
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((p, e)): Path<(String, String)>,
    Body(b): Body<NewFreeze>,
) -> ApiResult<impl IntoResponse> {
    let bad = |e: String| ApiError::bad(e, "until: 3d, 2026-12-26T00:00:00+08:00 or 2026-12-26 00:00 Asia/Shanghai");
    let now = unix_now();
    let from = b.from.map(|f| parse_when(&f, now)).transpose().map_err(bad)?;
    let until = parse_when(&b.until, from.unwrap_or(now)).map_err(bad)?;
    let f = freezes::create(&app.store, &caller.name, &p, &e, from, until, &b.reason)?;
    Ok((StatusCode::CREATED, Json(json!(f))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Maintenance {
    on: bool,
    #[serde(default)]
    message: String,
}

/// `POST /api/v1/projects/{p}/envs/{e}/maintenance` `{"on": true, "message": "…"}`: every host's
/// maintenance page up (or down); each host's answer.
async fn maintenance(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((p, e)): Path<(String, String)>,
    Body(b): Body<Maintenance>,
) -> ApiResult<Json<Value>> {
    let by = crate::ops::audit::Actor::of(&caller);
    let answers = crate::engine::maintenance::set(&app.home, &by, &p, &e, b.on, &b.message).await?;
    Ok(Json(crate::engine::maintenance::answers_json(&p, &e, b.on, &answers)))
}

async fn lift(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((p, e, id)): Path<(String, String, u64)>,
) -> ApiResult<Json<Value>> {
    let found = app.store.freeze(id)?.filter(|f| f.project == p && f.env == e);
    if found.is_none() {
        return Err(ApiError::from(
            crate::error::CtlError::not_found(format!("{p}/{e} has no freeze {id}"))
                .fix(format!("GET /api/v1/projects/{p}/envs/{e}/freezes lists them")),
        ));
    }
    Ok(Json(json!(freezes::lift(&app.store, &caller.name, id)?)))
}
