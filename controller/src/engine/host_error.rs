//! Why one host's step failed, typed: the planner and the executor decide on the kind (refused by
//! the agent, unreachable, timed out, the host's answer), and the records keep its sentence.
use std::fmt;

use slipway_common::ReleaseId;

/// One host's failure. `Display` is the sentence for people and for the deploy record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No connection: address, TCP, TLS or the certificate's name.
    #[error("{0}")]
    Connect(String),
    /// The agent refused the target itself (paths outside its rules, a refused hook user): the
    /// project's configuration is what to fix, not the host.
    #[error("{0}")]
    Refused(String),
    /// The agent answered the call with an error.
    #[error("{0}")]
    Agent(String),
    /// No answer in time.
    #[error("{what} within {secs}s{hint}")]
    Timeout { what: &'static str, secs: u64, hint: &'static str },
    /// The agent closed the call without its result.
    #[error("the agent ended the {0} without a result")]
    Ended(&'static str),
    /// The controller could not produce or read what it sends (packaging, the artifact file).
    #[error("{0}")]
    Local(String),
    /// The health check ran and said no.
    #[error("unhealthy after {attempts} attempt(s): {detail}")]
    Unhealthy { attempts: u32, detail: String },
    /// The flip happened, then a post_release hook failed.
    #[error("{0}")]
    PostRelease(String),
    /// A call failed, and asking the host afterwards showed it did not flip.
    #[error("{why}; current on the host is {}", Shown(.current))]
    NotFlipped { why: Box<HostError>, current: Option<ReleaseId> },
    /// A call failed and the host could not be asked what it runs now.
    #[error("{0}; the host did not say what current is now")]
    Unanswered(Box<HostError>),
    /// There is nothing to go back to on this host.
    #[error("no previous release to go back to (was {}); it stays on the new one", Shown(.0))]
    NoPrevious(Option<ReleaseId>),
}

impl HostError {
    /// An error status from an agent: `PermissionDenied` is the agent refusing the target.
    pub fn from_status(status: &tonic::Status) -> HostError {
        let text = crate::engine::client::status_text(status);
        match status.code() {
            tonic::Code::PermissionDenied => HostError::Refused(text),
            // The connection broke (the agent stopped, the network went): not the agent's answer.
            tonic::Code::Unavailable => HostError::Connect(format!("lost the connection to the agent: {text}")),
            _ => HostError::Agent(text),
        }
    }

    /// The fix for a failure to reach an agent, naming its address.
    pub fn unreachable_fix(addr: &str) -> String {
        format!(
            "is slipd running and listening on {addr}? (`systemctl status slipd` on that host; `slipctl agent list` \
             checks every agent)"
        )
    }

    /// Whether the agent refused the target itself (bad input, exit 2), not a host fault.
    pub fn is_refused(&self) -> bool {
        matches!(self, HostError::Refused(_))
    }
}

/// A release or "none", for sentences.
pub struct Shown<'a>(pub &'a Option<ReleaseId>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("none"),
        }
    }
}

/// A release id as an agent sends it: empty (or anything that is not an id) is none.
pub fn wire_release(value: &str) -> Option<ReleaseId> {
    ReleaseId::parse(value).ok()
}

/// A release id for the wire: none is empty.
pub fn to_wire(id: &Option<ReleaseId>) -> String {
    id.as_ref().map(ReleaseId::to_string).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_the_host_state() {
        let id = ReleaseId::parse("20261201-101010-abcdef0").unwrap();
        let e = HostError::NotFlipped { why: Box::new(HostError::Agent("boom".into())), current: Some(id.clone()) };
        assert_eq!(e.to_string(), "boom; current on the host is 20261201-101010-abcdef0");
        assert_eq!(
            HostError::NoPrevious(None).to_string(),
            "no previous release to go back to (was none); it stays on the new one"
        );
        let t = HostError::Timeout { what: "no answer", secs: 5, hint: "" };
        assert_eq!(t.to_string(), "no answer within 5s");
        assert!(HostError::from_status(&tonic::Status::permission_denied("outside allowed_roots")).is_refused());
        assert!(!HostError::from_status(&tonic::Status::internal("disk full")).is_refused());
        assert_eq!(wire_release(""), None);
        assert_eq!(wire_release(id.as_str()), Some(id.clone()));
        assert_eq!(to_wire(&None), "");
        assert_eq!(to_wire(&Some(id)), "20261201-101010-abcdef0");
    }
}
