//! The project file's keys for `slipctl serve`: approval rules per env, `[[webhook]]` rules that
//! map CI pushes and tags to envs, and `[[notify]]` sinks.

use serde::{Deserialize, Serialize};

/// `approval = { required = N, rollback = false }` (any env may override it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalFile {
    pub required: Option<u32>,
    pub rollback: Option<bool>,
}

/// How many approvals a ticket of an env needs before it deploys (0: approved when made), and
/// whether a rollback ticket needs them too (by default it does not: an emergency rollback
/// must not wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub required: u32,
    pub rollback: bool,
}

pub fn resolve_approval(over: &Option<ApprovalFile>, base: &Option<ApprovalFile>) -> Result<Approval, String> {
    let (o, b) = (over.clone().unwrap_or_default(), base.clone().unwrap_or_default());
    let required = o.required.or(b.required).unwrap_or(0);
    if required > 10 {
        return Err(format!("approval.required must be between 0 and 10, got {required}"));
    }
    Ok(Approval { required, rollback: o.rollback.or(b.rollback).unwrap_or(false) })
}

/// `[[webhook]] branch = "main"  env = "test"` or `tag = "v*"  env = "prod"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A build CI pushes (`slipctl artifact push`) whose name matches: a ticket for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    pub env: String,
}

impl WebhookRule {
    pub fn validate(&self, envs: &[&str]) -> Result<(), String> {
        let set = [&self.branch, &self.tag, &self.artifact].iter().filter(|o| o.is_some()).count();
        if set != 1 {
            return Err(format!("[[webhook]] for env '{}': set exactly one of branch, tag or artifact", self.env));
        }
        if !envs.contains(&self.env.as_str()) {
            return Err(format!(
                "[[webhook]]: env '{}' is not one of this project's envs ({})",
                self.env,
                envs.join(", ")
            ));
        }
        Ok(())
    }

    /// Whether a pushed artifact named `name` matches this rule.
    pub fn matches_artifact(&self, name: &str) -> bool {
        self.artifact.as_deref().is_some_and(|p| glob(p, name))
    }

    /// Whether a pushed branch (`tag == false`) or tag named `name` matches this rule.
    pub fn matches(&self, name: &str, tag: bool) -> bool {
        let pattern = if tag { &self.tag } else { &self.branch };
        pattern.as_deref().is_some_and(|p| glob(p, name))
    }
}

/// `*` matches any run of characters (including none), everything else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Webhook,
    Slack,
    Dingtalk,
    Wecom,
    Feishu,
}

/// One `[[notify]]` sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    pub kind: NotifyKind,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Envs it is for (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
    /// Events it is for (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

pub const NOTIFY_EVENTS: &[&str] = &[
    "ticket_created",
    "ticket_scheduled",
    "ticket_unscheduled",
    "ticket_approved",
    "ticket_rejected",
    "deploy_started",
    "deploy_succeeded",
    "deploy_failed",
    "rolled_back",
];

impl NotifyFile {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("[[notify]] url '{}' must start with http:// or https://", self.url));
        }
        if let Some(bad) = self.events.iter().find(|e| !NOTIFY_EVENTS.contains(&e.as_str())) {
            return Err(format!("[[notify]] event '{bad}' is not one of {}", NOTIFY_EVENTS.join(", ")));
        }
        if matches!(self.kind, NotifyKind::Dingtalk | NotifyKind::Feishu | NotifyKind::Webhook) && self.secret.is_none()
        {
            return Err(format!("[[notify]] kind = \"{:?}\" signs its messages: set secret = \"...\"", self.kind)
                .to_lowercase());
        }
        Ok(())
    }

    pub fn wants(&self, env: &str, event: &str) -> bool {
        (self.envs.is_empty() || self.envs.iter().any(|e| e == env))
            && (self.events.is_empty() || self.events.iter().any(|e| e == event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(glob("v*", "v1.2"));
        assert!(glob("v*", "v"));
        assert!(!glob("v*", "x1"));
        assert!(glob("release/*-rc", "release/1.0-rc"));
        assert!(!glob("release/*-rc", "release/1.0"));
        assert!(glob("main", "main") && !glob("main", "main2"));
    }
}
