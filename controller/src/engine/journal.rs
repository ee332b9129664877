//! Every operation writes its events to the journal ([`crate::state::journal`]) on the way to
//! its consumer: the command line, the server and tests all see one numbered record, and an
//! operation that ends early is recorded as what it is, never left `running`.

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::engine::events::{Emitter, Event, HostEvent, Running};
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::store::{DeployRecord, DeployStatus, Store};

/// What an observer hears of the operations of this process.
pub enum Happened<'a> {
    /// Deploy `id` is numbered and recorded.
    Started(u64),
    /// It ended as this record says (not paused: a paused deploy has not ended).
    Ended(&'a DeployRecord),
}

type Observer = Box<dyn Fn(Happened<'_>) + Send + Sync>;
static OBSERVER: std::sync::OnceLock<Observer> = std::sync::OnceLock::new();

/// Have `observer` told when each operation of this process starts and ends (the server's
/// metrics and notifications); the first one set stays.
pub fn observe(observer: impl Fn(Happened<'_>) + Send + Sync + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

/// Numbers and writes one operation's events. In a process that holds the store open (the
/// server) each event is written and its watchers woken as it comes; a lone `slipctl` keeps
/// them until the end, so other commands can open the state meanwhile.
struct Journal {
    home: Home,
    id: Option<u64>,
    /// The number of the last event written (read once from the store: a resumed deploy's
    /// journal goes on where it was).
    last: Option<u32>,
    pending: Vec<Value>,
    live: bool,
    /// The operation's hosts, and those done with (live, failed or aborted), for its progress.
    hosts: usize,
    done: std::collections::BTreeSet<String>,
}

impl Journal {
    fn new(home: Home) -> Journal {
        let live = crate::state::backend::pinned_for(&home.state()).is_some();
        Journal { home, id: None, last: None, pending: Vec::new(), live, hosts: 0, done: Default::default() }
    }

    fn on(&mut self, event: &Event) {
        if let Event::Started { id } = event {
            self.id = Some(*id);
            crate::state::journal::open(*id);
            if let Some(observer) = OBSERVER.get() {
                observer(Happened::Started(*id));
            }
        }
        let counted = match event {
            Event::Started { .. } => true,
            Event::Hosts(names) => {
                self.hosts = names.len();
                true
            }
            Event::Host { host, event: HostEvent::Activated { .. } | HostEvent::Failed(_) | HostEvent::Aborted } => {
                self.done.insert(host.clone())
            }
            _ => false,
        };
        if counted && let Some(id) = self.id {
            crate::state::journal::set_progress(id, self.done.len(), self.hosts);
        }
        self.pending.push(event.to_json());
        if self.live && self.id.is_some() {
            self.write(false);
        }
    }

    fn write(&mut self, done: bool) {
        let Some(id) = self.id else {
            return;
        };
        let written = Store::open(&self.home.state()).and_then(|store| {
            let last = match self.last {
                Some(n) => n,
                None => store.last_event(id)?,
            };
            let seq = store.append_events(id, last, &self.pending)?;
            if done {
                store.flush()?;
            }
            Ok(seq)
        });
        match written {
            Ok(seq) => {
                self.last = Some(seq);
                self.pending.clear();
                crate::state::journal::notify(id, seq);
            }
            Err(e) => tracing::warn!("deploy #{id}: cannot write its events: {e}"),
        }
    }

    /// The operation is over: record how it ended, as the journal's last event — after
    /// `on_end` and the observer heard of it, so whoever sees the outcome sees what they did
    /// (a ticket that follows the deploy).
    fn end(&mut self, result: &Result<DeployRecord>, on_end: Option<OnEnd>) {
        let Some(id) = self.id else {
            return;
        };
        let ended = match result {
            Ok(record) if record.status == DeployStatus::Paused => None,
            Ok(record) => Some(record.clone()),
            Err(e) => settle_failed(&self.home, id, e),
        };
        if let Some(record) = &ended {
            if let Some(on_end) = on_end {
                on_end(record);
            }
            if let Some(observer) = OBSERVER.get() {
                observer(Happened::Ended(record));
            }
        }
        let outcome = ended.as_ref().map(outcome_json);
        self.pending.extend(outcome);
        self.write(true);
        crate::state::journal::close(id);
    }
}

/// The journal's last event: how the operation ended.
pub fn outcome_json(record: &DeployRecord) -> Value {
    json!({
        "event": "outcome",
        "id": record.id,
        "kind": record.kind,
        "status": record.effective_status().word(),
        "release": record.release,
        "error": record.error,
    })
}

/// An operation that failed with an error after it was numbered: its record reads `failed`
/// with that error, whatever step it had reached.
fn settle_failed(home: &Home, id: u64, error: &CtlError) -> Option<DeployRecord> {
    let store = Store::open(&home.state()).ok()?;
    let mut record = store.deploy(id).ok()??;
    if record.status == DeployStatus::Running {
        record.status = DeployStatus::Failed;
        record.error = Some(error.to_string());
        record.finished_at = Some(slipway_common::time::unix_now());
        store.put_deploy(&record).ok()?;
    }
    Some(record)
}

/// What to do, once, when an operation has ended (not paused), before its outcome is written.
pub type OnEnd = Box<dyn FnOnce(&DeployRecord) + Send>;

/// What to do, once, when an operation is numbered, before any of its events reach anyone.
pub type OnStart = Box<dyn FnOnce(u64) + Send>;

/// What the owner of an operation is told in step with its journal (a ticket that follows
/// its deploy): when it is numbered, and how it ended — never in the other order, however far
/// the consumer of its events lags.
#[derive(Default)]
pub struct Then {
    pub on_start: Option<OnStart>,
    pub on_end: Option<OnEnd>,
}

/// Start `operation` with its events journaled on their way to the consumer.
pub fn start<F, Fut>(home: Home, then: Then, operation: F) -> Running<DeployRecord>
where
    F: FnOnce(Emitter, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<DeployRecord>> + Send + 'static,
{
    Running::start(move |outer, cancel| async move {
        let (inner, mut events) = Emitter::channel();
        let task = tokio::spawn(operation(inner, cancel));
        let mut journal = Journal::new(home);
        let Then { mut on_start, on_end } = then;
        while let Some(event) = events.recv().await {
            journal.on(&event);
            if let Event::Started { id } = &event
                && let Some(on_start) = on_start.take()
            {
                on_start(*id);
            }
            outer.forward(event);
        }
        let result = task.await.map_err(|e| CtlError::failed(format!("the operation's task failed: {e}")))?;
        journal.end(&result, on_end);
        result
    })
}
