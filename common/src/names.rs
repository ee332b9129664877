//! Names and ids with rules: agent, project and env names, and `ReleaseId`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const NAME_RULE: &str = "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";
const HOST_RULE: &str = "use 1-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit";

fn check_label(value: &str, allow_dot: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allow_dot && c == '.');
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !value.is_empty()
        && value.len() <= 63
        && value.chars().all(ok_char)
        && value.starts_with(edge)
        && value.ends_with(edge)
        && !value.contains("..")
}

/// Agent (host) names end up in certificates as `spiffe://slipway/agent/<name>` and as a DNS name.
pub fn validate_agent_name(value: &str) -> Result<()> {
    if check_label(value, true) {
        Ok(())
    } else {
        Err(Error::InvalidName { what: "agent name", value: crate::archive::clip(value, 128), rule: HOST_RULE })
    }
}

/// Project and environment names: they appear in paths and state keys.
pub fn validate_name(what: &'static str, value: &str) -> Result<()> {
    if check_label(value, false) {
        Ok(())
    } else {
        Err(Error::InvalidName { what, value: crate::archive::clip(value, 128), rule: NAME_RULE })
    }
}

/// `YYYYMMDD-HHMMSS-<7 hex of the commit>` (UTC): sortable, one per deploy of a project+env.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReleaseId(String);

impl ReleaseId {
    pub fn new(unix_secs: i64, commit_hex: &str) -> Result<Self> {
        let short = commit_hex.get(..7).unwrap_or("");
        Self::parse(&format!("{}-{}", crate::time::compact_utc(unix_secs), short.to_ascii_lowercase()))
    }

    pub fn parse(value: &str) -> Result<Self> {
        let b = value.as_bytes();
        let ok = b.len() == 23
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'-'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'-'
            && b[16..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if ok {
            Ok(ReleaseId(value.to_owned()))
        } else {
            Err(Error::InvalidName {
                what: "release id",
                value: crate::archive::clip(value, 128),
                rule: "expected YYYYMMDD-HHMMSS-<7 hex>, as shown by `slipctl releases`",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 7-hex commit prefix.
    pub fn short_commit(&self) -> &str {
        &self.0[16..]
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ReleaseId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        ReleaseId::parse(&value)
    }
}

impl From<ReleaseId> for String {
    fn from(value: ReleaseId) -> String {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_agent(name: &str, ok: bool) {
        assert_eq!(validate_agent_name(name).is_ok(), ok, "{name}");
    }

    #[test]
    fn agent_names() {
        check_agent("web-1", true);
        check_agent("web01.prod", true);
        check_agent("a", true);
        check_agent("", false);
        check_agent("-web", false);
        check_agent("Web-1", false);
        check_agent("web_1", false);
        check_agent("web..1", false);
        check_agent("web/1", false);
        check_agent(&"a".repeat(64), false);
    }

    #[test]
    fn project_names_have_no_dots() {
        assert!(validate_name("project name", "web-demo").is_ok());
        assert!(validate_name("project name", "web.demo").is_err());
        assert!(validate_name("env", "prod").is_ok());
    }

    #[test]
    fn release_ids() {
        let id = ReleaseId::new(1_795_317_906, "ABCDEF0123456789").unwrap();
        assert_eq!(id.as_str(), "20261122-032506-abcdef0");
        assert_eq!(id.short_commit(), "abcdef0");
        assert!(ReleaseId::parse("20261122-032506-abcdefg").is_err());
        assert!(ReleaseId::parse("../etc").is_err());
        assert!(ReleaseId::parse(".staging-20261122-032506-abcdef0").is_err());
        let older = ReleaseId::parse("20261121-235959-ffffff0").unwrap();
        assert!(older < id);
    }
}
