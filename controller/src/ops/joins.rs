//! Hosts that join by themselves (DESIGN.md "Joining hosts"): one-time join tokens bound to a
//! name and labels, the join that issues a certificate for the host's own key, renewal over
//! the agent's current certificate, eviction and bans, and the end of a CA rotation.
//!
//! The name, role and SANs of a certificate come from the token's record (a join) or the
//! certificate presented (a renewal), never from the request: only its key is used.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_common::names::validate_agent_name;
use slipway_common::pki::{Identity, cert_info, first_cert_der, pin_of};
use slipway_common::time::{format_utc, unix_now};

use crate::error::{CtlError, Result};
use crate::ops::secrets::{random_hex, same, sha256_hex};
use crate::state::home::Home;
use crate::state::joins::{CertPin, Done, JoinToken};
use crate::state::store::{AgentRecord, Store};

/// How long a join token lasts unless `--ttl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// The longest a join token may last: it is a credential lying around.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

pub use crate::state::joins::{evicted_error, revoked};
use crate::state::joins::{revoke, unrevoke};

/// A new join token for agent `name`: its record and the token text `<id>.<secret>` (shown
/// once; only the secret's SHA-256 is kept).
pub fn create_token(
    store: &Store,
    name: &str,
    labels: &[String],
    addr: Option<String>,
    ttl: Duration,
    by: &str,
) -> Result<(JoinToken, String)> {
    validate_agent_name(name)?;
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(CtlError::bad(format!("--ttl {}s is out of range", ttl.as_secs()))
            .fix("a join token lasts from a second to 7 days (e.g. --ttl 30m)"));
    }
    if let Some(ban) = store.ban(name)? {
        return Err(CtlError::forbidden(format!(
            "agent name {name} is banned (by {} at {})",
            ban.by,
            format_utc(ban.at)
        ))
        .fix(format!("`slipctl agent unban {name}` first if it may join again")));
    }
    if let Some(a) = &addr {
        crate::state::agents::parse_addr(a)?;
    }
    let (id, secret) = (random_hex()[..12].to_owned(), random_hex());
    let now = unix_now();
    let token = JoinToken {
        id: id.clone(),
        secret_sha256: sha256_hex(&secret),
        name: name.to_owned(),
        labels: crate::state::agents::parse_labels(labels)?,
        addr,
        created: Done { by: by.to_owned(), at: now },
        expires_at: now + ttl.as_secs() as i64,
        used: None,
    };
    store.put_join_token(&token)?;
    Ok((token, format!("{id}.{secret}")))
}

/// The SHA-256 of the CA the controller presents itself with: what `slipd join --ca-sha256`
/// pins (during a CA rotation, still the old one: every agent trusts it).
pub fn ca_pin(home: &Home) -> Result<String> {
    Ok(pin_of(&home.presenting_ca()?.1))
}

/// The SHA-256 of the CA that issues certificates now (the new one during a rotation).
pub fn issuing_pin(home: &Home) -> Result<String> {
    Ok(pin_of(&home.ca_bundle()?[0]))
}

/// The command to run on the host.
pub fn join_command(url: &str, token: &str, pin: &str) -> String {
    format!("slipd join {url} --token {token} --ca-sha256 {pin}")
}

/// `slipctl agent token rm ID`.
pub fn remove_token(store: &Store, id: &str) -> Result<()> {
    if store.remove_join_token(id)? {
        Ok(())
    } else {
        Err(CtlError::not_found(format!("unknown join token '{id}'")).fix("`slipctl agent token list` shows them"))
    }
}

/// What `slipd join` sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `<id>.<secret>`.
    pub token: String,
    /// A PKCS#10 request made with the host's own key (PEM). Only its key is used.
    pub csr: String,
    /// The port the agent listens on; the controller dials the address it joined from.
    pub port: u16,
}

/// What a join or a renewal answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    pub name: String,
    pub cert: String,
    /// The CAs to trust (two during a CA rotation).
    pub ca: String,
    pub not_after: i64,
}

fn pin_record(home: &Home, cert_pem: &str) -> Result<CertPin> {
    let der = first_cert_der(cert_pem)?;
    Ok(CertPin { sha256: pin_of(&der), not_after: cert_info(&der)?.not_after, ca_sha256: issuing_pin(home)? })
}

/// A host joins: the token is checked (known, its secret, unused, unexpired, its name not
/// banned), a certificate is issued for the request's key with the token's name, the token is
/// used up, and the agent is registered (or its identity replaced) with the token's labels.
pub fn join(home: &Home, store: &Store, req: &JoinRequest, from: IpAddr, lifetime: Duration) -> Result<Issued> {
    let unknown = || {
        CtlError::forbidden("unknown join token")
            .fix("make one with `slipctl agent token create NAME` and copy it whole")
    };
    let (id, secret) = req.token.split_once('.').ok_or_else(unknown)?;
    let token = store.join_token(id)?.ok_or_else(unknown)?;
    if !same(sha256_hex(secret).as_bytes(), token.secret_sha256.as_bytes()) {
        return Err(unknown());
    }
    let name = token.name.clone();
    if let Some(used) = &token.used {
        return Err(CtlError::forbidden(format!(
            "this join token for {name} was used at {} from {}",
            format_utc(used.at),
            used.by
        ))
        .fix(format!("a token joins one host once: `slipctl agent token create {name}` makes another")));
    }
    if token.expires_at <= unix_now() {
        return Err(CtlError::forbidden(format!(
            "this join token for {name} expired at {}",
            format_utc(token.expires_at)
        ))
        .fix(format!("`slipctl agent token create {name}` makes another")));
    }
    if let Some(ban) = store.ban(&name)? {
        return Err(CtlError::forbidden(format!(
            "agent name {name} is banned (by {} at {})",
            ban.by,
            format_utc(ban.at)
        ))
        .fix(format!("an admin lifts it with `slipctl agent unban {name}`")));
    }
    if req.port == 0 {
        return Err(CtlError::bad("the join request names no port").fix("slipd join --listen ADDR:PORT"));
    }
    // Issue before using the token up: a request that does not parse costs no token.
    let cert = home.load_ca()?.issue_for_request(&name, &req.csr, lifetime)?;
    if !store.claim_join_token(&token, Done { by: from.to_string(), at: unix_now() })? {
        return Err(CtlError::forbidden(format!("this join token for {name} was used meanwhile"))
            .fix(format!("`slipctl agent token create {name}` makes another")));
    }
    let addr = token.addr.clone().unwrap_or_else(|| std::net::SocketAddr::new(from, req.port).to_string());
    let mut record = store.agent(&name)?.unwrap_or(AgentRecord {
        name: name.clone(),
        addr: addr.clone(),
        labels: BTreeMap::new(),
        added_at: unix_now(),
        trust: Default::default(),
    });
    record.addr = addr;
    record.labels = token.labels.clone();
    record.trust.certs = vec![pin_record(home, &cert)?];
    record.trust.evicted = None;
    record.trust.joined = Some(Done { by: format!("token {}", token.id), at: unix_now() });
    store.put_agent(&record)?;
    unrevoke(&name);
    crate::state::journal::changed();
    let not_after = record.trust.not_after().unwrap_or_default();
    Ok(Issued { name, cert, ca: home.ca_bundle_pem()?, not_after })
}

/// An agent renews over its current certificate (`presented`, DER, verified by TLS against
/// the trusted CAs): it must be one this agent may present, not evicted or banned. It keeps
/// the presented certificate valid beside the new one until it switches.
pub fn renew(home: &Home, store: &Store, presented: &[u8], csr: &str, lifetime: Duration) -> Result<Issued> {
    let info = cert_info(presented)?;
    let Some(Identity::Agent(name)) = info.identities.into_iter().find(|i| matches!(i, Identity::Agent(_))) else {
        return Err(CtlError::forbidden("the certificate presented is not an agent's").fix("renew with agent.pem"));
    };
    let record = store.agent(&name)?.ok_or_else(|| {
        CtlError::forbidden(format!("agent {name} is not registered"))
            .fix(format!("it must join again: `slipctl agent token create {name}`"))
    })?;
    if let Some(ban) = store.ban(&name)? {
        return Err(CtlError::forbidden(format!("agent {name} is banned (by {} at {})", ban.by, format_utc(ban.at))));
    }
    if let Some(done) = &record.trust.evicted {
        return Err(evicted_error(&name, done));
    }
    let pin = pin_of(presented);
    if !record.trust.certs.iter().any(|c| c.sha256 == pin) {
        return Err(CtlError::forbidden(format!("this certificate of agent {name} was replaced")).fix(format!(
            "the host holds an old identity: `slipctl agent token create {name}` and `slipd join --force` there"
        )));
    }
    let cert = home.load_ca()?.issue_for_request(&name, csr, lifetime)?;
    let mut record = record;
    record.trust.certs.retain(|c| c.sha256 == pin);
    record.trust.certs.push(pin_record(home, &cert)?);
    record.trust.renewals += 1;
    record.trust.renewed_at = Some(unix_now());
    store.put_agent(&record)?;
    let not_after = record.trust.not_after().unwrap_or_default();
    Ok(Issued { name, cert, ca: home.ca_bundle_pem()?, not_after })
}

/// `slipctl agent evict NAME`: its certificates are no longer accepted, at once (the next RPC
/// to it is refused, and so is its renewal); it must join again.
pub fn evict(store: &Store, name: &str, by: &str) -> Result<AgentRecord> {
    let mut record = store
        .agent(name)?
        .ok_or_else(|| CtlError::not_found(format!("unknown agent '{name}'")).fix("`slipctl agent list` shows them"))?;
    let done = Done { by: by.to_owned(), at: unix_now() };
    revoke(name, evicted_error(name, &done).to_string());
    record.trust.certs.clear();
    record.trust.evicted = Some(done);
    store.put_agent(&record)?;
    crate::state::journal::changed();
    Ok(record)
}

/// `slipctl agent ban NAME`: evicted if registered, and no join for that name until unbanned.
pub fn ban(store: &Store, name: &str, by: &str) -> Result<()> {
    validate_agent_name(name)?;
    let done = Done { by: by.to_owned(), at: unix_now() };
    store.put_ban(name, &done)?;
    if store.agent(name)?.is_some() {
        evict(store, name, by)?;
    }
    revoke(name, format!("agent {name} is banned (by {by} at {})", format_utc(done.at)));
    Ok(())
}

/// `slipctl agent unban NAME`: it may join again (with a new token).
pub fn unban(store: &Store, name: &str) -> Result<()> {
    if store.remove_ban(name)? {
        Ok(())
    } else {
        Err(CtlError::not_found(format!("agent name {name} is not banned")).fix("`slipctl agent list --bans`"))
    }
}

/// Why the controller will not talk to `a`, with the fix: evicted, or its certificate expired
/// (while the controller was down, say) — it must join again.
pub fn trust_problem(a: &AgentRecord) -> Option<String> {
    if let Some(done) = &a.trust.evicted {
        return Some(format!("evicted by {} at {}: it must join again", done.by, format_utc(done.at)));
    }
    let expired = a.trust.not_after().filter(|t| *t <= unix_now())?;
    Some(format!(
        "certificate expired at {}: `slipctl agent token create {}`, then `slipd join --force` on the host",
        format_utc(expired),
        a.name
    ))
}

/// `slipctl agent rm NAME` evicts too: a removed agent's certificate is refused at once.
pub fn forget(name: &str, by: &str) {
    revoke(name, format!("agent {name} was removed by {by}"));
}

/// The agents still on a certificate of a CA other than the issuing one (a rotation waits
/// for them to renew), by name.
pub fn not_renewed_since_rotation(home: &Home, store: &Store) -> Result<Vec<String>> {
    let issuing = issuing_pin(home)?;
    Ok(store
        .agents()?
        .into_iter()
        .filter(|a| a.trust.evicted.is_none() && !a.trust.certs.is_empty())
        .filter(|a| a.trust.certs.last().is_some_and(|c| c.ca_sha256 != issuing))
        .map(|a| a.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home, Store) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home { root: dir.path().join("home") };
        home.init().unwrap();
        let store = Store::open(&home.state()).unwrap();
        (dir, home, store)
    }

    fn join_as(home: &Home, store: &Store, token: &str) -> Result<(Issued, String)> {
        let (csr, key) = slipway_common::pki::request_for("whoever", None).unwrap();
        let req = JoinRequest { token: token.into(), csr, port: 7443 };
        join(home, store, &req, "10.0.0.7".parse().unwrap(), Duration::from_secs(3600)).map(|i| (i, key))
    }

    fn renew_as(home: &Home, store: &Store, cert: &str, key: &str) -> Result<Issued> {
        let (csr, _) = slipway_common::pki::request_for("web-7", Some(key)).unwrap();
        renew(home, store, &first_cert_der(cert).unwrap(), &csr, Duration::from_secs(3600))
    }

    #[test]
    fn a_token_joins_once_and_its_name_is_the_certificates() {
        let (_d, home, store) = home();
        let (_, text) = create_token(&store, "web-7", &["role=web".into()], None, DEFAULT_TOKEN_TTL, "ops").unwrap();
        let (issued, _) = join_as(&home, &store, &text).unwrap();
        assert_eq!(issued.name, "web-7");
        let info = cert_info(&first_cert_der(&issued.cert).unwrap()).unwrap();
        assert_eq!(info.identities, vec![Identity::Agent("web-7".into())]);
        let agent = store.agent("web-7").unwrap().unwrap();
        assert_eq!(agent.addr, "10.0.0.7:7443");
        assert_eq!(agent.labels.get("role").map(String::as_str), Some("web"));
        let again = join_as(&home, &store, &text).unwrap_err();
        assert!(again.problem.contains("was used at"), "{again}");
        // A wrong secret reads as an unknown token: nothing about the id leaks.
        let (id, _) = text.split_once('.').unwrap();
        let wrong = join_as(&home, &store, &format!("{id}.{}", "0".repeat(64))).unwrap_err();
        assert_eq!(wrong.problem, "unknown join token");
        // Only the secret's digest is kept.
        let kept = serde_json::to_string(&store.join_tokens().unwrap()).unwrap();
        assert!(!kept.contains(text.split_once('.').unwrap().1));
    }

    #[test]
    fn renewal_needs_the_current_certificate_and_no_eviction_or_ban() {
        let (_d, home, store) = home();
        let (_, text) = create_token(&store, "web-7", &[], None, DEFAULT_TOKEN_TTL, "ops").unwrap();
        let (first, key) = join_as(&home, &store, &text).unwrap();
        let second = renew_as(&home, &store, &first.cert, &key).unwrap();
        // Both stay acceptable until the agent switches; then the first goes.
        let third = renew_as(&home, &store, &second.cert, &key).unwrap();
        let stale = renew_as(&home, &store, &first.cert, &key).unwrap_err();
        assert!(stale.problem.contains("was replaced"), "{stale}");
        evict(&store, "web-7", "ops").unwrap();
        let evicted = renew_as(&home, &store, &third.cert, &key).unwrap_err();
        assert!(evicted.problem.contains("was evicted by ops"), "{evicted}");
        assert!(revoked("web-7").is_some(), "the next call to it is refused in this process");
        // A new join lifts the eviction; a ban refuses joins and renewals.
        let (_, text) = create_token(&store, "web-7", &[], None, DEFAULT_TOKEN_TTL, "ops").unwrap();
        let (fresh, key) = join_as(&home, &store, &text).unwrap();
        assert!(revoked("web-7").is_none());
        let (_, later) = create_token(&store, "web-7", &[], None, DEFAULT_TOKEN_TTL, "ops").unwrap();
        ban(&store, "web-7", "ops").unwrap();
        assert!(renew_as(&home, &store, &fresh.cert, &key).unwrap_err().problem.contains("banned"));
        assert!(join_as(&home, &store, &later).unwrap_err().problem.contains("banned"));
        let refused = create_token(&store, "web-7", &[], None, DEFAULT_TOKEN_TTL, "ops").unwrap_err();
        assert!(refused.problem.contains("banned"), "{refused}");
        unban(&store, "web-7").unwrap();
        assert!(join_as(&home, &store, &later).is_ok(), "after unban, a token made before works");
        // `agent rm` evicts too: the next call to it is refused.
        assert!(revoked("web-7").is_none());
        forget("web-7", "ops");
        assert!(revoked("web-7").unwrap().contains("removed by ops"));
    }

    #[test]
    fn a_rotation_waits_for_every_agent_to_renew() {
        let (_d, home, store) = home();
        let (_, text) = create_token(&store, "web-7", &[], None, DEFAULT_TOKEN_TTL, "ops").unwrap();
        let (issued, key) = join_as(&home, &store, &text).unwrap();
        let before = ca_pin(&home).unwrap();
        home.begin_ca_rotation().unwrap();
        assert_eq!(ca_pin(&home).unwrap(), before, "join commands pin the CA the controller presents");
        assert_eq!(not_renewed_since_rotation(&home, &store).unwrap(), vec!["web-7".to_owned()]);
        assert!(home.begin_ca_rotation().is_err(), "one rotation at a time");
        let renewed = renew_as(&home, &store, &issued.cert, &key).unwrap();
        assert_eq!(renewed.ca.matches("BEGIN CERTIFICATE").count(), 2, "both CAs trusted meanwhile");
        assert!(not_renewed_since_rotation(&home, &store).unwrap().is_empty());
        home.finish_ca_rotation().unwrap();
        assert_ne!(ca_pin(&home).unwrap(), before);
        assert_eq!(home.ca_bundle().unwrap().len(), 1);
        home.client_tls().unwrap();
    }
}
