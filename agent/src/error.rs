//! The agent's error type and its one conversion to `tonic::Status`.

use std::path::PathBuf;

use slipway_common::archive::ArchiveError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("stale generation {got} for {target}: this host already saw generation {seen}; a newer deploy owns it")]
    Stale { target: String, got: u64, seen: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Too much at once (stages in progress): retry later.
    #[error("{0}")]
    Busy(String),
    #[error("not enough disk space under {path}: need {needed} bytes, {free} free")]
    DiskFull { path: PathBuf, needed: u64, free: u64 },
    #[error("archive rejected: {0}")]
    Archive(#[from] ArchiveError),
    #[error("upload interrupted: {0}")]
    Upload(String),
    /// A release hook failed or timed out; the message names stage, line and exit status.
    #[error("{0}")]
    Hook(String),
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, source: std::io::Error },
    #[error("agent state: {0}")]
    State(String),
}

impl AgentError {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io { context, path: path.into(), source }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        let code = match &e {
            AgentError::BadRequest(_) => Code::InvalidArgument,
            AgentError::NotAllowed(_) => Code::PermissionDenied,
            AgentError::Stale { .. } => Code::FailedPrecondition,
            AgentError::NotFound(_) => Code::NotFound,
            AgentError::Conflict(_) => Code::AlreadyExists,
            AgentError::Busy(_) => Code::Unavailable,
            AgentError::DiskFull { .. } => Code::ResourceExhausted,
            AgentError::Archive(a) if a.is_local_io() => Code::Internal,
            AgentError::Archive(_) => Code::InvalidArgument,
            AgentError::Upload(_) => Code::Aborted,
            AgentError::Hook(_) => Code::FailedPrecondition,
            AgentError::Io { .. } | AgentError::State(_) => Code::Internal,
        };
        match code {
            Code::Internal => tracing::error!(error = %e, "request failed"),
            _ => tracing::warn!(error = %e, "request refused"),
        }
        Status::new(code, e.to_string())
    }
}
