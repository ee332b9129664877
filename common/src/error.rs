//! The one error type of `slipway-common`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config or project file is malformed or has a bad value; the message names file and key.
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    /// A name (agent, project, env, release) does not follow the rules.
    #[error("invalid {what} '{value}': {rule}")]
    InvalidName { what: &'static str, value: String, rule: &'static str },
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Pki(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
}

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { context, path: path.into(), source }
    }

    pub fn config(file: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Config { file: file.to_string(), message: message.into() }
    }
}
