//! `POST /hooks/{project}`: push and tag events from GitHub and GitLab (DESIGN.md "Server").
//! A delivery is checked against the project's own secret in constant time (GitHub's
//! `X-Hub-Signature-256` HMAC-SHA256 of the body, GitLab's `X-Gitlab-Token`), deduplicated by
//! its delivery id, matched against the project file's `[[webhook]]` rules, and becomes a
//! ticket by `webhook:<source>` for the pushed commit, which deploys by itself when its env
//! needs no approval. Answers: 401 bad signature, 404 unknown project, 202 nothing to do (with
//! the reason), 200 a replayed delivery (with the first ticket), 201 a new ticket.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use slipway_common::config::ProjectConfig;

use crate::ops::tickets::{self, NewTicket};
use crate::server::App;
use crate::server::auth::{Caller, Via, same};
use crate::server::error::{ApiError, ApiResult};
use crate::state::tickets::{Audit, TicketState};

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Github,
    Gitlab,
}

impl Source {
    pub fn word(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::Gitlab => "gitlab",
        }
    }
}

/// What a push or tag event asks, once read.
#[derive(Debug, PartialEq)]
pub struct Push {
    /// The branch or tag name (without `refs/heads/` or `refs/tags/`).
    pub name: String,
    pub tag: bool,
    pub commit: String,
    pub summary: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What a delivery's headers claim, checked as far as can be before its body is read.
pub enum Claim {
    /// GitHub: the body's HMAC-SHA256 must equal this.
    Github { signature: Vec<u8>, delivery: Option<String> },
    /// GitLab: its token matched the secret.
    Gitlab { delivery: Option<String> },
}

impl Claim {
    pub fn source(&self) -> Source {
        match self {
            Claim::Github { .. } => Source::Github,
            Claim::Gitlab { .. } => Source::Gitlab,
        }
    }
    pub fn delivery(&self) -> Option<&str> {
        match self {
            Claim::Github { delivery, .. } | Claim::Gitlab { delivery } => delivery.as_deref(),
        }
    }
}

fn refused(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("webhook refused: {why}"),
        "set the webhook's secret to the one `slipctl webhook secret PROJECT` shows",
    )
}

/// Which CI sent it, from its headers alone: a GitLab token is compared with `secret` here; a
/// GitHub signature must at least be present and well-formed. Nothing of the body is read
/// before this passes.
pub fn precheck(headers: &HeaderMap, secret: &str) -> ApiResult<Claim> {
    if header(headers, "x-github-event").is_some() {
        let sig = header(headers, "x-hub-signature-256").ok_or_else(|| refused("no X-Hub-Signature-256"))?;
        let signature = sig
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
            .filter(|s| s.len() == 32)
            .ok_or_else(|| refused("malformed signature"))?;
        return Ok(Claim::Github { signature, delivery: header(headers, "x-github-delivery").map(str::to_owned) });
    }
    if header(headers, "x-gitlab-event").is_some() {
        let token = header(headers, "x-gitlab-token").ok_or_else(|| refused("no X-Gitlab-Token"))?;
        if !same(token.as_bytes(), secret.as_bytes()) {
            return Err(refused("the token does not match"));
        }
        let id = header(headers, "x-gitlab-event-uuid").or(header(headers, "idempotency-key")).map(str::to_owned);
        return Ok(Claim::Gitlab { delivery: id });
    }
    Err(ApiError::bad(
        "not a GitHub or GitLab webhook (no X-GitHub-Event or X-Gitlab-Event)",
        "point a GitHub or GitLab push webhook here",
    ))
}

/// Which CI sent it, checked against `secret`; the delivery id when it has one.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str) -> ApiResult<(Source, Option<String>)> {
    let claim = precheck(headers, secret)?;
    if let Claim::Github { signature, .. } = &claim {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        ring::hmac::verify(&key, body, signature).map_err(|_| refused("the signature does not match"))?;
    }
    Ok((claim.source(), claim.delivery().map(str::to_owned)))
}

/// Who pushed, as the (signed) payload names them: GitHub's `sender.login` (else
/// `pusher.name`), GitLab's `user_username`.
pub fn pusher_of(source: Source, doc: &Value) -> Option<String> {
    let name = match source {
        Source::Github => doc["sender"]["login"].as_str().or(doc["pusher"]["name"].as_str()),
        Source::Gitlab => doc["user_username"].as_str(),
    }?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// A body as it arrived, in its chunks: never copied into one buffer (growing one by doubling
/// held up to three times the bytes at a time), read as one stream of bytes by the JSON parser.
#[derive(Default)]
pub struct Chunks {
    parts: Vec<axum::body::Bytes>,
    len: usize,
}

impl Chunks {
    fn reader(&self) -> impl std::io::Read + '_ {
        ChunkReader { parts: &self.parts, at: 0, offset: 0 }
    }
}

struct ChunkReader<'a> {
    parts: &'a [axum::body::Bytes],
    at: usize,
    offset: usize,
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(part) = self.parts.get(self.at) {
            let rest = &part[self.offset..];
            if rest.is_empty() {
                self.at += 1;
                self.offset = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Read a delivery's body: at most [`super::WEBHOOK_BODY_LIMIT`] bytes, each held against the
/// server-wide budget of webhook bytes in memory (`budget`; 503 when it is spent), hashed as it
/// comes (the HMAC of GitHub's signature), and its SHA-256 (what makes it one delivery).
pub async fn read_body(
    body: axum::body::Body,
    claim: &Claim,
    secret: &str,
    budget: &Arc<tokio::sync::Semaphore>,
) -> ApiResult<(Chunks, String, Vec<tokio::sync::OwnedSemaphorePermit>)> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut hmac = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()));
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = Chunks::default();
    let mut held = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive: {e}"), "send it at once")
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len + data.len() > super::WEBHOOK_BODY_LIMIT {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the webhook's body is too large",
                format!("send at most {} bytes", super::WEBHOOK_BODY_LIMIT),
            ));
        }
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let permit = budget.clone().try_acquire_many_owned(n).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many webhook bytes in flight",
                "deliver it again in a few seconds (GitHub and GitLab retry by themselves)",
            )
        })?;
        held.push(permit);
        hmac.update(&data);
        digest.update(&data);
        bytes.len += data.len();
        bytes.parts.push(data);
    }
    if let Claim::Github { signature, .. } = claim {
        let mac = hmac.sign();
        if !same(mac.as_ref(), signature) {
            return Err(refused("the signature does not match"));
        }
    }
    Ok((bytes, hex::encode(digest.finish()), held))
}

/// The push or tag a verified delivery is about; `Err` with why there is nothing to deploy.
pub fn read_push(source: Source, headers: &HeaderMap, doc: &Value) -> std::result::Result<Push, String> {
    let event = match source {
        Source::Github => header(headers, "x-github-event").unwrap_or(""),
        Source::Gitlab => header(headers, "x-gitlab-event").unwrap_or(""),
    };
    let is_push = match source {
        Source::Github => event == "push",
        Source::Gitlab => event == "Push Hook" || event == "Tag Push Hook",
    };
    if !is_push {
        return Err(format!("{} event '{event}' is not a push or a tag", source.word()));
    }
    let reference = doc["ref"].as_str().ok_or("the event names no ref")?;
    let (name, tag) = if let Some(b) = reference.strip_prefix("refs/heads/") {
        (b, false)
    } else if let Some(t) = reference.strip_prefix("refs/tags/") {
        (t, true)
    } else {
        return Err(format!("ref '{reference}' is neither a branch nor a tag"));
    };
    let commit = match source {
        Source::Github => doc["after"].as_str(),
        Source::Gitlab => doc["checkout_sha"].as_str().or(doc["after"].as_str()),
    }
    .unwrap_or("");
    if commit.is_empty() || commit.bytes().all(|b| b == b'0') || doc["deleted"] == true {
        return Err(format!("{} was deleted: nothing to deploy", name));
    }
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{commit}' is not a commit id"));
    }
    let summary = match source {
        Source::Github => doc["head_commit"]["message"].as_str(),
        Source::Gitlab => doc["commits"].as_array().and_then(|c| c.last()).and_then(|c| c["message"].as_str()),
    }
    .unwrap_or("")
    .lines()
    .next()
    .unwrap_or("")
    .to_owned();
    Ok(Push { name: name.to_owned(), tag, commit: commit.to_owned(), summary })
}

fn accepted(reason: String) -> Response {
    (StatusCode::ACCEPTED, Json(json!({"ticket": null, "reason": reason}))).into_response()
}

pub async fn receive(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    axum::Extension(peer): axum::Extension<super::listen::Peer>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // (One read of the project: it decides both the metric's label and the answer.)
    let record = app.store.project(&project);
    let known = matches!(record, Ok(Some(_)));
    let answer = match record {
        Ok(record) => handle(&app, &project, record, &peer, &headers, body).await,
        Err(e) => Err(e.into()),
    };
    let response = match answer {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let label = if known { project.as_str() } else { super::metrics::UNKNOWN_PROJECT };
    app.metrics.webhook(label, response.status().as_str());
    response
}

/// The commit `env` runs now, as this controller's history says (its last deploy that went
/// through), if any.
fn running_commit(app: &App, project: &str, env: &str) -> ApiResult<Option<String>> {
    use crate::state::store::{DeployKind, DeployStatus};
    Ok(app
        .store
        .deploys(Some(project), Some(env), 200)?
        .into_iter()
        .find(|d| {
            d.kind == DeployKind::Deploy && d.effective_status() == DeployStatus::Succeeded && !d.commit.is_empty()
        })
        .map(|d| d.commit))
}

async fn handle(
    app: &Arc<App>,
    project: &str,
    record: Option<crate::state::store::ProjectRecord>,
    peer: &super::listen::Peer,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    // Who may make this server read a body: a known project, with a secret, whose signature
    // header is there (GitLab's token is checked before anything is read).
    let record = record.ok_or_else(|| {
        ApiError::not_found(format!("unknown project '{project}'"), "the webhook URL is <server>/hooks/<project name>")
    })?;
    let secret = app.store.webhook_secret(project)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("project '{project}' has no webhook secret yet"),
            format!("run `slipctl webhook secret {project}` and set it in the CI's webhook"),
        )
    })?;
    let claim = precheck(headers, &secret)?;
    let (body, digest, _held) = read_body(body, &claim, &secret, &app.webhook_budget).await?;
    let source = claim.source();
    let delivery = claim.delivery().map(str::to_owned);
    let doc: Value = serde_json::from_reader(body.reader())
        .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}"), "send application/json"))?;
    drop(body);
    if source == Source::Github && header(headers, "x-github-event") == Some("ping") {
        return Ok(Json(json!({"pong": true})).into_response());
    }
    let push = match read_push(source, headers, &doc) {
        Ok(push) => push,
        Err(reason) => return Ok(accepted(reason)),
    };
    let config = ProjectConfig::parse(&record.text, &record.source_file.display().to_string())
        .map_err(crate::error::CtlError::from)?;
    let Some(rule) = config.file.webhook.iter().find(|r| r.matches(&push.name, push.tag)) else {
        let what = if push.tag { "tag" } else { "branch" };
        return Ok(accepted(format!("no [[webhook]] rule of {project} matches {what} '{}'", push.name)));
    };
    // One ticket per signed body, whatever its delivery id says (the id is not signed: a
    // captured push sent again under a new id is the same body), even when two copies
    // arrive at once.
    let key = format!("{project}/sha256/{digest}");
    if let Some(first) = app.store.claim_delivery(&key)? {
        return Ok(Json(json!({"ticket": first, "replayed": true})).into_response());
    }
    let pusher = pusher_of(source, &doc).map(|named| {
        let user = app.store.user(&named).ok().flatten().map(|u| u.name);
        tickets::Pusher { named: format!("{}:{named}", source.word()), user }
    });
    let name = format!("webhook:{}", source.word());
    let caller = Caller {
        principal: name.clone(),
        user: None,
        name,
        admin: false,
        grants: Vec::new(),
        via: Via::Webhook,
        from: peer.to_string(),
    };
    let audit = Audit { by: caller.name.clone(), at: slipway_common::time::unix_now(), from: caller.from.clone() };
    let what = if push.tag { "tag" } else { "push to" };
    let by = pusher.as_ref().map(|p| format!(" by {}", p.named)).unwrap_or_default();
    let new = NewTicket {
        project: project.to_owned(),
        env: rule.env.clone(),
        git_ref: Some(push.name.clone()),
        title: clip_title(&format!("{} {what} {}{by}: {}", source.word(), push.name, push.summary)),
        description: delivery.clone().map(|d| format!("delivery {d}")).unwrap_or_default(),
        ..NewTicket::default()
    };
    let ticket = match tickets::create_pushed(&app.core, &caller, new, audit, Some(&push.commit), pusher).await {
        Ok(t) => t,
        Err(e) => {
            app.store.forget_delivery(&key)?;
            return Err(e.into());
        }
    };
    app.store.put_delivery(&key, ticket.id)?;
    let mut answer = json!({"ticket": ticket.id, "state": ticket.state, "env": ticket.env, "commit": ticket.commit});
    if ticket.state == TicketState::Approved {
        // A push older than what the env runs (a delivery late or out of order) is kept as a
        // ticket, but does not move the env back by itself.
        let mirror = crate::source::git::mirror_path(&app.home.cache(), project);
        let older = match running_commit(app, project, &ticket.env)? {
            Some(running) if running != ticket.commit => {
                crate::source::git::is_ancestor(&mirror, &ticket.commit, &running).unwrap_or(false).then_some(running)
            }
            _ => None,
        };
        if let Some(running) = older {
            answer["not_deployed"] = json!(format!(
                "{} is older than what {} runs ({}): deploy ticket #{} by hand if that is meant",
                &ticket.commit[..ticket.commit.len().min(12)],
                ticket.env,
                &running[..running.len().min(12)],
                ticket.id
            ));
        } else {
            // A freeze or a window holds it: it waits, listed, and starts once nothing does.
            match crate::ops::waiting::deploy_or_wait(&app.core, &caller, ticket.id).await {
                Ok(crate::ops::waiting::Started::Deploy(n)) => answer["deploy"] = json!(n),
                Ok(crate::ops::waiting::Started::Waiting(why)) => answer["waiting"] = json!(why),
                Err(e) => answer["deploy_error"] = json!({"error": e.problem, "fix": e.fix}),
            }
        }
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A title that fits [`tickets::TITLE_MAX`] (a commit's first line can be long).
fn clip_title(title: &str) -> String {
    if title.chars().count() <= tickets::TITLE_MAX {
        return title.to_owned();
    }
    let mut out: String = title.chars().take(tickets::TITLE_MAX - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_signatures_are_checked_and_gitlab_tokens_compared() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = format!("sha256={}", hex::encode(ring::hmac::sign(&key, body).as_ref()));
        let good = headers(&[("x-github-event", "push"), ("x-hub-signature-256", &sig), ("x-github-delivery", "d-1")]);
        assert_eq!(verify(&good, body, "s3cret").unwrap(), (Source::Github, Some("d-1".into())));
        assert_eq!(verify(&good, body, "other").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(verify(&good, b"{}", "s3cret").unwrap_err().status, StatusCode::UNAUTHORIZED, "a changed body");
        let gl = headers(&[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "s3cret")]);
        assert_eq!(verify(&gl, body, "s3cret").unwrap().0, Source::Gitlab);
        assert_eq!(verify(&gl, body, "s3cre").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(verify(&headers(&[]), body, "s3cret").unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn pushes_tags_and_deletions_read_as_they_are() {
        let c = "a".repeat(40);
        let gh = headers(&[("x-github-event", "push")]);
        let push = read_push(
            Source::Github,
            &gh,
            &json!({"ref": "refs/tags/v1.2", "after": c, "head_commit": {"message": "fix\nmore"}}),
        )
        .unwrap();
        assert_eq!(push, Push { name: "v1.2".into(), tag: true, commit: c.clone(), summary: "fix".into() });
        let deleted = json!({"ref": "refs/heads/main", "after": "0".repeat(40), "deleted": true});
        assert!(read_push(Source::Github, &gh, &deleted).unwrap_err().contains("deleted"));
        let issue = headers(&[("x-github-event", "issues")]);
        assert!(read_push(Source::Github, &issue, &json!({})).is_err());
        let gl = headers(&[("x-gitlab-event", "Tag Push Hook")]);
        let push = read_push(Source::Gitlab, &gl, &json!({"ref": "refs/tags/v2", "checkout_sha": c})).unwrap();
        assert!(push.tag && push.name == "v2");
    }
}
