//! The audit trail: every security-relevant action as an append-only, numbered record (who,
//! from where, what, on what, the outcome). Nothing rewrites or removes a record; the server's
//! shipper sends them on in order from a cursor it keeps here.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::store::Store;

const TREE: &str = "audit";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: i64,
    /// The principal (`alice`, `token:ci`, `webhook:github`, an OS user for the local CLI).
    pub who: String,
    /// An address, `local`, or `server`.
    pub from: String,
    /// `sign_in`, `sign_in_failed`, `grant`, `deploy`, `freeze_create`, … (SECURITY.md lists them).
    pub action: String,
    /// What it was done to: `shop/prod`, `ticket #3`, `user alice`.
    pub target: String,
    /// `ok`, `refused`, `failed`, or an operation's outcome.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Store {
    /// Append a record; its number.
    pub fn append_audit(&self, mut record: AuditRecord) -> Result<u64> {
        record.seq = self.backend().increment("audit_seq")?;
        self.put(TREE, &record.seq.to_be_bytes(), &record)?;
        Ok(record.seq)
    }

    /// Records after number `after`, oldest first, at most `limit`.
    pub fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        Ok(self
            .backend()
            .scan_after(TREE, b"", &after.to_be_bytes())?
            .into_iter()
            .take(limit)
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// The newest `limit` records, newest first.
    pub fn audit_newest(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        Ok(self
            .backend()
            .scan(TREE, b"", true)?
            .into_iter()
            .take(limit)
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// How far the shipper `name` got.
    pub fn audit_shipped(&self, name: &str) -> Result<u64> {
        Ok(self.get::<u64>("audit_cursor", name.as_bytes())?.unwrap_or(0))
    }
    pub fn set_audit_shipped(&self, name: &str, seq: u64) -> Result<()> {
        self.put("audit_cursor", name.as_bytes(), &seq)
    }
}
