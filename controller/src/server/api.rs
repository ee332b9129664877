//! The HTTP API's routes (DESIGN.md "Server"), JSON under `/api/v1`, the same records as
//! `--output json`. Access is decided before any handler runs ([`super::auth::authorize`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, routing};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::select::RollbackTo;
use crate::engine::{DeployArgs, RollbackArgs};
use crate::ops::runs::{self, Begun, Op};
use crate::ops::views::deploy_json;
use crate::server::App;
use crate::server::auth::{self, Caller, Via};
use crate::server::error::{ApiError, ApiResult, Body};
use crate::state::store::{Decision, DeployRecord};
use crate::state::users::Role;

pub fn unknown_deploy(id: u64) -> ApiError {
    ApiError::not_found(format!("unknown deploy #{id}"), "GET /api/v1/deploys (or `slipctl history`) lists them")
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", routing::get(healthz))
        .route("/metrics", routing::get(metrics))
        .route(
            "/hooks/{project}",
            routing::post(super::webhooks::receive).layer(DefaultBodyLimit::max(super::WEBHOOK_BODY_LIMIT)),
        )
        .route("/api/v1/session", routing::post(login).delete(logout))
        .route("/api/v1/me", routing::get(me))
        .route("/api/v1/projects", routing::get(projects))
        .route("/api/v1/projects/{p}", routing::get(project))
        .route("/api/v1/projects/{p}/envs/{e}/refs", routing::get(refs))
        .route("/api/v1/projects/{p}/envs/{e}/check", routing::post(check))
        .route("/api/v1/agents", routing::get(agents))
        .route("/api/v1/dashboard", routing::get(dashboard))
        .route("/api/v1/deploys", routing::get(deploys).post(start_deploy))
        .route("/api/v1/rollbacks", routing::post(start_rollback))
        .route("/api/v1/deploys/{id}", routing::get(show_deploy))
        .route("/api/v1/deploys/{id}/events", routing::get(super::sse::events))
        .route("/api/v1/deploys/{id}/promote", routing::post(promote))
        .route("/api/v1/deploys/{id}/abort", routing::post(abort))
        .route("/api/v1/deploys/{id}/cancel", routing::post(cancel_deploy))
        .route("/api/v1/cli", routing::post(super::exec::run))
        .route("/api/v1/audit", routing::get(audit))
        .merge(super::tickets::routes())
        .merge(super::admin::routes())
        .merge(super::projects::routes())
        .merge(super::artifacts::routes())
        .merge(super::governance::routes())
        .merge(super::sign_in::routes())
        .merge(crate::web::routes())
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth::authorize))
        .route_layer(axum::middleware::from_fn(crate::web::present_refusals))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(super::BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), super::lead::standby_gate))
        .layer(axum::middleware::from_fn_with_state(app.clone(), security_headers))
        .with_state(app)
}

/// The pages' Content-Security-Policy: scripts, styles, streams and forms of this server only
/// (one built-in script and stylesheet, no inline code), never in a frame.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers every answer carries: no sniffing, no framing, a CSP, no referrer to other sites,
/// and HSTS when people reach the server over TLS.
async fn security_headers(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    if app.secure_cookies {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    response
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.encode(&app.views)).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API route", "see DESIGN.md \"Server\" for the routes")
}

async fn healthz(State(app): State<Arc<App>>) -> Json<Value> {
    use crate::state::leader::{self, Role};
    let role = leader::role().word();
    let leader_url = match leader::role() {
        Role::Standby => leader::current(&app.store).ok().flatten().map(|l| l.url),
        _ => Some(app.public_url.clone()),
    };
    Json(json!({
        "ok": true,
        "running": app.runs.count(),
        "since": app.started_at,
        "url": app.public_url,
        "role": role,
        "leader": leader_url,
        "epoch": leader::epoch(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

fn roles_of(caller_admin: bool, grants: &[crate::state::users::Grant]) -> Value {
    json!({"admin": caller_admin, "grants": grants})
}

async fn login(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<super::listen::Peer>,
    headers: axum::http::HeaderMap,
    Body(login): Body<Login>,
) -> ApiResult<Response> {
    super::login::same_origin(&headers, &app.public_url)?;
    let (user, csrf, cookie) = super::sign_in::open_session(&app, &login.user, &login.password, &peer).await?;
    let mut response =
        Json(json!({"user": user.name, "roles": roles_of(user.admin, &user.grants), "csrf_token": csrf}))
            .into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

async fn logout(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Response> {
    if let Via::Session { digest, .. } = &caller.via {
        app.store.remove_session(digest)?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("slipway_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

async fn me(Extension(caller): Extension<Caller>) -> Json<Value> {
    let csrf = match &caller.via {
        Via::Session { csrf, .. } => Some(csrf.clone()),
        _ => None,
    };
    Json(json!({"user": caller.name, "roles": roles_of(caller.admin, &caller.grants), "csrf_token": csrf}))
}

/// Projects with the envs the caller may see (a project with none is not listed).
async fn projects(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let out: Vec<Value> = crate::ops::views::visible_envs(&app.core, &caller)?
        .into_iter()
        .map(|(p, envs)| json!({"name": p.name, "envs": envs, "applied_at": p.applied_at}))
        .collect();
    Ok(Json(json!(out)))
}

/// A project as the caller may see it; its maintainers and admins get the file too (secrets
/// masked) with its revision as the `ETag` (for `If-Match` on `PUT`).
async fn project(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<String>,
) -> ApiResult<Response> {
    let record = app.store.project(&p)?;
    let record = record
        .ok_or_else(|| ApiError::not_found(format!("unknown project '{p}'"), "GET /api/v1/projects lists them"))?;
    let config = crate::ops::views::config_of(&record)?;
    let envs: BTreeMap<&String, Value> = config
        .envs
        .iter()
        .filter(|(e, _)| caller.allows(&p, e, Role::Viewer))
        .map(|(e, s)| (e, json!({"hosts": s.hosts, "canary": s.canary, "default_ref": s.default_ref, "approval": s.approval, "strategy": s.rollout.strategy})))
        .collect();
    if envs.is_empty() {
        return Err(ApiError::forbidden(
            format!("{} may not see project {p}", caller.name),
            "an admin can grant a role on one of its envs",
        ));
    }
    let mut doc =
        json!({"name": record.name, "envs": envs, "applied_at": record.applied_at, "revision": record.revision});
    if caller.maintains(&p) {
        doc["text"] = json!(crate::ops::projects::masked(&record.text));
    }
    let mut response = Json(doc).into_response();
    response.headers_mut().insert(header::ETAG, super::projects::etag(record.revision));
    Ok(response)
}

/// Walle's picker: recent branches, the last 10 tags, the last 50 commits of the default ref.
async fn refs(State(app): State<Arc<App>>, Path((p, e)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let scope = crate::engine::load_scope(&app.home, &p, &e, None)?;
    let url = crate::engine::scope::repo_url(&scope.project, &scope.settings);
    let mirror = crate::source::git::mirror_path(&app.home.cache(), &p);
    crate::source::vcs::fetch(&scope.settings, &url, &mirror).await?;
    Ok(Json(crate::source::vcs::picker(&scope.settings, &url, &mirror).await?))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
}

async fn check(
    State(app): State<Arc<App>>,
    Path((p, e)): Path<(String, String)>,
    Body(body): Body<CheckBody>,
) -> ApiResult<Json<Value>> {
    let rows =
        crate::engine::start_check(app.home.clone(), p, e, body.git_ref, Default::default()).finish(|_| {}).await?;
    let ok = rows.iter().all(|r| r.ok);
    Ok(Json(json!({"ok": ok, "checks": rows})))
}

/// Registered agents the caller may know of, each with what the last probe (every 30 s) found.
async fn agents(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    let probes = app.probes.all();
    let out: Vec<Value> = crate::ops::views::visible_agents(&app.core, &caller)?
        .into_iter()
        .map(|a| {
            let mut doc = json!(a);
            doc["probe"] = json!(probes.get(&a.name));
            doc
        })
        .collect();
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    project: Option<String>,
    env: Option<String>,
    status: Option<String>,
    user: Option<String>,
    limit: Option<usize>,
}

async fn deploys(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DeployQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50).min(1000);
    let out: Vec<Value> = app
        .store
        .deploys(q.project.as_deref(), q.env.as_deref(), usize::MAX)?
        .into_iter()
        .filter(|d| caller.allows(&d.project, &d.env, Role::Viewer))
        .filter(|d| q.status.as_ref().is_none_or(|s| s == d.effective_status().word()))
        .filter(|d| q.user.as_ref().is_none_or(|u| *u == d.user))
        .take(limit)
        .map(|d| deploy_json(&d))
        .collect();
    Ok(Json(json!(out)))
}

/// A deploy's record with its events: what `slipctl show --output json` prints.
pub fn deploy_doc(app: &App, d: &DeployRecord) -> ApiResult<Value> {
    let mut doc = deploy_json(d);
    let events: Vec<Value> = app.store.events(d.id, 0)?.into_iter().map(|(_, e)| e).collect();
    doc["events"] = json!(events);
    Ok(doc)
}

async fn show_deploy(State(app): State<Arc<App>>, Path(id): Path<u64>) -> ApiResult<Json<Value>> {
    let d = app.store.deploy(id)?.ok_or_else(|| unknown_deploy(id))?;
    Ok(Json(deploy_doc(&app, &d)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    project: String,
    env: String,
    #[serde(rename = "ref", default)]
    git_ref: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    full: bool,
    /// Past the env's windows or a freeze (admins only); recorded with the deploy.
    #[serde(default)]
    override_reason: Option<String>,
}

#[derive(Deserialize)]
struct AuditQuery {
    /// Records after this number, oldest first; without it, the newest, newest first.
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/audit` (admins): the audit trail.
async fn audit(State(app): State<Arc<App>>, Query(q): Query<AuditQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(200).min(5000);
    let records = match q.after {
        Some(after) => app.store.audit_after(after, limit)?,
        None => app.store.audit_newest(limit)?,
    };
    Ok(Json(json!(records)))
}

fn started(begun: Begun) -> Response {
    match begun {
        Begun::Started(id) => {
            (StatusCode::ACCEPTED, Json(json!({"id": id, "events": format!("/api/v1/deploys/{id}/events")})))
                .into_response()
        }
        Begun::Planned(record) => Json(deploy_json(&record)).into_response(),
    }
}

async fn start_deploy(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<DeployBody>,
) -> ApiResult<Response> {
    crate::server::governance::may_override(&caller, b.override_reason.as_deref())?;
    let args = DeployArgs {
        override_reason: b.override_reason,
        git_ref: b.git_ref,
        hosts: b.hosts,
        dry_run: b.dry_run,
        full: b.full,
        user: Some(caller.name.clone()),
        ..DeployArgs::of(&b.project, &b.env)
    };
    Ok(started(runs::begin(&app.core, Op::Deploy(Box::new(args)), None).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    project: String,
    env: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
}

async fn start_rollback(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<RollbackBody>,
) -> ApiResult<Response> {
    let to = b.to.as_deref().map(RollbackTo::parse).transpose()?;
    let args = RollbackArgs { project: b.project, env: b.env, to, hosts: b.hosts, user: Some(caller.name.clone()) };
    Ok(started(runs::begin(&app.core, Op::Rollback(args), None).await?))
}

async fn decide(app: &Arc<App>, caller: &Caller, id: u64, decision: Decision) -> ApiResult<Response> {
    Ok(match crate::ops::runs::decide_paused(&app.core, caller, id, decision).await? {
        None => (StatusCode::ACCEPTED, Json(json!({"id": id, "decision": decision}))).into_response(),
        Some(begun) => started(begun),
    })
}

async fn promote(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Response> {
    decide(&app, &caller, id, Decision::Promote).await
}

async fn abort(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Response> {
    decide(&app, &caller, id, Decision::Abort).await
}

async fn cancel_deploy(State(app): State<Arc<App>>, Path(id): Path<u64>) -> ApiResult<Json<Value>> {
    let run = app.runs.get(id).ok_or_else(|| {
        ApiError::conflict(
            format!("deploy #{id} is not running in this server"),
            "only a running deploy can be cancelled",
        )
    })?;
    run.canceller.cancel();
    Ok(Json(json!({"id": id, "cancelling": true})))
}

/// A cell per project × env the caller may see: what each host runs (as this controller's
/// records say), how many hosts on each release, the last ticket and a deploy under way.
async fn dashboard(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(crate::ops::views::dashboard_cells(&app.core, &caller)?)))
}
