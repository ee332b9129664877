//! Notifications (`[[notify]]` in the project file): a generic signed webhook, Slack, DingTalk
//! (signed), WeCom and Feishu (signed), on the events each sink lists. Each message is sent by
//! its own task, off the deploy's path, with retries and backoff; one given up on is recorded
//! in the state (`notifications`) and counted in `/metrics`, and never fails anything.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};
use slipway_common::config::ProjectConfig;
use slipway_common::config::server::{NotifyFile, NotifyKind};
use slipway_common::time::unix_now;

use crate::http_client::{self, Target, Trust};
use crate::server::App;

/// Attempts per message, and the wait before the second (doubling after).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing worth telling people about.
#[derive(Debug, Clone)]
pub struct Note {
    /// One of `NOTIFY_EVENTS`.
    pub event: &'static str,
    pub project: String,
    pub env: String,
    pub text: String,
    /// Machine-readable detail for the generic webhook.
    pub detail: Value,
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), message).as_ref().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `text` as plain words for a chat robot, whatever people typed into it (a ticket's title, a
/// ref, an error): Slack reads `<!channel>`, `<!here>` and `<https://x|disguised>` in its
/// text, so `&`, `<` and `>` become entities; Feishu reads `<at user_id="all">` and DingTalk
/// and WeCom `@all`/`@mobile`, so there `@` becomes the full-width `＠` and `<`/`>` their
/// full-width forms. The signed generic webhook carries JSON and is sent as it is.
pub fn escape_for(kind: NotifyKind, text: &str) -> String {
    match kind {
        NotifyKind::Webhook => text.to_owned(),
        NotifyKind::Slack => text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"),
        NotifyKind::Dingtalk | NotifyKind::Wecom | NotifyKind::Feishu => {
            text.replace('@', "\u{ff20}").replace('<', "\u{ff1c}").replace('>', "\u{ff1e}")
        }
    }
}

/// What goes on the wire for `sink`: the URL (DingTalk signs in its query), headers, body.
pub fn message(sink: &NotifyFile, note: &Note, now_ms: i64) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    let text = escape_for(sink.kind, &note.text);
    let secret = sink.secret.clone().unwrap_or_default();
    let mut url = sink.url.clone();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    let body = match sink.kind {
        NotifyKind::Webhook => {
            let body = serde_json::to_vec(&json!({
                "event": note.event, "project": note.project, "env": note.env, "text": note.text, "detail": note.detail,
            }))
            .expect("json");
            headers.push((
                "x-slipway-signature",
                format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &body))),
            ));
            return (url, headers, body);
        }
        NotifyKind::Slack => json!({"text": text}),
        NotifyKind::Wecom => json!({"msgtype": "text", "text": {"content": text}}),
        NotifyKind::Dingtalk => {
            // DingTalk's robot: sign = base64(HMAC-SHA256(secret, "<ms>\n<secret>")), in the query.
            let sign = b64(&hmac_sha256(secret.as_bytes(), format!("{now_ms}\n{secret}").as_bytes()));
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}timestamp={now_ms}&sign={}", query_escape(&sign));
            json!({"msgtype": "text", "text": {"content": text}})
        }
        NotifyKind::Feishu => {
            // Feishu's robot: sign = base64(HMAC-SHA256(key = "<s>\n<secret>", message = "")).
            let secs = now_ms / 1000;
            let sign = b64(&hmac_sha256(format!("{secs}\n{secret}").as_bytes(), b""));
            json!({"timestamp": secs.to_string(), "sign": sign, "msg_type": "text", "content": {"text": text}})
        }
    };
    (url, headers, serde_json::to_vec(&body).expect("json"))
}

/// Percent-escape what base64 leaves that a query cannot hold.
fn query_escape(text: &str) -> String {
    text.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// Send `note` to every sink of its project that wants it, each in its own task.
pub fn send(app: &Arc<App>, note: Note) {
    let Ok(Some(project)) = app.store.project(&note.project) else { return };
    let Ok(config) = ProjectConfig::parse(&project.text, &project.source_file.display().to_string()) else { return };
    for sink in config.file.notify.into_iter().filter(|s| s.wants(&note.env, note.event)) {
        let (app, note) = (app.clone(), note.clone());
        tokio::spawn(async move { deliver(&app, &sink, &note).await });
    }
}

/// A deploy or rollback of this server started or ended: tell whoever listens.
pub fn on_operation(app: &Arc<App>, happened: &crate::engine::journal::Happened<'_>) {
    use crate::engine::journal::Happened;
    use crate::state::store::{DeployKind, DeployStatus};
    let (record, event) = match happened {
        Happened::Started(id) => match app.store.deploy(*id) {
            Ok(Some(r)) => (r, "deploy_started"),
            _ => return,
        },
        Happened::Ended(r) => {
            let event = match (r.kind, r.effective_status()) {
                (DeployKind::Deploy, DeployStatus::Succeeded) => "deploy_succeeded",
                (DeployKind::Rollback, DeployStatus::Succeeded) | (_, DeployStatus::RolledBack) => "rolled_back",
                _ => "deploy_failed",
            };
            ((*r).clone(), event)
        }
    };
    let what = if record.kind == DeployKind::Rollback { "rollback" } else { "deploy" };
    let how = match event {
        "deploy_started" => "started".to_owned(),
        _ => record.effective_status().word().replace('_', " "),
    };
    let commit = record.commit.get(..7).unwrap_or("");
    let release = record.release.as_ref().map(|r| format!(", release {r}")).unwrap_or_default();
    let error = record.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
    let text = format!(
        "{}/{}: {what} #{} of {} {commit}{release} {how} (by {}){error} {}/api/v1/deploys/{}",
        record.project, record.env, record.id, record.git_ref, record.user, app.public_url, record.id
    );
    let detail = json!({"deploy": record.id, "kind": what, "status": record.effective_status().word(), "release": record.release, "commit": record.commit, "ref": record.git_ref, "user": record.user, "error": record.error});
    send(app, Note { event, project: record.project, env: record.env, text, detail });
}

/// A ticket was made, approved or rejected.
pub fn on_ticket(app: &Arc<App>, event: &'static str, t: &crate::state::tickets::TicketRecord, by: &str) {
    let text = format!(
        "{}/{}: ticket #{} \"{}\" {} by {by} ({} {}) {}/api/v1/tickets/{}",
        t.project,
        t.env,
        t.id,
        t.title,
        event.trim_start_matches("ticket_"),
        t.git_ref,
        t.commit.get(..7).unwrap_or(""),
        app.public_url,
        t.id
    );
    let detail = json!({"ticket": t.id, "state": t.state, "ref": t.git_ref, "commit": t.commit, "by": by});
    send(app, Note { event, project: t.project.clone(), env: t.env.clone(), text, detail });
}

async fn attempt(sink: &NotifyFile, note: &Note) -> Result<(), String> {
    let (url, headers, body) = message(sink, note, unix_now() * 1000);
    let (target, path) = Target::from_url(&url, Trust::Public).map_err(|e| e.to_string())?;
    let host = url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("").to_owned();
    let mut request =
        hyper::Request::post(if path.is_empty() { "/".to_owned() } else { path }).header(hyper::header::HOST, host);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let status = tokio::time::timeout(SEND_TIMEOUT, http_client::send(&target, request))
        .await
        .map_err(|_| format!("no answer in {}s", SEND_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?
        .status();
    if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
}

async fn deliver(app: &App, sink: &NotifyFile, note: &Note) {
    let kind = format!("{:?}", sink.kind).to_lowercase();
    let mut wait = FIRST_BACKOFF;
    let mut last = String::new();
    for n in 1..=ATTEMPTS {
        match attempt(sink, note).await {
            Ok(()) => {
                app.metrics.notification(&kind, true);
                return;
            }
            Err(e) => last = e,
        }
        if n < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    tracing::warn!("notification to {} ({kind}) given up after {ATTEMPTS} attempts: {last}", sink.url);
    app.metrics.notification(&kind, false);
    let record = json!({
        "at": unix_now(), "kind": kind, "url": sink.url, "event": note.event, "project": note.project,
        "env": note.env, "attempts": ATTEMPTS, "error": last,
    });
    if let Err(e) = app.store.record_failed_notification(&record) {
        tracing::warn!("cannot record the failed notification: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(kind: NotifyKind, url: &str) -> NotifyFile {
        NotifyFile { kind, url: url.into(), secret: Some("SEC".into()), envs: vec![], events: vec![] }
    }

    fn note() -> Note {
        Note {
            event: "deploy_succeeded",
            project: "web".into(),
            env: "prod".into(),
            text: "web/prod: ok".into(),
            detail: json!({"deploy": 3}),
        }
    }

    #[test]
    fn each_robot_gets_its_own_shape_and_signature() {
        let (url, headers, body) = message(&sink(NotifyKind::Webhook, "http://h/x"), &note(), 1_700_000_000_000);
        assert_eq!(url, "http://h/x");
        let sig = headers.iter().find(|(k, _)| *k == "x-slipway-signature").unwrap();
        assert_eq!(sig.1, format!("sha256={}", hex::encode(hmac_sha256(b"SEC", &body))));
        let (url, _, body) = message(
            &sink(NotifyKind::Dingtalk, "https://oapi.dingtalk.com/robot/send?access_token=T"),
            &note(),
            1_700_000_000_000,
        );
        let expected = query_escape(&b64(&hmac_sha256(b"SEC", b"1700000000000\nSEC")));
        assert_eq!(
            url,
            format!("https://oapi.dingtalk.com/robot/send?access_token=T&timestamp=1700000000000&sign={expected}")
        );
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["text"]["content"], "web/prod: ok");
        let (_, _, body) =
            message(&sink(NotifyKind::Feishu, "https://open.feishu.cn/hook/x"), &note(), 1_700_000_000_000);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["timestamp"], "1700000000");
        assert_eq!(doc["sign"], b64(&hmac_sha256(b"1700000000\nSEC", b"")));
        let (_, _, body) = message(&sink(NotifyKind::Slack, "https://hooks.slack.com/x"), &note(), 0);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"text": "web/prod: ok"}));
    }

    #[test]
    fn what_people_typed_cannot_ping_everyone_or_disguise_a_link() {
        let hostile = Note {
            text: "<!channel> <https://evil.example|docs> @all <at user_id=\"all\">x</at> & co".into(),
            ..note()
        };
        let text_of = |kind, pointer: &str| {
            let (_, _, body) = message(&sink(kind, "https://robot.example/x"), &hostile, 0);
            serde_json::from_slice::<Value>(&body).unwrap().pointer(pointer).unwrap().as_str().unwrap().to_owned()
        };
        let slack = text_of(NotifyKind::Slack, "/text");
        assert_eq!(
            slack,
            "&lt;!channel&gt; &lt;https://evil.example|docs&gt; @all &lt;at user_id=\"all\"&gt;x&lt;/at&gt; &amp; co"
        );
        for (kind, pointer) in [
            (NotifyKind::Dingtalk, "/text/content"),
            (NotifyKind::Wecom, "/text/content"),
            (NotifyKind::Feishu, "/content/text"),
        ] {
            let text = text_of(kind, pointer);
            assert!(!text.contains('@') && !text.contains('<') && !text.contains('>'), "{kind:?}: {text}");
            assert!(text.contains("\u{ff20}all"), "{kind:?}: {text}");
        }
        let (_, _, body) = message(&sink(NotifyKind::Webhook, "https://h/x"), &hostile, 0);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["text"], hostile.text, "JSON carries it as it is");
    }
}
