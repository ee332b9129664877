//! The controller's error type. Its kind decides the exit status: 2 for bad input (usage,
//! config, unknown project/env/host/ref/release), 3 for busy (another operation holds the
//! project+env's lock), 1 for an operation that failed.

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Usage, config, or an unknown name: exit 2. The message names the thing and the fix.
    #[error("{0}")]
    BadInput(String),
    /// The operation failed (on some host, in git, on disk): exit 1.
    #[error("{0}")]
    Failed(String),
    /// Another operation holds the project+env's lock: exit 3 (retry later; nothing was done).
    #[error("{0}")]
    Busy(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::BadInput(_) => 2,
            CtlError::Failed(_) => 1,
            CtlError::Busy(_) => 3,
        }
    }

    pub fn bad(msg: impl Into<String>) -> Self {
        CtlError::BadInput(msg.into())
    }

    pub fn busy(msg: impl Into<String>) -> Self {
        CtlError::Busy(msg.into())
    }

    pub fn failed(msg: impl Into<String>) -> Self {
        CtlError::Failed(msg.into())
    }
}

impl From<slipway_common::Error> for CtlError {
    fn from(e: slipway_common::Error) -> Self {
        match e {
            slipway_common::Error::Config { .. } | slipway_common::Error::InvalidName { .. } => {
                CtlError::BadInput(e.to_string())
            }
            other => CtlError::Failed(other.to_string()),
        }
    }
}

pub type Result<T, E = CtlError> = std::result::Result<T, E>;

/// `.context(...)` for any error that displays: turns it into a `Failed` with a prefix.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| CtlError::Failed(format!("{what}: {e}")))
    }
}
