//! Where a command's output goes: the terminal, or — when the server carries the command out
//! for a `slipctl` talking to it over its socket or `--server` — back to that `slipctl`, line by
//! line, as it is written. A [`Console`] is handed to the command (in its [`super::Cx`]); no
//! output or cancellation is found through ambient state.

use tokio::sync::mpsc;

pub use crate::ops::runs::Cancellers;

/// One piece of a command's output, or its end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    Out(String),
    Err(String),
    Exit(u8),
}

/// The terminal (the default), or a `slipctl` elsewhere.
#[derive(Clone, Default)]
pub struct Console {
    remote: Option<Remote>,
}

#[derive(Clone)]
struct Remote {
    sink: mpsc::UnboundedSender<Frame>,
    /// What the command started, cancelled when the asking `slipctl` goes away.
    cancel: Cancellers,
}

impl Console {
    /// Output sent to `sink` instead of the terminal, and the operations started cancellable
    /// through `cancel`.
    pub fn remote(sink: mpsc::UnboundedSender<Frame>, cancel: Cancellers) -> Console {
        Console { remote: Some(Remote { sink, cancel }) }
    }

    /// Whether the command runs for a `slipctl` elsewhere (no terminal here, no signals).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Keep `canceller` where the remote command's owner can reach it; false when not remote.
    pub fn register(&self, canceller: &crate::engine::Canceller) -> bool {
        match &self.remote {
            Some(r) => {
                r.cancel.lock().expect("cancellers").push(canceller.clone());
                true
            }
            None => false,
        }
    }

    /// A line for stdout (`println!` that follows the command to whoever asked for it).
    pub fn out(&self, line: impl std::fmt::Display) {
        match &self.remote {
            Some(r) => drop(r.sink.send(Frame::Out(line.to_string()))),
            None => println!("{line}"),
        }
    }

    /// A line for stderr.
    pub fn err(&self, line: impl std::fmt::Display) {
        match &self.remote {
            Some(r) => drop(r.sink.send(Frame::Err(line.to_string()))),
            None => eprintln!("{line}"),
        }
    }
}

/// `println!` that follows the command to whoever asked for it: `outln!(cx, "…", …)`, where `cx`
/// is a [`super::Cx`] or a [`Console`].
#[macro_export]
macro_rules! outln {
    ($cx:expr, $($arg:tt)*) => { $cx.out(format!($($arg)*)) };
}

/// `eprintln!` that follows the command to whoever asked for it.
#[macro_export]
macro_rules! errln {
    ($cx:expr, $($arg:tt)*) => { $cx.err(format!($($arg)*)) };
}
