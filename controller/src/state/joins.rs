//! What joining hosts leaves in the store: one-time join tokens (only the secret's SHA-256),
//! the certificates each agent may present, evictions and bans, each with who and when.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::Store;

/// Agents evicted or banned in this process, and why: checked before every RPC to them, so a
/// connection opened before the eviction carries no further call.
static REVOKED: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Mutex::default);

/// Why agent `name` may not be called now, if it may not (evicted, banned or removed here).
pub fn revoked(name: &str) -> Option<String> {
    REVOKED.lock().expect("revoked").get(name).cloned()
}

pub(crate) fn revoke(name: &str, why: String) {
    REVOKED.lock().expect("revoked").insert(name.to_owned(), why);
}

pub(crate) fn unrevoke(name: &str) {
    REVOKED.lock().expect("revoked").remove(name);
}

/// The refusal for an evicted agent, naming the fix.
pub fn evicted_error(name: &str, done: &Done) -> crate::error::CtlError {
    crate::error::CtlError::forbidden(format!(
        "agent {name} was evicted by {} at {}",
        done.by,
        slipway_common::time::format_utc(done.at)
    ))
    .fix(format!("it must join again: `slipctl agent token create {name}`, then `slipd join …` on the host"))
}

/// Who did something and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub by: String,
    pub at: i64,
}

/// A certificate issued to an agent: it may present it while it is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertPin {
    /// SHA-256 of the certificate's DER, hex.
    pub sha256: String,
    pub not_after: i64,
    /// SHA-256 of the CA certificate that issued it (which CA a rotation waits for).
    pub ca_sha256: String,
}

/// How far the controller trusts an agent (`AgentRecord::trust`). An agent registered by
/// `agent add` before joining existed has no pins: its CA-issued certificate is enough.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentTrust {
    /// The certificates it may present, oldest first (the one it has, and the one a renewal
    /// just gave it until it switches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<CertPin>,
    /// Evicted: no RPC, no renewal, until it joins again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<Done>,
    /// When it last joined (`slipd join`), and with which token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<Done>,
    #[serde(default)]
    pub renewals: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<i64>,
}

impl AgentTrust {
    /// Whether a certificate of SHA-256 `pin` is one this agent may present.
    pub fn accepts(&self, pin: &str) -> bool {
        self.evicted.is_none() && (self.certs.is_empty() || self.certs.iter().any(|c| c.sha256 == pin))
    }

    /// When its newest certificate expires, if it joined.
    pub fn not_after(&self) -> Option<i64> {
        self.certs.iter().map(|c| c.not_after).max()
    }
}

/// A one-time join token: `<id>.<secret>`, bound to a name and labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where the controller dials the agent; none: the address it joins from, at its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    pub created: Done,
    pub expires_at: i64,
    /// Used: by which address, when. A token is used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Done>,
}

impl Store {
    pub fn join_token(&self, id: &str) -> Result<Option<JoinToken>> {
        self.get("join_tokens", id.as_bytes())
    }
    pub fn put_join_token(&self, token: &JoinToken) -> Result<()> {
        self.put("join_tokens", token.id.as_bytes(), token)
    }
    pub fn remove_join_token(&self, id: &str) -> Result<bool> {
        self.remove("join_tokens", id.as_bytes())
    }
    pub fn join_tokens(&self) -> Result<Vec<JoinToken>> {
        self.all("join_tokens")
    }

    /// Mark `token` used as `used`, only if nobody used it first (two hosts racing with one
    /// token: one wins). False when it was used meanwhile.
    pub fn claim_join_token(&self, token: &JoinToken, used: Done) -> Result<bool> {
        let old = serde_json::to_vec(token).map_err(crate::state::backend::store_err)?;
        let new = serde_json::to_vec(&JoinToken { used: Some(used), ..token.clone() })
            .map_err(crate::state::backend::store_err)?;
        let swapped = self.backend().compare_and_swap("join_tokens", token.id.as_bytes(), Some(&old), Some(&new))?;
        self.backend().flush()?;
        Ok(swapped)
    }

    /// Agent names refused any join, with who banned them and when.
    pub fn ban(&self, name: &str) -> Result<Option<Done>> {
        self.get("agent_bans", name.as_bytes())
    }
    pub fn put_ban(&self, name: &str, done: &Done) -> Result<()> {
        self.put("agent_bans", name.as_bytes(), done)
    }
    pub fn remove_ban(&self, name: &str) -> Result<bool> {
        self.remove("agent_bans", name.as_bytes())
    }
}
