//! The controller's error type. Its kind decides the exit status: 2 for bad input (usage,
//! config, unknown project/env/host/ref/release), 3 for busy (another operation holds the
//! project+env's lock), 1 for an operation that failed. The fix, when the error knows one, is
//! kept apart from the problem so `--output json` can say both.

use std::fmt;

/// What kind of failure, and so the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Usage, config, or an unknown name: exit 2. The message names the thing and the fix.
    BadInput,
    /// The operation failed (on some host, in git, on disk): exit 1.
    Failed,
    /// Another operation holds the project+env's lock: exit 3 (retry later; nothing was done).
    Busy,
    /// A project, env, deploy, ticket, user, token or agent of that name or number does not
    /// exist: bad input (exit 2) to the command line, 404 to the API.
    NotFound,
    /// The caller may not do this (their grants, or the four-eyes rule): exit 2, 403.
    Forbidden,
}

#[derive(Debug, Clone)]
pub struct CtlError {
    pub kind: Kind,
    /// What is wrong, naming the thing.
    pub problem: String,
    /// What to do about it, when known.
    pub fix: Option<String>,
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fix {
            Some(fix) => write!(f, "{}; {fix}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for CtlError {}

fn redacted(text: String) -> String {
    match slipway_common::redact::redact(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(clean) => clean,
    }
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::BadInput | Kind::NotFound | Kind::Forbidden => 2,
            Kind::Failed => 1,
            Kind::Busy => 3,
        }
    }

    /// Every message is [`redact`](slipway_common::redact::redact)ed: a repository URL's
    /// credentials never reach an answer, a terminal or a log through an error.
    fn new(kind: Kind, problem: impl Into<String>) -> Self {
        CtlError { kind, problem: redacted(problem.into()), fix: None }
    }

    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, msg)
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, msg)
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, msg)
    }

    pub fn busy(msg: impl Into<String>) -> Self {
        Self::new(Kind::Busy, msg)
    }

    pub fn failed(msg: impl Into<String>) -> Self {
        Self::new(Kind::Failed, msg)
    }

    /// Say what to do about it (printed after the problem, and apart in JSON).
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(redacted(fix.into()));
        self
    }

    /// The word for the kind, in JSON.
    pub fn kind_word(&self) -> &'static str {
        match self.kind {
            // (Scripts have read `bad_input` for unknown names since the first release.)
            Kind::BadInput | Kind::NotFound => "bad_input",
            Kind::Forbidden => "forbidden",
            Kind::Failed => "failed",
            Kind::Busy => "busy",
        }
    }

    /// The error as `--output json` prints it: one document on stdout.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.problem,
            "fix": self.fix,
            "kind": self.kind_word(),
            "exit_code": self.exit_code(),
        })
    }
}

impl From<slipway_common::Error> for CtlError {
    fn from(e: slipway_common::Error) -> Self {
        match e {
            slipway_common::Error::Config { .. } | slipway_common::Error::InvalidName { .. } => {
                CtlError::bad(e.to_string())
            }
            other => CtlError::failed(other.to_string()),
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
        self.map_err(|e| CtlError::failed(format!("{what}: {e}")))
    }
}
