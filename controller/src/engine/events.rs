//! The engine's typed event stream: what an operation reports as it goes. The command line's
//! output is one consumer of it, the coming server another, tests a third.

use slipway_common::ReleaseId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::engine::host_error::HostError;
use crate::error::{CtlError, Result};

/// What happened to one host, as the deploy goes.
#[derive(Debug, Clone)]
pub enum HostEvent {
    Connecting,
    Uploading {
        sent: u64,
        total: u64,
    },
    Unpacking {
        entries: u64,
        total: u64,
    },
    Staged {
        elapsed_ms: u64,
    },
    Activating,
    Activated {
        previous: Option<ReleaseId>,
        elapsed_ms: u64,
    },
    Aborted,
    /// Taken out of the load balancer (`drained`) or put back (`undrained`).
    Balancer {
        action: &'static str,
        detail: String,
    },
    Failed(HostError),
    /// Live output of a hook: a chunk, not always whole lines.
    Output {
        stage: String,
        data: Vec<u8>,
        /// From the hook's stderr (else its stdout).
        stderr: bool,
    },
    /// A hook finished.
    Hook {
        stage: String,
        command: String,
        exit_code: i32,
        timed_out: bool,
        elapsed_ms: u64,
    },
}

/// One thing an operation reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A controller-level line ("fetching", "packaged …").
    Say(String),
    /// The hosts of the operation, in plan order, before any of them reports.
    Hosts(Vec<String>),
    /// What happened to one host.
    Host { host: String, event: HostEvent },
    /// The operation took its number (deploy id) and is recorded from now on.
    Started { id: u64 },
    /// The per-host view is complete (the rollout is over; the outcome follows).
    Finished,
}

impl HostEvent {
    /// The event as one JSON object: `{"kind": "...", ...}` (hook output as text, lossily).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            HostEvent::Connecting => json!({"kind": "connecting"}),
            HostEvent::Uploading { sent, total } => json!({"kind": "uploading", "sent": sent, "total": total}),
            HostEvent::Unpacking { entries, total } => json!({"kind": "unpacking", "entries": entries, "total": total}),
            HostEvent::Staged { elapsed_ms } => json!({"kind": "staged", "elapsed_ms": elapsed_ms}),
            HostEvent::Activating => json!({"kind": "activating"}),
            HostEvent::Activated { previous, elapsed_ms } => {
                json!({"kind": "activated", "previous": previous, "elapsed_ms": elapsed_ms})
            }
            HostEvent::Aborted => json!({"kind": "aborted"}),
            HostEvent::Balancer { action, detail } => json!({"kind": action, "detail": detail}),
            HostEvent::Failed(e) => json!({"kind": "failed", "error": e.to_string(), "refused": e.is_refused()}),
            HostEvent::Output { stage, data, stderr } => json!({
                "kind": "output", "stage": stage, "stream": if *stderr { "stderr" } else { "stdout" },
                "text": String::from_utf8_lossy(data),
            }),
            HostEvent::Hook { stage, command, exit_code, timed_out, elapsed_ms } => json!({
                "kind": "hook", "stage": stage, "command": command, "exit_code": exit_code,
                "timed_out": timed_out, "elapsed_ms": elapsed_ms,
            }),
        }
    }
}

impl Event {
    /// The event as one JSON object, for `--output jsonl` and the server's event stream.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Event::Say(line) => json!({"event": "say", "line": line}),
            Event::Hosts(names) => json!({"event": "hosts", "hosts": names}),
            Event::Host { host, event } => {
                let mut doc = event.to_json();
                doc["event"] = json!("host");
                doc["host"] = json!(host);
                doc
            }
            Event::Started { id } => json!({"event": "started", "id": id}),
            Event::Finished => json!({"event": "finished"}),
        }
    }
}

/// Where the engine sends its events: cheap to clone, never blocks, never drops an event.
#[derive(Debug, Clone)]
pub struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
}

impl Emitter {
    pub fn channel() -> (Emitter, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Emitter { tx }, rx)
    }

    /// An emitter nobody listens to.
    pub fn discard() -> Emitter {
        Emitter::channel().0
    }

    /// A controller line; URLs in it lose their credentials ([`redact`](slipway_common::redact::redact)).
    pub fn say(&self, line: impl std::fmt::Display) {
        let _ = self.tx.send(Event::Say(slipway_common::redact::redact(&line.to_string()).into_owned()));
    }

    pub fn hosts<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let _ = self.tx.send(Event::Hosts(names.into_iter().map(str::to_owned).collect()));
    }

    pub fn host(&self, host: &str, event: HostEvent) {
        let _ = self.tx.send(Event::Host { host: host.to_owned(), event });
    }

    /// Pass on an event as it is.
    pub fn forward(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn started(&self, id: u64) {
        let _ = self.tx.send(Event::Started { id });
    }

    pub fn finish(&self) {
        let _ = self.tx.send(Event::Finished);
    }
}

/// Stops an operation cleanly (staged releases aborted, activated hosts rolled back).
#[derive(Debug, Clone)]
pub struct Canceller {
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.tx.send(true);
    }
}

/// An operation under way: its events as they happen, a handle to cancel it, and its result.
pub struct Running<T> {
    pub events: mpsc::UnboundedReceiver<Event>,
    canceller: Canceller,
    task: JoinHandle<Result<T>>,
}

impl<T: Send + 'static> Running<T> {
    /// Start `operation` with a fresh event stream and cancel channel.
    pub fn start<F, Fut>(operation: F) -> Running<T>
    where
        F: FnOnce(Emitter, watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let (emitter, events) = Emitter::channel();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(operation(emitter, rx));
        Running { events, canceller: Canceller { tx: std::sync::Arc::new(tx) }, task }
    }

    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    /// Hand every event to `on_event` as it comes, then return the operation's result.
    pub async fn finish(mut self, mut on_event: impl FnMut(Event)) -> Result<T> {
        while let Some(event) = self.events.recv().await {
            on_event(event);
        }
        self.task.await.map_err(|e| CtlError::failed(format!("the operation's task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_sees_every_event_in_order_and_cancel_reaches_the_operation() {
        let running = Running::start(|events, mut cancel| async move {
            events.say("one");
            events.hosts(["web-1", "web-2"]);
            events.host("web-1", HostEvent::Connecting);
            // Wait for the consumer's cancel, as a rollout would between batches.
            while !*cancel.borrow() {
                cancel.changed().await.expect("cancel channel");
            }
            events.finish();
            Ok::<_, CtlError>(7)
        });
        running.canceller().cancel();
        let mut seen = Vec::new();
        let result = running.finish(|e| seen.push(format!("{e:?}"))).await.unwrap();
        assert_eq!(result, 7);
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].contains("one") && seen[1].contains("web-2") && seen[3].contains("Finished"), "{seen:?}");
    }
}
