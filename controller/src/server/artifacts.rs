//! Builds CI pushes over HTTP (`ops::artifacts` underneath): `POST
//! /api/v1/projects/{p}/artifacts?name=1.4.2&commit=C&file=app.war` with the bytes as the body
//! (a file, or a tar archive: told apart by their first bytes) and `X-Slipway-Sha256` for the
//! digest they must have; `GET` lists them. A deployer of an env of the project (a token scoped
//! to it) or an admin. `[[webhook]] artifact = "PATTERN"` rules make a ticket for each push whose
//! name matches (deployed at once where the env asks no approval). The body streams to a file under `<home>/artifacts/` within its bound
//! ([`max_bytes`]); nothing is kept unless everything checks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::ops::artifacts::{self, Push};
use crate::ops::tickets::{self, NewTicket};
use crate::server::App;
use crate::server::auth::Caller;
use crate::server::error::{ApiError, ApiResult};
use crate::state::artifacts::PushedArtifact;
use crate::state::tickets::{Audit, TicketState};

/// The header carrying the sha256 (hex) the pushed bytes must have.
pub const SHA256_HEADER: &str = "x-slipway-sha256";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/projects/{p}/artifacts", routing::post(push).get(list).layer(DefaultBodyLimit::disable()))
}

/// The largest build the server takes (`SLIPWAY_MAX_ARTIFACT_BYTES`, default 4 GiB).
pub fn max_bytes() -> u64 {
    std::env::var("SLIPWAY_MAX_ARTIFACT_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(4 << 30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    name: String,
    #[serde(default)]
    commit: String,
    /// A single file's name in the release (default `artifact`).
    #[serde(default)]
    file: Option<String>,
}

async fn push(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<String>,
    Query(q): Query<PushQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    artifacts::check_name(&q.name)?;
    let sha256 = headers.get(SHA256_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let dir = app.home.artifacts();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".upload-{}", crate::ops::secrets::random_hex()));
    let received = receive(body, &tmp).await;
    let result = match received {
        Ok(()) => {
            let push = Push {
                project: p,
                name: q.name,
                commit: q.commit,
                file_name: q.file.unwrap_or_else(|| "artifact".to_owned()),
                sha256,
                by: caller.name.clone(),
            };
            artifacts::push(&app.home, &app.store, push, &tmp).await.map_err(ApiError::from)
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    let kept = result?;
    let tickets = on_rules(&app, &caller, &kept).await;
    let mut answer = serde_json::json!(kept);
    if !tickets.is_empty() {
        answer["tickets"] = serde_json::json!(tickets);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `[[webhook]] artifact = "1.*"` rules of the project that match the pushed name: a ticket
/// each, by the pusher, deployed at once when its env asks no approval. What each did.
async fn on_rules(app: &Arc<App>, caller: &Caller, kept: &PushedArtifact) -> Vec<serde_json::Value> {
    let Ok(Some(record)) = app.store.project(&kept.project) else { return Vec::new() };
    let Ok(config) = slipway_common::config::ProjectConfig::parse(&record.text, "project") else { return Vec::new() };
    let mut out = Vec::new();
    for rule in config.file.webhook.iter().filter(|r| r.matches_artifact(&kept.name)) {
        let new = NewTicket {
            project: kept.project.clone(),
            env: rule.env.clone(),
            artifact: Some(kept.name.clone()),
            title: format!("artifact {} pushed by {}", kept.name, kept.pushed_by),
            ..NewTicket::default()
        };
        let audit = Audit { by: caller.name.clone(), at: slipway_common::time::unix_now(), from: caller.from.clone() };
        let mut done = serde_json::json!({"env": rule.env});
        match tickets::create(&app.core, caller, new, audit, None).await {
            Ok(t) => {
                done["ticket"] = serde_json::json!(t.id);
                done["state"] = serde_json::json!(t.state);
                if t.state == TicketState::Approved {
                    match crate::ops::waiting::deploy_or_wait(&app.core, caller, t.id).await {
                        Ok(crate::ops::waiting::Started::Deploy(n)) => done["deploy"] = serde_json::json!(n),
                        Ok(crate::ops::waiting::Started::Waiting(why)) => done["waiting"] = serde_json::json!(why),
                        Err(e) => done["deploy_error"] = serde_json::json!({"error": e.problem, "fix": e.fix}),
                    }
                }
            }
            Err(e) => done["error"] = serde_json::json!({"error": e.problem, "fix": e.fix}),
        }
        out.push(done);
    }
    out
}

/// The body into `path`, refused past [`max_bytes`].
async fn receive(body: Body, path: &std::path::Path) -> ApiResult<()> {
    let max = max_bytes();
    let mut file =
        tokio::fs::File::create(path).await.map_err(|e| internal(format!("cannot write the upload: {e}")))?;
    let mut body = body;
    let mut got: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad(format!("the upload broke off: {e}"), "push it again; nothing was kept"))?;
        let Ok(data) = frame.into_data() else { continue };
        got += data.len() as u64;
        if got > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the build is over {max} bytes, the most this server takes"),
                "raise SLIPWAY_MAX_ARTIFACT_BYTES in the server's environment, or ship a smaller build",
            ));
        }
        file.write_all(&data).await.map_err(|e| internal(format!("cannot write the upload: {e}")))?;
    }
    file.sync_all().await.map_err(|e| internal(format!("cannot write the upload: {e}")))?;
    Ok(())
}

fn internal(why: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why, "the server's disk or permissions: see its log")
}

async fn list(State(app): State<Arc<App>>, Path(p): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let all = artifacts::list(&app.store, &p)?;
    Ok(Json(serde_json::json!(all)))
}
