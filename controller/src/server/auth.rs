//! Who is calling, and whether they may: every API request passes [`authorize`] (one
//! middleware), which authenticates the caller (session cookie + CSRF token, bearer token, or
//! the owner's local socket), works out what the route needs from [`policy`], checks it, and
//! hands the handler a [`Caller`]. Handlers never decide access by hand; list handlers filter
//! what they return with the same [`Caller::allows`].

use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::server::App;
use crate::server::error::{ApiError, ApiResult};
use crate::server::listen::Peer;
use crate::state::store::Store;
use crate::state::users::Role;

pub const SESSION_COOKIE: &str = "slipway_session";

pub use crate::ops::secrets::{hash_password, random_hex, same, sha256_hex, verify_password, verify_password_in};

pub use crate::ops::caller::{Caller, Via};

/// What a route needs of its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// No caller at all (health, metrics, logging in, CI webhooks with their own signature).
    Public,
    /// Any authenticated caller; what it returns is filtered by [`Caller::allows`].
    Anyone,
    /// A web page any logged-in caller may open (what it shows is filtered). Every page route
    /// ([`is_page`], whatever it needs) sends a visitor who is not logged in to the login page,
    /// takes the CSRF token of a posted form from its `csrf_token` field, and answers a refusal
    /// in HTML.
    Page,
    Admin,
    /// A `slipctl` command run here: what it needs depends on the command
    /// ([`super::exec::authorize`]).
    Command,
    /// Deploying an env directly (not by ticket): a deployer there, and the env must not ask
    /// approval unless the caller is an admin ([`direct_deploy`]); a rollback only when the
    /// env asks approval for rollbacks too.
    DirectDeploy {
        rollback: bool,
        pair: Pair,
    },
    /// `role` on the (project, env) named by the path (`{p}`/`{e}`), the ticket or deploy
    /// `{id}` it names, or the JSON body's `project`/`env`.
    Role(Role, Pair),
    /// A maintainer of the project the path names (`{p}`), or an admin.
    Maintainer,
    /// A deployer of some env of the project the path names (`{p}`), or an admin: CI pushing
    /// and listing the project's builds.
    DeploysIn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pair {
    Path,
    Ticket,
    Deploy,
    Body,
}

/// The one table of who may call what.
pub fn policy(method: &Method, route: &str) -> Need {
    use crate::state::users::Role as R;
    use Need::*;
    use Pair::*;
    let get = method == Method::GET;
    match route {
        "/healthz" | "/metrics" | "/api/v1/session" | "/hooks/{project}" if method != Method::DELETE => Public,
        "/login" | "/login/oidc" | "/login/oidc/callback" | "/assets/app.css" | "/assets/live.js" | "/lang/{lang}" => {
            Public
        }
        "/" | "/logout" | "/history" | "/agents" | "/live/dashboard" => Page,
        "/projects/{p}/envs/{e}" | "/projects/{p}/envs/{e}/check" => Role(R::Viewer, Path),
        "/projects/{p}/envs/{e}/tickets/new" | "/projects/{p}/envs/{e}/tickets" => Role(R::Deployer, Path),
        "/projects/{p}/envs/{e}/rollback" => DirectDeploy { rollback: true, pair: Path },
        "/projects/{p}/envs/{e}/maintenance" => Role(R::Deployer, Path),
        "/tickets/{id}" | "/tickets/{id}/live" => Role(R::Viewer, Ticket),
        "/tickets/{id}/approve" | "/tickets/{id}/reject" => Role(R::Approver, Ticket),
        "/tickets/{id}/deploy" | "/tickets/{id}/cancel" | "/tickets/{id}/rollback" => Role(R::Deployer, Ticket),
        "/deploys/{id}" | "/deploys/{id}/live" => Role(R::Viewer, Deploy),
        "/deploys/{id}/promote" | "/deploys/{id}/abort" => Role(R::Deployer, Deploy),
        "/api/v1/session" => Anyone,
        "/api/v1/projects" | "/api/v1/agents" | "/api/v1/dashboard" | "/api/v1/tickets" | "/api/v1/deploys" if get => {
            Anyone
        }
        "/api/v1/me" | "/api/v1/me/password" => Anyone,
        "/account" | "/account/password" => Page,
        // (The form shows itself read-only to whoever may see the project; saving is a
        // maintainer's, making one an admin's.)
        "/projects/{p}/edit" if get => Page,
        "/projects/{p}/edit" | "/projects/{p}/revert" => Maintainer,
        "/projects/{p}/envs/{e}/freezes" | "/projects/{p}/envs/{e}/freezes/{id}/lift" => Maintainer,
        "/projects/{p}/revisions/{n}" => Maintainer,
        "/projects/new" | "/agents/token" | "/agents/evict" => Admin,
        "/api/v1/cli" => Command,
        "/api/v1/tickets" => Role(R::Deployer, Body),
        "/api/v1/deploys" => DirectDeploy { rollback: false, pair: Body },
        "/api/v1/rollbacks" => DirectDeploy { rollback: true, pair: Body },
        "/api/v1/projects/{p}/artifacts" => DeploysIn,
        "/api/v1/projects/{p}" if get => Anyone,
        "/api/v1/projects/{p}" | "/api/v1/projects/{p}/revisions" | "/api/v1/projects/{p}/revisions/{n}" => Maintainer,
        "/api/v1/projects/{p}/envs/{e}/refs"
        | "/api/v1/projects/{p}/envs/{e}/releases"
        | "/api/v1/projects/{p}/envs/{e}/check" => Role(R::Viewer, Path),
        "/api/v1/projects/{p}/envs/{e}/lock" => Role(R::Deployer, Path),
        "/api/v1/tickets/{id}" => Role(R::Viewer, Ticket),
        "/api/v1/tickets/{id}/approve" | "/api/v1/tickets/{id}/reject" => Role(R::Approver, Ticket),
        "/api/v1/tickets/{id}/deploy"
        | "/api/v1/tickets/{id}/cancel"
        | "/api/v1/tickets/{id}/rollback"
        | "/api/v1/tickets/{id}/schedule" => Role(R::Deployer, Ticket),
        "/api/v1/freezes" if get => Anyone,
        "/api/v1/projects/{p}/envs/{e}/maintenance" => Role(R::Deployer, Path),
        "/api/v1/projects/{p}/envs/{e}/freezes" if get => Role(R::Viewer, Path),
        "/api/v1/projects/{p}/envs/{e}/freezes" | "/api/v1/projects/{p}/envs/{e}/freezes/{id}" => Maintainer,
        "/api/v1/deploys/{id}" | "/api/v1/deploys/{id}/events" => Role(R::Viewer, Deploy),
        "/api/v1/deploys/{id}/promote" | "/api/v1/deploys/{id}/abort" | "/api/v1/deploys/{id}/cancel" => {
            Role(R::Deployer, Deploy)
        }
        // Users, grants, tokens, agents, projects, webhook secrets: admins.
        _ => Admin,
    }
}

/// A cookie's value from a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The header in which a `slipctl` on the server's socket names the Slipway user it acts for
/// (`SLIPWAY_USER`): the socket's caller is the host's operator, trusted as admin, and says
/// who they are so that records and the four-eyes rule name a person, not `root`.
pub const DECLARED_USER: &str = "x-slipway-user";

/// Who sent the request, or why nobody can be believed.
pub fn authenticate(store: &Store, peer: &Peer, headers: &HeaderMap) -> ApiResult<Option<Caller>> {
    let from = peer.to_string();
    if let Peer::Socket { user: os_user } = peer {
        let declared = headers.get(DECLARED_USER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let (name, principal, user) = match declared {
            Some(name) => {
                let user = store.user(name)?.ok_or_else(|| {
                    ApiError::bad(
                        format!("SLIPWAY_USER names '{name}', who is not a Slipway user"),
                        "set SLIPWAY_USER to your Slipway user name (`slipctl user list`), or unset it",
                    )
                })?;
                (user.name.clone(), user.name.clone(), Some(user.name))
            }
            None => (os_user.clone(), format!("local:{os_user}"), None),
        };
        return Ok(Some(Caller { name, principal, user, admin: true, grants: Vec::new(), via: Via::Socket, from }));
    }
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let text = auth.to_str().unwrap_or("");
        let bearer = text
            .strip_prefix("Bearer ")
            .ok_or_else(|| ApiError::unauthorized("Authorization is not a Bearer token"))?;
        let (id, secret) = bearer
            .strip_prefix("slw_")
            .and_then(|t| t.split_once('_'))
            .ok_or_else(|| ApiError::unauthorized("that is not a Slipway token (slw_…)"))?;
        let token = store.token(id)?.ok_or_else(|| ApiError::unauthorized("unknown or removed token"))?;
        if !same(sha256_hex(secret).as_bytes(), token.secret_sha256.as_bytes()) {
            return Err(ApiError::unauthorized("unknown or removed token"));
        }
        let name = format!("token:{}", token.name);
        let principal = token.owner.clone().unwrap_or_else(|| name.clone());
        return Ok(Some(Caller {
            name,
            principal,
            user: token.owner.clone(),
            admin: token.admin,
            grants: token.scopes,
            via: Via::Token { id: token.id },
            from,
        }));
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let digest = sha256_hex(id);
        let Some((session, user)) = crate::ops::users::live_session(store, &digest)? else {
            return Err(ApiError::unauthorized("the session has ended"));
        };
        return Ok(Some(Caller {
            principal: user.name.clone(),
            user: Some(user.name.clone()),
            name: user.name,
            admin: user.admin,
            grants: user.grants,
            via: Via::Session { digest, csrf: session.csrf_token },
            from,
        }));
    }
    Ok(None)
}

/// The caller as the store says now, for a stream that outlives its request: a session's user
/// with their grants of this moment, a token with its scopes of this moment (none: the
/// session ended, the user or the token is gone). The socket's caller is as it was.
pub fn refreshed(store: &Store, caller: &Caller) -> Option<Caller> {
    match &caller.via {
        Via::Session { digest, .. } => {
            let (_, user) = crate::ops::users::live_session(store, digest).ok()??;
            Some(Caller { admin: user.admin, grants: user.grants, ..caller.clone() })
        }
        Via::Token { id } => {
            let token = store.token(id).ok()??;
            Some(Caller { admin: token.admin, grants: token.scopes, ..caller.clone() })
        }
        Via::Socket | Via::Webhook => Some(caller.clone()),
    }
}

/// An env that asks approval deploys by approved ticket; only an admin deploys it directly (the
/// API's `POST /deploys` and `slipctl deploy` through the server alike). A rollback needs a
/// ticket only where the env asks approval for rollbacks (`approval.rollback = true`).
pub fn direct_deploy(app: &App, caller: &Caller, project: &str, env: &str, rollback: bool) -> ApiResult<()> {
    let (_, settings) = crate::engine::scope::env_of(&app.store, project, env)?;
    let asks = settings.approval.required > 0 && (!rollback || settings.approval.rollback);
    if asks && !caller.admin {
        let what = if rollback { "rolls back" } else { "deploys" };
        return Err(ApiError::forbidden(
            format!("{project}/{env} {what} by approved ticket ({} approval(s))", settings.approval.required),
            format!(
                "slipctl ticket create {project} {env} --ref REF --title T (or POST /api/v1/tickets), then deploy the ticket"
            ),
        ));
    }
    Ok(())
}

/// A cookie-authenticated unsafe request must carry the session's CSRF token.
fn check_csrf(caller: &Caller, method: &Method, headers: &HeaderMap, form: Option<&str>) -> ApiResult<()> {
    let Via::Session { csrf, .. } = &caller.via else {
        return Ok(());
    };
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).or(form).unwrap_or("");
    if same(sent.as_bytes(), csrf.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "missing or wrong CSRF token",
            "send the session's csrf_token (from POST /api/v1/session) as X-CSRF-Token",
        ))
    }
}

/// The whole body (at most [`super::BODY_LIMIT`], 413 beyond), for a look before the handler.
async fn buffered(body: axum::body::Body) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, super::BODY_LIMIT).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
            format!("send at most {} bytes", super::BODY_LIMIT),
        )
    })
}

/// The (project, env) a route's request is about.
async fn pair_of(
    app: &App,
    pair: Pair,
    params: &RawPathParams,
    req: Request,
) -> ApiResult<((String, String), Request)> {
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_owned());
    let id = || -> ApiResult<u64> {
        param("id")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad("the id in the path is not a number", "ids are 1, 2, 3…"))
    };
    match pair {
        Pair::Path => Ok(((param("p").unwrap_or_default(), param("e").unwrap_or_default()), req)),
        Pair::Ticket => {
            let id = id()?;
            let t = app.store.ticket(id)?.ok_or_else(|| super::tickets::unknown(id))?;
            Ok(((t.project, t.env), req))
        }
        Pair::Deploy => {
            let id = id()?;
            let d = app.store.deploy(id)?.ok_or_else(|| super::api::unknown_deploy(id))?;
            Ok(((d.project, d.env), req))
        }
        Pair::Body => {
            let (parts, body) = req.into_parts();
            let bytes = buffered(body).await?;
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}"), "send a JSON object"))?;
            let field = |k: &str| -> ApiResult<String> {
                doc.get(k).and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| {
                    ApiError::bad(format!("missing field `{k}`"), "name the project and env in the body")
                })
            };
            let pair = (field("project")?, field("env")?);
            Ok((pair, Request::from_parts(parts, axum::body::Body::from(bytes))))
        }
    }
}

/// Whether `route` is a web page (HTML, forms) rather than the API: everything not under
/// `/api/`, the CI hooks and the health and metrics routes.
pub fn is_page(route: &str) -> bool {
    !(route.starts_with("/api/") || route.starts_with("/hooks/") || route == "/healthz" || route == "/metrics")
}

/// The middleware every route passes. A refusal is the API's error, marked [`Refused`] so
/// the web front end can present it to a browser as a page (`web::present_refusals`).
pub async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req_route(&req);
    match check(&app, route, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => {
            let refused = Refused { status: e.status, error: e.error.clone(), fix: e.fix.clone() };
            let mut response = axum::response::IntoResponse::into_response(e);
            response.extensions_mut().insert(refused);
            response
        }
    }
}

/// What [`authorize`] refused a request with, on its answer.
#[derive(Clone, Debug)]
pub struct Refused {
    pub status: axum::http::StatusCode,
    pub error: String,
    pub fix: String,
}

/// A form's `csrf_token` field (a page's POST), and the request with its body put back.
async fn form_csrf(req: Request) -> ApiResult<(Option<String>, Request)> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form || req.method() != Method::POST {
        return Ok((None, req));
    }
    let (parts, body) = req.into_parts();
    let bytes = buffered(body).await?;
    let token = std::str::from_utf8(&bytes)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "csrf_token")
        .map(|(_, v)| v.to_owned());
    Ok((token, Request::from_parts(parts, axum::body::Body::from(bytes))))
}

fn req_route(req: &Request) -> String {
    req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default()
}

async fn check(app: &App, route: String, taken: Request) -> ApiResult<Request> {
    let need = policy(taken.method(), &route);
    if need == Need::Public {
        return Ok(taken);
    }
    let peer = taken.extensions().get::<Peer>().cloned().unwrap_or(Peer::Unknown);
    let caller =
        authenticate(&app.store, &peer, taken.headers())?.ok_or_else(|| ApiError::unauthorized("not logged in"))?;
    // A token's use to change something is on the audit trail (reads are not).
    if matches!(caller.via, crate::ops::caller::Via::Token { .. }) && taken.method() != axum::http::Method::GET {
        let what = format!("{} {}", taken.method(), taken.uri().path());
        let owner = format!("owned by {}", caller.principal);
        crate::ops::audit::Actor::of(&caller).did(&app.store, "token_use", &what, "used", &owner);
    }
    let (form_token, taken) = if is_page(&route) { form_csrf(taken).await? } else { (None, taken) };
    check_csrf(&caller, taken.method(), taken.headers(), form_token.as_deref())?;
    let mut taken = match need {
        Need::Public | Need::Anyone | Need::Page => taken,
        Need::Command => {
            let (parts, body) = taken.into_parts();
            let bytes = buffered(body).await?;
            let exec: super::exec::ExecBody = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::bad(format!("bad request body: {e}"), "send {\"argv\": [...], \"cwd\": \"...\"}")
            })?;
            super::exec::authorize(app, &caller, &super::exec::parse(&exec)?)?;
            Request::from_parts(parts, axum::body::Body::from(bytes))
        }
        Need::Maintainer | Need::DeploysIn => {
            let (mut parts, body) = taken.into_parts();
            let params = <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
                .await
                .map_err(|_| ApiError::bad("bad path", "see DESIGN.md \"Server\""))?;
            let project = params.iter().find(|(k, _)| *k == "p").map(|(_, v)| v.to_owned()).unwrap_or_default();
            if need == Need::Maintainer {
                caller.require_maintainer(&project)?;
            } else {
                caller.require_deployer_in(&project)?;
            }
            Request::from_parts(parts, body)
        }
        Need::Admin if caller.admin => taken,
        Need::Admin => {
            return Err(ApiError::forbidden(
                format!("{} is not an admin", caller.name),
                "users, agents, projects and tokens are for admins",
            ));
        }
        Need::Role(..) | Need::DirectDeploy { .. } => {
            let (role, pair) = match need {
                Need::Role(role, pair) => (role, pair),
                Need::DirectDeploy { pair, .. } => (Role::Deployer, pair),
                _ => unreachable!("matched above"),
            };
            let (mut parts, body) = taken.into_parts();
            let params = <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
                .await
                .map_err(|_| ApiError::bad("bad path", "see DESIGN.md \"Server\""))?;
            let ((project, env), taken) = pair_of(app, pair, &params, Request::from_parts(parts, body)).await?;
            // A ticket or deploy the caller may not see is answered as one that does not exist:
            // a 403 naming its project and env would let anyone walk the ids to map them.
            if matches!(pair, Pair::Ticket | Pair::Deploy) && !caller.allows(&project, &env, Role::Viewer) {
                let id = params.iter().find(|(k, _)| *k == "id").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
                return Err(match pair {
                    Pair::Ticket => super::tickets::unknown(id),
                    _ => super::api::unknown_deploy(id),
                });
            }
            caller.require(&project, &env, role)?;
            if let Need::DirectDeploy { rollback, .. } = need {
                direct_deploy(app, &caller, &project, &env, rollback)?;
            }
            taken
        }
    };
    taken.extensions_mut().insert(caller);
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_action_needs_what_its_api_twin_needs() {
        let post = Method::POST;
        for action in ["approve", "reject", "deploy", "cancel", "rollback"] {
            assert_eq!(
                policy(&post, &format!("/tickets/{{id}}/{action}")),
                policy(&post, &format!("/api/v1/tickets/{{id}}/{action}")),
                "{action}"
            );
        }
        for action in ["promote", "abort"] {
            assert_eq!(
                policy(&post, &format!("/deploys/{{id}}/{action}")),
                policy(&post, &format!("/api/v1/deploys/{{id}}/{action}"))
            );
        }
        assert_eq!(policy(&post, "/projects/{p}/envs/{e}/tickets"), Need::Role(Role::Deployer, Pair::Path));
        assert_eq!(
            policy(&post, "/projects/{p}/envs/{e}/rollback"),
            Need::DirectDeploy { rollback: true, pair: Pair::Path }
        );
        assert_eq!(policy(&Method::GET, "/users"), Need::Admin);
        assert_eq!(policy(&post, "/users/grant"), Need::Admin);
        assert_eq!(policy(&Method::GET, "/tickets/{id}"), Need::Role(Role::Viewer, Pair::Ticket));
        assert_eq!(policy(&Method::GET, "/"), Need::Page);
        assert!(is_page("/tickets/{id}") && is_page("/") && is_page("/login"));
        assert!(!is_page("/api/v1/tickets") && !is_page("/hooks/{project}") && !is_page("/metrics"));
    }
}
