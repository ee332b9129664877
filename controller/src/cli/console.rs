//! Where a command's output goes: the terminal, or — when the server carries the command out
//! for a `slipctl` talking to it over its socket or `--server` — back to that `slipctl`, line by
//! line, as it is written.

use tokio::sync::mpsc;

/// One piece of a command's output, or its end.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    Out(String),
    Err(String),
    Exit(u8),
}

pub use crate::ops::runs::Cancellers;

tokio::task_local! {
    static SINK: mpsc::UnboundedSender<Frame>;
    static CANCEL: Cancellers;
}

/// Run `f` with its output sent to `sink` instead of the terminal, and the operations it starts
/// cancellable through `cancel`.
pub async fn capture<F: std::future::Future>(
    sink: mpsc::UnboundedSender<Frame>,
    cancel: Cancellers,
    f: F,
) -> F::Output {
    SINK.scope(sink, CANCEL.scope(cancel, f)).await
}

/// Keep `canceller` where the remote command's owner can reach it; false when not remote.
pub fn register(canceller: &crate::engine::Canceller) -> bool {
    CANCEL.try_with(|c| c.lock().expect("cancellers").push(canceller.clone())).is_ok()
}

/// Whether this command runs for a `slipctl` elsewhere (no terminal here, no signals).
pub fn remote() -> bool {
    SINK.try_with(|_| ()).is_ok()
}

pub fn out(line: String) {
    match SINK.try_with(Clone::clone) {
        Ok(sink) => drop(sink.send(Frame::Out(line))),
        Err(_) => println!("{line}"),
    }
}

pub fn err(line: String) {
    match SINK.try_with(Clone::clone) {
        Ok(sink) => drop(sink.send(Frame::Err(line))),
        Err(_) => eprintln!("{line}"),
    }
}

/// `println!` that follows the command to whoever asked for it.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::console::out(format!($($arg)*)) };
}

/// `eprintln!` that follows the command to whoever asked for it.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::console::err(format!($($arg)*)) };
}
