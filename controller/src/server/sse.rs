//! `GET /api/v1/deploys/{id}/events`: Server-Sent Events from the deploy's journal. Each event
//! carries its number as `id:`; a client that sends `Last-Event-ID` gets what came after it,
//! then live ones; the last is `event: outcome`. A watcher tails the journal (woken by its
//! writer, never polling) and sends what gathered within 50 ms of a wake-up at once, so
//! watchers cost the deploy one notification per event and the server a write per batch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::App;
use crate::server::auth::{Caller, refreshed};
use crate::server::error::{ApiError, ApiResult};
use crate::state::journal;
use crate::state::store::DeployStatus;
use crate::state::users::Role;

/// Open event streams (API and pages alike) per principal, at most [`STREAMS_PER_CALLER`] each:
/// a stream holds a connection for as long as it lasts.
pub const STREAMS_PER_CALLER: usize = 32;

#[derive(Default)]
pub struct Streams(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One open stream of one principal; its count goes down when the stream ends.
pub struct StreamSlot {
    app: Arc<App>,
    who: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.app.streams.0.lock().expect("streams");
        if let Some(n) = open.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}

/// A slot for a new stream of `caller`, or 429 when they hold [`STREAMS_PER_CALLER`] already.
pub fn open_stream(app: &Arc<App>, caller: &Caller) -> ApiResult<StreamSlot> {
    let mut open = app.streams.0.lock().expect("streams");
    let n = open.entry(caller.principal.clone()).or_default();
    if *n >= STREAMS_PER_CALLER {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            format!("{} has {STREAMS_PER_CALLER} event streams open already", caller.principal),
            "close some (pages left open, watchers) and try again",
        ));
    }
    *n += 1;
    Ok(StreamSlot { app: app.clone(), who: caller.principal.clone() })
}

/// Who watches a stream: checked again whenever something changes (a revoked grant, an ended
/// session, a removed user or token ends the stream), and the slot it holds.
pub struct Watcher {
    pub caller: Caller,
    pub slot: StreamSlot,
}

pub async fn events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>> {
    let after: u32 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let watcher = Watcher { slot: open_stream(&app, &caller)?, caller };
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(tail(app, id, after, watcher, tx, |seq, kind, raw| {
        let text = String::from_utf8(raw).ok()?;
        let sse = SseEvent::default().event(kind).data(text);
        Some(if seq == 0 { sse } else { sse.id(seq.to_string()) })
    }));
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// How long a woken watcher lets events gather before it sends them.
const BATCH: Duration = Duration::from_millis(50);

/// Only the `event` field of a journal entry (the SSE `event:` name).
#[derive(serde::Deserialize)]
struct Kind<'a> {
    #[serde(borrow)]
    event: &'a str,
}

/// Send deploy `id`'s events after `after` to `tx`, each as `map` makes it of its number, its
/// `event` name and its JSON text (none: skipped), until its outcome, the client leaving, the
/// server stopping, or the watcher no longer allowed to see it. An outcome made from the
/// record (none in the journal) has number 0.
pub async fn tail(
    app: Arc<App>,
    id: u64,
    mut after: u32,
    watcher: Watcher,
    tx: mpsc::Sender<SseEvent>,
    map: impl Fn(u32, &str, Vec<u8>) -> Option<SseEvent>,
) {
    let mut stopping = app.stopping.subscribe();
    let Some((project, env)) = app.store.deploy(id).ok().flatten().map(|d| (d.project, d.env)) else { return };
    let mut changes = journal::changes();
    loop {
        // As the watcher stands now (users, sessions and tokens changing wake this loop).
        changes.borrow_and_update();
        if !refreshed(&app.store, &watcher.caller).is_some_and(|c| c.allows(&project, &env, Role::Viewer)) {
            return;
        }
        let mut woken = journal::subscribe(id);
        let Ok(events) = app.store.raw_events(id, after) else { return };
        for (seq, raw) in events {
            let kind = serde_json::from_slice::<Kind<'_>>(&raw)
                .map(|k| k.event.to_owned())
                .unwrap_or_else(|_| "message".into());
            after = seq;
            let Some(sse) = map(seq, &kind, raw) else { continue };
            if tx.send(sse).await.is_err() {
                return;
            }
            if kind == "outcome" {
                return;
            }
        }
        // Over without an outcome in its journal (it ended in a process that is gone): say how
        // it stands, from its record, and stop. Paused, or running under another leader of a
        // shared database (or about to be carried on here): wait for more.
        if !journal::is_live(id)
            && app.store.last_event(id).unwrap_or(0) == after
            && let Some(r) = app.store.deploy(id).ok().flatten()
            && !matches!(r.effective_status(), DeployStatus::Paused | DeployStatus::Running)
        {
            let outcome = crate::engine::journal::outcome_json(&r);
            if let Some(sse) = map(0, "outcome", outcome.to_string().into_bytes()) {
                let _ = tx.send(sse).await;
            }
            return;
        }
        let live = journal::is_live(id);
        tokio::select! {
            // Woken by the writer; let a few more events come so they go out in one write
            // (a watcher then costs the server a syscall per batch, not per event).
            _ = woken.changed(), if live => tokio::time::sleep(BATCH).await,
            r = changes.changed() => if r.is_err() { return },
            () = super::listen::until_stop(&mut stopping) => return,
            _ = tx.closed() => return,
            // Paused with nobody writing: a promote carries it on here; look again now and then.
            () = tokio::time::sleep(Duration::from_secs(2)), if !live => {}
        }
    }
}
