//! The tickets API (`/api/v1/tickets…`) over `ops::tickets`, the approval workflow.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Router, routing};
use serde_json::{Value, json};

use crate::ops::tickets::{Comment, NewTicket, TicketQuery, approve, audit, cancel, create, deploy, list, rollback};
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

async fn deploy_h(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<impl IntoResponse> {
    let (ticket, n) = deploy(&app.core, &caller, id).await?;
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
