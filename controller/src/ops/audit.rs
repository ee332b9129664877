//! The audit trail (issue #25 item 6): [`record`] appends one record for each security-relevant
//! action (sign-ins and their failures, users, grants and tokens, token use, ticket decisions,
//! deploys and rollbacks, project revisions, freezes, overrides, maintenance, pushed builds);
//! the leader ships them in order with [`ship`]: to a syslog server (RFC 5424, octet-counted over
//! TCP or TLS) and/or an OpenTelemetry collector (OTLP/HTTP logs, JSON), each from a cursor kept
//! in the state, so a restart or a new leader sends on from where the last one got to and a
//! receiver that is down is sent the backlog once it is back.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use slipway_common::time::unix_now;
use tokio::io::AsyncWriteExt;

use crate::error::{CtlError, Result};
use crate::state::audit::AuditRecord;
use crate::state::home::AuditConfig;
use crate::state::store::Store;

/// Who does something, for the record: a principal and where from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub who: String,
    pub from: String,
}

impl Actor {
    /// The server's caller, by the name it acts under (`alice`, `token:ci`).
    pub fn of(caller: &crate::ops::caller::Caller) -> Actor {
        Actor { who: caller.name.clone(), from: caller.from.clone() }
    }

    /// The operator running `slipctl` on this host (no server in between).
    pub fn local() -> Actor {
        Actor { who: crate::engine::scope::current_user(), from: "local".into() }
    }

    /// Record what this actor did.
    pub fn did(&self, store: &Store, action: &str, target: &str, outcome: &str, detail: &str) {
        record(store, &self.who, &self.from, action, target, outcome, detail);
    }
}

/// Wakes the shipper when a record is appended in this process.
static APPENDED: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

/// Append an audit record. Never fails its caller: a store that cannot take it is logged.
pub fn record(store: &Store, who: &str, from: &str, action: &str, target: &str, outcome: &str, detail: &str) {
    let r = AuditRecord {
        seq: 0,
        at: unix_now(),
        who: who.to_owned(),
        from: from.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: slipway_common::redact::redact(detail).into_owned(),
    };
    match store.append_audit(r) {
        Ok(_) => APPENDED.notify_waiters(),
        Err(e) => tracing::warn!(error = %e, action, target, "cannot append an audit record"),
    }
}

/// An RFC 5424 message for `r`, framed by octet counting (RFC 6587): `LEN SP MSG`.
pub fn syslog_frame(r: &AuditRecord, host: &str) -> Vec<u8> {
    // facility 13 (log audit); notice, or warning for what was refused or failed.
    let severity = if matches!(r.outcome.as_str(), "refused" | "failed") { 4 } else { 5 };
    let pri = 13 * 8 + severity;
    let ts = jiff::Timestamp::from_second(r.at).map(|t| t.to_string()).unwrap_or_else(|_| "-".into());
    let sd = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
    let msg = format!(
        "<{pri}>1 {ts} {host} slipway {pid} {action} [slipway@32473 seq=\"{seq}\" who=\"{who}\" from=\"{from}\" target=\"{target}\" outcome=\"{outcome}\"] {detail}",
        pid = std::process::id(),
        action = if r.action.is_empty() { "-" } else { &r.action },
        seq = r.seq,
        who = sd(&r.who),
        from = sd(&r.from),
        target = sd(&r.target),
        outcome = sd(&r.outcome),
        detail = if r.detail.is_empty() { format!("{} {} {}", r.who, r.action, r.target) } else { r.detail.clone() },
    );
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

/// The OTLP/HTTP JSON body of `records` (one log record each, attributes for every field).
pub fn otlp_body(records: &[AuditRecord]) -> serde_json::Value {
    use serde_json::json;
    let attr = |k: &str, v: String| json!({"key": k, "value": {"stringValue": v}});
    let logs: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            json!({
                "timeUnixNano": (r.at as i128 * 1_000_000_000).to_string(),
                "severityText": if matches!(r.outcome.as_str(), "refused" | "failed") { "WARN" } else { "INFO" },
                "body": {"stringValue": format!("{} {} {}: {}", r.who, r.action, r.target, r.outcome)},
                "attributes": [
                    attr("slipway.seq", r.seq.to_string()),
                    attr("slipway.who", r.who.clone()),
                    attr("slipway.from", r.from.clone()),
                    attr("slipway.action", r.action.clone()),
                    attr("slipway.target", r.target.clone()),
                    attr("slipway.outcome", r.outcome.clone()),
                    attr("slipway.detail", r.detail.clone()),
                ],
            })
        })
        .collect();
    json!({"resourceLogs": [{
        "resource": {"attributes": [attr("service.name", "slipway".into())]},
        "scopeLogs": [{"scope": {"name": "slipway.audit"}, "logRecords": logs}],
    }]})
}

/// Records after the cursor with no gap (a gap younger than 10 s is a record another process
/// numbered and has not written yet: wait for it).
fn next_batch(store: &Store, cursor: u64) -> Result<Vec<AuditRecord>> {
    let mut out = Vec::new();
    let mut expect = cursor + 1;
    for r in store.audit_after(cursor, 500)? {
        if r.seq != expect && unix_now() - r.at < 10 {
            break;
        }
        expect = r.seq + 1;
        out.push(r);
    }
    Ok(out)
}

/// Where the records go, checked and made ready once, when the server starts.
pub struct Shipping {
    /// The syslog server's `host:port`, with the TLS client config for `tls://`.
    syslog: Option<(String, Option<Arc<rustls::ClientConfig>>)>,
    otlp: Option<String>,
}

impl Shipping {
    /// Read `[audit]`: a syslog URL that is neither `tcp://` nor `tls://`, or a `ca_file` that
    /// does not read (relative to the home, like every path of its `config.toml`), stops the
    /// server at start with the fix, rather than leave records unshipped behind a warning every 2 s.
    pub fn prepare(config: AuditConfig, home: &std::path::Path) -> Result<Shipping> {
        let fix =
            || format!("write syslog = \"tls://HOST:PORT\" (or tcp://) in [audit] of {}/config.toml", home.display());
        let syslog = match &config.syslog {
            None => None,
            Some(url) => match (url.strip_prefix("tcp://"), url.strip_prefix("tls://")) {
                (Some(addr), _) if !addr.is_empty() => Some((addr.to_owned(), None)),
                (_, Some(addr)) if !addr.is_empty() => {
                    let ca_pem = config
                        .ca_file
                        .as_deref()
                        .map(|p| crate::state::home::read_in_home(home, p, "[audit] ca_file"))
                        .transpose()?;
                    let tls = crate::http_client::tls_trusting(ca_pem.as_deref())?;
                    Some((addr.to_owned(), Some(tls)))
                }
                _ => {
                    return Err(CtlError::bad(format!(
                        "[audit] syslog '{url}' is not tcp://HOST:PORT or tls://HOST:PORT"
                    ))
                    .fix(fix()));
                }
            },
        };
        if config.ca_file.is_some() && !matches!(syslog, Some((_, Some(_)))) {
            return Err(
                CtlError::bad("[audit] ca_file is set but syslog is not a tls:// URL: it would be ignored").fix(fix())
            );
        }
        Ok(Shipping { syslog, otlp: config.otlp })
    }
}

async fn send_syslog(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>, frames: &[u8]) -> Result<()> {
    let url = format!("{}://{addr}", if tls.is_some() { "tls" } else { "tcp" });
    let fail = |e: std::io::Error| CtlError::failed(format!("syslog {url}: {e}"));
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| CtlError::failed(format!("syslog {url}: no connection within 5 s")))?
        .map_err(fail)?;
    let Some(config) = tls else {
        let mut stream = stream;
        stream.write_all(frames).await.map_err(fail)?;
        return stream.shutdown().await.map_err(fail);
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let name =
        rustls::pki_types::ServerName::try_from(host).map_err(|e| CtlError::bad(format!("syslog {url}: {e}")))?;
    let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await.map_err(fail)?;
    tls.write_all(frames).await.map_err(fail)?;
    tls.shutdown().await.map_err(fail)
}

async fn send_otlp(url: &str, records: &[AuditRecord]) -> Result<()> {
    use http_body_util::Full;
    let endpoint = format!("{}/v1/logs", url.trim_end_matches('/'));
    let (target, path) = crate::http_client::Target::from_url(&endpoint, crate::http_client::Trust::Public)?;
    let host = endpoint.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("").to_owned();
    let body = serde_json::to_vec(&otlp_body(records)).map_err(|e| CtlError::failed(format!("otlp: {e}")))?;
    let request = hyper::Request::post(if path.is_empty() { "/v1/logs".to_owned() } else { path })
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| CtlError::failed(format!("otlp: {e}")))?;
    let response = crate::http_client::send(&target, request).await?;
    if !response.status().is_success() {
        return Err(CtlError::failed(format!("otlp {endpoint} answered {}", response.status())));
    }
    Ok(())
}

/// Ship what is past each cursor; true when something was sent.
async fn ship_once(store: &Store, config: &Shipping) -> bool {
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    let mut sent = false;
    if let Some((addr, tls)) = &config.syslog {
        let cursor = store.audit_shipped("syslog").unwrap_or(0);
        if let Ok(batch) = next_batch(store, cursor).map_err(|e| tracing::warn!(error = %e, "audit"))
            && let Some(last) = batch.last().map(|r| r.seq)
        {
            let frames: Vec<u8> = batch.iter().flat_map(|r| syslog_frame(r, &host)).collect();
            match send_syslog(addr, tls.as_ref(), &frames).await {
                Ok(()) => {
                    let _ = store.set_audit_shipped("syslog", last);
                    sent = true;
                }
                Err(e) => tracing::warn!(error = %e, "audit records not shipped to syslog yet"),
            }
        }
    }
    if let Some(url) = &config.otlp {
        let cursor = store.audit_shipped("otlp").unwrap_or(0);
        if let Ok(batch) = next_batch(store, cursor)
            && let Some(last) = batch.last().map(|r| r.seq)
        {
            match send_otlp(url, &batch).await {
                Ok(()) => {
                    let _ = store.set_audit_shipped("otlp", last);
                    sent = true;
                }
                Err(e) => tracing::warn!(error = %e, "audit records not shipped to OTLP yet"),
            }
        }
    }
    sent
}

/// The leader's shipper: on every record appended here, and every 2 s (records other processes
/// append, receivers that come back), until the process stops.
pub async fn ship(store: Store, config: Arc<Shipping>) {
    if config.syslog.is_none() && config.otlp.is_none() {
        return;
    }
    loop {
        let woken = APPENDED.notified();
        if ship_once(&store, &config).await {
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), woken).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_frames_are_octet_counted_rfc_5424_with_escaped_structured_data() {
        let r = AuditRecord {
            seq: 7,
            at: 1_796_662_800,
            who: "ali\"ce".into(),
            from: "10.0.0.1".into(),
            action: "sign_in_failed".into(),
            target: "user ali]ce".into(),
            outcome: "refused".into(),
            detail: "bad password".into(),
        };
        let frame = String::from_utf8(syslog_frame(&r, "ctl")).unwrap();
        let (len, msg) = frame.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<108>1 2026-12-07T17:00:00Z ctl slipway "), "{msg}");
        assert!(msg.contains(" sign_in_failed [slipway@32473 seq=\"7\" who=\"ali\\\"ce\""), "{msg}");
        assert!(msg.contains("target=\"user ali\\]ce\"") && msg.ends_with("] bad password"), "{msg}");
    }
}
