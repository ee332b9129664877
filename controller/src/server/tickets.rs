//! The tickets API (`/api/v1/tickets…`) over `ops::tickets`, the approval workflow.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Router, routing};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ops::tickets::{Comment, NewTicket, TicketQuery, approve, audit, cancel, create, list, rollback};
use crate::server::App;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult, Body};

/// (`ops::tickets::unknown`, as the API's refusal.)
pub fn unknown(id: u64) -> ApiError {
    ApiError::from(crate::ops::tickets::unknown(id))
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/tickets", routing::get(list_h).post(create_h))
        .route("/api/v1/tickets/{id}", routing::get(show_h))
        .route("/api/v1/tickets/{id}/approve", routing::post(approve_h))
        .route("/api/v1/tickets/{id}/reject", routing::post(reject_h))
        .route("/api/v1/tickets/{id}/deploy", routing::post(deploy_h))
        .route("/api/v1/tickets/{id}/cancel", routing::post(cancel_h))
        .route("/api/v1/tickets/{id}/rollback", routing::post(rollback_h))
        .route("/api/v1/tickets/{id}/schedule", routing::post(schedule_h).delete(unschedule_h))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// A duration from now (`30m`), RFC 3339, or `YYYY-MM-DD HH:MM [Zone]`.
    at: String,
    #[serde(default)]
    expires: Option<String>,
}

/// `POST /api/v1/tickets/{id}/schedule`: start the approved ticket at `at`, not after `expires`.
async fn schedule_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Body(b): Body<ScheduleBody>,
) -> ApiResult<Json<Value>> {
    let now = slipway_common::time::unix_now();
    let bad = |e: String| ApiError::bad(e, "at: 30m, 2026-12-24T02:00:00+08:00 or 2026-12-24 02:00 Asia/Shanghai");
    let at = slipway_common::time::parse_when(&b.at, now).map_err(bad)?;
    let expires = b.expires.map(|e| slipway_common::time::parse_when(&e, at)).transpose().map_err(bad)?;
    Ok(Json(json!(crate::ops::waiting::schedule(&app.core, &caller, id, at, expires)?)))
}

async fn unschedule_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(crate::ops::waiting::unschedule(&app.core, &caller, id)?)))
}

async fn list_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<TicketQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(list(&app.core, &caller, &q)?)))
}

async fn create_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(new): Body<NewTicket>,
) -> ApiResult<impl IntoResponse> {
    let created = audit(&caller);
    let ticket = create(&app.core, &caller, new, created, None).await?;
    Ok((StatusCode::CREATED, Json(json!(ticket))))
}

async fn show_h(State(app): State<Arc<App>>, Path(id): Path<u64>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(app.store.ticket(id)?.ok_or_else(|| unknown(id))?)))
}

async fn approve_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Body(c): Body<Comment>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(approve(&app.core, &caller, id, &c.comment, true)?)))
}

async fn reject_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Body(c): Body<Comment>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(approve(&app.core, &caller, id, &c.comment, false)?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployTicket {
    /// Past the env's windows or a freeze (admins only); recorded with the deploy.
    #[serde(default)]
    override_reason: Option<String>,
}

async fn deploy_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let asked: DeployTicket = if body.iter().all(u8::is_ascii_whitespace) {
        DeployTicket::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("bad request body: {e}"), "send {} or {\"override_reason\": \"…\"}"))?
    };
    crate::server::governance::may_override(&caller, asked.override_reason.as_deref())?;
    let (ticket, n) = crate::ops::tickets::deploy_overriding(&app.core, &caller, id, asked.override_reason).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"ticket": ticket, "deploy": n}))))
}

async fn cancel_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(cancel(&app.core, &caller, id)?)))
}

async fn rollback_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<impl IntoResponse> {
    let (ticket, n) = rollback(&app.core, &caller, id).await?;
    Ok((StatusCode::CREATED, Json(json!({"ticket": ticket, "deploy": n}))))
}
