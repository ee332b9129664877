//! The project file over HTTP (`ops::projects` underneath): `PUT /api/v1/projects/{p}` saves
//! a new revision (the file as TOML, or JSON `{"text"}`; `If-Match: "r<N>"` refuses it when
//! the project moved on since revision N, naming who moved it), `POST /api/v1/projects` makes
//! one, `GET /api/v1/projects/{p}/revisions[/{n}]` lists and shows them. Maintainers of the
//! project and admins only (the policy); secrets are shown masked and kept when a save keeps
//! the mask.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use serde_json::json;

use crate::ops::projects::{self, Save};
use crate::server::App;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/projects", routing::post(create))
        .route("/api/v1/projects/{p}", routing::put(update))
        .route("/api/v1/projects/{p}/revisions", routing::get(revisions))
        .route("/api/v1/projects/{p}/revisions/{n}", routing::get(revision))
}

/// The `ETag` of revision `n`.
pub fn etag(n: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"r{n}\"")).expect("ascii")
}

/// The project file in a request: TOML as it is, or JSON `{"text": "…"}`.
fn text_of(headers: &HeaderMap, body: &Bytes) -> ApiResult<String> {
    let json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    let text = if json {
        let doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(format!("the body is not JSON: {e}"), "send {\"text\": \"<the project file>\"}")
        })?;
        doc["text"].as_str().map(str::to_owned).ok_or_else(|| {
            ApiError::bad("missing field `text`", "send {\"text\": \"<the project file>\"}, or the TOML itself")
        })?
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad("the project file is not UTF-8", "send UTF-8 TOML"))?
    };
    Ok(text)
}

/// `If-Match: "r3"` (or `3`): the revision a change was made on. Required: a change made on
/// nothing in particular would overwrite whatever another editor saved meanwhile.
fn base_of(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "a change of a project file says which revision it was made on",
            "send If-Match with the ETag of GET /api/v1/projects/{p} (\"r<N>\")",
        ));
    };
    let text = v.to_str().unwrap_or("").trim().trim_matches('"');
    text.trim_start_matches('r').parse().map(Some).map_err(|_| {
        ApiError::bad(
            format!("If-Match '{text}' names no revision"),
            "send the ETag of GET /api/v1/projects/{p}: \"r<N>\"",
        )
    })
}

fn saved(status: StatusCode, record: &crate::state::store::ProjectRecord, by: &str) -> Response {
    let mut response =
        (status, Json(json!({"project": record.name, "revision": record.revision, "by": by}))).into_response();
    response.headers_mut().insert(header::ETAG, etag(record.revision));
    response
}

/// Where a project saved over HTTP says it came from: the file it had, or (new) the home.
fn source_of(app: &App, name: &str) -> ApiResult<std::path::PathBuf> {
    Ok(match app.store.project(name)? {
        Some(p) => p.source_file,
        None => app.home.root.join("projects").join(format!("{name}.toml")),
    })
}

async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = text_of(&headers, &body)?;
    let config = slipway_common::config::ProjectConfig::parse(&text, &format!("{p}.toml"))
        .map_err(crate::error::CtlError::from)?;
    if config.name() != p {
        return Err(ApiError::bad(
            format!("the file names project '{}', not '{p}'", config.name()),
            format!("keep name = \"{p}\" (a project is renamed by making a new one)"),
        ));
    }
    if app.store.project(&p)?.is_none() {
        return Err(ApiError::not_found(format!("unknown project '{p}'"), "POST /api/v1/projects makes a new one"));
    }
    let source = source_of(&app, &p)?;
    let base = base_of(&headers)?;
    let save = Save { text: &text, source_file: &source, by: &caller.name, base, create: false, note: "" };
    let (record, _) = projects::save(&app.store, save)?;
    Ok(saved(StatusCode::OK, &record, &caller.name))
}

async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = text_of(&headers, &body)?;
    let config =
        slipway_common::config::ProjectConfig::parse(&text, "new project").map_err(crate::error::CtlError::from)?;
    let source = source_of(&app, config.name())?;
    let save = Save { text: &text, source_file: &source, by: &caller.name, base: None, create: true, note: "" };
    let (record, _) = projects::save(&app.store, save)?;
    Ok(saved(StatusCode::CREATED, &record, &caller.name))
}

async fn revisions(State(app): State<Arc<App>>, Path(p): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    app.store
        .project(&p)?
        .ok_or_else(|| ApiError::not_found(format!("unknown project '{p}'"), "GET /api/v1/projects"))?;
    let list: Vec<_> = app
        .store
        .revisions(&p)?
        .into_iter()
        .map(|r| json!({"revision": r.n, "by": r.by, "at": r.at, "note": r.note}))
        .collect();
    Ok(Json(json!(list)))
}

async fn revision(State(app): State<Arc<App>>, Path((p, n)): Path<(String, u64)>) -> ApiResult<Response> {
    let r = projects::revision(&app.store, &p, n)?;
    let doc = json!({"revision": r.n, "by": r.by, "at": r.at, "note": r.note, "text": projects::masked(&r.text)});
    let mut response = Json(doc).into_response();
    response.headers_mut().insert(header::ETAG, etag(r.n));
    Ok(response)
}
