//! `GET /api/v1/deploys/{id}/events`: Server-Sent Events from the deploy's journal. Each event
//! carries its number as `id:`; a client that sends `Last-Event-ID` gets what came after it,
//! then live ones; the last is `event: outcome`. A watcher tails the journal (woken by its
//! writer, never polling) and sends what gathered within 50 ms of a wake-up at once, so
//! watchers cost the deploy one notification per event and the server a write per batch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::App;
use crate::server::error::ApiResult;
use crate::state::journal;
use crate::state::store::DeployStatus;

pub async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>> {
    let after: u32 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(tail(app, id, after, tx, |seq, kind, raw| {
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
/// `event` name and its JSON text (none: skipped), until its outcome, the client leaving or the
/// server stopping. An outcome made from the record (none in the journal) has number 0.
pub async fn tail(
    app: Arc<App>,
    id: u64,
    mut after: u32,
    tx: mpsc::Sender<SseEvent>,
    map: impl Fn(u32, &str, Vec<u8>) -> Option<SseEvent>,
) {
    let mut stopping = app.stopping.subscribe();
    loop {
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
        // Over without an outcome in its journal (it ended in a process that is gone, or
        // paused): say how it stands, from its record, and stop.
        if !journal::is_live(id)
            && app.store.last_event(id).unwrap_or(0) == after
            && let Some(r) = app.store.deploy(id).ok().flatten()
            && r.status != DeployStatus::Paused
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
            () = super::listen::until_stop(&mut stopping) => return,
            _ = tx.closed() => return,
            // Paused with nobody writing: a promote carries it on here; look again now and then.
            () = tokio::time::sleep(Duration::from_secs(2)), if !live => {}
        }
    }
}
